"""
Nodes (cluster-scoped): a cordon, and the agent's own ``NoSchedule`` taint.

Field map: ``unschedulable`` → ``spec.unschedulable`` (what ``kubectl cordon`` sets); ``taint`` → whether
``spec.taints`` holds the agent's taint (:data:`TAINT_KEY`, effect ``NoSchedule``). Both are held while any
claim holds them and go back to what they were when the last one ends; a Node someone else cordoned stays
cordoned (a claim there holds nothing), and the agent only ever adds or removes its own taint, never another.

A merge patch replaces ``spec.taints`` as a whole, so the patch carries the resourceVersion it read: a taint
someone added meanwhile makes it a 409, and the executor reads again. Nodes have no namespace, so the namespace
allow-list does not apply to them; the rules that name a Node kind are what let the agent touch one.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from kubernetes_asyncio import client

from agent.claims import Claims, Value, Want
from agent.errors import call_json
from agent.structs import TargetRef
from agent.supervisor import Supervisor
from agent.targets.base import (
    ANNOTATION_PREFIX,
    FIELD_MANAGER,
    OPT_OUT_ANNOTATION,
    TAINT,
    UNSCHEDULABLE,
    FollowUp,
    TargetState,
    claims_annotations,
    last_manager,
    read_claims,
)

TAINT_KEY = f"{ANNOTATION_PREFIX}cordoned"
TAINT_EFFECT = "NoSchedule"


def _is_mine(taint: Mapping[str, Any]) -> bool:
    return taint.get("key") == TAINT_KEY and taint.get("effect") == TAINT_EFFECT


class NodeTarget:
    kind: ClassVar[str] = "Node"
    namespaced: ClassVar[bool] = False
    name_labels: ClassVar[tuple[str, ...]] = ("node", "kubernetes_node")

    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)

    def fields_for(self, want: Want) -> tuple[str, ...] | str:
        if want == Want.HOLD:
            return (UNSCHEDULABLE, TAINT)
        return "a Node has no replica count (cordon it, or change the workloads on it)"

    async def ping(self, namespace: str | None) -> None:
        await call_json(self._core.list_node(limit=1, _preload_content=False))

    async def get(self, namespace: str, name: str) -> TargetState:
        return self._state(await call_json(self._core.read_node(name, _preload_content=False)))

    async def list(self, namespace: str | None) -> builtins.list[TargetState]:
        result = await call_json(self._core.list_node(_preload_content=False))
        return [self._state(obj) for obj in result.get("items", [])]

    async def find_by_workload(self, namespace: str, kind: str, name: str) -> builtins.list[TargetRef]:
        return []

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]:
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        result = await call_json(self._core.list_node(label_selector=label_selector, _preload_content=False))
        return sorted(
            self._ref(obj)
            for obj in result.get("items", [])
            if all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        )

    async def patch(
        self, state: TargetState, *, values: Mapping[str, Value], claims: Claims, decision: str, now: datetime
    ) -> TargetState:
        metadata: dict[str, Any] = {"annotations": claims_annotations(state, claims)}
        if state.resource_version:
            metadata["resourceVersion"] = state.resource_version
        spec: dict[str, Any] = {}
        if UNSCHEDULABLE in values:
            spec["unschedulable"] = True if values[UNSCHEDULABLE] else None
        if TAINT in values:
            others = [t for t in state.private if not _is_mine(t)]
            mine = [{"key": TAINT_KEY, "value": "true", "effect": TAINT_EFFECT}] if values[TAINT] else []
            spec["taints"] = [*others, *mine] or None
        body: dict[str, Any] = {"metadata": metadata}
        if spec:
            body["spec"] = spec
        obj = await call_json(
            self._core.patch_node(
                state.ref.name,
                body,
                _content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
                _preload_content=False,
            )
        )
        return self._state(obj)

    async def follow_up(self, state: TargetState, *, now: datetime, dry_run: bool) -> FollowUp | None:
        return None

    def start(self, supervisor: Supervisor) -> None:
        """Reads go to the API: nothing to keep fresh."""

    async def stop(self) -> None:
        pass

    @property
    def ready(self) -> bool:
        return True

    def invalidate(self, namespace: str, name: str) -> None:
        pass

    def _ref(self, obj: Mapping[str, Any]) -> TargetRef:
        return TargetRef(kind=self.kind, namespace="", name=obj["metadata"]["name"])

    def _state(self, obj: Mapping[str, Any]) -> TargetState:
        meta = obj.get("metadata") or {}
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        spec = obj.get("spec") or {}
        taints = list(spec.get("taints") or [])
        claims, legacy, notes = read_claims(annotations)
        managed = meta.get("managedFields") or []
        changed_by = {
            UNSCHEDULABLE: last_manager(managed, ("spec", "unschedulable")),
            TAINT: last_manager(managed, ("spec", "taints")),
        }
        return TargetState(
            ref=self._ref(obj),
            resource_version=meta.get("resourceVersion"),
            values={UNSCHEDULABLE: bool(spec.get("unschedulable")), TAINT: any(_is_mine(t) for t in taints)},
            replicas=None,
            claims=claims,
            legacy=legacy,
            labels=meta.get("labels") or {},
            opted_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "true",
            notes=notes,
            changed_by={name: m for name, m in changed_by.items() if m is not None and m != FIELD_MANAGER},
            private=taints,  # every taint, to write back all but the agent's own
        )
