"""
Where decisions go after the ledger: Slack (or the console), Kubernetes Events.

A new sink is one module with a :class:`~agent.sinks.base.Sink` subclass plus one line in
:func:`build_sinks`. The log line and the metrics are written by the recorder itself.
"""

from __future__ import annotations

from kubernetes_asyncio import client

from agent.config import POSTED_OUTCOMES, KubernetesConfig, SlackConfig
from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.sinks.kube_events import KubeEventSink
from agent.sinks.slack import Console, ConsoleSink, SlackSink


def build_sinks(
    *,
    slack: SlackConfig | None,
    kubernetes: KubernetesConfig,
    api: client.ApiClient,
    metrics: Metrics,
    console: Console | None,
) -> list[Sink]:
    sinks: list[Sink] = []
    if slack is not None:
        sinks.append(SlackSink(slack, metrics=metrics))
    else:
        sinks.append(ConsoleSink(metrics=metrics, outcomes=list(POSTED_OUTCOMES), stream=console))
    if kubernetes.post_events:
        sinks.append(KubeEventSink(api, metrics=metrics))
    return sinks


__all__ = ["Sink", "build_sinks"]
