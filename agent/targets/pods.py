"""
The pods behind a target: what a window's follow-up watches become Ready, and then warms.

A target is whatever the agent changed (a ScaledObject, an HPA, a Deployment or StatefulSet); the pods belong
to the workload it scales, found through its ``scaleTargetRef`` and the workload's ``spec.selector``. Read as
plain JSON on demand (a follow-up asks a few times a minute, for one workload), not cached: the agent does not
watch every pod in the cluster for a warm-up that happens twice a day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes_asyncio import client

from agent.errors import call_json
from agent.structs import TargetRef

WORKLOAD_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}


@dataclass(frozen=True)
class PodInfo:
    name: str
    ip: str | None
    ready: bool
    created: datetime | None
    terminating: bool


async def workload_of(api: client.ApiClient, ref: TargetRef) -> tuple[str, str]:
    """The kind and name of the workload ``ref`` scales (itself, for a Deployment or StatefulSet)."""
    custom = client.CustomObjectsApi(api)
    if ref.kind == "ScaledObject":
        obj = await call_json(
            custom.get_namespaced_custom_object(
                "keda.sh", "v1alpha1", ref.namespace, "scaledobjects", ref.name, _preload_content=False
            )
        )
    elif ref.kind == "HorizontalPodAutoscaler":
        obj = await call_json(
            custom.get_namespaced_custom_object(
                "autoscaling", "v2", ref.namespace, "horizontalpodautoscalers", ref.name, _preload_content=False
            )
        )
    else:
        return ref.kind, ref.name
    target = obj.get("spec", {}).get("scaleTargetRef") or {}
    return str(target.get("kind") or "Deployment"), str(target.get("name", ""))


async def pods_of(api: client.ApiClient, ref: TargetRef) -> tuple[str, list[PodInfo]]:
    """The workload ``ref`` scales (``Kind/name``) and its pods now. Raises KubernetesError (typed)."""
    kind, name = await workload_of(api, ref)
    plural = WORKLOAD_PLURALS.get(kind)
    if plural is None:
        return f"{kind}/{name}", []  # a custom workload (an Argo Rollout, say): its pods are not found here
    workload = await call_json(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            "apps", "v1", ref.namespace, plural, name, _preload_content=False
        )
    )
    labels = (workload.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    if not selector:
        return f"{kind}/{name}", []
    found = await call_json(
        client.CoreV1Api(api).list_namespaced_pod(ref.namespace, label_selector=selector, _preload_content=False)
    )
    return f"{kind}/{name}", [_pod(item) for item in found.get("items", [])]


def _pod(item: dict[str, Any]) -> PodInfo:
    meta, status = item.get("metadata", {}), item.get("status", {})
    conditions = status.get("conditions") or []
    created = meta.get("creationTimestamp")
    return PodInfo(
        name=str(meta.get("name", "")),
        ip=status.get("podIP") or None,
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        created=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
        terminating=meta.get("deletionTimestamp") is not None,
    )
