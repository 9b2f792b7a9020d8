"""
Which Kubernetes Node a notice is about: the cloud's machine identity against each Node's ``spec.providerID``.

A notice names a machine the cloud's way (an EC2 instance id, a GCE project/zone/name, an Azure VM or scale-set
instance); the cluster names the same machine in ``spec.providerID``, which the cloud provider sets to
``aws:///ZONE/INSTANCE``, ``gce://PROJECT/ZONE/NAME`` or an Azure resource id behind ``azure://``. Matching
parses both into :class:`InstanceRef` and compares what identifies the machine on that cloud, and nothing else:

* AWS: the instance id (unique on its own); the zone only when both sides know it.
* GCP: project, zone and name.
* Azure: the VM's name (a scale set's VM is named ``<scale set>_<number>``), the subscription exactly, the
  resource group ignoring case (Azure hands it out lower-cased in some places and not in others). A Scheduled
  Events document names the VM only, so without a subscription and resource group the name alone decides; and
  when no providerID matches, an AKS Node is found by its name, which is the scale set's name and the instance
  number in base 36, six digits (instance 35 of ``aks-nodepool1-12345678-vmss`` is
  ``aks-nodepool1-12345678-vmss00000z``).

A match must be unique: two Nodes for one notice would mean the identity was too thin to act on, so that is no
match (``None``, recorded by the caller as a no-op), like an unknown machine. The Nodes are plain dicts as the API
returns them (``spec.providerID``); no Kubernetes call is made here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from agent.notices.base import InstanceRef, Notice

_AZURE = re.compile(
    r"azure:///?subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)"
    r"/providers/Microsoft\.Compute/(?:virtualMachines/(?P<vm>[^/]+)"
    r"|virtualMachineScaleSets/(?P<vmss>[^/]+)/virtualMachines/(?P<instance>\d+))",
    re.IGNORECASE,
)
_GCE = re.compile(r"gce://(?P<project>[^/]+)/(?P<zone>[^/]+)/(?P<name>[^/]+)")
_AWS = re.compile(r"aws://(?:/(?P<zone>[^/]*))?/(?P<instance>i-[0-9a-zA-Z]+)")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def parse_provider_id(text: str) -> InstanceRef | None:
    """
    The machine a Node's ``spec.providerID`` names, or ``None`` when it is not an EC2 instance, a GCE instance
    or an Azure VM (a Fargate or kind node, an empty string).
    """
    text = text.strip()
    if match := _AWS.fullmatch(text):
        return InstanceRef(cloud="aws", instance_id=match["instance"], zone=match["zone"] or None)
    if match := _GCE.fullmatch(text):
        return InstanceRef(cloud="gcp", project=match["project"], zone=match["zone"], name=match["name"])
    if match := _AZURE.fullmatch(text):
        subscription, group = match["subscription"], match["group"]
        if match["vm"] is not None:
            return InstanceRef(cloud="azure", subscription=subscription, resource_group=group, vm_name=match["vm"])
        return InstanceRef(
            cloud="azure",
            subscription=subscription,
            resource_group=group,
            vmss=match["vmss"],
            instance=int(match["instance"]),
        )
    return None


def aks_node_name(vmss: str, instance: int) -> str:
    """The Node name AKS gives a scale set's VM: the scale set's name, then the number in base 36, six digits."""
    digits = ""
    while True:
        instance, rest = divmod(instance, 36)
        digits = _BASE36[rest] + digits
        if not instance:
            break
    return f"{vmss}{digits.rjust(6, '0')}".lower()


def azure_vm_name(ref: InstanceRef) -> str | None:
    """An Azure VM's name; a uniform scale set's VM is ``<scale set>_<number>`` (as Scheduled Events write it)."""
    if ref.vm_name is not None:
        return ref.vm_name
    if ref.vmss is not None and ref.instance is not None:
        return f"{ref.vmss}_{ref.instance}"
    return None


def same_machine(wanted: InstanceRef, node: InstanceRef) -> bool:
    """Whether a Node's machine (``node``, from its providerID) is the notice's (``wanted``), per cloud."""
    if wanted.cloud != node.cloud:
        return False
    if wanted.cloud == "aws":
        zones_agree = wanted.zone is None or node.zone is None or wanted.zone == node.zone
        return wanted.instance_id is not None and wanted.instance_id == node.instance_id and zones_agree
    if wanted.cloud == "gcp":
        return wanted.name is not None and (wanted.project, wanted.zone, wanted.name) == (
            node.project,
            node.zone,
            node.name,
        )
    if wanted.subscription is not None and wanted.subscription != node.subscription:
        return False
    if wanted.resource_group is not None and wanted.resource_group.casefold() != (node.resource_group or "").casefold():
        return False
    name = azure_vm_name(wanted)
    return name is not None and name == azure_vm_name(node)


def find_node(notice: Notice, nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """
    The name of the Node the notice is about, among ``nodes`` (Node objects as dicts), or ``None`` when no Node,
    or more than one, fits. A native notice's ``node`` must be one of them; its ``provider_id`` matches a Node's
    exactly first, then as a machine identity.
    """
    entries = list(_entries(nodes))
    if notice.node is not None:
        return notice.node if any(name == notice.node for name, _ in entries) else None
    if notice.provider_id is not None:
        exact = {name for name, provider_id in entries if provider_id == notice.provider_id}
        if exact:
            return _only(exact)
    wanted = notice.instance
    if wanted is None:
        return None
    found = set()
    for name, provider_id in entries:
        machine = parse_provider_id(provider_id)
        if machine is not None and same_machine(wanted, machine):
            found.add(name)
    if found:
        return _only(found)
    by_name_only = wanted.subscription is None or wanted.resource_group is None
    if wanted.cloud == "azure" and by_name_only and wanted.vmss is not None and wanted.instance is not None:
        aks_name = aks_node_name(wanted.vmss, wanted.instance)
        return _only({name for name, _ in entries if name.lower() == aks_name})
    return None


def _only(names: set[str]) -> str | None:
    return next(iter(names)) if len(names) == 1 else None


def _entries(nodes: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str]]:
    """Each Node's name and providerID ("" when it has none); ``provider_id`` too, as a client's to_dict() has it."""
    for node in nodes:
        metadata = node.get("metadata") or {}
        spec = node.get("spec") or {}
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            continue
        provider_id = spec.get("providerID", spec.get("provider_id"))
        yield name, provider_id if isinstance(provider_id, str) else ""


# A machine's identity as event labels (strings), so a notice's event can carry it to the rules and back.
MACHINE_LABELS = {
    "instance_id": "instance_id",
    "zone": "zone",
    "region": "region",
    "project": "project",
    "name": "instance_name",
    "subscription": "subscription",
    "resource_group": "resource_group",
    "vm_name": "vm_name",
    "vmss": "vmss",
    "instance": "vmss_instance",
}


def machine_labels(notice: Notice) -> dict[str, str]:
    """The labels that say which machine a notice is about: ``cloud``, ``node``/``provider_id``, the identity."""
    labels: dict[str, str] = {"cloud": notice.cloud}
    if notice.node:
        labels["node"] = notice.node
    if notice.provider_id:
        labels["provider_id"] = notice.provider_id
    if notice.instance is not None:
        labels["cloud"] = notice.instance.cloud
        for attribute, label in MACHINE_LABELS.items():
            value = getattr(notice.instance, attribute)
            if value is not None:
                labels[label] = str(value)
    return labels


def find_node_by_labels(labels: Mapping[str, str], nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """:func:`find_node` for an event's labels (:func:`machine_labels`): the Node the event's machine is."""
    cloud = labels.get("cloud")
    instance = None
    if cloud in ("aws", "gcp", "azure") and any(label in labels for label in MACHINE_LABELS.values()):
        fields: dict[str, Any] = {a: labels[label] for a, label in MACHINE_LABELS.items() if label in labels}
        if "instance" in fields:
            try:
                fields["instance"] = int(fields["instance"])
            except ValueError:
                return None
        instance = InstanceRef(cloud=cloud, **fields)  # type: ignore[arg-type]
    if instance is None and not labels.get("node") and not labels.get("provider_id"):
        return None
    notice = Notice(
        id="",
        cloud="native" if instance is None else instance.cloud,
        kind="preemption",
        instance=instance,
        node=labels.get("node") or None,
        provider_id=labels.get("provider_id") or None,
        deadline=None,
        reason="",
        received=None,
    )
    return find_node(notice, nodes)
