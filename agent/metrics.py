"""
The agent's own Prometheus metrics, served on ``GET /metrics``.

All metrics live in one registry owned by the running agent (not the global
default), so several agents can run in one process (tests, the demo) and each
reports only its own numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "scaling_agent"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            f"{PREFIX}_events_received_total",
            "Events taken in, by source and alert status.",
            ["source", "status"],
            registry=r,
        )
        self.webhook_rejections = Counter(
            f"{PREFIX}_webhook_rejections_total",
            "Webhook requests answered with an error, by HTTP status.",
            ["code"],
            registry=r,
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions_total",
            "Decisions recorded, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.action_latency = Histogram(
            f"{PREFIX}_action_latency_seconds",
            "From taking an event in to recording its decision, by action.",
            ["action"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.kube_api_errors = Counter(
            f"{PREFIX}_kubernetes_api_errors_total",
            "Failed Kubernetes API calls, by operation and HTTP status (0: no answer).",
            ["operation", "status"],
            registry=r,
        )
        self.pending_events = Gauge(
            f"{PREFIX}_pending_events",
            "Deliveries taken in and not yet unpacked, plus events not yet processed.",
            registry=r,
        )
        self.worker_throttled = Gauge(
            f"{PREFIX}_worker_throttled",
            "1 while an alert storm slows the worker so that acknowledgements go first.",
            registry=r,
        )
        self.pauses_in_force = Gauge(
            f"{PREFIX}_pauses_in_force",
            "Objects paused now (ScaledObjects, HPAs), by who paused them (agent, human, kube-downscaler).",
            ["owner"],
            registry=r,
        )
        self.pause_age = Gauge(
            f"{PREFIX}_pause_age_seconds",
            "How long each pause in force has been there (as far as the agent can tell).",
            ["namespace", "kind", "name", "owner"],
            registry=r,
        )
        self.sink_failures = Counter(
            f"{PREFIX}_sink_failures_total",
            "Decisions a sink (slack, kubernetes-event) failed to deliver after its retries.",
            ["sink"],
            registry=r,
        )
        self.sink_dropped = Counter(
            f"{PREFIX}_sink_dropped_total",
            "Decisions a sink dropped because its queue was full.",
            ["sink"],
            registry=r,
        )
        self.task_crashes = Counter(
            f"{PREFIX}_task_crashes_total",
            "Crashes of the agent's background tasks (worker lanes, ledger writer, reconciler, sinks), by task.",
            ["task"],
            registry=r,
        )
        self.tasks_dead = Gauge(
            f"{PREFIX}_tasks_dead",
            "Background tasks that crashed too often and were given up on (then /healthz answers 503).",
            registry=r,
        )
        self.reconcile_runs = Counter(
            f"{PREFIX}_reconcile_runs_total", "Reconciler passes, by result.", ["result"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
