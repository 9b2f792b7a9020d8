"""
Azure: the Scheduled Events document of the Instance Metadata Service, as a watcher on a Spot VM forwards it.

The watcher polls ``http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01`` (header
``Metadata: true``) and forwards the document it gets::

    {"DocumentIncarnation": 7,
     "Events": [{"EventId": "C7061BAC-AFDC-4513-B24B-AA5F13A16123", "EventType": "Preempt",
                 "ResourceType": "VirtualMachine", "Resources": ["_aks-nodepool1-12345678-vmss_35"],
                 "EventStatus": "Scheduled", "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
                 "Description": "…", "EventSource": "Platform", "DurationInSeconds": -1}],
     "subscription": "…", "resourceGroup": "…"}

The document itself does not say which subscription and resource group the VMs are in; a watcher that knows
(from ``/metadata/instance/compute``: ``subscriptionId``, ``resourceGroupName``) adds them at the top level as
``subscription`` and ``resourceGroup``, and the VM is then matched against a providerID in full. Without them it
is matched by its name only.

Only ``Preempt`` events are notices (a Spot VM's eviction: about 30 seconds, from ``NotBefore``); the document
also lists reboots, redeploys and freezes, which are left out (an empty list, not an error). One notice per VM in
``Resources``: a name like ``aks-nodepool1-12345678-vmss_35`` (with or without a leading ``_``) is instance 35 of
the scale set ``aks-nodepool1-12345678-vmss``, another name is a VM's. The id is the ``EventId`` (with the VM's
name after it when the event lists several). An event already ``Started`` is ``late``; a ``NotBefore`` left
empty gives no deadline.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from agent.notices.base import DecodeError, InstanceRef, Message, NonEmpty, Notice, convert, parse_json, utc

NAME = "azure"


class ScheduledEvent(msgspec.Struct, frozen=True):
    EventId: NonEmpty
    EventType: NonEmpty
    Resources: list[NonEmpty] = []
    EventStatus: str = ""
    NotBefore: str = ""
    Description: str = ""
    ResourceType: str = "VirtualMachine"
    EventSource: str = ""


class Document(msgspec.Struct, frozen=True):
    DocumentIncarnation: int
    Events: list[ScheduledEvent]
    subscription: str | None = None
    resourceGroup: str | None = None


def matches(data: dict[str, Any]) -> bool:
    """A Scheduled Events document: it has both of its top-level fields."""
    return "DocumentIncarnation" in data and "Events" in data


def decode(body: bytes, *, now: datetime | None = None) -> list[Message]:
    return decode_data(parse_json(body), now=now)


def decode_data(data: dict[str, Any], *, now: datetime | None = None) -> list[Message]:
    """A notice for each VM of each ``Preempt`` event (``now`` is unused: the deadline is ``NotBefore``)."""
    document = convert(data, Document, what="azure scheduled events")
    notices: list[Message] = []
    for index, event in enumerate(document.Events):
        if event.EventType != "Preempt":
            continue
        where = f"azure scheduled events: Events[{index}]"
        if not event.Resources:
            raise DecodeError(f"{where}.Resources: a Preempt event must name the VM it evicts")
        deadline = _not_before(event.NotBefore, where=where)
        for resource in event.Resources:
            instance = vm_ref(
                resource, subscription=document.subscription or None, resource_group=document.resourceGroup or None
            )
            several = len(event.Resources) > 1
            by = f" by {deadline:%H:%M:%S}Z" if deadline else ""
            description = f": {event.Description.strip()}" if event.Description.strip() else ""
            notices.append(
                Notice(
                    id=f"{event.EventId}/{resource}" if several else event.EventId,
                    cloud="azure",
                    kind="preemption",
                    instance=instance,
                    node=None,
                    provider_id=None,
                    deadline=deadline,
                    reason=f"Azure Spot eviction ({event.EventStatus or 'Scheduled'}): {instance}{by}{description}",
                    received=None,
                    late=event.EventStatus == "Started",
                )
            )
    return notices


def vm_ref(resource: str, *, subscription: str | None, resource_group: str | None) -> InstanceRef:
    """
    The VM a Scheduled Events resource names: ``[_]<scale set>_<number>`` is a uniform scale set's VM, any other
    name a VM's (a flexible scale set's VMs are VMs, named ``<scale set>_<8 hex digits>``).
    """
    name = resource.removeprefix("_")
    vmss, _, number = name.rpartition("_")
    if vmss and number.isdigit():
        return InstanceRef(
            cloud="azure",
            subscription=subscription,
            resource_group=resource_group,
            vmss=vmss,
            instance=int(number),
        )
    return InstanceRef(cloud="azure", subscription=subscription, resource_group=resource_group, vm_name=name)


def _not_before(text: str, *, where: str) -> datetime | None:
    if not text.strip():
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise DecodeError(f"{where}.NotBefore: {text!r} is not a date like 'Mon, 19 Sep 2016 18:29:47 GMT'") from None
    return utc(parsed) if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # "-0000" (zone unknown) is read as UTC
