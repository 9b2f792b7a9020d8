"""Both ledgers keep the same promises: durable inbox with dedup, pending after a crash, decisions by time/target."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from agent.actions import FORWARD_ACTIONS
from agent.ledger import (
    DuplicateDecision,
    Ledger,
    LedgerLocked,
    LedgerNotFound,
    LedgerUnavailable,
    RedisLedger,
    SqliteLedger,
    UnknownDecision,
)
from agent.structs import Decision, Event, Outcome, TargetRef, Trigger, new_id, utcnow


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
    await ledger.mark_processed([first[0].id])
    assert [p.id for p in await ledger.pending()] == [first[1].id, again[0].id]


async def test_deliveries_stay_pending_until_unpacked_with_their_events(ledger: Ledger) -> None:
    at = datetime(2026, 11, 29, 8, tzinfo=UTC)
    ids = [await ledger.receive(source="alertmanager", body=f'{{"n":{n}}}'.encode(), received_at=at) for n in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    pending = await ledger.pending_deliveries(limit=2)
    assert [(d.id, d.source, d.body, d.received_at) for d in pending] == [
        (ids[0], "alertmanager", b'{"n":0}', at),
        (ids[1], "alertmanager", b'{"n":1}', at),
    ]
    assert await ledger.pending_deliveries(limit=2) == pending  # the same ones until they are unpacked

    [first, second] = await ledger.unpack([(ids[0], [event("k1")]), (ids[1], [event("k1"), event("k2")])])
    assert [e.duplicate_of for e in first] == [None]
    assert [e.duplicate_of for e in second] == [first[0].id, None]  # dedup also across one batch
    assert [d.id for d in await ledger.pending_deliveries(limit=10)] == [ids[2]]
    assert [e.id for e in await ledger.pending()] == [first[0].id, *(e.id for e in second)]


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
    # The cooldown counts applied forward changes only: not the revert, not the refusal; and only of its fields.
    last = await ledger.last_change(a, fields=["paused-replicas"], actions=FORWARD_ACTIONS)
    assert last is not None and last.id == "d1"
    assert await ledger.last_change(a, fields=["max-replicas"], actions=FORWARD_ACTIONS) is None
    zzz = TargetRef("ScaledObject", "cortex-mcp", "zzz")
    assert await ledger.last_change(zzz, fields=["paused-replicas"], actions=FORWARD_ACTIONS) is None
    stored = (await ledger.decisions(target=a))[0]
    assert stored == decision("d1", at=stored.at, target="a")


async def test_a_decision_id_is_written_once_and_never_replaced(ledger: Ledger) -> None:
    now = utcnow()
    await ledger.record(decision("d1", at=now, target="a"))
    with pytest.raises(DuplicateDecision):
        await ledger.record(decision("d1", at=now, target="b", outcome=Outcome.FAILED))
    await ledger.record(decision("d2", at=now, target="b"))  # the ledger goes on taking other decisions
    [first, second] = await ledger.decisions()
    assert (first.id, first.target, first.outcome) == ("d1", TargetRef("ScaledObject", "cortex-mcp", "a"), "applied")
    assert second.id == "d2"


async def test_applying_rows_are_completed_in_place_and_count_for_the_cooldown(ledger: Ledger) -> None:
    now = utcnow()
    a = TargetRef("ScaledObject", "cortex-mcp", "a")
    await ledger.record(decision("d1", at=now - timedelta(minutes=1), target="a"))
    await ledger.record(decision("d2", at=now, target="a", outcome=Outcome.APPLYING))
    await ledger.record(decision("d3", at=now, target="b", outcome=Outcome.APPLYING))
    assert [d.id for d in await ledger.unfinished()] == ["d2", "d3"]
    last = await ledger.last_change(a, fields=["paused-replicas"], actions=FORWARD_ACTIONS)
    assert last is not None and last.id == "d2"  # a change whose outcome is not known yet still counts

    await ledger.complete(decision("d2", at=now, target="a", outcome=Outcome.FAILED))
    await ledger.complete(decision("d3", at=now, target="b", outcome=Outcome.APPLIED))
    assert await ledger.unfinished() == []
    assert [(d.id, d.outcome) for d in await ledger.decisions()] == [
        ("d1", Outcome.APPLIED),
        ("d2", Outcome.FAILED),
        ("d3", Outcome.APPLIED),
    ]
    last = await ledger.last_change(a, fields=["paused-replicas"], actions=FORWARD_ACTIONS)
    assert last is not None and last.id == "d1"  # the failed one no longer counts
    with pytest.raises(UnknownDecision):
        await ledger.complete(decision("d3", at=now, target="b", outcome=Outcome.FAILED))  # completed already
    with pytest.raises(UnknownDecision):
        await ledger.complete(decision("d9", at=now, target="b"))
    assert await ledger.known(["d1", "d9", "d3"]) == {"d1", "d3"}


def test_decision_ids_are_unique_and_ordered_by_construction() -> None:
    ids = [new_id() for _ in range(100_000)]  # far more than a storm makes in one millisecond or one second
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


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
        await store.mark_processed([done.id])
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
        await store.mark_processed([entry.id])
        client = aioredis.from_url(redis_url)
        assert await client.hlen(f"{store.prefix}:events") == 0
        assert 0 < await client.ttl(f"{store.prefix}:event-key:k1") <= 3600
        await client.aclose()
        assert (await store.accept([event("k1")]))[0].duplicate_of == entry.id  # still recognised
    finally:
        await store.close()


async def test_sqlite_journal_keeps_what_was_acknowledged_across_a_crash(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    at = datetime(2026, 11, 29, 8, tzinfo=UTC)
    store = SqliteLedger(url)
    await store.open()
    ids = [await store.receive(source="alertmanager", body=b"x" * n, received_at=at) for n in (10, 20, 30)]
    await store.unpack([(ids[0], [event("k1")])])
    # Killed here: no close(); the kernel drops a dead process's lock. A write torn by a power loss leaves half a
    # record at the end of the journal.
    assert store._lock_fd is not None
    os.close(store._lock_fd)
    store._lock_fd = None
    [segment] = (tmp_path / "ledger.db-inbox").glob("*.journal")
    with segment.open("ab") as file:
        file.write(b"\x40\x00\x00\x00partial")

    again = SqliteLedger(url)
    await again.open()
    try:
        assert [(d.id, d.body) for d in await again.pending_deliveries(limit=10)] == [
            (ids[1], b"x" * 20),
            (ids[2], b"x" * 30),
        ]
        after = await again.receive(source="alertmanager", body=b"new", received_at=at)
        assert after == ids[2] + 1  # appended after the cut-off tail, never reusing an id
        assert [d.body for d in await again.pending_deliveries(limit=10)] == [b"x" * 20, b"x" * 30, b"new"]
    finally:
        await again.close()
        await store.close()


async def test_sqlite_journal_drops_segments_once_unpacked(tmp_path: Path) -> None:
    store = SqliteLedger(f"sqlite:///{tmp_path}/ledger.db")
    store.journal.segment_bytes = 100  # a new segment every few deliveries
    await store.open()
    try:
        at = utcnow()
        ids = [await store.receive(source="alertmanager", body=b"y" * 40, received_at=at) for _ in range(6)]
        journal = tmp_path / "ledger.db-inbox"
        assert len(list(journal.glob("*.journal"))) >= 3
        while pending := await store.pending_deliveries(limit=2):
            await store.unpack([(d.id, []) for d in pending])
        assert len(list(journal.glob("*.journal"))) == 1  # only the one being appended to is kept
        assert await store.pending_deliveries(limit=10) == []
        assert await store.receive(source="alertmanager", body=b"z", received_at=at) == ids[-1] + 1
        assert [d.body for d in await store.pending_deliveries(limit=10)] == [b"z"]
    finally:
        await store.close()


async def test_sqlite_journal_write_failure_is_a_clean_503(tmp_path: Path) -> None:
    store = SqliteLedger(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    try:
        first = await store.receive(source="alertmanager", body=b"ok", received_at=utcnow())
        writable, store.journal._fd = store.journal._fd, os.open(os.devnull, os.O_RDONLY)  # writes now fail
        with pytest.raises(LedgerUnavailable):
            await store.receive(source="alertmanager", body=b"lost", received_at=utcnow())
        os.close(store.journal._fd)
        store.journal._fd = writable  # the disk is back: the next append lands cleanly after the first
        second = await store.receive(source="alertmanager", body=b"ok again", received_at=utcnow())
        assert second == first + 1  # the failed one's id is given again: ids stay gapless
        assert [(d.id, d.body) for d in await store.pending_deliveries(limit=10)] == [
            (first, b"ok"),
            (second, b"ok again"),
        ]
    finally:
        await store.close()


async def test_sqlite_synchronous_full_syncs_the_journal_before_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store = SqliteLedger(f"sqlite:///{tmp_path}/ledger.db?synchronous=full")
    await store.open()
    try:
        ids = await asyncio.gather(
            *(store.receive(source="alertmanager", body=f"{n}".encode(), received_at=utcnow()) for n in range(5))
        )
        assert len(synced) == 1  # the five requests came together: one write, one fdatasync, then five answers
        assert [d.body for d in await store.pending_deliveries(limit=10)] == [b"0", b"1", b"2", b"3", b"4"]
        assert sorted(ids) == list(ids)
        await store.receive(source="alertmanager", body=b"5", received_at=utcnow())
        assert len(synced) == 2
    finally:
        await store.close()


def files(folder: Path) -> list[tuple[str, int]]:
    """The ledger's files and sizes, leaving out sqlite's -wal and -shm (a reader may map those)."""
    return sorted(
        (p.name, p.stat().st_size) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    )


async def test_a_reader_never_creates_a_ledger(tmp_path: Path) -> None:
    reader = SqliteLedger(f"sqlite:///{tmp_path}/missing/ledger.db", readonly=True)
    with pytest.raises(LedgerNotFound, match="ledger not found"):
        await reader.open()
    await reader.close()
    assert files(tmp_path) == []


async def test_a_reader_beside_the_writer_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    writer = SqliteLedger(url)
    await writer.open()
    try:
        first = await writer.receive(source="alertmanager", body=b"one", received_at=utcnow())
        await writer.unpack([(first, [event("k1")])])  # everything acknowledged so far is unpacked
        await writer.record(decision("d1", at=utcnow(), target="a"))
        before = files(tmp_path)
        for _ in range(3):
            reader = SqliteLedger(url, readonly=True)
            await reader.open()
            try:
                assert [d.id for d in await reader.decisions()] == ["d1"]
                with pytest.raises(LedgerUnavailable, match="read-only"):
                    await reader.record(decision("d2", at=utcnow(), target="a"))
            finally:
                await reader.close()
        assert files(tmp_path) == before
        # The writer's inbox still works: what it acknowledges next is there to unpack.
        second = await writer.receive(source="alertmanager", body=b"two", received_at=utcnow())
        assert [(d.id, d.body) for d in await writer.pending_deliveries(limit=10)] == [(second, b"two")]
    finally:
        await writer.close()


async def test_one_writer_per_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    first = SqliteLedger(url)
    await first.open()
    second = SqliteLedger(url)
    try:
        with pytest.raises(LedgerLocked, match=f"in use by another agent \\(pid {os.getpid()}\\)"):
            await second.open()
    finally:
        await second.close()
        await first.close()
    third = SqliteLedger(url)  # the first let go: a restart is never blocked
    await third.open()
    await third.close()


async def test_a_journal_deleted_under_the_writer_is_refused_and_reported_never_acknowledged(tmp_path: Path) -> None:
    # What `decisions` used to do to a running agent, or anything else that removes the file being appended to.
    store = SqliteLedger(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    try:
        await store.receive(source="alertmanager", body=b"before", received_at=utcnow())
        [segment] = (tmp_path / "ledger.db-inbox").glob("*.journal")
        segment.unlink()
        with pytest.raises(LedgerUnavailable, match="was deleted"):
            await store.receive(source="alertmanager", body=b"lost", received_at=utcnow())
        with pytest.raises(LedgerUnavailable, match="was deleted"):
            await store.ping()  # /readyz fails ...
        assert "ledger-journal" in store.supervisor.dead  # ... and /healthz, so that the pod is restarted
    finally:
        await store.close()
