"""Both ledgers keep the same promises: durable inbox with dedup, pending after a crash, decisions by time/target."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from agent.ledger import Ledger, RedisLedger, SqliteLedger
from agent.structs import Decision, Event, Outcome, TargetRef, Trigger, utcnow


@pytest_asyncio.fixture(params=["sqlite", "redis"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        store: Ledger = SqliteLedger(f"sqlite:///{tmp_path}/ledger.db")
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisLedger(url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    await store.open()
    yield store
    await store.close()


def event(key: str, fingerprint: str = "f1", status: str = "firing") -> Event:
    return Event(
        source="alertmanager",
        key=key,
        alertname="MCPFrequentScaling",
        status=status,
        fingerprint=fingerprint,
        labels={"alertname": "MCPFrequentScaling", "namespace": "cortex-mcp"},
        starts_at=datetime(2026, 11, 29, 8, tzinfo=UTC),
    )


def decision(
    id: str, *, at: datetime, target: str | None, action: str = "pause", outcome: Outcome = Outcome.APPLIED
) -> Decision:
    return Decision(
        id=id,
        at=at,
        trigger=Trigger("alertmanager", "MCPFrequentScaling", "firing", "f1"),
        rule="r",
        action=action,
        target=None if target is None else TargetRef("ScaledObject", "cortex-mcp", target),
        before={"paused-replicas": None},
        after={"paused-replicas": 3},
        reason="because",
        dry_run=False,
        outcome=outcome,
    )


async def test_inbox_dedups_and_keeps_pending_until_processed(ledger: Ledger) -> None:
    first = await ledger.accept([event("k1"), event("k2", fingerprint="f2")])
    again = await ledger.accept([event("k1")])
    assert [e.duplicate_of for e in first] == [None, None]
    assert again[0].duplicate_of == first[0].id
    pending = await ledger.pending()
    assert [p.id for p in pending] == [first[0].id, first[1].id, again[0].id]
    assert pending[2].duplicate_of == first[0].id
    assert (pending[0].event.key, dict(pending[0].event.labels)) == ("k1", dict(event("k1").labels))
    await ledger.mark_processed(first[0].id)
    assert [p.id for p in await ledger.pending()] == [first[1].id, again[0].id]


async def test_decisions_by_time_and_target_and_last_change(ledger: Ledger) -> None:
    now = utcnow()
    await ledger.record(decision("d1", at=now - timedelta(hours=2), target="a"))
    await ledger.record(decision("d2", at=now - timedelta(minutes=5), target="b"))
    await ledger.record(decision("d3", at=now - timedelta(minutes=1), target="a", action="revert"))
    await ledger.record(decision("d4", at=now, target="a", outcome=Outcome.REFUSED))
    await ledger.record(decision("d5", at=now, target=None, action="notify"))
    assert [d.id for d in await ledger.decisions()] == ["d1", "d2", "d3", "d4", "d5"]
    assert [d.id for d in await ledger.decisions(since=now - timedelta(hours=1))] == ["d2", "d3", "d4", "d5"]
    a = TargetRef("ScaledObject", "cortex-mcp", "a")
    assert [d.id for d in await ledger.decisions(target=a)] == ["d1", "d3", "d4"]
    # The cooldown counts applied forward changes only: not the revert, not the refusal.
    last = await ledger.last_change(a)
    assert last is not None and last.id == "d1"
    assert await ledger.last_change(TargetRef("ScaledObject", "cortex-mcp", "zzz")) is None
    stored = (await ledger.decisions(target=a))[0]
    assert stored == decision("d1", at=stored.at, target="a")


async def test_agent_runs_on_the_redis_ledger(
    cluster,
    start_agent,
    base_config,
    redis_url: str,  # type: ignore[no-untyped-def]
) -> None:
    from agent.demo.alerts import alert, payload
    from tests.conftest import NS, build_config, patches, post, settle

    config = build_config(base_config, ledger={"url": redis_url, "key_prefix": f"agent-{uuid.uuid4().hex[:8]}"})
    agent = await start_agent(config)
    body = payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"}))
    assert (await post(agent, body)).status == 200
    assert (await post(agent, body)).status == 200
    await settle(agent)
    assert patches(cluster, "mcp-http-scaler") == 1
    assert [d.outcome for d in await agent.ledger.decisions()] == [Outcome.APPLIED, Outcome.NOOP]


async def test_processed_events_past_the_retention_are_pruned(tmp_path: Path) -> None:
    store = SqliteLedger(f"sqlite:///{tmp_path}/ledger.db", inbox_retention=timedelta(0))
    await store.open()
    try:
        [done, waiting] = await store.accept([event("k1"), event("k2", fingerprint="f2")])
        await store.mark_processed(done.id)
        assert await store.prune_inbox() == 1
        assert [p.id for p in await store.pending()] == [waiting.id]  # unprocessed events are never dropped
    finally:
        await store.close()


async def test_redis_drops_processed_events_and_expires_dedup_keys(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisLedger(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}", inbox_retention=timedelta(hours=1))
    await store.open()
    try:
        [entry] = await store.accept([event("k1")])
        await store.mark_processed(entry.id)
        client = aioredis.from_url(redis_url)
        assert await client.hlen(f"{store.prefix}:events") == 0
        assert 0 < await client.ttl(f"{store.prefix}:event-key:k1") <= 3600
        await client.aclose()
        assert (await store.accept([event("k1")]))[0].duplicate_of == entry.id  # still recognised
    finally:
        await store.close()
