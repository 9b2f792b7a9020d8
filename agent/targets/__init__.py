"""
Target kinds: one module per kind of Kubernetes object the agent changes.

A new kind is one module implementing :class:`~agent.targets.base.TargetKind` plus one entry in :data:`KINDS`.
A rule may also name :data:`AUTO`: the target is then found from the workload an alert names, through
whichever kind scales it (:meth:`agent.rules.Rules.scaler_of`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kubernetes_asyncio import client

from agent.targets.base import TargetKind, TargetState
from agent.targets.hpa import HorizontalPodAutoscalerTarget
from agent.targets.node import NodeTarget
from agent.targets.scaledobject import ScaledObjectTarget
from agent.targets.workload import DeploymentTarget, StatefulSetTarget

if TYPE_CHECKING:  # agent.config validates kinds against this registry: no import back at run time
    from agent.config import KubernetesConfig


def _watched(k8s: KubernetesConfig) -> list[str | None] | None:
    """The namespaces a kind's caches list and watch (None: one cluster-wide), or None: no cache, read the API."""
    return None if not k8s.watch else [None] if "*" in k8s.namespaces else list(k8s.namespaces)


KINDS: dict[str, Callable[[client.ApiClient, KubernetesConfig], TargetKind]] = {
    ScaledObjectTarget.kind: lambda api, k8s: ScaledObjectTarget(
        api, resume_check_after=k8s.resume_check_after, namespaces=_watched(k8s), resync=k8s.resync
    ),
    HorizontalPodAutoscalerTarget.kind: lambda api, k8s: HorizontalPodAutoscalerTarget(
        api, namespaces=_watched(k8s), resync=k8s.resync
    ),
    DeploymentTarget.kind: lambda api, k8s: DeploymentTarget(api, namespaces=_watched(k8s), resync=k8s.resync),
    StatefulSetTarget.kind: lambda api, k8s: StatefulSetTarget(api, namespaces=_watched(k8s), resync=k8s.resync),
    # Nodes are cluster-scoped: one cache of them all, whatever the namespaces.
    NodeTarget.kind: lambda api, k8s: NodeTarget(api, watch=k8s.watch, resync=k8s.resync),
}
CLUSTER_SCOPED = frozenset({NodeTarget.kind})  # kinds whose objects have no namespace
AUTO = "auto"
# What `auto` may land on, in the order a workload's scaler is looked for.
AUTO_KINDS = (
    ScaledObjectTarget.kind,
    HorizontalPodAutoscalerTarget.kind,
    DeploymentTarget.kind,
    StatefulSetTarget.kind,
)


def kinds_in_use(named: Iterable[str]) -> list[str]:
    """The kinds the rules can reach (``auto`` reaches every kind that scales a workload); ScaledObject if none."""
    kinds: list[str] = []
    for kind in named:
        for one in AUTO_KINDS if kind == AUTO else (kind,):
            if one not in kinds:
                kinds.append(one)
    return kinds or [ScaledObjectTarget.kind]


def build_targets(api: client.ApiClient, kubernetes: KubernetesConfig, kinds: Iterable[str]) -> dict[str, TargetKind]:
    """Only the kinds in use: the agent reads (and needs RBAC for) nothing its rules cannot change."""
    return {kind: KINDS[kind](api, kubernetes) for kind in kinds}


__all__ = [
    "AUTO",
    "AUTO_KINDS",
    "CLUSTER_SCOPED",
    "KINDS",
    "TargetKind",
    "TargetState",
    "build_targets",
    "kinds_in_use",
]
