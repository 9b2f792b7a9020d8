"""
Deployments and StatefulSets that nothing autoscales: their replica count, through the ``scale`` subresource.

Field map: ``replicas`` → the scale subresource's ``spec.replicas``. A floor lifts the count, a cap lowers it
(the claims rules); there is no ceiling to raise and nothing to pause (nothing scales the workload, so its count
already stays put), and the guard refuses both with that reason.

A workload that an HPA scales (a plain one, or the one KEDA makes for a ScaledObject) is that autoscaler's: the
HPA controller would undo a change of its replicas within seconds. Its state names the autoscaler
(``scaled_by``) and the guard refuses, naming what to change instead.

Writes go in two steps, the claims first: a merge patch of the object's annotations (carrying the
resourceVersion), then the replica count through ``scale`` (carrying the resourceVersion that patch returned, so
nothing slips in between). The count is written only through ``scale``: the agent never needs to patch a
workload's spec, so it never can change a pod template. A crash between the steps leaves a claim whose value
never landed; its decision is settled ``failed`` (the count does not match), and the next step on the object
finds the count differs from what the agent meant to write and lets the claim go.

Reads come from two watch-backed caches (:mod:`agent.targets.cache`): the workloads of this kind, and the HPAs
(to see which of them scale a workload), each a slim projection of the fields read here. Until a cache has listed
once (and for a workload it does not have yet) a read goes to the API. The annotation patch's answer goes into
the cache at once; after the ``scale`` write the workload is read again (a GET, put into the cache), so what
:meth:`patch` returns, and the next decision reads, has the new count. A 409 makes the next read go to the API.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from kubernetes_asyncio import client

from agent.claims import Claims, Value, Want
from agent.errors import NotFound, call
from agent.structs import TargetRef
from agent.targets.base import (
    FIELD_MANAGER,
    OPT_OUT_ANNOTATION,
    REPLICAS,
    FollowUp,
    TargetState,
    carries,
    int_or_none,
    last_manager,
    patch_metadata,
    read_claims,
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
from agent.targets.hpa import GROUP as HPA_GROUP
from agent.targets.hpa import PLURAL as HPA_PLURAL
from agent.targets.hpa import VERSION as HPA_VERSION
from agent.targets.hpa import keda_owner

GROUP, VERSION = "apps", "v1"
NOT_AUTOSCALED = "nothing autoscales it"

WORKLOAD_FIELDS: dict[str, Any] = {
    "metadata": {
        "name": True,
        "namespace": True,
        "resourceVersion": True,
        "labels": True,  # selectors
        "annotations": agent_annotations,
        "managedFields": managed_fields({"f:spec": {"f:replicas": True}}),
    },
    "spec": {"replicas": True},
    "status": {"replicas": True},
}
AUTOSCALER_FIELDS: dict[str, Any] = {  # an HPA, as far as "who scales this workload?" reads it
    "metadata": {
        "name": True,
        "namespace": True,
        "resourceVersion": True,
        "ownerReferences": lambda owners: [{"kind": o.get("kind"), "name": o.get("name")} for o in owners or []],
    },
    "spec": {"scaleTargetRef": True},
}


class _WorkloadTarget(CachedReads):
    kind: ClassVar[str]
    plural: ClassVar[str]
    namespaced: ClassVar[bool] = True
    name_labels: ClassVar[tuple[str, ...]]

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
        self._hpas: ObjectCache | None = None
        if namespaces is not None:
            self._objects = ObjectCache(
                name=f"{self.kind}/{self.plural}",  # the ScaledObject kind has a cache named "deployments"
                listers={ns: custom_lister(self._custom, GROUP, VERSION, self.plural, ns) for ns in namespaces},
                project=functools.partial(prune, keep=WORKLOAD_FIELDS),
                resync=resync,
            )
            self._hpas = ObjectCache(
                name=f"{self.kind}/{HPA_PLURAL}",  # and the HPA kind one named "horizontalpodautoscalers"
                listers={ns: custom_lister(self._custom, HPA_GROUP, HPA_VERSION, HPA_PLURAL, ns) for ns in namespaces},
                project=functools.partial(prune, keep=AUTOSCALER_FIELDS),
                resync=resync,
            )
            self._caches = (self._objects, self._hpas)

    def fields_for(self, want: Want) -> tuple[str, ...] | str:
        if want in (Want.FLOOR, Want.CAP):
            return (REPLICAS,)
        if want == Want.PAUSE:
            return f"{NOT_AUTOSCALED}, so there is nothing to pause: its replica count already stays where it is"
        if want == Want.RAISE:
            return f"{NOT_AUTOSCALED}, so it has no ceiling to raise (a floor or a cap sets its replica count)"
        return f"a {self.kind} has nothing to cordon or taint"

    async def ping(self, namespace: str | None) -> None:
        await self._list(namespace, limit=1)

    async def get(self, namespace: str, name: str) -> TargetState:
        return self._state(await self._read_one(namespace, name), await self._autoscalers(namespace))

    async def list(self, namespace: str | None) -> builtins.list[TargetState]:
        autoscalers = await self._autoscalers(namespace)
        cache = self._cached()
        items = cache.items(namespace) if cache is not None else await self._list(namespace)
        return [self._state(obj, autoscalers) for obj in items]

    async def find_by_workload(self, namespace: str, kind: str, name: str) -> builtins.list[TargetRef]:
        if kind != self.kind:
            return []
        try:
            obj = await self._read_one(namespace, name)
        except NotFound:
            return []
        return [self._ref(obj)]

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
        ns, name = state.ref.namespace, state.ref.name
        metadata = patch_metadata(state, claims)
        obj = await call(
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                self.plural,
                name,
                {"metadata": metadata},
                _content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
            )
        )
        if self._objects is not None:
            self._objects.put(obj)
        if REPLICAS in values:
            scale = {
                "metadata": {"resourceVersion": obj["metadata"].get("resourceVersion")},
                "spec": {"replicas": values[REPLICAS]},
            }
            await call(
                self._custom.patch_namespaced_custom_object_scale(
                    GROUP,
                    VERSION,
                    ns,
                    self.plural,
                    name,
                    scale,
                    _content_type="application/merge-patch+json",
                    field_manager=FIELD_MANAGER,
                )
            )
            # The workload as the scale write left it (its count, version and managedFields), for the answer and
            # the cache; the watch's event may come later.
            obj = await call(self._custom.get_namespaced_custom_object(GROUP, VERSION, ns, self.plural, name))
            if self._objects is not None:
                self._objects.put(obj)
        return self._state(obj, await self._autoscalers(ns))

    async def follow_up(self, state: TargetState, *, now: datetime, dry_run: bool) -> FollowUp | None:
        return None

    async def _read_one(self, namespace: str, name: str) -> Mapping[str, Any]:
        """One workload: from the cache, else (not listed yet, new, or invalidated after a 409) from the API."""
        cache = self._cached()
        cached = None if cache is None else cache.get(namespace, name)
        if cached is not None:
            return cached
        obj: Mapping[str, Any] = await call(
            self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, self.plural, name)
        )
        if self._objects is not None:
            self._objects.put(obj)
        return obj

    async def _list(self, namespace: str | None, **params: Any) -> builtins.list[dict[str, Any]]:
        if namespace is None:
            result = await call(self._custom.list_cluster_custom_object(GROUP, VERSION, self.plural, **params))
        else:
            result = await call(
                self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, self.plural, **params)
            )
        items: builtins.list[dict[str, Any]] = result.get("items", [])
        return items

    async def _autoscalers(self, namespace: str | None) -> dict[tuple[str, str], str]:
        """(namespace, workload name) → the HPA (or KEDA's ScaledObject behind it) that scales it."""
        cache = self._listed(self._hpas)
        hpas: builtins.list[Projection]
        if cache is not None:
            hpas = cache.items(namespace)
        elif namespace is None:
            hpas = (await call(self._custom.list_cluster_custom_object(HPA_GROUP, HPA_VERSION, HPA_PLURAL))).get(
                "items", []
            )
        else:
            hpas = (
                await call(self._custom.list_namespaced_custom_object(HPA_GROUP, HPA_VERSION, namespace, HPA_PLURAL))
            ).get("items", [])
        found = {}
        for hpa in hpas:
            target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if target.get("kind") == self.kind and target.get("name"):
                meta = hpa["metadata"]
                who = keda_owner(hpa) or f"HorizontalPodAutoscaler/{meta.get('namespace', '')}/{meta['name']}"
                found[(meta.get("namespace", ""), target["name"])] = who
        return found

    def _ref(self, obj: Mapping[str, Any]) -> TargetRef:
        meta = obj["metadata"]
        return TargetRef(kind=self.kind, namespace=meta.get("namespace", ""), name=meta["name"])

    def _state(self, obj: Mapping[str, Any], autoscalers: Mapping[tuple[str, str], str]) -> TargetState:
        meta = obj.get("metadata") or {}
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        claims, legacy, notes = read_claims(annotations)
        replicas = int_or_none((obj.get("spec") or {}).get("replicas"))
        ref = self._ref(obj)
        manager = last_manager(meta.get("managedFields") or [], ("spec", "replicas"))
        return TargetState(
            ref=ref,
            resource_version=meta.get("resourceVersion"),
            values={REPLICAS: 1 if replicas is None else replicas},  # the API defaults an absent count to 1
            replicas=int_or_none((obj.get("status") or {}).get("replicas")),
            claims=claims,
            legacy=legacy,
            labels=meta.get("labels") or {},
            opted_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "true",
            notes=notes,
            changed_by={REPLICAS: manager} if manager is not None and manager != FIELD_MANAGER else {},
            scaled_by=autoscalers.get((ref.namespace, ref.name)),
            workload=(self.kind, ref.name),
        )


class DeploymentTarget(_WorkloadTarget):
    kind: ClassVar[str] = "Deployment"
    plural: ClassVar[str] = "deployments"
    name_labels: ClassVar[tuple[str, ...]] = ("deployment",)


class StatefulSetTarget(_WorkloadTarget):
    kind: ClassVar[str] = "StatefulSet"
    plural: ClassVar[str] = "statefulsets"
    name_labels: ClassVar[tuple[str, ...]] = ("statefulset",)
