"""
What every target kind offers the executor: read one object into a
:class:`TargetState`, and patch abstract fields plus ownership annotations.

Actions speak in abstract fields (``paused-replicas``, ``min-replicas``,
``max-replicas``); each kind maps them onto its own object (a ScaledObject's
annotation and ``spec.minReplicaCount``, an HPA's ``spec.minReplicas``, a
Knative Service's ``autoscaling.knative.dev/min-scale``...). That keeps the
actions kind-agnostic: adding HPA or Knative is one new file in this package.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agent.structs import Ownership, TargetRef, _from_iso, _iso

PAUSED_REPLICAS = "paused-replicas"
MIN_REPLICAS = "min-replicas"
MAX_REPLICAS = "max-replicas"
FIELDS = (PAUSED_REPLICAS, MIN_REPLICAS, MAX_REPLICAS)

# Every annotation the agent writes lives under this prefix; one JSON annotation per owned field.
ANNOTATION_PREFIX = "scaling-agent.cortex.io/"
OWNERSHIP_ANNOTATIONS = {name: f"{ANNOTATION_PREFIX}{name}" for name in FIELDS}
RESUMED_ANNOTATION = f"{ANNOTATION_PREFIX}resumed"
# Set to "true" by a person on an object the agent must not change (it still gives back its own changes).
OPT_OUT_ANNOTATION = f"{ANNOTATION_PREFIX}ignore"
# The agent's field manager: its writes are its own in the objects' managedFields.
FIELD_MANAGER = "scaling-agent"

# Who usually stands behind a field manager's name (the API server names one from the fieldManager of a write,
# else from the client's User-Agent), for decisions that say who changed a field behind the agent's back.
MANAGERS = (
    ("kubectl", "a person, through kubectl"),
    ("argocd", "Argo CD, syncing or self-healing the object"),
    ("kustomize-controller", "Flux, reconciling the object"),
    ("helm-controller", "Flux's helm-controller"),
    ("helm", "Helm"),
    ("kube-downscaler", "kube-downscaler"),
)


class PauseOwner:
    AGENT = "agent"
    HUMAN = "human"
    DOWNSCALER = "kube-downscaler"


@dataclass(frozen=True)
class PauseInfo:
    """A pause in force on an object, whoever set it."""

    owner: str
    replicas: int | None  # None: frozen at the current count (KEDA's plain ``paused: "true"``)
    since: datetime | None


@dataclass(frozen=True)
class ResumeMark:
    """Left on an object after the agent resumes it, until KEDA's ``Paused`` condition is seen to clear."""

    decision: str
    at: datetime
    check_by: datetime

    def to_json(self) -> str:
        return json.dumps({"decision": self.decision, "at": _iso(self.at), "checkBy": _iso(self.check_by)})

    @classmethod
    def from_json(cls, text: str) -> ResumeMark:
        data = json.loads(text)
        at = _from_iso(data["at"])
        check_by = _from_iso(data["checkBy"])
        assert at is not None and check_by is not None
        return cls(decision=data["decision"], at=at, check_by=check_by)


@dataclass(frozen=True)
class TargetState:
    ref: TargetRef
    resource_version: str | None
    values: Mapping[str, int | None]  # the abstract fields as the object has them now
    replicas: int | None  # pods the workload runs now (None if unknown)
    owned: Mapping[str, Ownership] = field(default_factory=dict)
    pause: PauseInfo | None = None
    paused_condition: bool | None = None  # KEDA's status condition ``Paused``, if reported
    resumed: ResumeMark | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    opted_out: bool = False  # the object carries OPT_OUT_ANNOTATION: "true"
    notes: tuple[str, ...] = ()  # anything odd found while reading (e.g. an unreadable annotation)
    changed_by: Mapping[str, str] = field(default_factory=dict)  # field → the manager that set it last, if not us


def last_manager(managed_fields: Sequence[Mapping[str, object]], path: Sequence[str]) -> str | None:
    """
    The field manager that set the field at ``path`` (``("spec", "minReplicaCount")``) most recently, from an
    object's ``metadata.managedFields``; None when no entry holds it.
    """
    newest: tuple[str, str] | None = None
    for entry in managed_fields:
        node: object = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, Mapping) else None
            if node is None:
                break
        else:
            when, manager = str(entry.get("time") or ""), str(entry.get("manager") or "")
            if manager and (newest is None or when >= newest[0]):
                newest = (when, manager)
    return None if newest is None else newest[1]


def describe_manager(manager: str) -> str:
    """``kubectl-edit`` → ``kubectl-edit (a person, through kubectl)``; an unknown name stands alone."""
    who = next((text for prefix, text in MANAGERS if manager.startswith(prefix)), None)
    return manager if who is None else f"{manager} ({who})"


class Unset:
    """Marks "leave the resume mark as it is" in :meth:`TargetKind.patch`."""


UNSET = Unset()


class TargetKind(Protocol):
    kind: str

    async def ping(self, namespace: str | None) -> None:
        """One cheap authorized read: proves the API answers and the agent may read this kind."""
        ...

    async def get(self, namespace: str, name: str) -> TargetState: ...

    async def list(self, namespace: str | None) -> builtins.list[TargetState]: ...

    async def find_by_workload(self, namespace: str, workload: str) -> builtins.list[TargetRef]: ...

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]: ...

    async def patch(
        self,
        state: TargetState,
        *,
        values: Mapping[str, int | None],
        owned: Mapping[str, Ownership | None],
        resumed: ResumeMark | Unset | None = UNSET,
    ) -> TargetState: ...
