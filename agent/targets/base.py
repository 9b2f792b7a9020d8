"""
What every target kind offers the executor: read one object into a
:class:`TargetState`, and patch abstract fields together with the object's
claims (:mod:`agent.claims`).

Actions and claims speak in abstract fields (``paused-replicas``,
``min-replicas``, ``max-replicas``, ``replicas``, ``unschedulable``,
``taint``); each kind maps them onto its own object (a ScaledObject's
annotation and ``spec.minReplicaCount``, an HPA's ``spec.minReplicas``, a
Deployment's scale subresource, a Node's ``spec.unschedulable``) and says
which wants it can honour at all (:meth:`TargetKind.fields_for`), so the guard
can refuse the rest with the kind's own reason. Everything specific to one
kind (KEDA's pause owners, its ``Paused`` condition after a resume) stays in
that kind's module; what the reconciler must check later comes back through
:meth:`TargetKind.follow_up`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from agent.claims import ANNOTATION as CLAIMS_ANNOTATION
from agent.claims import (
    ANNOTATION_PREFIX,
    MAX_REPLICAS,
    MIN_REPLICAS,
    PAUSED_REPLICAS,
    REPLICAS,
    TAINT,
    UNSCHEDULABLE,
    Claims,
    Value,
    Want,
)
from agent.structs import Ownership, TargetRef
from agent.supervisor import Supervisor

__all__ = [
    "ANNOTATION_PREFIX",
    "MAX_REPLICAS",
    "MIN_REPLICAS",
    "PAUSED_REPLICAS",
    "REPLICAS",
    "TAINT",
    "UNSCHEDULABLE",
]

LEGACY_FIELDS = (PAUSED_REPLICAS, MIN_REPLICAS, MAX_REPLICAS)
# The release before claims wrote one JSON annotation per owned field; objects changed then still carry them.
OWNERSHIP_ANNOTATIONS = {name: f"{ANNOTATION_PREFIX}{name}" for name in LEGACY_FIELDS}
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
class TargetState:
    ref: TargetRef
    resource_version: str | None
    values: Mapping[str, Value]  # the abstract fields as the object has them now
    replicas: int | None  # pods the workload runs now (None if unknown)
    claims: Claims = field(default_factory=Claims)
    legacy: tuple[str, ...] = ()  # ownership annotations of the release before claims, removed on the next write
    pause: PauseInfo | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    opted_out: bool = False  # the object carries OPT_OUT_ANNOTATION: "true"
    notes: tuple[str, ...] = ()  # anything odd found while reading (e.g. an unreadable annotation)
    changed_by: Mapping[str, str] = field(default_factory=dict)  # field → the manager that set it last, if not us
    scaled_by: str | None = None  # another object that sets these fields (KEDA's ScaledObject behind its HPA)
    workload: tuple[str, str] | None = None  # the (kind, name) of the workload whose pods it scales: to price them
    private: Any = None  # what the kind keeps for itself between a read and its own follow-up


def int_or_none(value: Any) -> int | None:
    """A count as an object spells it (an int, or a string in an annotation); None when absent or unreadable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def read_claims(annotations: Mapping[str, str]) -> tuple[Claims, tuple[str, ...], tuple[str, ...]]:
    """
    The claims an object's annotations hold: the claims annotation, else (an object changed by the release before
    claims) its per-field ownership annotations, upgraded. Returns the claims, the legacy annotation keys to remove
    on the next write, and notes on anything unreadable (never a crash; the guard then refuses to write over it).
    """
    notes: list[str] = []
    legacy = tuple(key for key in OWNERSHIP_ANNOTATIONS.values() if key in annotations)
    if CLAIMS_ANNOTATION in annotations:
        try:
            return Claims.from_json(annotations[CLAIMS_ANNOTATION]), legacy, ()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            notes.append(f"unreadable annotation {CLAIMS_ANNOTATION} ({exc})")
    owned = []
    for key in legacy:
        try:
            owned.append(Ownership.from_json(annotations[key]))
        except (ValueError, KeyError, TypeError, AttributeError):
            notes.append(f"unreadable annotation {key}")
    return Claims.from_ownerships(owned), legacy, tuple(notes)


def claims_annotations(state: TargetState, claims: Claims) -> dict[str, str | None]:
    """The annotations a write sets for ``claims`` (None removes one): the claims, and no legacy ones left."""
    annotations: dict[str, str | None] = {key: None for key in state.legacy}
    # With no claim left the annotation goes: an object the agent no longer holds carries none of its marks.
    annotations[CLAIMS_ANNOTATION] = None if claims.empty else claims.to_json()
    return annotations


def patch_metadata(state: TargetState, claims: Claims) -> dict[str, Any]:
    """A merge patch's metadata: the claims annotations, and the resourceVersion read (a stale one is a 409)."""
    metadata: dict[str, Any] = {"annotations": claims_annotations(state, claims)}
    if state.resource_version:
        metadata["resourceVersion"] = state.resource_version
    return metadata


def scale_target(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The workload a ScaledObject or HPA scales (``scaleTargetRef``; its kind defaults to Deployment)."""
    target = spec.get("scaleTargetRef") or {}
    return (str(target.get("kind") or "Deployment"), str(target["name"])) if target.get("name") else None


def selector_text(selector: Mapping[str, str]) -> str:
    """A rule's selector as a list's ``labelSelector``."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def carries(obj: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    """The object's labels hold every pair. Also checked on a list's answer: its labelSelector is a hint some
    servers ignore."""
    return labels_hold((obj.get("metadata") or {}).get("labels") or {}, selector)


def labels_hold(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Every pair of the selector is among the labels (an empty selector: always)."""
    return all(labels.get(key) == value for key, value in selector.items())


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


@dataclass(frozen=True)
class FollowUp:
    """What a kind's follow-up found: a failure to record (and post) about the object, or nothing."""

    action: str
    reason: str


class TargetKind(Protocol):
    kind: ClassVar[str]
    namespaced: ClassVar[bool]
    name_labels: ClassVar[tuple[str, ...]]  # alert labels that name an object of this kind

    def fields_for(self, want: Want) -> tuple[str, ...] | str:
        """The abstract fields a claim of this want holds on this kind, or why the kind cannot honour it."""
        ...

    async def ping(self, namespace: str | None) -> None:
        """One cheap authorized read: proves the API answers and the agent may read this kind."""
        ...

    async def get(self, namespace: str, name: str) -> TargetState: ...

    async def list(self, namespace: str | None) -> builtins.list[TargetState]: ...

    async def find_by_workload(self, namespace: str, kind: str, name: str) -> builtins.list[TargetRef]:
        """The objects of this kind that scale the workload ``kind``/``name`` (a Deployment, a StatefulSet)."""
        ...

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]: ...

    async def find_by_machine(self, labels: Mapping[str, str]) -> builtins.list[TargetRef]:
        """The object that is the cloud machine an event's labels name (a Node, by its providerID); else none."""
        ...

    async def patch(
        self, state: TargetState, *, values: Mapping[str, Value], claims: Claims, decision: str, now: datetime
    ) -> TargetState:
        """Write ``values`` (only the fields that change) and the claims, in one write carrying the state's
        resourceVersion (a stale one is a Conflict)."""
        ...

    async def follow_up(self, state: TargetState, *, now: datetime, dry_run: bool) -> FollowUp | None:
        """Anything the kind checks after a change has had time to take effect (the reconciler calls it)."""
        ...

    def start(self, supervisor: Supervisor) -> None:
        """Start whatever keeps its reads fresh (a watch-backed cache), under the supervisor."""
        ...

    async def stop(self) -> None: ...

    @property
    def ready(self) -> bool:
        """Its reads can be served (a cache has listed once); /readyz waits for it."""
        ...

    def invalidate(self, namespace: str, name: str) -> None:
        """The copy it holds is stale (a 409 said so): the next read goes to the API."""
        ...
