"""Kubernetes API failures are typed once, and the agent acts on the type: retry, re-read, or record why."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.errors import Conflict, Forbidden, NotFound, Rejected, Throttled, Unavailable, classify
from agent.structs import Outcome
from tests.conftest import NS, StartAgent, patches, post, settle


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (404, NotFound, False),
        (409, Conflict, False),
        (401, Forbidden, False),
        (403, Forbidden, False),
        (422, Rejected, False),
        (429, Throttled, True),
        (500, Unavailable, True),
        (503, Unavailable, True),
        (0, Unavailable, True),
    ],
)
def test_every_status_has_one_type(status: int, kind: type, transient: bool) -> None:
    typed = classify(ApiException(status=status, reason="Reason"))
    assert type(typed) is kind and typed is not None
    assert typed.status == status and typed.transient is transient
    assert str(typed) == f"Kubernetes API answered {status} Reason"


def test_no_answer_is_unavailable_and_other_errors_are_not_api_errors() -> None:
    typed = classify(aiohttp.ClientConnectionError("connection refused"))
    assert isinstance(typed, Unavailable) and typed.transient and typed.status == 0
    assert "connection refused" in str(typed)
    assert classify(ValueError("a bug")) is None


async def test_forbidden_is_not_retried_and_throttled_is(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    cluster.fail(method="PATCH", plural="scaledobjects", status=403, times=10)
    await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"})))
    await settle(agent)
    assert patches(cluster, "mcp-http-scaler") == 1  # RBAC does not change on a retry
    [forbidden] = await agent.ledger.decisions()
    assert forbidden.outcome == Outcome.FAILED and forbidden.error == "Kubernetes API answered 403 Forbidden"

    cluster.faults.clear()
    cluster.fail(method="PATCH", plural="scaledobjects", status=429, times=2)
    await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-keda"})))
    await settle(agent)
    assert patches(cluster, "mcp-keda") == 3  # two 429s, then the patch
    assert (await agent.ledger.decisions())[-1].outcome == Outcome.APPLIED
