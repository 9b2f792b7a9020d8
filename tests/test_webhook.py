"""The webhook's contract with Alertmanager: what it answers, and that nothing acknowledged acts twice or is lost."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp

from agent.app import Agent
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.structs import Outcome
from agent.worker import Gate
from tests.conftest import NS, StartAgent, build_config, patches, post, settle

FIRING = payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"}))


async def test_missing_or_wrong_credentials_get_401(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    assert (await post(agent, FIRING, token=None)).status == 401
    response = await post(agent, FIRING, token="wrong")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    await settle(agent)
    assert await agent.ledger.decisions() == []
    assert patches(cluster, "mcp-http-scaler") == 0


async def test_basic_auth_is_checked(base_config: dict, start_agent: StartAgent, monkeypatch) -> None:  # type: ignore[type-arg]
    monkeypatch.setenv("AM_PASSWORD", "s3cret")
    config = build_config(
        base_config,
        webhook={"auth": {"type": "basic", "username": "alertmanager", "password": {"env": "AM_PASSWORD"}}},
    )
    agent = await start_agent(config)
    async with aiohttp.ClientSession() as session:
        url = f"{agent.url}/webhooks/alertmanager"
        good = {"Authorization": "Basic " + base64.b64encode(b"alertmanager:s3cret").decode()}
        wrong = {"Authorization": "Basic " + base64.b64encode(b"alertmanager:nope").decode()}
        async with session.post(url, json=FIRING, headers=good) as ok:
            assert ok.status == 200
        async with session.post(url, json=FIRING, headers=wrong) as bad:
            assert bad.status == 401


async def test_malformed_json_and_wrong_schema_get_400_with_a_reason(start_agent: StartAgent) -> None:
    agent = await start_agent()
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer test-token-0123456789"}) as session:
        url = f"{agent.url}/webhooks/alertmanager"
        async with session.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert "malformed JSON" in (await r.json())["error"]
        async with session.post(url, json={**FIRING, "version": "3"}) as r:
            assert r.status == 400
            assert "version" in (await r.json())["error"]
        no_name = json.loads(json.dumps(FIRING))
        del no_name["alerts"][0]["labels"]["alertname"]
        async with session.post(url, json=no_name) as r:
            assert r.status == 400
            assert "alerts[0].labels" in (await r.json())["error"]
        async with session.post(url, json=[1, 2]) as r:
            assert r.status == 400
    await settle(agent)
    assert await agent.ledger.decisions() == []


async def test_body_over_the_limit_gets_413(base_config: dict, start_agent: StartAgent) -> None:  # type: ignore[type-arg]
    agent = await start_agent(build_config(base_config, webhook={"max_body_bytes": 2048}))
    big = payload(*[alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": f"so-{i}"}) for i in range(20)])
    response = await post(agent, big)
    assert response.status == 413

    # Without a Content-Length (chunked), aiohttp's own limit answers while reading.
    async def chunks():  # type: ignore[no-untyped-def]
        body = json.dumps(big).encode()
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{agent.url}/webhooks/alertmanager",
            data=chunks(),
            headers={"Authorization": "Bearer test-token-0123456789", "Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 413
    assert (await post(agent, FIRING)).status == 200  # a fitting one still goes through


async def test_redelivery_is_a_recorded_noop_not_a_second_change(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    first = await post(agent, FIRING)
    second = await post(agent, FIRING)  # Alertmanager's repeat, or its HA peer
    assert (first.status, second.status) == (200, 200)
    await settle(agent)
    assert patches(cluster, "mcp-http-scaler") == 1
    decisions = await agent.ledger.decisions()
    assert [(d.action, d.outcome) for d in decisions] == [("pause", Outcome.APPLIED), ("redelivery", Outcome.NOOP)]
    assert "redelivery of event #1" in decisions[1].reason


async def test_redelivery_after_a_restart_is_still_a_noop(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict,  # type: ignore[type-arg]
) -> None:
    agent = await start_agent()
    await post(agent, FIRING)
    await settle(agent)
    await agent.stop()
    again = await start_agent(build_config(base_config))  # same ledger file
    await post(again, FIRING)
    await settle(again)
    assert patches(cluster, "mcp-http-scaler") == 1
    assert (await again.ledger.decisions())[-1].outcome == Outcome.NOOP


async def test_ledger_down_means_503_so_alertmanager_retries(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await agent.ledger.close()
    response = await post(agent, FIRING)
    assert response.status == 503
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/readyz") as ready:
        assert ready.status == 503
        assert "ledger" in (await ready.json())["problems"]
    assert patches(cluster, "mcp-http-scaler") == 0


async def test_health_readiness_and_metrics(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(agent, FIRING)
    await post(agent, FIRING, token="wrong")
    await settle(agent)
    await agent.reconciler.reconcile_once()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{agent.url}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{agent.url}/readyz") as r:
            assert r.status == 200
        async with session.get(f"{agent.url}/metrics") as r:
            text = await r.text()
    assert 'scaling_agent_events_received_total{source="alertmanager",status="firing"} 1.0' in text
    assert 'scaling_agent_decisions_total{action="pause",outcome="applied"} 1.0' in text
    assert 'scaling_agent_webhook_rejections_total{code="401"} 1.0' in text
    assert "scaling_agent_action_latency_seconds_bucket" in text
    assert "scaling_agent_pending_events 0.0" in text
    assert 'scaling_agent_pauses_in_force{owner="agent"} 1.0' in text
    assert (
        'scaling_agent_pause_age_seconds{kind="ScaledObject",name="mcp-http-scaler",namespace="cortex-mcp",owner="agent"}'
        in text
    )


async def test_worker_gives_way_to_intake_but_is_never_starved(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    agent.worker.gate.intake_started()  # as if a sender were waiting for its ack the whole time
    try:
        await post(agent, FIRING)
        await settle(agent)
    finally:
        agent.worker.gate.intake_finished()
    assert [d.outcome for d in await agent.ledger.decisions()] == [Outcome.APPLIED]


async def metric(agent: Agent, name: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/metrics") as r:
        return next(line for line in (await r.text()).splitlines() if line.startswith(name + " "))


async def test_in_an_alert_storm_the_worker_is_slowed_not_stopped(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    cpu = {"busy": True}
    # The event loop's CPU as the gate samples it: a storm uses all of it, a quiet agent none.
    agent.worker.gate = Gate(
        on_storm=agent.worker._storm_changed,
        cpu_time=lambda: time.monotonic() if cpu["busy"] else 0.0,
    )
    for _ in range(4):  # senders kept waiting for their acknowledgements
        agent.worker.gate.intake_started()
    try:
        await asyncio.sleep(0.15)  # one CPU sample
        assert agent.worker.gate.storm()
        assert await metric(agent, "scaling_agent_worker_throttled") == "scaling_agent_worker_throttled 1.0"
        alerts = [alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": n}) for n in ("mcp-http-scaler", "a")]
        for one in alerts:
            assert (await post(agent, payload(one))).status == 200
        await settle(agent)  # slowed to a turn per 20 ms, but every event still gets its decision
        assert len(await agent.ledger.decisions()) == 2
    finally:
        for _ in range(4):
            agent.worker.gate.intake_finished()
    cpu["busy"] = False
    await asyncio.sleep(0.15)
    assert not agent.worker.gate.storm()
    assert await metric(agent, "scaling_agent_worker_throttled") == "scaling_agent_worker_throttled 0.0"


async def test_a_busy_agent_answering_at_once_is_not_in_a_storm() -> None:
    # A steady load (bench/webhook.py at 1,000 alerts/s): the event loop's thread busy all the time, but each
    # acknowledgement answered at once, under one in flight on average. Slowing the worker then only grew its
    # backlog; the gate must leave it alone.
    gate = Gate(cpu_time=time.monotonic)
    for _ in range(40):
        gate.intake_started()
        await asyncio.sleep(0.001)
        gate.intake_finished()
        await asyncio.sleep(0.004)
    assert not gate.storm()
    # The same loop with senders kept waiting (four acknowledgements in flight) is a storm.
    for _ in range(4):
        gate.intake_started()
    await asyncio.sleep(0.15)
    assert gate.storm()
