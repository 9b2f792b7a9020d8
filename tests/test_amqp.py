"""
The AMQP source against a real RabbitMQ on loopback: a notice published becomes an event in the ledger and only
then is acknowledged; a poison message is dead-lettered with its reason and recorded; a redelivery is acted on
once; a consumer gone before its ack loses nothing; a broker restart is ridden out; and the settings say what is
missing.

One broker serves the module (it takes about 4 s to start); each test uses its own exchange and queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

import agent.sources
from agent.app import Agent
from agent.config import ConfigError
from agent.devcluster import DevCluster
from agent.ledger import LedgerUnavailable
from agent.sources import amqp as amqp_module
from agent.sources import check_sources
from agent.sources.amqp import REASON_HEADER, AmqpSettings, AmqpSource
from agent.structs import Event, InboxEntry, Outcome
from tests.conftest import StartAgent, build_config, free_port, settle
from tests.test_events import CORDON_ON_PREEMPTION, NODE, native_notice

START_SECONDS = 60.0  # a broker start (about 4 s here; slack for a loaded CI machine)
STOP_SECONDS = 30.0
WAIT_SECONDS = 20.0  # for the agent to take a message in
PASSWORD_ENV = "SCALING_AGENT_TEST_AMQP_PASSWORD"


# --- the broker ------------------------------------------------------------------------------------------------


def _require_rabbitmq() -> str:
    """rabbitmq-server (Debian puts it in /usr/sbin, often off PATH); missing: skipped, or failed under CI=true."""
    path = shutil.which("rabbitmq-server") or (
        "/usr/sbin/rabbitmq-server" if os.path.exists("/usr/sbin/rabbitmq-server") else None
    )
    if path is None:
        message = "rabbitmq-server is not installed (the README's test command installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI=true a missing server is a failure")
        pytest.skip(message)
    return path


class Broker:
    """
    One RabbitMQ node of our own: its own node name, ports (AMQP, distribution, epmd) and data folder, so it
    neither sees nor disturbs another node on the machine. Debian's wrapper drops to the ``rabbitmq`` user when
    started as root, so the folder belongs to that user then. Stopping and starting again keeps the folder: the
    durable queues and what they hold survive, as after a real broker restart.
    """

    def __init__(self, server: str) -> None:
        as_root = os.geteuid() == 0
        bin_dir = Path(server).resolve().parent
        if not as_root and Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():  # the wrapper wants root
            server, bin_dir = "/usr/lib/rabbitmq/bin/rabbitmq-server", Path("/usr/lib/rabbitmq/bin")
        self.server = server
        self.ctl = str(Path(server).with_name("rabbitmqctl")) if as_root else str(bin_dir / "rabbitmqctl")
        self.folder = Path(tempfile.mkdtemp(prefix="rabbitmq-test-"))
        (self.folder / "enabled_plugins").write_text("[].\n")
        if as_root:
            for path in (self.folder, self.folder / "enabled_plugins"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.node = f"scaling-agent-test-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.user, self.password = "scaling-agent", f"amqp-{secrets.token_hex(12)}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),  # an epmd of its own, stopped with it
        }

    @property
    def url(self) -> str:
        """The agent's URL: the password is not in it (it comes from the environment)."""
        return f"amqp://{self.user}@127.0.0.1:{self.port}/"

    @property
    def client_url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/"

    def start(self) -> None:
        with open(self.folder / "server.out", "ab") as out:
            self.process = subprocess.Popen(
                [self.server], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"rabbitmq-server exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.1)
        pytest.fail(f"rabbitmq-server did not listen within {START_SECONDS:.0f} s:\n{self.output()}")

    def rabbitmqctl(self, *args: str) -> None:
        result = subprocess.run(
            [self.ctl, "-n", self.node, *args], env=self.env, capture_output=True, text=True, timeout=STOP_SECONDS
        )
        assert result.returncode == 0, f"rabbitmqctl {args[0]}: {result.stdout}{result.stderr}"

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            self.rabbitmqctl("stop")
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        epmd = shutil.which("epmd")
        if epmd is not None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    [epmd, "-port", str(self.epmd_port), "-kill"], env=self.env, capture_output=True, timeout=10
                )
        shutil.rmtree(self.folder, ignore_errors=True)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return (self.folder / "server.out").read_text(errors="replace")[-4000:]
        return ""


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    node = Broker(_require_rabbitmq())
    try:
        node.start()
        # A user of our own (guest is there too, but the agent's password should be one no log could contain by
        # chance).
        node.rabbitmqctl("add_user", node.user, node.password)
        node.rabbitmqctl("set_permissions", "-p", "/", node.user, ".*", ".*", ".*")
        yield node
    finally:
        node.close()


# --- helpers ---------------------------------------------------------------------------------------------------


class Names:
    """A test's own exchange and queues, so no test sees another's messages."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"test-{tag}"
        self.queue = f"test-{tag}.events"
        self.dead_letter_exchange = f"test-{tag}.dead"
        self.dead_letter_queue = f"{self.queue}.dead"


@pytest.fixture()
def names() -> Names:
    return Names()


@pytest.fixture()
def amqp(monkeypatch: pytest.MonkeyPatch, broker: Broker) -> None:
    monkeypatch.setitem(agent.sources.SOURCES, AmqpSource.name, AmqpSource)  # the registry line, for the test
    monkeypatch.setenv(PASSWORD_ENV, broker.password)


def settings(broker: Broker, names: Names, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "url": broker.url,
        "password": {"env": PASSWORD_ENV},
        "queue": names.queue,
        "exchange": names.exchange,
        "dead_letter_exchange": names.dead_letter_exchange,
        "reconnect": "200ms",
        **extra,
    }


async def amqp_agent(
    start_agent: StartAgent, base_config: dict[str, Any], broker: Broker, names: Names, **sections: Any
) -> tuple[Agent, AmqpSource]:
    config = build_config(base_config, sources={"amqp": settings(broker, names)}, **sections)
    started = await start_agent(config)
    source = next(s for s in started.sources if isinstance(s, AmqpSource))
    await asyncio.wait_for(source.consuming.wait(), WAIT_SECONDS)  # declared, bound and consuming
    return started, source


async def publish(
    broker: Broker, exchange: str, body: bytes | dict[str, Any], *, message_id: str, routing_key: str = "notices"
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = await aio_pika.connect(broker.client_url, timeout=10)
    async with connection:
        channel = await connection.channel()  # publisher confirms: published means the broker has it
        target = await channel.get_exchange(exchange)
        message = aio_pika.Message(
            data,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"producer": "test"},
        )
        await target.publish(message, routing_key=routing_key, timeout=10)


async def waiting(broker: Broker, queue: str) -> int:
    """Messages ready in the queue (an unacknowledged one counts once its consumer is gone)."""
    connection = await aio_pika.connect(broker.client_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, within: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def events_of(started: Agent) -> list[dict[str, Any]]:
    rows = await started.ledger._read("SELECT body FROM events ORDER BY id")  # type: ignore[attr-defined]
    return [json.loads(row[0]) for row in rows]


async def has_events(started: Agent, count: int) -> bool:
    return len(await events_of(started)) >= count


class Recorder:
    """Stands in for a module's structlog logger and keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(message: str, **fields: Any) -> None:
            self.lines.append(f"{level} {message} {fields!r}")

        return record

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def cordon_rule_and_node(cluster: DevCluster) -> list[dict[str, Any]]:
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    return [CORDON_ON_PREEMPTION]


# --- the tests -------------------------------------------------------------------------------------------------


async def test_a_published_notice_is_recorded_then_acknowledged(
    start_agent: StartAgent,
    base_config: dict[str, Any],
    broker: Broker,
    names: Names,
    amqp: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logged = Recorder()
    monkeypatch.setattr(amqp_module, "log", logged)
    caplog.set_level(logging.DEBUG, logger="aio_pika")
    caplog.set_level(logging.DEBUG, logger="aiormq")
    started, _ = await amqp_agent(start_agent, base_config, broker, names)
    await publish(broker, names.exchange, native_notice(id="amqp-1"), message_id="m-1")
    await eventually(lambda: has_events(started, 1), what="the notice is in the ledger")
    await settle(started)

    [event] = await events_of(started)
    assert event["source"] == "amqp" and event["kind"] == "notice" and event["key"] == "notice|native|amqp-1"
    assert event["deadline"] is not None  # the urgent lane's ticket, as from the webhook
    [decision] = await started.ledger.decisions()
    assert (decision.action, decision.outcome, decision.reason) == ("match", Outcome.NOOP, "no rule matches preemption")
    assert decision.trigger.source == "amqp" and decision.trigger.event_key == "notice|native|amqp-1"
    await started.stop()
    # Acknowledged: with the consumer gone, an unacknowledged message would be back in the queue.
    assert await waiting(broker, names.queue) == 0
    assert await waiting(broker, names.dead_letter_queue) == 0
    # The password is in no log line: the source's (it logs the URL) nor aio-pika's and aiormq's, even at debug.
    assert "consuming from the AMQP queue" in logged.text and broker.url in logged.text
    assert caplog.records and broker.password not in caplog.text and broker.password not in logged.text


async def test_a_poison_message_is_dead_lettered_with_its_reason_acknowledged_and_recorded(
    start_agent: StartAgent, base_config: dict[str, Any], broker: Broker, names: Names, amqp: None
) -> None:
    started, _ = await amqp_agent(start_agent, base_config, broker, names)
    bodies = {"m-json": b'{"type": "preemption", "id": ', "m-format": b'{"hello": "world"}'}
    for message_id, body in bodies.items():
        await publish(broker, names.exchange, body, message_id=message_id, routing_key=f"poison.{message_id}")

    async def dead_letters() -> bool:
        return len([d for d in await started.ledger.decisions() if d.action == "dead-letter"]) == 2

    await eventually(dead_letters, what="two dead-letter decisions")
    await settle(started)
    decisions = {d.trigger.labels["message_id"]: d for d in await started.ledger.decisions()}
    assert set(decisions) == set(bodies)  # nothing else: no event came of them
    for message_id, decision in decisions.items():
        assert decision.outcome == Outcome.FAILED and decision.trigger.source == "amqp"
        assert f"message {message_id} from queue {names.queue}" in decision.reason
        assert names.dead_letter_queue in decision.reason
    assert "unknown format" in decisions["m-format"].reason
    assert "JSON" in decisions["m-json"].reason or "json" in decisions["m-json"].reason
    assert await events_of(started) == []

    # Kept, as they came, with why: the dead-letter queue holds both.
    connection = await aio_pika.connect(broker.client_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(names.dead_letter_queue, passive=True)
        kept: dict[str, AbstractIncomingMessage] = {}
        for _ in range(2):
            message = await dead.get(timeout=10)
            assert message is not None
            await message.ack()
            kept[str(message.headers["x-scaling-agent-message-id"])] = message
        assert await dead.get(fail=False, timeout=10) is None
    for message_id, message in kept.items():
        assert message.body == bodies[message_id] and message.message_id == message_id
        assert message.headers[REASON_HEADER] == decisions[message_id].error
        assert message.headers["x-scaling-agent-queue"] == names.queue
        assert message.headers["x-scaling-agent-routing-key"] == f"poison.{message_id}"
        assert message.headers["x-scaling-agent-exchange"] == names.exchange
        assert message.headers["producer"] == "test"  # the original headers travel too
    assert "unknown format" in str(kept["m-format"].headers[REASON_HEADER])
    await started.stop()
    assert await waiting(broker, names.queue) == 0  # acknowledged, not redelivered forever


async def test_the_same_notice_published_twice_is_acted_on_once(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], broker: Broker, names: Names, amqp: None
) -> None:
    started, _ = await amqp_agent(start_agent, base_config, broker, names, rules=cordon_rule_and_node(cluster))
    for message_id in ("m-1", "m-2"):  # two watchers forwarding it, or a producer's retry
        await publish(broker, names.exchange, native_notice(id="twice"), message_id=message_id)
    await eventually(lambda: has_events(started, 2), what="both deliveries in the ledger")
    await settle(started)
    first, again = sorted(await started.ledger.decisions(), key=lambda d: d.at)
    assert (first.action, first.outcome) == ("cordon", Outcome.APPLIED)
    assert (again.action, again.outcome) == ("redelivery", Outcome.NOOP)
    assert cluster.get("nodes", None, NODE)["spec"]["unschedulable"] is True
    await started.stop()
    assert await waiting(broker, names.queue) == 0


async def test_a_message_a_consumer_took_but_never_acknowledged_is_processed_by_the_agent(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], broker: Broker, names: Names, amqp: None
) -> None:
    # The topology as the agent declares it (the agent's own declarations must agree with it, or fail).
    connection = await aio_pika.connect(broker.client_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(names.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            names.queue, durable=True, arguments={"x-dead-letter-exchange": names.dead_letter_exchange}
        )
        await queue.bind(exchange, routing_key="#")
    await publish(broker, names.exchange, native_notice(id="taken"), message_id="m-taken")

    # Another consumer takes it and dies (its channel closes) before acknowledging.
    connection = await aio_pika.connect(broker.client_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue, passive=True)
        taken = await queue.get(timeout=10)
        assert taken is not None and not taken.redelivered
        await channel.close()

    started, _ = await amqp_agent(start_agent, base_config, broker, names, rules=cordon_rule_and_node(cluster))
    await eventually(lambda: has_events(started, 1), what="the redelivered notice in the ledger")
    await settle(started)
    [event] = await events_of(started)
    assert event["key"] == "notice|native|taken"
    [decision] = await started.ledger.decisions()
    assert (decision.action, decision.outcome) == ("cordon", Outcome.APPLIED)
    await started.stop()
    assert await waiting(broker, names.queue) == 0


async def test_an_agent_gone_after_recording_but_before_its_ack_gets_it_again_as_a_redelivery(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], broker: Broker, names: Names, amqp: None
) -> None:
    rules = cordon_rule_and_node(cluster)
    first, source = await amqp_agent(start_agent, base_config, broker, names, rules=rules)
    stored: list[str | None] = []

    async def gone_before_the_ack(message: AbstractIncomingMessage) -> None:  # the ack never reaches the broker
        stored.append(message.message_id)

    source._ack = gone_before_the_ack  # type: ignore[method-assign]
    await publish(broker, names.exchange, native_notice(id="unacked"), message_id="m-unacked")

    async def acknowledged_in_vain() -> bool:
        return bool(stored)

    await eventually(acknowledged_in_vain, what="the first agent stored it and tried its ack")
    await settle(first)
    await first.stop()  # its connection closes with the message unacknowledged: the broker requeues it
    assert await waiting(broker, names.queue) == 1

    second, _ = await amqp_agent(start_agent, base_config, broker, names, rules=rules)  # the same ledger
    await eventually(lambda: has_events(second, 2), what="the redelivery in the ledger")
    await settle(second)
    decisions = sorted(await second.ledger.decisions(), key=lambda d: d.at)
    assert [(d.action, d.outcome) for d in decisions] == [
        ("cordon", Outcome.APPLIED),
        ("redelivery", Outcome.NOOP),
    ]
    events = await events_of(second)
    assert {e["key"] for e in events} == {"notice|native|unacked"}
    await second.stop()
    assert await waiting(broker, names.queue) == 0  # acknowledged this time


async def test_a_message_the_ledger_cannot_take_is_handed_back_and_taken_later(
    start_agent: StartAgent,
    base_config: dict[str, Any],
    broker: Broker,
    names: Names,
    amqp: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(amqp_module, "LEDGER_RETRY_SECONDS", (0.05, 0.2))
    started, _ = await amqp_agent(start_agent, base_config, broker, names)
    accept = started.intake.accept
    attempts: list[bool] = []

    async def ledger_down_twice(events: Sequence[Event]) -> list[InboxEntry]:
        attempts.append(True)
        if len(attempts) <= 2:
            raise LedgerUnavailable("disk I/O error")
        return await accept(events)

    monkeypatch.setattr(started.intake, "accept", ledger_down_twice)
    await publish(broker, names.exchange, native_notice(id="later"), message_id="m-later")
    await eventually(lambda: has_events(started, 1), what="the notice, once the ledger takes it")
    await settle(started)
    assert len(attempts) == 3  # handed back twice (not acknowledged), delivered again, then recorded
    [decision] = await started.ledger.decisions()
    assert decision.trigger.event_key == "notice|native|later" and decision.outcome == Outcome.NOOP
    await started.stop()
    assert await waiting(broker, names.queue) == 0
    assert await waiting(broker, names.dead_letter_queue) == 0  # a ledger outage is no reason to dead-letter


async def test_the_consumer_reconnects_after_a_broker_restart(
    start_agent: StartAgent,
    base_config: dict[str, Any],
    broker: Broker,
    names: Names,
    amqp: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged = Recorder()
    monkeypatch.setattr(amqp_module, "log", logged)
    started, source = await amqp_agent(start_agent, base_config, broker, names)
    await publish(broker, names.exchange, native_notice(id="before"), message_id="m-before")
    await eventually(lambda: has_events(started, 1), what="the notice before the restart")

    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)  # same node, ports and data: the durable queue and binding are back

    await publish(broker, names.exchange, native_notice(id="after"), message_id="m-after")
    await eventually(lambda: has_events(started, 2), what="the notice after the restart", within=60)
    await settle(started)
    assert [e["key"] for e in await events_of(started)] == ["notice|native|before", "notice|native|after"]
    # aio-pika's robust connection did it: the consumer's task never crashed nor started over.
    assert source.consuming.is_set() and not started.supervisor.dead
    assert "lost the AMQP connection; reconnecting" in logged.text and "reconnected to the AMQP broker" in logged.text
    assert logged.text.count("consuming from the AMQP queue") == 1
    await started.stop()
    assert await waiting(broker, names.queue) == 0


async def test_an_unreachable_broker_does_not_keep_the_agent_from_starting_or_stopping(
    start_agent: StartAgent,
    base_config: dict[str, Any],
    broker: Broker,
    names: Names,
    amqp: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged = Recorder()
    monkeypatch.setattr(amqp_module, "log", logged)
    nowhere = settings(broker, names, url=f"amqp://{broker.user}@127.0.0.1:{free_port()}/")
    started = await start_agent(build_config(base_config, sources={"amqp": nowhere}))
    source = next(s for s in started.sources if isinstance(s, AmqpSource))

    async def retrying() -> bool:
        return logged.text.count("cannot connect to the AMQP broker; will retry") >= 2

    await eventually(retrying, what="two attempts, backing off")
    assert not source.consuming.is_set() and not started.supervisor.dead  # it keeps trying; nothing crashed
    assert broker.password not in logged.text
    began = time.monotonic()
    await started.stop()
    assert time.monotonic() - began < 5


def test_settings_name_what_is_missing_or_wrong(base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(agent.sources.SOURCES, AmqpSource.name, AmqpSource)
    # Off by default, and then it needs nothing.
    assert check_sources(build_config(base_config), origin="<test>")["amqp"].enabled is False

    cases = {
        "sources.amqp.url: is required when the source is enabled": {"enabled": True},
        "sources.amqp.url: must not hold the password": {"enabled": True, "url": "amqp://u:secret@h/"},
        "sources.amqp.url: must be amqp://": {"enabled": True, "url": "http://h/"},
        "sources.amqp.url: must name the user": {"enabled": True, "url": "amqp://h/", "password": {"env": "X"}},
        "sources.amqp.prefetch: must be ≥ 1": {"enabled": True, "url": "amqp://u@h/", "prefetch": 0},
        "sources.amqp.reconnect: must be longer than 0s": {"enabled": True, "url": "amqp://u@h/", "reconnect": 0},
    }
    for expected, section in cases.items():
        with pytest.raises(ConfigError) as raised:
            check_sources(build_config(base_config, sources={"amqp": section}), origin="<test>")
        assert any(line.startswith(expected) for line in raised.value.errors), raised.value.errors
        assert "secret" not in str(raised.value)

    # The password comes from its reference at connect time, into the URL, and only there.
    monkeypatch.setenv(PASSWORD_ENV, "p@ss/word")
    one = AmqpSettings.model_validate(
        {"enabled": True, "url": "amqp://agent@rabbit:5672/prod", "password": {"env": PASSWORD_ENV}}
    )
    assert one.broker_url() == "amqp://agent:p%40ss%2Fword@rabbit:5672/prod"
    assert one.dead_letter_queue == "scaling-agent.events.dead"
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        one.broker_url()
