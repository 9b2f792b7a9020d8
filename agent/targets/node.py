"""
Nodes (cluster-scoped): a cordon, and the agent's own ``NoSchedule`` taint.

Field map: ``unschedulable`` → ``spec.unschedulable`` (what ``kubectl cordon`` sets); ``taint`` → whether
``spec.taints`` holds the agent's taint (:data:`TAINT_KEY`, effect ``NoSchedule``). Both are held while any
claim holds them and go back to what they were when the last one ends; a Node someone else cordoned stays
cordoned (a claim there holds nothing), and the agent only ever adds or removes its own taint, never another.

A merge patch replaces ``spec.taints`` as a whole, so the patch carries the resourceVersion it read: a taint
someone added meanwhile makes it a 409, and the executor reads again. Nodes have no namespace, so the namespace
allow-list does not apply to them; the rules that name a Node kind are what let the agent touch one.

Reads come from a watch-backed cache of the Nodes (:mod:`agent.targets.cache`), listed and watched once,
cluster-wide, and kept as a slim projection (the taints whole: a patch writes the list back). Until it has listed
once (and for a Node it does not have yet) a read goes to the API. A patch's answer goes into the cache at once,
and a 409 makes the next read go to the API (:meth:`NodeTarget.invalidate`).
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from kubernetes_asyncio import client

from agent.claims import Claims, Value, Want
from agent.errors import call_json
from agent.notices.providers import find_node_by_labels
from agent.structs import TargetRef
from agent.targets.base import (
    ANNOTATION_PREFIX,
    FIELD_MANAGER,
    OPT_OUT_ANNOTATION,
    TAINT,
    UNSCHEDULABLE,
    FollowUp,
    TargetState,
    carries,
    last_manager,
    patch_metadata,
    read_claims,
    selector_text,
)
from agent.targets.cache import CachedReads, ObjectCache, agent_annotations, managed_fields, prune

TAINT_KEY = f"{ANNOTATION_PREFIX}cordoned"
TAINT_EFFECT = "NoSchedule"
NODE_FIELDS: dict[str, Any] = {
    "metadata": {
        "name": True,
        "resourceVersion": True,
        "labels": True,  # selectors
        "annotations": agent_annotations,
        "managedFields": managed_fields({"f:spec": {"f:unschedulable": True, "f:taints": True}}),
    },
    # every taint: a patch writes the list back whole; the providerID: a cloud's notice names the machine
    "spec": {"unschedulable": True, "taints": True, "providerID": True},
}


def _is_mine(taint: Mapping[str, Any]) -> bool:
    return taint.get("key") == TAINT_KEY and taint.get("effect") == TAINT_EFFECT


class NodeTarget(CachedReads):
    kind: ClassVar[str] = "Node"
    namespaced: ClassVar[bool] = False
    name_labels: ClassVar[tuple[str, ...]] = ("node", "kubernetes_node")

    def __init__(
        self, api: client.ApiClient, *, watch: bool = False, resync: timedelta = timedelta(minutes=10)
    ) -> None:
        self._core = client.CoreV1Api(api)
        # Without watch (a test building the kind alone, or kubernetes.watch: false) reads go to the API. Nodes are
        # cluster-scoped: one list and one watch of them all, whatever kubernetes.namespaces holds.
        self._objects: ObjectCache | None = None
        if watch:
            self._objects = ObjectCache(
                name="nodes",
                listers={None: functools.partial(self._core.list_node)},
                project=functools.partial(prune, keep=NODE_FIELDS),
                resync=resync,
            )
            self._caches = (self._objects,)

    def fields_for(self, want: Want) -> tuple[str, ...] | str:
        if want == Want.HOLD:
            return (UNSCHEDULABLE, TAINT)
        return "a Node has no replica count (cordon it, or change the workloads on it)"

    async def ping(self, namespace: str | None) -> None:
        await call_json(self._core.list_node(limit=1, _preload_content=False))

    async def get(self, namespace: str, name: str) -> TargetState:
        cache = self._cached()
        cached = None if cache is None else cache.get("", name)
        if cached is not None:
            return self._state(cached)
        # Not listed yet, new, or invalidated after a 409: from the API, and kept.
        obj = await call_json(self._core.read_node(name, _preload_content=False))
        if self._objects is not None:
            self._objects.put(obj)
        return self._state(obj)

    async def list(self, namespace: str | None) -> builtins.list[TargetState]:
        cache = self._cached()
        if cache is not None:
            return [self._state(obj) for obj in cache.items()]
        result = await call_json(self._core.list_node(_preload_content=False))
        return [self._state(obj) for obj in result.get("items", [])]

    async def find_by_workload(self, namespace: str, kind: str, name: str) -> builtins.list[TargetRef]:
        return []

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]:
        cache = self._cached()
        if cache is not None:
            items: builtins.list[dict[str, Any]] = cache.items()
        else:
            label_selector = selector_text(selector)
            result = await call_json(self._core.list_node(label_selector=label_selector, _preload_content=False))
            items = result.get("items", [])
        return sorted(self._ref(obj) for obj in items if carries(obj, selector))

    async def find_by_machine(self, labels: Mapping[str, str]) -> builtins.list[TargetRef]:
        """The Node a cloud's notice is about, matched through ``spec.providerID`` (agent/notices/providers.py)."""
        cache = self._cached()
        if cache is not None:
            nodes: builtins.list[dict[str, Any]] = cache.items()
        else:
            nodes = (await call_json(self._core.list_node(_preload_content=False))).get("items", [])
        name = find_node_by_labels(labels, nodes)
        return [] if name is None else [TargetRef(kind=self.kind, namespace="", name=name)]

    async def patch(
        self, state: TargetState, *, values: Mapping[str, Value], claims: Claims, decision: str, now: datetime
    ) -> TargetState:
        metadata = patch_metadata(state, claims)
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
        if self._objects is not None:
            obj = self._objects.put(obj)
        return self._state(obj)

    async def follow_up(self, state: TargetState, *, now: datetime, dry_run: bool) -> FollowUp | None:
        return None

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
