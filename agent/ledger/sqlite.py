"""
The default ledger: one sqlite file in WAL mode, and the inbox journal beside it.

What the webhook acknowledges goes to the journal (:mod:`agent.ledger.journal`):
one ``write()`` shared by the requests of one pass of the event loop, and
nothing else on the acknowledgement's path. Everything else goes to sqlite:
the events unpacked from the journal (with the journal's cursor, in the same
transaction), the processed marks and the decisions.

sqlite writes are group-committed: callers put an operation on a queue and
await a future; one writer task drains whatever is queued and hands the whole
batch to a dedicated writer thread, which writes it in one transaction (one
``executemany`` per kind of statement) and commits; then every future is
resolved. (Measured: with one aiosqlite call per statement, each of the ~9
hops of a batch waited for the GIL behind the busy event loop; see
bench/README.md.) Reads go through aiosqlite on a second connection, which WAL
lets run beside the writer.

The agent is the file's only writer (one replica; see docs/operations.md), so event
ids are handed out by the writer itself, and a redelivery is recognised by
``INSERT OR IGNORE`` into a table of first-seen keys. The writer holds an
exclusive lock on ``<file>.lock`` (``flock``) while it is open: a second agent
on the same file fails at start with a clear message instead of corrupting
it, and the kernel drops the lock with the process, so a restart after
``kill -9`` is never blocked. A reader (``readonly=True``: ``scaling-agent
decisions``) opens the file with ``mode=ro`` and nothing else: no journal, no
writer, no checkpoint, no lock; it cannot change the ledger, and a missing
file is an error, never created.

Decisions are inserted, never replaced (a duplicate id fails that one write,
loudly, and nothing else in its batch); an ``applying`` row is completed by an
update of that row.

Durability promise: ``synchronous=NORMAL`` in WAL mode, and a journal record
once ``write()`` returned, survive a killed or crashed agent process (the case
that matters in a pod); a power loss of the node can lose the last records and
transactions. Put ``?synchronous=full`` on the URL to survive that too (sqlite
``synchronous=FULL``, and an ``fdatasync`` of the journal before each answer),
at a cost in throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiosqlite
import structlog

from agent.ledger.base import (
    CHANGES_SCANNED,
    COOLDOWN_OUTCOMES,
    DuplicateDecision,
    LedgerLocked,
    LedgerNotFound,
    LedgerUnavailable,
    UnknownDecision,
    moved,
)
from agent.ledger.journal import Journal, JournalError
from agent.structs import Decision, Delivery, Event, InboxEntry, Outcome, TargetRef
from agent.supervisor import Supervisor

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    processed_at REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (id) WHERE processed_at IS NULL;
CREATE TABLE IF NOT EXISTS event_keys (
    key TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    received_at REAL NOT NULL
) WITHOUT ROWID;
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
CREATE INDEX IF NOT EXISTS decisions_applying ON decisions (at) WHERE outcome = 'applying';
"""

SQL_VARIABLES = 500  # per IN (...) list: well under sqlite's limit
LINGER_SECONDS = 0.001
CHECKPOINT_SECONDS = 1.0

log = structlog.get_logger("agent.ledger.sqlite")


@dataclass
class _Batch:
    """One transaction's worth of queued writes, grouped by statement."""

    accepts: list[tuple[Sequence[Event], asyncio.Future[Any]]] = field(default_factory=list)
    unpacks: list[tuple[Sequence[tuple[int, Sequence[Event]]], asyncio.Future[Any]]] = field(default_factory=list)
    processed: list[tuple[Sequence[int], asyncio.Future[Any]]] = field(default_factory=list)
    decisions: list[tuple[Decision, asyncio.Future[Any]]] = field(default_factory=list)
    completes: list[tuple[Decision, asyncio.Future[Any]]] = field(default_factory=list)
    prunes: list[tuple[float, asyncio.Future[Any]]] = field(default_factory=list)

    def futures(self) -> list[asyncio.Future[Any]]:
        groups: list[list[Any]] = [
            self.accepts,
            self.unpacks,
            self.processed,
            self.decisions,
            self.completes,
            self.prunes,
        ]
        return [future for group in groups for _, future in group]

    def plain(self) -> _Plain:
        return _Plain(
            accepts=[p for p, _ in self.accepts],
            unpacks=[p for p, _ in self.unpacks],
            processed=[p for p, _ in self.processed],
            decisions=[p for p, _ in self.decisions],
            completes=[p for p, _ in self.completes],
            prunes=[p for p, _ in self.prunes],
        )


@dataclass(frozen=True)
class _Plain:
    """The batch as plain data, for the writer thread (futures stay on the event loop)."""

    accepts: list[Sequence[Event]]
    unpacks: list[Sequence[tuple[int, Sequence[Event]]]]
    processed: list[Sequence[int]]
    decisions: list[Decision]
    completes: list[Decision]
    prunes: list[float]


class SqliteLedger:
    def __init__(
        self,
        url: str,
        *,
        inbox_retention: timedelta = timedelta(days=7),
        readonly: bool = False,
        supervisor: Supervisor | None = None,
    ) -> None:
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        options = {k.lower(): v[-1].lower() for k, v in parse_qs(query).items()}
        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute/path.db
        self.path = Path(path)
        self.synchronous = "FULL" if options.get("synchronous") == "full" else "NORMAL"
        self.inbox_retention = inbox_retention
        self.readonly = readonly
        self.supervisor = supervisor or Supervisor()
        self._db: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[tuple[str, Any, asyncio.Future[Any]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._last_id = 0
        self._flush_waiters: list[asyncio.Future[None]] = []  # requests waiting for the journal's next write
        self.journal = Journal(self.path.with_name(self.path.name + "-inbox"), fsync=self.synchronous == "FULL")
        self._thread: ThreadPoolExecutor | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._writer_db: sqlite3.Connection | None = None  # used only in self._thread
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    async def open(self) -> None:
        if self.readonly:
            await self._open_reader()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            loop = asyncio.get_running_loop()
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
            self._writer_db, unpacked_through = await loop.run_in_executor(self._thread, self._connect_writer)
            self.journal.open(unpacked_through=unpacked_through)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            await self.close()
            raise
        self._writer = self.supervisor.spawn("ledger-writer", self._write_loop)
        self._checkpointer = self.supervisor.spawn("ledger-checkpoint", self._checkpoint_loop)

    async def _open_reader(self) -> None:
        """Read-only: the file must exist, and nothing is created, recovered, pruned or checkpointed."""
        if not self.path.is_file():
            raise LedgerNotFound(f"ledger not found: {self.path} (is this the path the agent writes?)")
        try:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"  # as_uri() escapes a '?' or '#' in the path
            self._db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            await self._db.execute("SELECT 1 FROM decisions LIMIT 1")
        except Exception as exc:
            await self.close()
            raise LedgerUnavailable(f"cannot read the ledger {self.path}: {exc}") from exc

    def _lock(self) -> None:
        """Take the writer's lock, or say which process holds it. The kernel releases it when we die."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LedgerLocked(
                f"ledger {self.path} is in use by another agent (pid {holder}): one agent writes a ledger;"
                " stop the other one, or give this one its own ledger.url"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def _checkpoint_loop(self) -> None:
        """
        Copy the WAL into the database file every second, beside the writer. Left to sqlite, the checkpoint
        runs inside a commit every 1,000 pages and its fsync stalled that commit — and every webhook answer
        waiting on it — for 16 to 18 ms (p99.9 of commits: 16 ms with auto-checkpoint, 0.9 ms without).
        """
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                assert self._db is not None
                await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    log.warning("WAL checkpoint failed", error=str(exc))
                # A read on the same connection was in progress (SQLITE_LOCKED): the next pass copies it all.
            except Exception as exc:  # the next pass tries again; the WAL only grows meanwhile
                log.warning("WAL checkpoint failed", error=str(exc))

    def _connect_writer(self) -> tuple[sqlite3.Connection, int]:
        """The writer's connection, and the journal's cursor as the file last recorded it."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        # Checkpoints (which fsync) run on the reader connection, off the commit path: see _checkpoint_loop.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript(SCHEMA)
        self._last_id = int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        row = db.execute("SELECT value FROM meta WHERE key = 'unpacked_through'").fetchone()
        return db, int(row[0]) if row else 0

    async def close(self) -> None:
        await self.supervisor.cancel(self._checkpointer)
        self._checkpointer = None
        await self.supervisor.cancel(self._writer)
        self._writer = None
        while not self._queue.empty():  # writes queued after the writer's last batch: say so, never hang
            _fail([self._queue.get_nowait()[2]], LedgerUnavailable("the ledger is closed"))
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._flush_waiters:  # requests waiting on a write: let it happen, or fail them, before closing
            self._flush_journal()
        self.journal.close()
        if self._writer_db is not None and self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._writer_db.close)
            self._writer_db = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def ping(self) -> None:
        if self.journal.fault is not None:
            raise LedgerUnavailable(f"the inbox journal cannot take notifications: {self.journal.fault}")
        await self._read("SELECT 1")

    # --- writes ------------------------------------------------------------------------------------------

    async def _write(self, kind: str, payload: Any) -> Any:
        if self.readonly:
            raise LedgerUnavailable("the ledger is open read-only")
        if self._writer_db is None or self._writer is None or self._writer.done():
            raise LedgerUnavailable("sqlite ledger is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((kind, payload, future))
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = _Batch()
            try:
                kind, payload, future = await self._queue.get()
                getattr(batch, kind).append((payload, future))
                # Linger a moment so a commit carries many writes: one commit costs ~150 µs of the writer's time
                # whether it holds one row or a hundred, and at 1,000 alerts/s each alert brings three writes.
                await asyncio.sleep(LINGER_SECONDS)
                while not self._queue.empty():
                    kind, payload, future = self._queue.get_nowait()
                    getattr(batch, kind).append((payload, future))
                try:
                    # One call into the writer thread per batch: every extra hop waits for the GIL behind the loop.
                    results = await loop.run_in_executor(self._thread, self._commit, batch.plain())
                except Exception as exc:
                    _fail(batch.futures(), LedgerUnavailable(f"sqlite write failed: {exc}"))
                    continue
                for future, result in zip(batch.futures(), results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
            except BaseException:
                # Cancelled (closing) or crashed (the supervisor restarts the loop): whoever waits on this batch
                # must hear of it, never hang.
                _fail(batch.futures(), LedgerUnavailable("the ledger writer stopped; retry"))
                raise

    def _commit(self, plain: _Plain) -> list[Any]:
        """Runs in the writer thread: the whole batch in one transaction; results in the batch's order."""
        db = self._writer_db
        assert db is not None
        results: list[Any] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            unpacked = [(i, events) for unpack in plain.unpacks for i, events in unpack]
            entries = self._insert_events(db, [*plain.accepts, *(events for _, events in unpacked)])
            results.extend(entries[: len(plain.accepts)])
            position = len(plain.accepts)
            for unpack in plain.unpacks:  # one result per unpack call: its deliveries' entries
                results.append(entries[position : position + len(unpack)])
                position += len(unpack)
            if unpacked:  # the journal's cursor: deliveries are unpacked in order
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('unpacked_through', ?)",
                    (max(i for i, _ in unpacked),),
                )
            if plain.processed:
                now = time.time()
                rows = [(now, i) for ids in plain.processed for i in ids]
                db.executemany("UPDATE events SET processed_at = ? WHERE id = ?", rows)
            results.extend(None for _ in plain.processed)
            for decision in plain.decisions:
                # One statement each: a duplicate id fails its own write (the statement is undone, the
                # transaction goes on), never the other writes of the batch, and never replaces the first row.
                try:
                    db.execute(
                        "INSERT INTO decisions (id, at, target, action, outcome, body) VALUES (?, ?, ?, ?, ?, ?)",
                        _decision_row(decision),
                    )
                    results.append(None)
                except sqlite3.IntegrityError:
                    results.append(DuplicateDecision(f"decision {decision.id} is already in the ledger"))
            for decision in plain.completes:
                cursor = db.execute(
                    "UPDATE decisions SET at = ?, target = ?, action = ?, outcome = ?, body = ?"
                    " WHERE id = ? AND outcome = 'applying'",
                    (*_decision_row(decision)[1:], decision.id),
                )
                missing = cursor.rowcount == 0
                results.append(UnknownDecision(f"no applying decision {decision.id} to complete") if missing else None)
            results.extend(self._prune(db, cutoff) for cutoff in plain.prunes)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
            raise
        return results

    def _insert_events(self, db: sqlite3.Connection, accepts: list[Sequence[Event]]) -> list[list[InboxEntry]]:
        if not accepts:
            return []
        rows = []
        for events in accepts:
            for event in events:
                self._last_id += 1
                rows.append((self._last_id, event.key, event.to_json(), event.received_at.timestamp()))
        db.executemany("INSERT INTO events (id, key, body, received_at) VALUES (?, ?, ?, ?)", rows)
        # The first delivery of a key (in this batch or any earlier one) is the one that counts.
        db.executemany(
            "INSERT OR IGNORE INTO event_keys (key, first_id, received_at) VALUES (?, ?, ?)",
            [(key, entry_id, at) for entry_id, key, _, at in rows],
        )
        keys = list({row[1] for row in rows})
        firsts: dict[str, int] = {}
        for start in range(0, len(keys), SQL_VARIABLES):
            chunk = keys[start : start + SQL_VARIABLES]
            marks = ",".join("?" for _ in chunk)
            cursor = db.execute(f"SELECT key, first_id FROM event_keys WHERE key IN ({marks})", chunk)
            firsts.update((str(k), int(i)) for k, i in cursor.fetchall())
        results = []
        position = 0
        for events in accepts:
            entries = []
            for event in events:
                entry_id = rows[position][0]
                first = firsts[event.key]
                entries.append(InboxEntry(id=entry_id, event=event, duplicate_of=None if first == entry_id else first))
                position += 1
            results.append(entries)
        return results

    @staticmethod
    def _prune(db: sqlite3.Connection, cutoff: float) -> int:
        cursor = db.execute("DELETE FROM events WHERE processed_at IS NOT NULL AND received_at < ?", (cutoff,))
        pruned = int(cursor.rowcount)
        # A key is forgotten only with its events, and never while its first delivery is still pending.
        db.execute(
            "DELETE FROM event_keys WHERE received_at < ?"
            " AND first_id NOT IN (SELECT id FROM events WHERE processed_at IS NULL)",
            (cutoff,),
        )
        return pruned

    async def receive(self, *, source: str, body: bytes, received_at: datetime) -> int:
        if self.readonly:
            raise LedgerUnavailable("the ledger is open read-only")
        try:
            delivery_id = self.journal.add(source=source, body=body, received_at=received_at.timestamp())
        except JournalError as exc:
            raise LedgerUnavailable(str(exc)) from exc
        loop = asyncio.get_running_loop()
        if not self._flush_waiters:
            # Requests handled in this pass of the event loop share one write (and, if asked for, one fdatasync).
            loop.call_soon(self._flush_journal)
        written = loop.create_future()
        self._flush_waiters.append(written)
        await written
        return delivery_id

    def _flush_journal(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        try:
            self.journal.flush()
        except JournalError as exc:
            _settle(waiters, LedgerUnavailable(str(exc)))
            if self.journal.fault is not None:
                self.supervisor.fail("ledger-journal", self.journal.fault)
            return
        if not self.journal.fsync:
            _settle(waiters, None)
            return
        synced = asyncio.get_running_loop().run_in_executor(None, self.journal.sync)
        synced.add_done_callback(lambda done: _settle(waiters, _sync_error(done)))

    async def pending_deliveries(self, *, limit: int) -> list[Delivery]:
        if not self.journal.is_open:
            raise LedgerUnavailable("sqlite ledger is not open")
        try:
            return self.journal.pending(limit)
        except OSError as exc:
            raise LedgerUnavailable(f"journal read failed: {exc}") from exc

    async def unpack(self, unpacked: Sequence[tuple[int, Sequence[Event]]]) -> list[list[InboxEntry]]:
        if not unpacked:
            return []
        entries: list[list[InboxEntry]] = await self._write("unpacks", unpacked)
        self.journal.unpacked(max(i for i, _ in unpacked))
        return entries

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]:
        entries: list[InboxEntry] = await self._write("accepts", events)
        return entries

    async def mark_processed(self, entry_ids: Sequence[int]) -> None:
        if entry_ids:
            await self._write("processed", list(entry_ids))

    async def record(self, decision: Decision) -> None:
        await self._write("decisions", decision)

    async def complete(self, decision: Decision) -> None:
        await self._write("completes", decision)

    async def prune_inbox(self) -> int:
        pruned: int = await self._write("prunes", time.time() - self.inbox_retention.total_seconds())
        return pruned

    # --- reads -------------------------------------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._db is None:
            raise LedgerUnavailable("sqlite ledger is not open")
        try:
            async with self._db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except Exception as exc:
            raise LedgerUnavailable(f"sqlite read failed: {exc}") from exc

    async def pending(self) -> list[InboxEntry]:
        rows = await self._read(
            "SELECT e.id, e.body, k.first_id FROM events e LEFT JOIN event_keys k ON k.key = e.key"
            " WHERE e.processed_at IS NULL ORDER BY e.id"
        )
        return [
            InboxEntry(
                id=row[0],
                event=Event.from_json(row[1]),
                duplicate_of=None if row[2] is None or row[2] == row[0] else int(row[2]),
            )
            for row in rows
        ]

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

    async def last_change(self, target: TargetRef, *, fields: Sequence[str], actions: Sequence[str]) -> Decision | None:
        if not actions:
            return None
        marks = ",".join("?" for _ in actions)
        outcomes = ",".join("?" for _ in COOLDOWN_OUTCOMES)
        rows = await self._read(
            f"SELECT body FROM decisions WHERE target = ? AND outcome IN ({outcomes}) AND action IN ({marks})"
            " ORDER BY at DESC LIMIT ?",
            (str(target), *COOLDOWN_OUTCOMES, *actions, CHANGES_SCANNED),
        )
        for (body,) in rows:
            decision = Decision.from_dict(json.loads(body))
            if moved(decision, fields):
                return decision
        return None

    async def unfinished(self) -> list[Decision]:
        rows = await self._read(
            "SELECT body FROM decisions WHERE outcome = ? ORDER BY at, rowid", (str(Outcome.APPLYING),)
        )
        return [Decision.from_dict(json.loads(row[0])) for row in rows]

    async def known(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), SQL_VARIABLES):
            chunk = unique[start : start + SQL_VARIABLES]
            marks = ",".join("?" for _ in chunk)
            rows = await self._read(f"SELECT id FROM decisions WHERE id IN ({marks})", chunk)
            found.update(str(row[0]) for row in rows)
        return found


def _decision_row(d: Decision) -> tuple[Any, ...]:
    target = None if d.target is None else str(d.target)
    body = json.dumps(d.to_dict(), sort_keys=True)
    return (d.id, d.at.timestamp(), target, d.action, str(d.outcome), body)


def _fail(futures: list[asyncio.Future[Any]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


def _sync_error(synced: asyncio.Future[None]) -> LedgerUnavailable | None:
    error = synced.exception()
    return None if error is None else LedgerUnavailable(f"journal fdatasync failed: {error}")


def _settle(waiters: list[asyncio.Future[None]], error: LedgerUnavailable | None) -> None:
    for waiter in waiters:
        if waiter.done():  # its request was cancelled (the client went away)
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
