"""Decisions fanned out: Slack through slack-sdk against a local endpoint, Kubernetes Events, never blocking."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agent.app import Agent
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.structs import Outcome
from tests.conftest import NS, SlackServer, StartAgent, annotations, build_config, free_port, post, settle

FREQUENT = {"namespace": NS, "scaledObject": "mcp-http-scaler"}


SLACK_TOKEN = "xoxb-test-token"
StartWithSlack = Callable[..., Awaitable[Agent]]


@pytest.fixture
def start_with_slack(start_agent: StartAgent, base_config: dict[str, Any], monkeypatch: Any) -> StartWithSlack:
    """Start the agent posting to Slack's Web API at ``base_url`` with a bot token from the environment."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)

    async def start(base_url: str, **extra: Any) -> Agent:
        slack = {"token": {"env": "SLACK_BOT_TOKEN"}, "channel": "#mcp-scaling", "base_url": base_url, **extra}
        return await start_agent(build_config(base_config, slack=slack))

    return start


async def test_slack_gets_the_decision_through_slack_sdk(
    cluster: DevCluster, start_with_slack: StartWithSlack, slack_server: SlackServer
) -> None:
    agent = await start_with_slack(slack_server.base_url)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))  # a no-op redelivery: not posted
    await settle(agent)
    [message] = slack_server.messages
    assert message["channel"] == "#mcp-scaling"
    assert message["authorization"] == f"Bearer {SLACK_TOKEN}"
    assert "*pause* `ScaledObject/cortex-mcp/mcp-http-scaler` — *applied*" in message["text"]
    assert "paused-replicas: None → 3" in message["text"]


async def test_slack_down_never_stops_the_action(cluster: DevCluster, start_with_slack: StartWithSlack) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens there
    agent = await start_with_slack(nobody, attempts=2)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    assert annotations(cluster, "mcp-http-scaler")["autoscaling.keda.sh/paused-replicas"] == "3"
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.APPLIED
    assert agent.metrics.sink_failures.labels(sink="slack")._value.get() == 1


async def test_slack_server_errors_are_counted_not_raised(
    cluster: DevCluster, start_with_slack: StartWithSlack, slack_server: SlackServer
) -> None:
    slack_server.fail_with = 500
    agent = await start_with_slack(slack_server.base_url, attempts=2)
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    assert agent.metrics.sink_failures.labels(sink="slack")._value.get() == 1
    slack_server.fail_with = None
    await post(agent, payload(alert("MCPColdStartSlow", status="resolved")))
    await settle(agent)
    assert len(slack_server.messages) == 1 and "*revert*" in slack_server.messages[0]["text"]


async def test_kubernetes_event_on_the_target(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    events = [obj.raw for (resource, _, _), obj in cluster.objects.items() if resource.plural == "events"]
    [event] = events
    assert event["involvedObject"] == {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "name": "mcp-http-scaler",
        "namespace": NS,
    }
    assert event["reason"] == "ScalingAgentPauseApplied" and event["type"] == "Normal"
    assert "paused-replicas: None → 3" in event["message"]


async def test_slack_rate_limit_is_waited_out_and_delivered(
    cluster: DevCluster, start_with_slack: StartWithSlack, slack_server: SlackServer
) -> None:
    slack_server.rate_limit_next = 1  # answer 429 with Retry-After once
    agent = await start_with_slack(slack_server.base_url)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    assert slack_server.rate_limited == 1
    assert len(slack_server.messages) == 1
    assert agent.metrics.sink_failures.labels(sink="slack")._value.get() == 0


async def test_kubernetes_event_refused_is_counted_and_the_action_stands(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    cluster.fail(method="POST", plural="events", status=403, times=1, message="events is forbidden")
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    assert annotations(cluster, "mcp-http-scaler")["autoscaling.keda.sh/paused-replicas"] == "3"
    assert agent.metrics.sink_failures.labels(sink="kubernetes-event")._value.get() == 1


async def test_slack_incoming_webhook_url_from_a_mounted_file(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    slack_server: SlackServer,
    tmp_path: Any,
) -> None:
    secret = tmp_path / "slack-webhook-url"
    secret.write_text(slack_server.webhook_url + "\n")
    agent = await start_agent(build_config(base_config, slack={"webhook_url": {"file": str(secret)}}))
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    [message] = slack_server.messages
    assert message["via"] == "incoming-webhook"
    assert "*set_min* `ScaledObject/cortex-mcp/mcp-scale-to-zero` — *applied*" in message["text"]


async def test_kubernetes_events_per_object_are_rate_limited_like_client_go(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    from agent.sinks.kube_events import BURST

    # Only the one rule: the default rules name cortex-mcp, which a config allowing kube-system alone refuses.
    rules = [{"name": "pause", "alertname": "MCPFrequentScaling", "action": {"type": "pause"}}]
    agent = await start_agent(build_config(base_config, kubernetes={"namespaces": ["kube-system"]}, rules=rules))
    # Refusals (namespace not allowed) are decisions on a target too: a storm of them on one object.
    for i in range(BURST + 5):
        await post(agent, payload(alert("MCPFrequentScaling", {**FREQUENT, "instance": str(i)})))
    await settle(agent)
    events = [obj for (resource, _, _), obj in cluster.objects.items() if resource.plural == "events"]
    assert len(events) == BURST
    assert agent.metrics.sink_dropped.labels(sink="kubernetes-event")._value.get() == 5
    assert len(await agent.ledger.decisions()) == BURST + 5  # the ledger still has every one
