"""
KEDA ScaledObjects, read and patched through kubernetes-asyncio's CustomObjectsApi.

Field map:
- ``paused-replicas`` → annotation ``autoscaling.keda.sh/paused-replicas`` (KEDA scales to N and pauses;
  removing it resumes). A plain ``autoscaling.keda.sh/paused: "true"`` is reported as a pause too, but the
  agent never writes it: it freezes at whatever count happens to be running, which is not reversible.
- ``min-replicas`` → ``spec.minReplicaCount``; ``max-replicas`` → ``spec.maxReplicaCount``.

Who owns a pause is read from the object alone: the agent's ownership annotation means the agent set it;
any ``downscaler/…`` annotation means kube-downscaler (caas-team fork) manages it; anything else is a human.
Only the first kind is ever removed by the agent.

Patches are JSON merge patches carrying ``metadata.resourceVersion``, so a real API server answers 409 when
the object changed since it was read; the executor then reads again and re-plans. Every API call goes through
:func:`agent.errors.call`, so what fails comes out typed (not found, conflict, forbidden, throttled, unavailable).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client

from agent.errors import NotFound, call
from agent.structs import Ownership, TargetRef, _from_iso
from agent.targets.base import (
    FIELD_MANAGER,
    MAX_REPLICAS,
    MIN_REPLICAS,
    OPT_OUT_ANNOTATION,
    OWNERSHIP_ANNOTATIONS,
    PAUSED_REPLICAS,
    RESUMED_ANNOTATION,
    UNSET,
    PauseInfo,
    PauseOwner,
    ResumeMark,
    TargetState,
    Unset,
    last_manager,
)

GROUP, VERSION, PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
KEDA_PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
KEDA_PAUSED = "autoscaling.keda.sh/paused"
DOWNSCALER_PREFIX = "downscaler/"
SPEC_FIELDS = {MIN_REPLICAS: "minReplicaCount", MAX_REPLICAS: "maxReplicaCount"}
FIELD_PATHS = {  # where each abstract field lives, as managedFields name it
    PAUSED_REPLICAS: ("metadata", "annotations", KEDA_PAUSED_REPLICAS),
    MIN_REPLICAS: ("spec", "minReplicaCount"),
    MAX_REPLICAS: ("spec", "maxReplicaCount"),
}


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class ScaledObjectTarget:
    kind = "ScaledObject"

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)

    async def ping(self, namespace: str | None) -> None:
        if namespace is None:
            await call(self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1))
        else:
            await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, limit=1))

    async def get(self, namespace: str, name: str) -> TargetState:
        obj = await call(self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        return await self._state(obj, with_replicas=True)

    async def list(self, namespace: str | None) -> builtins.list[TargetState]:
        if namespace is None:
            result = await call(self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        else:
            result = await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
        return [await self._state(obj, with_replicas=False) for obj in result.get("items", [])]

    async def find_by_workload(self, namespace: str, workload: str) -> builtins.list[TargetRef]:
        result = await call(self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
        refs = []
        for obj in result.get("items", []):
            target = obj.get("spec", {}).get("scaleTargetRef", {})
            # scaleTargetRef.kind defaults to Deployment.
            if target.get("name") == workload and target.get("kind", "Deployment") == "Deployment":
                refs.append(self._ref(obj))
        return refs

    async def find_by_labels(self, namespace: str | None, selector: Mapping[str, str]) -> builtins.list[TargetRef]:
        # The selector is also filtered here: a list's labelSelector is a hint some servers ignore.
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
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
        return sorted(
            self._ref(obj)
            for obj in result.get("items", [])
            if all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        )

    async def patch(
        self,
        state: TargetState,
        *,
        values: Mapping[str, int | None],
        owned: Mapping[str, Ownership | None],
        resumed: ResumeMark | Unset | None = UNSET,
    ) -> TargetState:
        annotations: dict[str, str | None] = {}
        spec: dict[str, int | None] = {}
        for name, value in values.items():
            if name == PAUSED_REPLICAS:
                annotations[KEDA_PAUSED_REPLICAS] = None if value is None else str(value)
            else:
                spec[SPEC_FIELDS[name]] = value
        for name, ownership in owned.items():
            annotations[OWNERSHIP_ANNOTATIONS[name]] = None if ownership is None else ownership.to_json()
        if not isinstance(resumed, Unset):
            annotations[RESUMED_ANNOTATION] = None if resumed is None else resumed.to_json()
        metadata: dict[str, Any] = {"annotations": annotations}
        if state.resource_version:
            metadata["resourceVersion"] = state.resource_version
        body: dict[str, Any] = {"metadata": metadata}
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
        new_state = await self._state(obj, with_replicas=False)
        # The workload's pod count did not change by this patch (KEDA acts on it later): carry it over.
        return TargetState(**{**new_state.__dict__, "replicas": state.replicas})

    def _ref(self, obj: Mapping[str, Any]) -> TargetRef:
        meta = obj["metadata"]
        return TargetRef(kind=self.kind, namespace=meta.get("namespace", ""), name=meta["name"])

    async def _replicas(self, namespace: str, obj: Mapping[str, Any]) -> int | None:
        target = obj.get("spec", {}).get("scaleTargetRef", {})
        if not target.get("name") or target.get("kind", "Deployment") != "Deployment":
            return None
        try:
            # Read as plain JSON: building the typed V1Deployment model costs more than the call itself.
            deployment = await call(
                self._custom.get_namespaced_custom_object("apps", "v1", namespace, "deployments", target["name"])
            )
        except NotFound:
            return None
        status_replicas = (deployment.get("status") or {}).get("replicas")
        if status_replicas is not None:
            return _int_or_none(status_replicas)
        return _int_or_none((deployment.get("spec") or {}).get("replicas"))

    async def _state(self, obj: Mapping[str, Any], *, with_replicas: bool) -> TargetState:
        meta = obj.get("metadata", {})
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        spec = obj.get("spec", {})
        ref = self._ref(obj)
        notes: list[str] = []

        owned: dict[str, Ownership] = {}
        for name, key in OWNERSHIP_ANNOTATIONS.items():
            if key in annotations:
                try:
                    owned[name] = Ownership.from_json(annotations[key])
                except (ValueError, KeyError, TypeError):
                    notes.append(f"unreadable annotation {key}; ignored")

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

        paused_replicas = _int_or_none(annotations.get(KEDA_PAUSED_REPLICAS))
        pause = None
        frozen = str(annotations.get(KEDA_PAUSED, "")).lower() == "true"
        if KEDA_PAUSED_REPLICAS in annotations or frozen:
            if PAUSED_REPLICAS in owned:
                pause = PauseInfo(PauseOwner.AGENT, paused_replicas, owned[PAUSED_REPLICAS].applied_at)
            elif any(key.startswith(DOWNSCALER_PREFIX) for key in annotations):
                pause = PauseInfo(PauseOwner.DOWNSCALER, paused_replicas, paused_since)
            else:
                pause = PauseInfo(PauseOwner.HUMAN, paused_replicas, paused_since)

        values = {
            PAUSED_REPLICAS: paused_replicas,
            MIN_REPLICAS: _int_or_none(spec.get("minReplicaCount")),
            MAX_REPLICAS: _int_or_none(spec.get("maxReplicaCount")),
        }
        replicas = await self._replicas(ref.namespace, obj) if with_replicas else None
        managed = meta.get("managedFields") or []
        changed_by = {name: last_manager(managed, path) for name, path in FIELD_PATHS.items()}
        return TargetState(
            ref=ref,
            resource_version=meta.get("resourceVersion"),
            values=values,
            replicas=replicas,
            owned=owned,
            pause=pause,
            paused_condition=paused_condition,
            resumed=resumed,
            labels=meta.get("labels") or {},
            opted_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "true",
            notes=tuple(notes),
            changed_by={name: m for name, m in changed_by.items() if m is not None and m != FIELD_MANAGER},
        )
