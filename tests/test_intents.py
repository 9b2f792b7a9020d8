"""
Scale intents end to end: a producer announces load ahead, and the target's floor rises for the window it names,
at its start (even across a restart), and falls back at its end.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import time_machine

from agent.app import Agent
from agent.devcluster import DevCluster
from agent.structs import Decision, Outcome
from tests.conftest import NS, StartAgent, build_config, scaledobject, settle
from tests.test_events import send

TARGET = "mcp-queue-scaler"  # minReplicaCount 1
INTENTS = {
    "name": "announced-load",
    "kind": "intent",
    "alertname": "intent",
    "action": {"type": "intent"},
    "target": {"kind": "ScaledObject", "namespace": NS},
}


def intent(starts: datetime, until: datetime, *, id_: str = "batch-0200", floor: int = 20) -> dict[str, Any]:
    return {
        "type": "intent",
        "id": id_,
        "target": {"kind": "ScaledObject", "namespace": NS, "name": TARGET},
        "floor": floor,
        "from": starts.isoformat(),
        "until": until.isoformat(),
        "reason": "a batch of 50,000 tasks",
    }


async def intents_agent(start_agent: StartAgent, base_config: dict[str, Any]) -> Agent:
    return await start_agent(build_config(base_config, sources={"events": {"enabled": True}}, rules=[INTENTS]))


async def applied(agent: Agent) -> Decision:
    async with asyncio.timeout(15):
        while True:
            found = [d for d in await agent.ledger.decisions() if d.action == "intent" and d.outcome == Outcome.APPLIED]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


def floor(cluster: DevCluster) -> int:
    return int(scaledobject(cluster, TARGET)["spec"]["minReplicaCount"])


async def test_an_intent_inside_its_window_raises_the_floor_until_its_end(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    agent = await intents_agent(start_agent, base_config)
    assert (await send(agent, intent(now - timedelta(minutes=1), now + timedelta(hours=1))))[0] == 200
    await settle(agent)
    decision = await applied(agent)
    assert decision.rule == "announced-load" and str(decision.target) == f"ScaledObject/{NS}/{TARGET}"
    assert floor(cluster) == 20
    assert "intent: a floor of 20 until" in decision.reason and "a batch of 50,000 tasks" in decision.reason
    # At its end the reconciler gives it back, like any expiry.
    with time_machine.travel(now + timedelta(hours=1, seconds=1), tick=True):
        await agent.reconciler.reconcile_once()
    assert floor(cluster) == 1


async def test_an_intent_announced_ahead_is_applied_at_its_start(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    agent = await intents_agent(start_agent, base_config)
    assert (await send(agent, intent(now + timedelta(seconds=1), now + timedelta(hours=1))))[0] == 200
    await settle(agent)
    [scheduled] = await agent.ledger.decisions()
    assert scheduled.outcome == Outcome.NOOP and scheduled.reason.startswith("scheduled: a floor of 20 from")
    assert floor(cluster) == 1  # not yet
    decision = await applied(agent)
    assert decision.trigger.event_key == f"{scheduled.trigger.event_key}|start"
    assert floor(cluster) == 20


async def test_a_scheduled_intent_survives_a_restart(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    first = await intents_agent(start_agent, base_config)
    assert (await send(first, intent(now + timedelta(seconds=2), now + timedelta(hours=1))))[0] == 200
    await settle(first)
    await first.stop()  # before its start: its timer is gone with the process
    second = await intents_agent(start_agent, base_config)
    await applied(second)
    assert floor(cluster) == 20
    assert len([d for d in await second.ledger.decisions() if d.outcome == Outcome.APPLIED]) == 1
