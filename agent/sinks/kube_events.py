"""
A Kubernetes ``Event`` on the target object for each decision about it, so
``kubectl describe scaledobject …`` shows what the agent did and why.

Like client-go's event recorder, it has a spam filter: each object gets a
bucket of 25 Events that refills by one every 5 minutes, so an alert storm
cannot flood the API server with Events. What the filter holds back is
counted (``scaling_agent_sink_dropped_total{sink="kubernetes-event"}``); the
ledger and Slack still have every decision.
"""

from __future__ import annotations

import re
import time

from kubernetes_asyncio import client

from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.structs import Decision, Outcome, TargetRef

API_VERSIONS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "Node": "v1",
}
# Events about cluster-scoped objects (a Node) live in `default`, where `kubectl describe node` finds them.
CLUSTER_EVENTS_NAMESPACE = "default"
COMPONENT = "scaling-agent"
BURST = 25  # client-go's EventSourceObjectSpamFilter defaults
REFILL_SECONDS = 300.0


def event_reason(decision: Decision) -> str:
    action = "".join(part.capitalize() for part in re.split(r"[-_]", decision.action))
    outcome = "".join(part.capitalize() for part in re.split(r"[-_]", str(decision.outcome)))
    return f"ScalingAgent{action}{outcome}"


class KubeEventSink(Sink):
    name = "kubernetes-event"

    def __init__(self, api: client.ApiClient, *, metrics: Metrics) -> None:
        # A no-op is noise on an object's event list; the ledger and log keep it.
        outcomes = [str(o) for o in Outcome if o != Outcome.NOOP]
        super().__init__(metrics=metrics, outcomes=outcomes)
        self._core = client.CoreV1Api(api)
        self._buckets: dict[TargetRef, tuple[float, float]] = {}  # target → (tokens, when counted)

    def wants(self, decision: Decision) -> bool:
        if decision.target is None or not super().wants(decision):
            return False
        now = time.monotonic()
        tokens, then = self._buckets.get(decision.target, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - then) / REFILL_SECONDS)
        if tokens < 1:
            self._buckets[decision.target] = (tokens, now)
            self.metrics.sink_dropped.labels(sink=self.name).inc()
            return False
        self._buckets[decision.target] = (tokens - 1, now)
        return True

    async def deliver(self, decision: Decision) -> None:
        target = decision.target
        assert target is not None
        namespace = target.namespace or CLUSTER_EVENTS_NAMESPACE
        message = decision.summary()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{target.name}.{decision.id}".lower(), namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSIONS.get(target.kind),
                kind=target.kind,
                name=target.name,
                namespace=target.namespace or None,
            ),
            reason=event_reason(decision),
            message=message[:1024],
            type="Warning" if decision.outcome in (Outcome.FAILED, Outcome.REFUSED) else "Normal",
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=COMPONENT,
            first_timestamp=decision.at,
            last_timestamp=decision.at,
            count=1,
            action=decision.action,
        )
        # The answer is not needed; skipping its parsing into a typed model halves the cost of a post.
        # (Without preloading, kubernetes-asyncio leaves the status check to the caller.)
        response = await self._core.create_namespaced_event(namespace, body, _preload_content=False)
        try:
            if not 200 <= response.status < 300:
                text = await response.text()
                raise RuntimeError(f"creating the Event answered {response.status}: {text[:300]}")
        finally:
            response.release()
