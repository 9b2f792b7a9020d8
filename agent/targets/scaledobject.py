"""
KEDA ScaledObjects, read and patched through kubernetes-asyncio's CustomObjectsApi.

Field map:
- ``paused-replicas`` → annotation ``autoscaling.keda.sh/paused-replicas`` (KEDA scales to N and pauses;
  removing it resumes). A plain ``autoscaling.keda.sh/paused: "true"`` is reported as a pause too, but the
  agent never writes it: it freezes at whatever count happens to be running, which is not reversible.
- ``min-replicas`` → ``spec.minReplicaCount``; ``max-replicas`` → ``spec.maxReplicaCount``.

Who owns a pause is read from the object alone: a claim on ``paused-replicas`` means the agent set it;
any ``downscaler/…`` annotation means kube-downscaler (caas-team fork) manages it; anything else is a human.
Only the first kind is ever removed by the agent.

Patches are JSON merge patches carrying ``metadata.resourceVersion``, so a real API server answers 409 when
the object changed since it was read; the executor then reads again and re-plans. Every API call goes through
:func:`agent.errors.call`, so what fails comes out typed (not found, conflict, forbidden, throttled, unavailable).

Reads come from two watch-backed caches (:mod:`agent.targets.cache`), the ScaledObjects and the Deployments
they scale, each a slim projection of the fields read here; until a cache has listed once (and for an object it
does not have yet) a read goes to the API. A patch's answer goes into the cache at once, and a 409 makes the
next read go to the API (:meth:`ScaledObjectTarget.invalidate`).

KEDA's own quirk lives here too: objects can stay ``Paused=True`` after the pause annotation is gone. When a
write removes the agent's pause it leaves a resume mark; :meth:`ScaledObjectTarget.follow_up` (the reconciler
calls it) checks KEDA's ``Paused`` condition once ``kubernetes.resume_check_after`` has passed, reports a stuck
one, and takes the mark away.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from kubernetes_asyncio import client

from agent.claims import Claims, Value, Want
from agent.errors import NotFound, call
from agent.structs import TargetRef, _from_iso, _iso
from agent.targets.base import (
    ANNOTATION_PREFIX,
    FIELD_MANAGER,
    MAX_REPLICAS,
    MIN_REPLICAS,
    OPT_OUT_ANNOTATION,
    PAUSED_REPLICAS,
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
from agent.targets.cache import CachedReads, ObjectCache, Projection, custom_lister

GROUP, VERSION, PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
KEDA_PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
KEDA_PAUSED = "autoscaling.keda.sh/paused"
DOWNSCALER_PREFIX = "downscaler/"
RESUMED_ANNOTATION = f"{ANNOTATION_PREFIX}resumed"
SPEC_FIELDS = {MIN_REPLICAS: "minReplicaCount", MAX_REPLICAS: "maxReplicaCount"}
FIELD_PATHS = {  # where each abstract field lives, as managedFields name it
    PAUSED_REPLICAS: ("metadata", "annotations", KEDA_PAUSED_REPLICAS),
    MIN_REPLICAS: ("spec", "minReplicaCount"),
    MAX_REPLICAS: ("spec", "maxReplicaCount"),
}
FIELDS_FOR = {Want.FLOOR: (MIN_REPLICAS,), Want.CAP: (MAX_REPLICAS,), Want.RAISE: (MAX_REPLICAS,)}


OUR_ANNOTATIONS = (ANNOTATION_PREFIX, "autoscaling.keda.sh/", DOWNSCALER_PREFIX)


class CachedScaledObject:
    """
    What the cache keeps of a ScaledObject: the fields this module reads, in one slotted record (interned keys
    and managers), not the object's own nest of dicts, which CPython makes cost ~200-600 bytes each however
    little they hold (bench/watch.py). :meth:`expand` gives them back in the object's shape for the readers.
    """

    __slots__ = ("annotations", "key", "labels", "managers", "max", "min", "paused", "target", "version")

    def __init__(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        self.key = (sys.intern(str(meta.get("namespace") or "")), str(meta.get("name") or ""))
        self.version = str(meta.get("resourceVersion") or "")
        self.labels = tuple((sys.intern(k), v) for k, v in sorted((meta.get("labels") or {}).items())) or None
        marks = meta.get("annotations") or {}
        self.annotations = tuple((sys.intern(k), v) for k, v in marks.items() if k.startswith(OUR_ANNOTATIONS)) or None
        self.managers = (
            tuple(
                (name, sys.intern(manager))
                for name, path in FIELD_PATHS.items()
                if (manager := last_manager(meta.get("managedFields") or [], path)) is not None
            )
            or None
        )
        self.min = spec.get("minReplicaCount")
        self.max = spec.get("maxReplicaCount")
        target = spec.get("scaleTargetRef") or {}
        self.target = (target.get("name"), sys.intern(target.get("kind") or "Deployment")) if target else None
        self.paused = next(
            (
                (c.get("status"), c.get("lastTransitionTime"))
                for c in (obj.get("status") or {}).get("conditions") or []
                if c.get("type") == "Paused"
            ),
            None,
        )

    def expand(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"namespace": self.key[0], "name": self.key[1], "resourceVersion": self.version}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        if self.managers:
            entries = []
            for name, manager in self.managers:
                node: dict[str, Any] = {}
                for part in reversed(FIELD_PATHS[name]):
                    node = {f"f:{part}": node}
                entries.append({"manager": manager, "fieldsV1": node})
            metadata["managedFields"] = entries
        spec: dict[str, Any] = {}
        if self.min is not None:
            spec["minReplicaCount"] = self.min
        if self.max is not None:
            spec["maxReplicaCount"] = self.max
        if self.target is not None:
            spec["scaleTargetRef"] = {"name": self.target[0], "kind": self.target[1]}
        result: dict[str, Any] = {"metadata": metadata, "spec": spec}
        if self.paused is not None:
            status, since = self.paused
            result["status"] = {"conditions": [{"type": "Paused", "status": status, "lastTransitionTime": since}]}
        return result


class CachedDeployment:
    """What the cache keeps of a Deployment a ScaledObject scales: who it is, and its replica count."""

    __slots__ = ("key", "replicas", "version")

    def __init__(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.key = (sys.intern(str(meta.get("namespace") or "")), str(meta.get("name") or ""))
        self.version = str(meta.get("resourceVersion") or "")
        replicas = (obj.get("status") or {}).get("replicas")
        self.replicas = (obj.get("spec") or {}).get("replicas") if replicas is None else replicas

    def expand(self) -> dict[str, Any]:
        meta = {"namespace": self.key[0], "name": self.key[1], "resourceVersion": self.version}
        return {"metadata": meta, "replicas": self.replicas}


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
class KedaStatus:
    """What only this kind reads: KEDA's ``Paused`` condition and the agent's resume mark."""

    paused_condition: bool | None  # None: KEDA reports no Paused condition
    resumed: ResumeMark | None


class ScaledObjectTarget(CachedReads):
    kind: ClassVar[str] = "ScaledObject"
    namespaced: ClassVar[bool] = True
    name_labels: ClassVar[tuple[str, ...]] = ("scaledObject", "scaledobject", "scaled_object")

    def __init__(
        self,
        api: client.ApiClient,
        *,
        resume_check_after: timedelta,
        namespaces: builtins.list[str | None] | None = None,
        resync: timedelta = timedelta(minutes=10),
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._resume_check_after = resume_check_after
        # Without namespaces (a test building the kind alone) every read goes to the API.
        self._objects: ObjectCache | None = None
        self._deployments: ObjectCache | None = None
        if namespaces is not None:
            self._objects = ObjectCache(
                name=PLURAL,
                listers={ns: custom_lister(self._custom, GROUP, VERSION, PLURAL, ns) for ns in namespaces},
                project=CachedScaledObject,
                expand=CachedScaledObject.expand,
                resync=resync,
            )
            self._deployments = ObjectCache(
                name="deployments",
                listers={ns: custom_lister(self._custom, "apps", "v1", "deployments", ns) for ns in namespaces},
                project=CachedDeployment,
                expand=CachedDeployment.expand,
                resync=resync,
            )
            self._caches = (self._objects, self._deployments)

    def _items(self, namespace: str | None) -> builtins.list[Projection] | None:
        cache = self._cached()
        return None if cache is None else cache.items(namespace)

    def fields_for(self, want: Want) -> tuple[str, ...] | str:
        if want == Want.PAUSE:
            return (PAUSED_REPLICAS,)
        return FIELDS_FOR.get(want) or "a ScaledObject has nothing to cordon or taint"

    async def ping(self, namespace: str | None) -> None:
        if namespace is None:
            await call(self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1))
        else:
            await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, limit=1))

    async def get(self, namespace: str, name: str) -> TargetState:
        cache = self._cached()
        cached = None if cache is None else cache.get(namespace, name)
        if cached is not None:
            return await self._state(cached, with_replicas=True)
        # Not listed yet, new, or invalidated after a 409: from the API, and kept.
        obj = await call(self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        if self._objects is not None:
            self._objects.put(obj)
        return await self._state(obj, with_replicas=True)

    async def list(self, namespace: str | None) -> builtins.list[TargetState]:
        items = self._items(namespace)
        if items is None:
            if namespace is None:
                result = await call(self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
            else:
                result = await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
            items = result.get("items", [])
        return [await self._state(obj, with_replicas=False) for obj in items]

    async def find_by_workload(self, namespace: str, kind: str, name: str) -> builtins.list[TargetRef]:
        items = self._items(namespace)
        if items is None:
            items = (await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))).get(
                "items", []
            )
        refs = []
        for obj in items:
            target = obj.get("spec", {}).get("scaleTargetRef", {})
            # scaleTargetRef.kind defaults to Deployment.
            if target.get("name") == name and target.get("kind", "Deployment") == kind:
                refs.append(self._ref(obj))
        return refs

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]:
        items = self._items(namespace)
        if items is not None:
            return sorted(self._ref(obj) for obj in items if carries(obj, selector))
        label_selector = selector_text(selector)
        if namespace is None:
            result = await call(
                self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=label_selector)
            )
        else:
            result = await call(
                self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, label_selector=label_selector
                )
            )
        return sorted(self._ref(obj) for obj in result.get("items", []) if carries(obj, selector))

    async def patch(
        self, state: TargetState, *, values: Mapping[str, Value], claims: Claims, decision: str, now: datetime
    ) -> TargetState:
        metadata = patch_metadata(state, claims)
        annotations: dict[str, str | None] = metadata["annotations"]
        spec: dict[str, Value] = {}
        for name, value in values.items():
            if name == PAUSED_REPLICAS:
                annotations[KEDA_PAUSED_REPLICAS] = None if value is None else str(value)
                if value is None and state.values.get(PAUSED_REPLICAS) is not None:
                    # The agent's pause ends here: check later that KEDA really resumed (follow_up).
                    mark = ResumeMark(decision=decision, at=now, check_by=now + self._resume_check_after)
                    annotations[RESUMED_ANNOTATION] = mark.to_json()
            else:
                spec[SPEC_FIELDS[name]] = value
        body: dict[str, Any] = {"metadata": metadata}
        if spec:
            body["spec"] = spec
        obj = await self._merge_patch(state.ref, body)
        new_state = await self._state(obj, with_replicas=False)
        # The workload's pod count did not change by this patch (KEDA acts on it later): carry it over.
        return TargetState(**{**new_state.__dict__, "replicas": state.replicas})

    async def follow_up(self, state: TargetState, *, now: datetime, dry_run: bool) -> FollowUp | None:
        """After a resume: KEDA users report objects that stay ``Paused=True`` once the annotation is gone."""
        status = state.private
        if not isinstance(status, KedaStatus) or status.resumed is None:
            return None
        mark = status.resumed
        if status.paused_condition is True and now < mark.check_by:
            return None  # KEDA may not have caught up yet
        found = None
        if status.paused_condition is True:
            waited = int((now - mark.at).total_seconds())
            found = FollowUp(
                action="resume-check",
                reason=(
                    f"still Paused=True {waited}s after the agent resumed it (decision {mark.decision}); "
                    "KEDA did not pick the resume up — check the KEDA operator, or toggle "
                    'autoscaling.keda.sh/paused to "false"'
                ),
            )
        if not dry_run:
            body: dict[str, Any] = {"metadata": {"annotations": {RESUMED_ANNOTATION: None}}}
            await self._merge_patch(state.ref, body)
        return found

    async def _merge_patch(self, ref: TargetRef, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """One JSON merge patch under the agent's field manager; its answer goes into the cache at once."""
        obj = await call(
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                body,
                _content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
            )
        )
        return obj if self._objects is None else self._objects.put(obj)

    def _ref(self, obj: Mapping[str, Any]) -> TargetRef:
        meta = obj["metadata"]
        return TargetRef(kind=self.kind, namespace=meta.get("namespace", ""), name=meta["name"])

    async def _replicas(self, namespace: str, obj: Mapping[str, Any]) -> int | None:
        target = obj.get("spec", {}).get("scaleTargetRef", {})
        if not target.get("name") or target.get("kind", "Deployment") != "Deployment":
            return None
        listed = self._deployments if self._deployments is not None and self._deployments.ready else None
        deployment: Mapping[str, Any] | None = None if listed is None else listed.get(namespace, target["name"])
        if deployment is None:
            try:
                # Read as plain JSON: building the typed V1Deployment model costs more than the call itself.
                deployment = await call(
                    self._custom.get_namespaced_custom_object("apps", "v1", namespace, "deployments", target["name"])
                )
            except NotFound:
                return None
        assert deployment is not None
        if "replicas" in deployment:  # the cache's flat copy
            return int_or_none(deployment["replicas"])
        status_replicas = (deployment.get("status") or {}).get("replicas")
        if status_replicas is not None:
            return int_or_none(status_replicas)
        return int_or_none((deployment.get("spec") or {}).get("replicas"))

    async def _state(self, obj: Mapping[str, Any], *, with_replicas: bool) -> TargetState:
        meta = obj.get("metadata", {})
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        spec = obj.get("spec", {})
        ref = self._ref(obj)
        claims, legacy, notes = read_claims(annotations)

        resumed = None
        if RESUMED_ANNOTATION in annotations:
            with contextlib.suppress(ValueError, KeyError, TypeError, AssertionError):
                resumed = ResumeMark.from_json(annotations[RESUMED_ANNOTATION])

        conditions = (obj.get("status") or {}).get("conditions") or []
        paused_condition: bool | None = None
        paused_since = None
        for condition in conditions:
            if condition.get("type") == "Paused":
                paused_condition = str(condition.get("status")).lower() == "true"
                paused_since = _from_iso(condition.get("lastTransitionTime"))

        paused_replicas = int_or_none(annotations.get(KEDA_PAUSED_REPLICAS))
        pause = None
        frozen = str(annotations.get(KEDA_PAUSED, "")).lower() == "true"
        if KEDA_PAUSED_REPLICAS in annotations or frozen:
            mine = claims.on(PAUSED_REPLICAS)
            if mine:
                pause = PauseInfo(PauseOwner.AGENT, paused_replicas, min(c.since for c in mine))
            elif any(key.startswith(DOWNSCALER_PREFIX) for key in annotations):
                pause = PauseInfo(PauseOwner.DOWNSCALER, paused_replicas, paused_since)
            else:
                pause = PauseInfo(PauseOwner.HUMAN, paused_replicas, paused_since)

        values: dict[str, Value] = {
            PAUSED_REPLICAS: paused_replicas,
            MIN_REPLICAS: int_or_none(spec.get("minReplicaCount")),
            MAX_REPLICAS: int_or_none(spec.get("maxReplicaCount")),
        }
        replicas = await self._replicas(ref.namespace, obj) if with_replicas else None
        managed = meta.get("managedFields") or []
        changed_by = {name: last_manager(managed, path) for name, path in FIELD_PATHS.items()}
        return TargetState(
            ref=ref,
            resource_version=meta.get("resourceVersion"),
            values=values,
            replicas=replicas,
            claims=claims,
            legacy=legacy,
            pause=pause,
            labels=meta.get("labels") or {},
            opted_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "true",
            notes=notes,
            changed_by={name: m for name, m in changed_by.items() if m is not None and m != FIELD_MANAGER},
            private=KedaStatus(paused_condition=paused_condition, resumed=resumed),
            workload=scale_target(spec),
        )
