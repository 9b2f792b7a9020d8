"""
HorizontalPodAutoscalers (``autoscaling/v2``), for workloads a plain HPA scales.

Field map: ``min-replicas`` → ``spec.minReplicas`` (1 when absent, as the API defaults it),
``max-replicas`` → ``spec.maxReplicas``. An HPA has no pause of its own, so a pause holds both at the same
count (min = max = N): the HPA controller then keeps the workload there. When the pause ends, both go back to
what the remaining claims give (or to what they were).

The HPA KEDA makes for each ScaledObject (``keda-hpa-<name>``, owned by the ScaledObject) is KEDA's: KEDA
rewrites it from the ScaledObject on its next pass, so a change there would silently vanish. Its state says so
(``scaled_by``) and the guard refuses to change it, naming the ScaledObject to change instead.

Read and patched as plain JSON through CustomObjectsApi (the typed models cost more than the calls), JSON merge
patches carrying the resourceVersion, under the agent's field manager.

Reads come from a watch-backed cache of the HPAs (:mod:`agent.targets.cache`), a slim projection of the fields
read here; until it has listed once (and for an HPA it does not have yet) a read goes to the API. A patch's answer
goes into the cache at once, and a 409 makes the next read go to the API (:meth:`invalidate`).
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from kubernetes_asyncio import client

from agent.claims import Claims, Value, Want
from agent.errors import call
from agent.structs import TargetRef
from agent.targets.base import (
    FIELD_MANAGER,
    MAX_REPLICAS,
    MIN_REPLICAS,
    OPT_OUT_ANNOTATION,
    FollowUp,
    PauseInfo,
    PauseOwner,
    TargetState,
    carries,
    int_or_none,
    last_manager,
    patch_metadata,
    read_claims,
    scale_target,
    selector_text,
)
from agent.targets.cache import (
    CachedReads,
    ObjectCache,
    Projection,
    agent_annotations,
    custom_lister,
    managed_fields,
    prune,
)

GROUP, VERSION, PLURAL = "autoscaling", "v2", "horizontalpodautoscalers"
SPEC_FIELDS = {MIN_REPLICAS: "minReplicas", MAX_REPLICAS: "maxReplicas"}
FIELDS_FOR = {
    Want.FLOOR: (MIN_REPLICAS,),
    Want.CAP: (MAX_REPLICAS,),
    Want.RAISE: (MAX_REPLICAS,),
    Want.PAUSE: (MIN_REPLICAS, MAX_REPLICAS),
}


# --- the cache's projections (also used by agent/targets/workload.py and agent/targets/node.py) ---------------


HPA_FIELDS: dict[str, Any] = {
    "metadata": {
        "name": True,
        "namespace": True,
        "resourceVersion": True,
        "labels": True,  # selectors
        "annotations": agent_annotations,
        "ownerReferences": lambda owners: [{"kind": o.get("kind"), "name": o.get("name")} for o in owners or []],
        "managedFields": managed_fields({"f:spec": {"f:minReplicas": True, "f:maxReplicas": True}}),
    },
    "spec": {"minReplicas": True, "maxReplicas": True, "scaleTargetRef": True},
    "status": {"currentReplicas": True},
}


def keda_owner(obj: Mapping[str, Any]) -> str | None:
    """The ScaledObject behind an HPA KEDA made, if it is one."""
    meta = obj.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "ScaledObject":
            return f"ScaledObject/{meta.get('namespace', '')}/{owner.get('name')} (KEDA owns this HPA)"
    return None


class HorizontalPodAutoscalerTarget(CachedReads):
    kind: ClassVar[str] = "HorizontalPodAutoscaler"
    namespaced: ClassVar[bool] = True
    name_labels: ClassVar[tuple[str, ...]] = ("horizontalpodautoscaler", "hpa")

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespaces: builtins.list[str | None] | None = None,
        resync: timedelta = timedelta(minutes=10),
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        # Without namespaces (a test building the kind alone, or kubernetes.watch: false) reads go to the API.
        self._objects: ObjectCache | None = None
        if namespaces is not None:
            self._objects = ObjectCache(
                name=PLURAL,
                listers={ns: custom_lister(self._custom, GROUP, VERSION, PLURAL, ns) for ns in namespaces},
                project=functools.partial(prune, keep=HPA_FIELDS),
                resync=resync,
            )
            self._caches = (self._objects,)

    def fields_for(self, want: Want) -> tuple[str, ...] | str:
        return FIELDS_FOR.get(want) or "an HPA has nothing to cordon or taint"

    async def ping(self, namespace: str | None) -> None:
        await self._list(namespace, limit=1)

    async def get(self, namespace: str, name: str) -> TargetState:
        cache = self._cached()
        cached = None if cache is None else cache.get(namespace, name)
        if cached is not None:
            return self._state(cached)
        # Not listed yet, new, or invalidated after a 409: from the API, and kept.
        obj = await call(self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        if self._objects is not None:
            self._objects.put(obj)
        return self._state(obj)

    async def list(self, namespace: str | None) -> builtins.list[TargetState]:
        return [self._state(obj) for obj in await self._read(namespace)]

    async def find_by_workload(self, namespace: str, kind: str, name: str) -> builtins.list[TargetRef]:
        refs = []
        for obj in await self._read(namespace):
            target = (obj.get("spec") or {}).get("scaleTargetRef") or {}
            if target.get("name") == name and target.get("kind") == kind:
                refs.append(self._ref(obj))
        return sorted(refs)

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]:
        cache = self._cached()
        if cache is not None:
            items: builtins.list[dict[str, Any]] = cache.items(namespace)
        else:
            label_selector = selector_text(selector)
            items = await self._list(namespace, label_selector=label_selector)
        return sorted(self._ref(obj) for obj in items if carries(obj, selector))

    async def patch(
        self, state: TargetState, *, values: Mapping[str, Value], claims: Claims, decision: str, now: datetime
    ) -> TargetState:
        metadata = patch_metadata(state, claims)
        body: dict[str, Any] = {"metadata": metadata}
        spec = {SPEC_FIELDS[name]: value for name, value in values.items()}
        if spec:
            body["spec"] = spec
        obj = await call(
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                state.ref.namespace,
                PLURAL,
                state.ref.name,
                body,
                _content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
            )
        )
        if self._objects is not None:
            obj = self._objects.put(obj)
        return self._state(obj)

    async def follow_up(self, state: TargetState, *, now: datetime, dry_run: bool) -> FollowUp | None:
        return None

    async def _read(self, namespace: str | None) -> builtins.list[Projection]:
        """The HPAs of a namespace (None: all): from the cache once it has listed, else from the API."""
        cache = self._cached()
        return cache.items(namespace) if cache is not None else await self._list(namespace)

    async def _list(self, namespace: str | None, **params: Any) -> builtins.list[dict[str, Any]]:
        if namespace is None:
            result = await call(self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **params))
        else:
            result = await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **params))
        items: builtins.list[dict[str, Any]] = result.get("items", [])
        return items

    def _ref(self, obj: Mapping[str, Any]) -> TargetRef:
        meta = obj["metadata"]
        return TargetRef(kind=self.kind, namespace=meta.get("namespace", ""), name=meta["name"])

    def _state(self, obj: Mapping[str, Any]) -> TargetState:
        meta = obj.get("metadata") or {}
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        spec = obj.get("spec") or {}
        claims, legacy, notes = read_claims(annotations)
        minimum = int_or_none(spec.get("minReplicas"))
        values: dict[str, Value] = {
            MIN_REPLICAS: 1 if minimum is None else minimum,
            MAX_REPLICAS: int_or_none(spec.get("maxReplicas")),
        }
        pauses = [c for c in claims.claims if c.want == Want.PAUSE]
        pause = None
        if pauses and values[MIN_REPLICAS] == values[MAX_REPLICAS]:
            pause = PauseInfo(PauseOwner.AGENT, int_or_none(values[MIN_REPLICAS]), min(c.since for c in pauses))
        managed = meta.get("managedFields") or []
        changed_by = {name: last_manager(managed, ("spec", path)) for name, path in SPEC_FIELDS.items()}
        return TargetState(
            ref=self._ref(obj),
            resource_version=meta.get("resourceVersion"),
            values=values,
            replicas=int_or_none((obj.get("status") or {}).get("currentReplicas")),
            claims=claims,
            legacy=legacy,
            pause=pause,
            labels=meta.get("labels") or {},
            opted_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "true",
            notes=notes,
            changed_by={name: m for name, m in changed_by.items() if m is not None and m != FIELD_MANAGER},
            scaled_by=keda_owner(obj),
            workload=scale_target(spec),
        )
