"""Nothing dies quietly: a crashed background task is logged, counted and restarted; if it cannot be, /healthz fails."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.demo.alerts import alert, payload
from agent.metrics import Metrics
from agent.structs import Event, Outcome
from agent.supervisor import Supervisor
from tests.conftest import NS, ROOT, StartAgent, post, settle

WAIT = 10.0  # seconds any one wait below may take


async def test_a_crashed_task_is_restarted_and_counted() -> None:
    metrics = Metrics()
    supervisor = Supervisor(metrics=metrics, backoff=(0.01, 0.01))
    runs: list[int] = []
    done = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        done.set()
        await asyncio.Event().wait()  # then runs until stopped

    task = supervisor.spawn("flaky", flaky)
    await asyncio.wait_for(done.wait(), WAIT)
    assert len(runs) == 3
    assert metrics.task_crashes.labels(task="flaky")._value.get() == 2
    assert supervisor.dead == {}
    await supervisor.cancel(task)
    assert supervisor.dead == {}  # stopping is not dying


async def test_a_task_that_keeps_crashing_is_declared_dead() -> None:
    metrics = Metrics()
    supervisor = Supervisor(metrics=metrics, max_restarts=2, backoff=(0.01, 0.01))

    async def broken() -> None:
        raise ValueError("always")

    task = supervisor.spawn("broken", broken)
    await asyncio.wait_for(task, WAIT)
    assert supervisor.dead == {"broken": "ValueError: always"}
    assert metrics.tasks_dead._value.get() == 1
    assert metrics.task_crashes.labels(task="broken")._value.get() == 3


async def test_healthz_fails_when_a_task_of_the_agent_is_dead(start_agent: StartAgent) -> None:
    agent = await start_agent()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{agent.url}/healthz") as response:
            assert response.status == 200

        async def dies() -> None:
            raise RuntimeError("a bug")

        await asyncio.wait_for(agent.supervisor.spawn("probe", dies, restart=False), WAIT)
        async with session.get(f"{agent.url}/healthz") as response:
            assert response.status == 503
            assert (await response.json())["dead_tasks"] == {"probe": "RuntimeError: a bug"}
        async with session.get(f"{agent.url}/metrics") as response:
            assert "scaling_agent_tasks_dead 1.0" in await response.text()


async def test_an_event_that_breaks_the_agent_is_recorded_and_its_lane_goes_on(
    start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await start_agent()
    real_plan = agent.rules.plan

    async def plan(event: Event) -> Any:
        if event.alertname == "Poison":
            raise RuntimeError("a bug in a rule")
        return await real_plan(event)

    monkeypatch.setattr(agent.rules, "plan", plan)
    await post(agent, payload(alert("Poison", {"namespace": NS})))
    # More alerts than lanes, so that every lane, the poisoned one included, has to take one afterwards.
    names = [f"mcp-so-{i}" for i in range(4 * agent.config.workers)]
    await post(agent, payload(*[alert("Unrouted", {"namespace": NS, "scaledObject": n}) for n in names]))
    await settle(agent)
    decisions = await agent.ledger.decisions()
    [failed] = [d for d in decisions if d.outcome == Outcome.FAILED]
    assert failed.trigger.alertname == "Poison" and "RuntimeError: a bug in a rule" in (failed.error or "")
    assert len([d for d in decisions if d.trigger.alertname == "Unrouted"]) == len(names)
    assert agent.supervisor.dead == {}


def test_no_log_call_passes_event_as_a_field() -> None:
    """structlog's first argument is named `event`: `log.error("…", event=x)` raises TypeError in the handler."""
    offenders = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical", "msg")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("log", "logger")
                and any(k.arg == "event" for k in node.keywords)
            ):
                offenders.append(f"{Path(path).relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
