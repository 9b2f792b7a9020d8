"""
The Redis-stream consumer against a real redis-server: a notice read from the stream is recorded, then acked; a
poison entry goes to the dead letter with its reason; entries left pending by a dead consumer are claimed, and an
agent restarted under its own name takes its pending entries back first; the ledger down means nothing is acked;
a redelivery is acted on once; and the consumer outlives a Redis restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import yaml

from agent.app import Agent
from agent.config import ConfigError
from agent.configfile import Config
from agent.devcluster import DevCluster
from agent.ledger import LedgerUnavailable
from agent.sources import SOURCES, check_sources
from agent.sources.redis_stream import RedisStreamSettings, RedisStreamSource
from agent.structs import Decision, Event, EventKind, InboxEntry, Outcome
from tests.conftest import StartAgent, _require_binary, build_config, free_port, settle
from tests.test_events import CORDON_ON_PREEMPTION, NODE, native_notice

pytestmark = pytest.mark.redis

WAIT_SECONDS = 20.0


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCES, RedisStreamSource.name, RedisStreamSource)  # the one registry line


@pytest.fixture()
def names() -> dict[str, str]:
    """A stream, group, dead letter and consumer of this test's own: the session's redis-server is shared."""
    run = uuid.uuid4().hex[:8]
    return {
        "stream": f"test-{run}:events",
        "group": f"agent-{run}",
        "dead_letter": f"test-{run}:events:dead",
        "consumer": f"pod-{run}",
    }


@pytest_asyncio.fixture()
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client: the producer, and a consumer that dies before its ack."""
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def stream_config(
    base_config: dict[str, Any], *, url: str, names: dict[str, str], rules: list[Any] | None = None, **settings: Any
) -> Config:
    """The agent's config with this source on (short reads, so a test's claims come soon), and ``rules`` if given."""
    section = {"enabled": True, "url": url, "block": "100ms", **names, **settings}
    extra: dict[str, Any] = {} if rules is None else {"rules": rules}
    return build_config(base_config, sources={"redis_stream": section}, **extra)


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = WAIT_SECONDS) -> None:
    """Wait until ``check()`` holds; a TimeoutError (the test fails, never hangs) past ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def pending(client: aioredis.Redis, names: dict[str, str]) -> int:
    return int((await client.xpending(names["stream"], names["group"]))["pending"])


async def stored_events(agent: Agent) -> list[dict[str, Any]]:
    rows = await agent.ledger._read("SELECT body FROM events ORDER BY id")  # type: ignore[attr-defined]
    return [json.loads(row[0]) for row in rows]


async def decisions_of(agent: Agent, count: int) -> list[Decision]:
    async def enough() -> bool:
        return len(await agent.ledger.decisions()) >= count

    await eventually(enough)
    await settle(agent)
    return await agent.ledger.decisions()


async def all_acked(client: aioredis.Redis, names: dict[str, str]) -> None:
    async def none_pending() -> bool:
        return await pending(client, names) == 0

    await eventually(none_pending)


def notice(notice_id: str = "notice-1") -> dict[bytes, bytes]:
    return {b"body": json.dumps(native_notice(id=notice_id)).encode()}


async def test_a_notice_from_the_stream_is_recorded_then_acked(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    agent = await start_agent(stream_config(base_config, url=redis_url, names=names))
    await raw.xadd(names["stream"], notice())
    [decision] = await decisions_of(agent, 1)
    assert decision.outcome == Outcome.NOOP and decision.reason == "no rule matches preemption"
    assert decision.trigger.source == "redis_stream" and decision.trigger.alertname == "preemption"
    [event] = await stored_events(agent)
    assert event["kind"] == EventKind.NOTICE and event["key"] == "notice|native|notice-1"
    assert event["deadline"] is not None  # the urgent lane's ticket
    await all_acked(raw, names)
    assert (await raw.xinfo_groups(names["stream"]))[0]["name"].decode() == names["group"]  # it made the group


async def test_a_poison_entry_goes_to_the_dead_letter_with_its_reason_and_is_acked(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    agent = await start_agent(stream_config(base_config, url=redis_url, names=names))
    malformed = await raw.xadd(names["stream"], {b"body": b"{not json", b"producer": b"test"})
    unknown = await raw.xadd(names["stream"], {b"body": b'{"hello": 1}'})
    fieldless = await raw.xadd(names["stream"], {b"payload": b"{}"})
    good = await raw.xadd(names["stream"], notice())  # the poison ahead of it holds nothing up
    decisions = await decisions_of(agent, 4)
    await all_acked(raw, names)

    dead = {fields[b"source_id"]: fields for _, fields in await raw.xrange(names["dead_letter"])}
    assert set(dead) == {malformed, unknown, fieldless}
    assert dead[malformed][b"reason"].startswith(b"malformed JSON")
    assert dead[malformed][b"body"] == b"{not json" and dead[malformed][b"producer"] == b"test"  # as it came
    assert dead[unknown][b"reason"].startswith(b"unknown format: a JSON object with keys [hello]")
    assert dead[fieldless][b"reason"] == b"no field 'body' in the entry (its fields: payload)"
    assert all(b"\n" not in fields[b"reason"] for fields in dead.values())

    failed = [d for d in decisions if d.action == "dead-letter"]
    assert len(failed) == 3 and all(d.outcome == Outcome.FAILED for d in failed)
    by_entry = {d.trigger.labels["entry"]: d for d in failed}
    assert by_entry[malformed.decode()].reason.startswith(
        f"stream {names['stream']} entry {malformed.decode()} moved to {names['dead_letter']}: malformed JSON"
    )
    [noted] = [d for d in decisions if d.action != "dead-letter"]
    assert noted.trigger.event_key == "notice|native|notice-1" and good not in dead


async def test_an_entry_left_pending_by_a_dead_consumer_is_claimed_and_recorded_once(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    await raw.xgroup_create(names["stream"], names["group"], id="0", mkstream=True)
    await raw.xadd(names["stream"], notice())
    # Another pod read it and died before its ack: it stays pending for that consumer.
    [[_, read]] = await raw.xreadgroup(names["group"], "gone-pod", {names["stream"]: ">"})
    assert len(read) == 1 and await pending(raw, names) == 1

    agent = await start_agent(stream_config(base_config, url=redis_url, names=names, claim_idle="200ms"))
    [decision] = await decisions_of(agent, 1)
    assert decision.reason == "no rule matches preemption"
    await all_acked(raw, names)
    assert len(await stored_events(agent)) == 1
    assert await raw.xrange(names["dead_letter"]) == []


async def test_while_the_ledger_is_down_nothing_is_acked_and_a_restart_takes_its_own_entries_back_first(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    # claim_idle an hour: whatever the second agent finds, it finds as its own pending entries, not by claiming.
    config = stream_config(base_config, url=redis_url, names=names, claim_idle="1h")
    first = await start_agent(config)
    tries: list[int] = []

    async def ledger_down(events: Any) -> list[InboxEntry]:
        tries.append(len(events))
        raise LedgerUnavailable("disk full (the test)")

    first.intake.accept = ledger_down  # type: ignore[method-assign]
    await raw.xadd(names["stream"], notice("before-restart"))

    async def retried() -> bool:
        return len(tries) >= 2  # the backoff's first retry

    await eventually(retried)
    consumers = await raw.xinfo_consumers(names["stream"], names["group"])
    assert [(c["name"].decode(), c["pending"]) for c in consumers] == [(names["consumer"], 1)]  # read, not acked
    await first.stop()  # while it is still pending for this consumer name
    await raw.xadd(names["stream"], notice("after-restart"))  # and a new one behind it

    second = await start_agent(config)  # the same consumer name: the pod restarted
    decisions = await decisions_of(second, 2)
    assert [d.trigger.event_key for d in decisions] == ["notice|native|before-restart", "notice|native|after-restart"]
    assert [e["key"] for e in await stored_events(second)] == [
        "notice|native|before-restart",
        "notice|native|after-restart",
    ]
    await all_acked(raw, names)


async def test_an_entry_deleted_while_pending_is_acked_and_nothing_else(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    await raw.xgroup_create(names["stream"], names["group"], id="0", mkstream=True)
    gone = await raw.xadd(names["stream"], notice("deleted"))
    await raw.xreadgroup(names["group"], names["consumer"], {names["stream"]: ">"})  # pending for this pod
    await raw.xdel(names["stream"], gone)  # trimmed away before the pod came back
    await raw.xadd(names["stream"], notice("kept"))
    agent = await start_agent(stream_config(base_config, url=redis_url, names=names, claim_idle="1h"))
    [decision] = await decisions_of(agent, 1)
    assert decision.trigger.event_key == "notice|native|kept"
    await all_acked(raw, names)
    assert await raw.xrange(names["dead_letter"]) == []


async def test_the_ledger_coming_back_records_the_entry_then_acks_it(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    agent = await start_agent(stream_config(base_config, url=redis_url, names=names))
    real = agent.intake.accept
    tries: list[int] = []

    async def down_once(events: Any) -> list[InboxEntry]:
        tries.append(len(events))
        if len(tries) == 1:
            assert await pending(raw, names) == 1  # read, and not acked before it is recorded
            raise LedgerUnavailable("locked (the test)")
        return await real(events)

    agent.intake.accept = down_once  # type: ignore[method-assign]
    await raw.xadd(names["stream"], notice())
    [decision] = await decisions_of(agent, 1)
    assert decision.reason == "no rule matches preemption" and len(tries) == 2
    await all_acked(raw, names)


async def test_the_same_notice_twice_is_a_redelivery_acted_on_once(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    raw: aioredis.Redis,
    names: dict[str, str],
) -> None:
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    agent = await start_agent(stream_config(base_config, url=redis_url, names=names, rules=[CORDON_ON_PREEMPTION]))
    for _ in range(2):  # the producer sent it twice (two watchers, or its own retry)
        await raw.xadd(names["stream"], notice())
    first, again = await decisions_of(agent, 2)
    assert first.outcome == Outcome.APPLIED and first.action == "cordon"
    assert again.outcome == Outcome.NOOP and again.action == "redelivery"
    assert cluster.get("nodes", None, NODE)["spec"]["unschedulable"] is True
    await all_acked(raw, names)


def test_the_settings_are_checked_with_their_field_paths(base_config: dict[str, Any]) -> None:
    def errors(section: dict[str, Any]) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            check_sources(build_config(base_config, sources={"redis_stream": section}), origin="<test>")
        return caught.value.errors

    assert errors({"enabled": True}) == [
        "sources.redis_stream.url: is required when the source is enabled (redis://host:6379/0)"
    ]
    assert errors({"enabled": True, "url": "http://redis:6379"}) == [
        "sources.redis_stream.url: must start with redis://, rediss:// or unix://"
    ]
    assert errors({"enabled": True, "url": "redis://redis:port/0"}) == [
        "sources.redis_stream.url: is not a Redis url: Port could not be cast to integer value as 'port'"
    ]
    assert errors({"enabled": True, "url": "redis://:hunter2@redis:6379/0"}) == [
        "sources.redis_stream.url: put the password in password (an env var or a file), not in the url"
    ]
    problems = errors(
        {
            "enabled": True,
            "url": "redis://redis:6379/0",
            "stream": "s",
            "dead_letter": "s",
            "block": "0s",
            "batch": 0,
            "field": "reason",
        }
    )
    assert sorted(problems) == [
        "sources.redis_stream.batch: must be ≥ 1",
        "sources.redis_stream.block: must be at least 1ms",
        "sources.redis_stream.dead_letter: must differ from stream (a dead letter would be read again, forever)",
        "sources.redis_stream.field: must not be reason or source_id: a dead letter adds those fields",
    ]
    # Off (the default), it needs nothing.
    settings = check_sources(build_config(base_config), origin="<test>")["redis_stream"]
    assert not settings.enabled


async def test_a_password_that_cannot_be_read_stops_the_agent_naming_the_field(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    redis_url: str,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_REDIS_STREAM_PASSWORD", raising=False)
    config = stream_config(base_config, url=redis_url, names=names, password={"env": "TEST_REDIS_STREAM_PASSWORD"})
    with pytest.raises(ConfigError, match=r"sources\.redis_stream\.password: environment variable"):
        await start_agent(config)


# --- a Redis restart: this test's own redis-server, stopped and started again on the same port ----------------


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.binary = _require_binary("redis-server")
        self.port = free_port()
        self.folder = folder
        self.process: asyncio.subprocess.Process | None = None
        self.args: tuple[str, ...] = ()  # more of redis-server's options (a password)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *self.args,
            cwd=self.folder,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    await writer.wait_closed()
                    return
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()  # a crash: no goodbye to the clients
            async with asyncio.timeout(WAIT_SECONDS):
                await self.process.wait()
            self.process = None


@pytest_asyncio.fixture()
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    await server.kill()


async def test_the_consumer_reconnects_after_a_redis_restart(
    own_redis: RedisServer,  # first: it stops after the agent
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    names: dict[str, str],
) -> None:
    await own_redis.start()
    agent = await start_agent(stream_config(base_config, url=own_redis.url, names=names))
    producer = aioredis.from_url(own_redis.url)
    try:
        await producer.xadd(names["stream"], notice("before"))
        await decisions_of(agent, 1)
        await all_acked(producer, names)

        await own_redis.kill()  # its data goes with it (no persistence): the stream and the group too
        await own_redis.start()
        await producer.xadd(names["stream"], notice("after"))  # the consumer re-creates the group from the start
        decisions = await decisions_of(agent, 2)
        assert [d.trigger.event_key for d in decisions] == ["notice|native|before", "notice|native|after"]
        await all_acked(producer, names)
    finally:
        await producer.aclose()


def test_events_keep_the_webhooks_keys_so_both_paths_dedup(names: dict[str, str]) -> None:
    """The stream's events differ from the webhook's only by their source: the same notice is the same key."""
    from agent.notices import decode_any
    from agent.sources.events import event_of
    from agent.structs import utcnow

    now = utcnow()
    [message] = decode_any(notice()[b"body"], now=now)
    webhook = event_of(message, received_at=now)
    source = RedisStreamSource.__new__(RedisStreamSource)
    source.settings = RedisStreamSettings.model_validate({"enabled": True, "url": "redis://x", **names})
    [stream] = source._decode(notice(), entry_id="0-1", received=now)
    assert isinstance(stream, Event) and stream.source == "redis_stream"
    assert stream.key == webhook.key and stream.deadline == webhook.deadline


async def test_the_password_is_read_from_its_secret_and_used(
    own_redis: RedisServer,
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own_redis.args = ("--requirepass", "s3cret-for-the-test")
    await own_redis.start()
    monkeypatch.setenv("TEST_REDIS_STREAM_PASSWORD", "s3cret-for-the-test")
    password = {"env": "TEST_REDIS_STREAM_PASSWORD"}
    agent = await start_agent(stream_config(base_config, url=own_redis.url, names=names, password=password))
    producer = aioredis.from_url(own_redis.url, password="s3cret-for-the-test")
    try:
        await producer.xadd(names["stream"], notice())
        [decision] = await decisions_of(agent, 1)
        assert decision.reason == "no rule matches preemption"
        await all_acked(producer, names)
    finally:
        await producer.aclose()


def test_check_config_with_secrets_names_the_streams_password(
    base_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    section = {"enabled": True, "url": "redis://127.0.0.1:6379/0", "password": {"env": "NO_SUCH_REDIS_PASSWORD"}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({**base_config, "sources": {"redis_stream": section}}))
    assert main(["check-config", str(path), "--secrets"]) == 1
    assert "sources.redis_stream.password: " in capsys.readouterr().err
