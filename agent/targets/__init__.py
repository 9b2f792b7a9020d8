"""
Target kinds: one module per kind of Kubernetes object the agent changes.

A new kind (HPA, Knative Service, Deployment) is one module implementing
:class:`~agent.targets.base.TargetKind` plus one entry in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes_asyncio import client

from agent.targets.base import TargetKind, TargetState
from agent.targets.scaledobject import ScaledObjectTarget

KINDS: dict[str, Callable[[client.ApiClient], TargetKind]] = {
    ScaledObjectTarget.kind: ScaledObjectTarget,
}


def build_targets(api: client.ApiClient) -> dict[str, TargetKind]:
    return {kind: factory(api) for kind, factory in KINDS.items()}


__all__ = ["KINDS", "TargetKind", "TargetState", "build_targets"]
