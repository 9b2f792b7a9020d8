"""
Sources as plug-ins: a source defined here, in the test, runs with one registry line and its own config section;
rules match on an event's kind and labels; the Alertmanager body is parsed once; and an event with a deadline is
handled while the storm gate holds every other lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
import yaml
from aiohttp import web

from agent.cli import main
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.sources import SOURCES, SourceContext, SourceSettings
from agent.sources import alertmanager as alertmanager_module
from agent.structs import Delivery, Event, EventKind, Outcome, utcnow
from agent.supervisor import Supervisor
from tests.conftest import NS, StartAgent, build_config, post, scaledobject, settle


class EchoSettings(SourceSettings):
    route: str = "/webhooks/echo"
    floor_from: str = "scaledObject"


class EchoSource:
    """A producer announcing load ahead over HTTP, and a ticker that makes one urgent event of its own."""

    name: ClassVar[str] = "echo"
    Settings: ClassVar[type[SourceSettings]] = EchoSettings

    def __init__(self, settings: EchoSettings, *, context: SourceContext) -> None:
        self.settings = settings
        self.context = context
        self.supervisor: Supervisor | None = None
        self.ticker: asyncio.Task[None] | None = None
        self.stopped = False

    def routes(self) -> list[web.RouteDef]:
        return [web.post(self.settings.route, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = await self.context.intake.receive(source=self.name, body=body, received_at=utcnow())
        return web.json_response({"delivery": delivery})

    def start(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.ticker = supervisor.spawn("echo-ticker", self._tick, restart=False)

    async def _tick(self) -> None:
        await self.context.intake.accept([intent("mcp-keda", key="tick", deadline=True)])
        await asyncio.Event().wait()  # until stopped

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.cancel(self.ticker)
        self.stopped = True

    def decode(self, delivery: Delivery) -> list[Event]:
        data = json.loads(delivery.body)
        return [intent(data[self.settings.floor_from], key=f"delivery-{delivery.id}")]


def intent(scaled_object: str, *, key: str, deadline: bool = False) -> Event:
    labels = {"namespace": NS, "scaledObject": scaled_object}
    return Event(
        source="echo",
        key=hashlib.sha256(key.encode()).hexdigest()[:32],
        alertname="LoadAhead",
        status="firing",
        fingerprint=f"echo-{scaled_object}",
        labels=labels,
        kind=EventKind.INTENT,
        namespace=NS,
        deadline=utcnow() + timedelta(minutes=2) if deadline else None,
    )


RULES = [
    {
        "name": "prescale-on-intent",
        "kind": "intent",
        "matchers": ['scaledObject=~"mcp-.*"'],
        "action": {"type": "set_min", "params": {"replicas": 4}},
        "target": {"namespace": NS},
    },
    # An alert with the same name and labels is another kind of event: this rule never sees the intents.
    {"name": "alert-only", "alertname": "LoadAhead", "action": {"type": "notify"}},
]


@pytest.fixture()
def echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCES, EchoSource.name, EchoSource)  # the one registry line


async def test_a_source_defined_outside_the_agent_runs_from_one_registry_line_and_its_section(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], echo: None
) -> None:
    config = build_config(
        base_config, sources={"echo": {"enabled": True, "route": "/webhooks/ahead"}}, guard={"cooldown": "0s"}
    )
    config.rules = build_config(base_config, rules=RULES).rules
    agent = await start_agent(config)
    async with aiohttp.ClientSession() as session:
        body = {"scaledObject": "mcp-http-scaler"}
        async with session.post(f"{agent.url}/webhooks/ahead", json=body) as response:
            assert response.status == 200, await response.text()
    await settle(agent)

    decisions = await agent.ledger.decisions()
    by_target = {d.target.name: d for d in decisions if d.target is not None}
    # Its route, its decoder, and its own background task (an urgent event) all reached the rules.
    assert by_target["mcp-http-scaler"].outcome == Outcome.APPLIED
    assert by_target["mcp-http-scaler"].trigger.source == "echo"
    assert by_target["mcp-keda"].outcome == Outcome.APPLIED
    assert scaledobject(cluster, "mcp-http-scaler")["spec"]["minReplicaCount"] == 4
    assert not [d for d in decisions if d.rule == "alert-only"]  # matched on kind, not only on the name
    echo_source = next(s for s in agent.sources if s.name == "echo")
    await agent.stop()
    assert echo_source.stopped  # type: ignore[attr-defined]
    # Alertmanager is still there beside it, on by default.
    assert {s.name for s in agent.sources} == {"alertmanager", "calendar", "echo"}  # the calendar is on by default


async def test_a_source_off_by_default_is_not_built(
    start_agent: StartAgent, base_config: dict[str, Any], echo: None
) -> None:
    agent = await start_agent(build_config(base_config))
    assert [s.name for s in agent.sources] == ["alertmanager", "calendar"]  # the echo source is off by default


def test_a_source_section_is_checked_by_the_source_with_field_paths(
    tmp_path: Path, echo: None, capsys: pytest.CaptureFixture[str], base_config: dict[str, Any]
) -> None:
    data = {
        **base_config,
        "sources": {
            "echo": {"enabled": True, "floor_from": 3, "extra": 1},
            "kafka": {},
            "alertmanager": {"enabled": "?"},
        },
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(path)]) == 1
    errors = capsys.readouterr().err
    assert f"{path}: invalid config (4 problems)" in errors
    assert "sources.kafka: unknown source; known: alertmanager, amqp, calendar, echo, events, redis_stream" in errors
    assert "sources.alertmanager.enabled: Input should be a valid boolean" in errors
    assert "sources.echo.floor_from: Input should be a valid string" in errors
    assert "sources.echo.extra: is not a known field" in errors


async def test_an_alertmanager_notification_is_parsed_once(
    cluster: DevCluster, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real = alertmanager_module.parse_payload

    def counting(body: bytes) -> Any:
        parsed.append(len(body))
        return real(body)

    monkeypatch.setattr(alertmanager_module, "parse_payload", counting)
    agent = await start_agent()
    for name in ("mcp-http-scaler", "mcp-keda", "mcp-filesystem-scaler"):
        await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": name})))
    await settle(agent)
    assert len(parsed) == 3  # at the webhook; the worker unpacked from what the webhook parsed
    assert [d.outcome for d in await agent.ledger.decisions()] == [Outcome.APPLIED] * 3


@contextlib.asynccontextmanager
async def gate_held(agent: Any) -> AsyncIterator[asyncio.Event]:
    """A storm that never ends: every gated unit of the worker's work waits until the test lets it go."""
    release = asyncio.Event()
    real_turn = agent.worker.gate.turn

    @contextlib.asynccontextmanager
    async def held_turn() -> AsyncIterator[bool]:
        await release.wait()
        async with real_turn() as storm:
            yield storm

    agent.worker.gate.turn = held_turn
    try:
        yield release
    finally:
        release.set()
        agent.worker.gate.turn = real_turn


async def test_an_event_with_a_deadline_is_handled_while_the_storm_gate_holds_everything_else(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    config = build_config(base_config, guard={"cooldown": "0s"}, rules=RULES)
    agent = await start_agent(config)
    async with gate_held(agent) as release:
        for name in ("mcp-http-scaler", "mcp-filesystem-scaler"):  # a backlog behind the gate
            await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": name})))
        await agent.intake.accept([intent("mcp-keda", key="urgent", deadline=True)])

        async def urgent_decided() -> None:
            # Polling the ledger (the recorded decision is what counts), bounded by the wait_for below.
            while not [d for d in await agent.ledger.decisions() if d.trigger.source == "echo"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

        await asyncio.wait_for(urgent_decided(), 30)
        assert agent.worker.depth >= 2  # the backlog is still waiting for the gate
        assert scaledobject(cluster, "mcp-keda")["spec"]["minReplicaCount"] == 4
        release.set()
    await settle(agent)
    assert len(await agent.ledger.decisions()) == 3


async def test_an_events_own_namespace_finds_its_target_when_its_labels_name_none(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    rules = [{**RULES[0], "target": {}}]  # no namespace in the rule either
    agent = await start_agent(build_config(base_config, guard={"cooldown": "0s"}, rules=rules))
    target = agent.config.rules[0].target
    refs, reason = await agent.rules.resolve(target, {"scaledObject": "mcp-http-scaler"}, namespace=NS)
    assert [str(ref) for ref in refs] == [f"ScaledObject/{NS}/mcp-http-scaler"] and reason == "from label scaledObject"
    refs, reason = await agent.rules.resolve(target, {"scaledObject": "mcp-http-scaler"})
    assert refs == [] and "no namespace label or rule namespace" in reason
