"""
A Kubernetes ``Event`` on the target object for each decision about it, so
``kubectl describe scaledobject …`` shows what the agent did and why.
"""

from __future__ import annotations

import re

from kubernetes_asyncio import client

from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.structs import Decision, Outcome

API_VERSIONS = {"ScaledObject": "keda.sh/v1alpha1"}
COMPONENT = "scaling-agent"


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

    def wants(self, decision: Decision) -> bool:
        return decision.target is not None and super().wants(decision)

    async def deliver(self, decision: Decision) -> None:
        target = decision.target
        assert target is not None
        message = decision.summary()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{target.name}.{decision.id}".lower(), namespace=target.namespace),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSIONS.get(target.kind),
                kind=target.kind,
                name=target.name,
                namespace=target.namespace,
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
        response = await self._core.create_namespaced_event(target.namespace, body, _preload_content=False)
        try:
            if not 200 <= response.status < 300:
                text = await response.text()
                raise RuntimeError(f"creating the Event answered {response.status}: {text[:300]}")
        finally:
            response.release()
