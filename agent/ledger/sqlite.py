"""
The default ledger: one sqlite file in WAL mode, written through aiosqlite.

Writes are group-committed: callers put their statements on a queue and await
a future; one writer task drains whatever is queued, runs it in a single
transaction and resolves every future after the commit. Concurrent webhook
requests then share one fsync instead of paying one each, while each request
still answers only after its own rows are on disk.

Durability promise: ``synchronous=NORMAL`` in WAL mode survives a killed or
crashed agent process (the case that matters in a pod); it can lose the last
transactions on a power loss of the node. Set ``synchronous=FULL`` by putting
``?synchronous=full`` on the URL to survive that too, at a cost in throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from agent.ledger.base import COOLDOWN_ACTIONS, LedgerUnavailable
from agent.structs import Decision, Event, InboxEntry, Outcome, TargetRef

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    duplicate_of INTEGER,
    processed_at REAL
);
CREATE INDEX IF NOT EXISTS events_key ON events (key) WHERE duplicate_of IS NULL;
CREATE INDEX IF NOT EXISTS events_pending ON events (id) WHERE processed_at IS NULL;
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    target TEXT,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
CREATE INDEX IF NOT EXISTS decisions_target ON decisions (target, at);
"""

Job = Callable[[aiosqlite.Connection], Any]


class SqliteLedger:
    def __init__(self, url: str, *, inbox_retention: timedelta = timedelta(days=7)) -> None:
        self.inbox_retention = inbox_retention
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute/path.db
        self.path = Path(path)
        self.synchronous = "FULL" if "synchronous=full" in query.lower() else "NORMAL"
        self._db: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        await self._db.executescript(SCHEMA)
        self._writer = asyncio.create_task(self._write_loop(), name="ledger-writer")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        await self._read("SELECT 1")

    async def _write(self, job: Job) -> Any:
        if self._db is None or self._writer is None or self._writer.done():
            raise LedgerUnavailable("sqlite ledger is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _write_loop(self) -> None:
        assert self._db is not None
        db = self._db
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            results: list[Any] = []
            try:
                await db.execute("BEGIN IMMEDIATE")
                for job, _ in batch:
                    results.append(await job(db))
                await db.execute("COMMIT")
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                error = LedgerUnavailable(f"sqlite write failed: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._db is None:
            raise LedgerUnavailable("sqlite ledger is not open")
        try:
            async with self._db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except Exception as exc:
            raise LedgerUnavailable(f"sqlite read failed: {exc}") from exc

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]:
        async def job(db: aiosqlite.Connection) -> list[InboxEntry]:
            entries = []
            for event in events:
                async with db.execute(
                    "SELECT id FROM events WHERE key = ? AND duplicate_of IS NULL LIMIT 1", (event.key,)
                ) as cursor:
                    row = await cursor.fetchone()
                first = None if row is None else int(row[0])
                cursor = await db.execute(
                    "INSERT INTO events (key, body, received_at, duplicate_of) VALUES (?, ?, ?, ?)",
                    (event.key, event.to_json(), event.received_at.timestamp(), first),
                )
                assert cursor.lastrowid is not None
                entries.append(InboxEntry(id=cursor.lastrowid, event=event, duplicate_of=first))
            return entries

        result: list[InboxEntry] = await self._write(job)
        return result

    async def pending(self) -> list[InboxEntry]:
        rows = await self._read("SELECT id, body, duplicate_of FROM events WHERE processed_at IS NULL ORDER BY id")
        return [InboxEntry(id=row[0], event=Event.from_json(row[1]), duplicate_of=row[2]) for row in rows]

    async def mark_processed(self, entry_id: int) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE events SET processed_at = ? WHERE id = ?", (time.time(), entry_id))

        await self._write(job)

    async def prune_inbox(self) -> int:
        cutoff = time.time() - self.inbox_retention.total_seconds()

        async def job(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                "DELETE FROM events WHERE processed_at IS NOT NULL AND received_at < ?", (cutoff,)
            )
            return int(cursor.rowcount)

        pruned: int = await self._write(job)
        return pruned

    async def record(self, decision: Decision) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT OR REPLACE INTO decisions (id, at, target, action, outcome, body) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision.id,
                    decision.at.timestamp(),
                    None if decision.target is None else str(decision.target),
                    decision.action,
                    str(decision.outcome),
                    json.dumps(decision.to_dict(), sort_keys=True),
                ),
            )

        await self._write(job)

    async def decisions(
        self, *, since: datetime | None = None, target: TargetRef | None = None, limit: int = 1000
    ) -> list[Decision]:
        sql = "SELECT body FROM decisions WHERE at >= ?"
        params: list[Any] = [since.timestamp() if since else 0.0]
        if target is not None:
            sql += " AND target = ?"
            params.append(str(target))
        sql += " ORDER BY at DESC, rowid DESC LIMIT ?"  # the newest `limit`, shown oldest first
        params.append(limit)
        rows = await self._read(sql, params)
        return [Decision.from_dict(json.loads(row[0])) for row in reversed(rows)]

    async def last_change(self, target: TargetRef) -> Decision | None:
        marks = ",".join("?" for _ in COOLDOWN_ACTIONS)
        rows = await self._read(
            f"SELECT body FROM decisions WHERE target = ? AND outcome = ? AND action IN ({marks})"
            " ORDER BY at DESC LIMIT 1",
            (str(target), str(Outcome.APPLIED), *COOLDOWN_ACTIONS),
        )
        return Decision.from_dict(json.loads(rows[0][0])) if rows else None
