"""
The events webhook, POST /webhooks/events: preemption notices and scale intents in every format the agent reads,
recorded before the answer, deadlines in the urgent lane, redeliveries recognised, bad input answered with why.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from agent.app import Agent
from agent.devcluster import DevCluster
from agent.structs import EventKind, Outcome
from agent.targets.node import TAINT_KEY
from tests.conftest import NS, TOKEN, StartAgent, build_config, settle
from tests.test_notices import AWS_WARNING, GCP_WATCHER, azure_document, azure_event

NODE = "spot-node-1"
CORDON_ON_PREEMPTION = {
    "name": "cordon-on-preemption",
    "kind": "notice",
    "alertname": "preemption",
    "action": {"type": "cordon"},
    "target": {"kind": "Node"},
}


async def send(agent: Agent, body: Any, *, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{agent.url}/webhooks/events", data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


def native_notice(**fields: Any) -> dict[str, Any]:
    return {"type": "preemption", "id": "notice-1", "node": NODE, "in": "90s", "reason": "spot capacity"} | fields


async def events_agent(start_agent: StartAgent, base_config: dict[str, Any], **sections: Any) -> Agent:
    return await start_agent(build_config(base_config, sources={"events": {"enabled": True}}, **sections))


async def test_a_native_notice_is_recorded_with_its_deadline_and_a_rule_cordons_its_node(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    agent = await events_agent(start_agent, base_config, rules=[CORDON_ON_PREEMPTION])
    sent = datetime.now(UTC)
    status, answer = await send(agent, native_notice())
    assert status == 200 and answer["status"] == "accepted" and answer["events"] == 1
    await settle(agent)
    assert await agent.ledger.pending() == []  # processed
    [decision] = await agent.ledger.decisions()
    assert decision.trigger.source == "events" and decision.trigger.alertname == "preemption"
    assert (
        decision.outcome == Outcome.APPLIED and decision.action == "cordon" and str(decision.target) == f"Node/{NODE}"
    )
    node = cluster.get("nodes", None, NODE)
    assert node["spec"]["unschedulable"] is True
    assert any(t["key"] == TAINT_KEY for t in node["spec"]["taints"])
    # The event carried its deadline, ninety seconds from its arrival (the urgent lane's ticket).
    rows = await agent.ledger._read("SELECT body FROM events")  # type: ignore[attr-defined]
    [event] = [json.loads(row[0]) for row in rows]
    assert event["kind"] == EventKind.NOTICE and event["key"] == "notice|native|notice-1"
    deadline = datetime.fromisoformat(event["deadline"])
    assert sent + timedelta(seconds=85) <= deadline <= datetime.now(UTC) + timedelta(seconds=90)


async def test_a_redelivered_notice_is_acted_on_once(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    agent = await events_agent(start_agent, base_config, rules=[CORDON_ON_PREEMPTION])
    for _ in range(2):  # a queue's redelivery, or two watchers forwarding the same notice
        assert (await send(agent, native_notice()))[0] == 200
        await settle(agent)
    first, again = await agent.ledger.decisions()
    assert first.outcome == Outcome.APPLIED
    assert again.outcome == Outcome.NOOP and "redelivery" in again.reason


async def test_every_cloud_format_is_taken_and_a_scale_intent_too(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    agent = await events_agent(start_agent, base_config)
    intent = {
        "type": "intent",
        "id": "batch-0200",
        "target": {"kind": "ScaledObject", "namespace": NS, "name": "mcp-queue-scaler"},
        "floor": 20,
        "from": "2026-12-07T02:00:00Z",
        "until": "2026-12-07T04:00:00Z",
        "reason": "a batch of 50,000 tasks lands at 02:00",
    }
    preempt = azure_event(["aks-nodepool1-12345678-vmss_35"], EventId="A1B2", EventType="Preempt")
    for body in (AWS_WARNING, azure_document(preempt), intent):
        status, answer = await send(agent, body)
        assert (status, answer["events"]) == (200, 1), answer
    # A Scheduled Events document with no Preempt in it is fine, and brings nothing.
    reboot = azure_event(["myvm"], EventId="C3", EventType="Reboot")
    assert await send(agent, azure_document(reboot)) == (200, {"status": "accepted", "events": 0, "ids": []})
    await settle(agent)
    names = sorted((d.trigger.alertname, d.reason) for d in await agent.ledger.decisions())
    # No rule answers them here: each is a recorded no-op, never lost and never an error.
    assert names == [
        ("intent", "no rule matches intent"),
        ("preemption", "no rule matches preemption"),
        ("preemption", "no rule matches preemption"),
    ]
    labels = {d.trigger.labels.get("cloud"): dict(d.trigger.labels) for d in await agent.ledger.decisions()}
    assert labels["aws"]["instance"].startswith("EC2 instance i-0b1c2d3e4f5a6b7c8")
    assert labels["azure"]["instance"] == "Azure VM aks-nodepool1-12345678-vmss_35"


async def test_bad_input_is_answered_with_why_and_records_nothing(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    agent = await events_agent(start_agent, base_config)
    status, answer = await send(agent, b"{not json")
    assert status == 400 and answer["error"].startswith("malformed JSON")
    status, answer = await send(agent, {"hello": "world"})
    assert status == 400 and answer["error"].startswith("unknown format")
    status, answer = await send(agent, native_notice(node=None, **{"in": "90s"}))
    assert status == 400 and "node" in answer["error"]
    assert (await send(agent, native_notice(), token="wrong"))[0] == 401
    assert (await send(agent, b"x" * (base_config["webhook"].get("max_body_bytes", 1 << 20) + 1)))[0] == 413
    await settle(agent)
    assert await agent.ledger.decisions() == []


async def test_the_events_webhook_is_off_until_turned_on(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    agent = await start_agent(build_config(base_config))
    async with aiohttp.ClientSession() as session, session.post(f"{agent.url}/webhooks/events", data=b"{}") as r:
        assert r.status == 404


async def test_a_cloud_notice_finds_its_node_by_provider_id_and_an_unknown_machine_is_a_recorded_no_op(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    provider_id = "aws:///us-east-1a/i-0b1c2d3e4f5a6b7c8"  # the instance in AWS_WARNING
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {"providerID": provider_id}})
    cluster.add(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "other"},
            "spec": {"providerID": "aws:///us-east-1a/i-0"},
        }
    )
    agent = await events_agent(start_agent, base_config, rules=[CORDON_ON_PREEMPTION])
    assert (await send(agent, AWS_WARNING))[0] == 200
    assert (await send(agent, GCP_WATCHER))[0] == 200  # a GCE machine this cluster has no Node for
    await settle(agent)
    by_cloud = {d.trigger.labels["cloud"]: d for d in await agent.ledger.decisions()}
    cordoned = by_cloud["aws"]
    assert cordoned.outcome == Outcome.APPLIED and str(cordoned.target) == f"Node/{NODE}"
    assert cluster.get("nodes", None, NODE)["spec"]["unschedulable"] is True
    assert "unschedulable" not in cluster.get("nodes", None, "other")["spec"]
    unknown = by_cloud["gcp"]
    assert unknown.outcome == Outcome.NOOP and unknown.target is None
    assert unknown.reason.startswith("no target: no Node is gcp instance_name")
