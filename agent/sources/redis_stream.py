"""
The Redis-stream consumer: preemption notices and scale intents read from a Redis stream (``sources.redis_stream``).

A producer (a node-termination handler, a cloud-event forwarder, a batch scheduler announcing load) ``XADD``\\ s one
message per entry, its JSON in one field (``body``), in any format agent/notices reads (AWS EventBridge, GCP, Azure
Scheduled Events, the native JSON). The agent reads them as one consumer of a consumer group, and each becomes an
event exactly as if it had been posted to the events webhook (agent/sources/events.py, :func:`event_of`): a notice
with its deadline runs in the worker's urgent lane, and an event's key is the notice's or intent's own id, so the
same notice twice (a redelivery, or the webhook and the stream both carrying it) is recorded as a redelivery and
acted on once. It is shaped by one rule: an entry is acknowledged only once what it says is safe in the ledger.

* **Ack after the ledger.** Each batch is decoded, its events stored with ``Intake.accept`` (durable in the
  ledger), and only then ``XACK``\\ ed. A crash between the two leaves the entry pending, so it is read again and
  recorded as a redelivery: at least once, never lost. While the ledger is unavailable nothing is acked: the batch
  is retried with a bounded backoff (0.5 s doubling to 30 s) and its entries stay pending meanwhile.
* **A stable consumer name** (``consumer``; by default the hostname, which in Kubernetes is the pod's name). Entries
  read but not acked stay pending *for that name*; at every (re)connection the consumer first reads its own pending
  entries (``XREADGROUP … 0``) before new ones (``>``), so an agent restarted under the same name (a container
  restart keeps the pod's) takes back its unfinished entries at once, in order.
* **XAUTOCLAIM.** Entries left pending by a consumer that is gone for good (a pod replaced under a new name) are
  claimed once idle longer than ``claim_idle``: at every connection, then every ``claim_idle / 2``. A consumer only
  slow (its ledger down past ``claim_idle``) may see its entries claimed: both then record them, and the ledger's
  key makes the second a redelivery.
* **A dead letter, with the reason.** An entry that cannot be read (no ``body`` field, malformed JSON, an unknown
  format: a :class:`~agent.notices.DecodeError`) would fail the same way on every retry. It is copied to the
  ``dead_letter`` stream with its original fields plus ``reason`` (the decoder's one-line reason) and
  ``source_id`` (its id in the stream), acknowledged, logged at warning and recorded as a FAILED ``dead-letter``
  decision (so Slack hears of it too): never retried forever, never silently dropped.

Redis going away (a restart, a failover, the network) is the common case, handled in the loop: the error is
logged, the consumer backs off (0.5 s doubling to 30 s), reconnects, re-creates the group if the restarted server
lost it (``XGROUP CREATE … 0 MKSTREAM``: from the stream's start, so entries added before the group existed are
read; what the agent had already recorded is a redelivery), takes back its pending entries, and goes on. Every
wait is bounded: a read blocks ``block`` at most, and the connection's timeout is that plus a margin. Anything else
is a crash, which the supervisor logs and restarts.

The ``in`` of a native notice counts from when the message was sent: the entry's id is the time Redis added it,
so a notice read late (the agent was restarting) keeps its true deadline. An id a producer chose itself (not a
time of the last week) is ignored and the time of reading is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from agent.config import ConfigError, SecretRef
from agent.durations import Duration
from agent.ledger import LedgerUnavailable
from agent.notices import DecodeError, decode_any
from agent.sources.base import SourceContext, SourceSettings, dead_letter_decision
from agent.sources.events import event_of
from agent.structs import Delivery, Event, InboxEntry, utcnow
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.sources.redis_stream")

SOURCE = "redis_stream"
RETRY_SECONDS = (0.5, 30.0)  # backoff, first and longest, while Redis or the ledger is unavailable
CONNECT_SECONDS = 5.0  # a connection attempt
READ_MARGIN_SECONDS = 5.0  # a reply may take the read's block plus this, before the connection counts as dead
CLOSE_SECONDS = 2.0  # closing a connection
DEAD_LETTER_MAXLEN = 100_000  # the dead-letter stream is trimmed (approximately) past this many entries
SENT_WINDOW = timedelta(days=7)  # an entry id whose time is within this of now is taken as the time it was sent
ADDED_FIELDS = ("reason", "source_id")  # what a dead letter adds to the entry's own fields
NO_CURSOR = b"0-0"

T = TypeVar("T")
StreamEntry = tuple[bytes, dict[bytes, bytes]]


class Poison(Exception):
    """An entry that cannot be read, whatever the retries: its message is the dead letter's one-line reason."""


class RedisStreamSettings(SourceSettings):
    """``sources.redis_stream``: off until turned on; ``url`` is then required."""

    enabled: bool = False
    url: str | None = Field(default=None, validate_default=True, description="redis://host:6379/0 (or rediss://)")
    password: SecretRef | None = Field(default=None, description="an env var or a file; never in the url")
    stream: str = Field(default="scaling-agent:events", min_length=1)
    group: str = Field(default="scaling-agent", min_length=1)
    consumer: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="stable across restarts (the pod's name), so a restart takes back its own pending entries",
    )
    dead_letter: str = Field(default="scaling-agent:events:dead", min_length=1)
    batch: int = Field(default=16, ge=1, le=1000, description="entries per read (XREADGROUP COUNT)")
    block: Duration = Field(default=timedelta(seconds=5), description="how long one read waits for new entries")
    claim_idle: Duration = Field(
        default=timedelta(seconds=60), description="an entry pending this long for another consumer is claimed"
    )
    field: str = Field(default="body", min_length=1, description="the entry's field holding the JSON message")

    @field_validator("url")
    @classmethod
    def _url_when_enabled(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            if info.data.get("enabled"):
                raise ValueError("is required when the source is enabled (redis://host:6379/0)")
            return None
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            parse_url(url)  # as the client will read it
            password = urlsplit(url).password
        except ValueError as exc:
            raise ValueError(f"is not a Redis url: {exc}") from None
        if password is not None:
            raise ValueError("put the password in password (an env var or a file), not in the url")
        return url

    @field_validator("block", "claim_idle")
    @classmethod
    def _at_least_a_millisecond(cls, value: timedelta) -> timedelta:
        # Redis counts both in milliseconds, and a block of 0 would wait forever.
        if value < timedelta(milliseconds=1):
            raise ValueError("must be at least 1ms")
        return value

    @field_validator("dead_letter")
    @classmethod
    def _not_the_stream(cls, dead_letter: str, info: ValidationInfo) -> str:
        if dead_letter == info.data.get("stream"):
            raise ValueError("must differ from stream (a dead letter would be read again, forever)")
        return dead_letter

    @field_validator("field")
    @classmethod
    def _not_an_added_field(cls, name: str) -> str:
        if name in ADDED_FIELDS:
            raise ValueError(f"must not be {' or '.join(ADDED_FIELDS)}: a dead letter adds those fields")
        return name


class RedisStreamSource:
    name: ClassVar[str] = SOURCE
    Settings: ClassVar[type[SourceSettings]] = RedisStreamSettings

    def __init__(self, settings: RedisStreamSettings, *, context: SourceContext) -> None:
        assert settings.url is not None  # the settings refuse an enabled source without one
        self.settings = settings
        self.url = settings.url
        self.intake = context.intake
        self.metrics = context.metrics
        self.recorder = context.recorder
        self._password = self._read_password(first=True)
        self._supervisor: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry = RETRY_SECONDS[0]
        self.where = {
            "redis": _redacted(self.url),
            "stream": settings.stream,
            "group": settings.group,
            "consumer": settings.consumer,
        }

    def routes(self) -> list[web.RouteDef]:
        return []

    def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._task = supervisor.spawn("redis-stream", self._run)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel(self._task)  # the loop closes its connection on the way out
        self._task = None

    def decode(self, delivery: Delivery) -> list[Event]:
        raise LookupError("the Redis-stream consumer stores its events itself; it has no deliveries to decode")

    # --- the connection ------------------------------------------------------------------------------------------

    def _read_password(self, *, first: bool = False) -> str | None:
        """The password, read at every connection (a rotated Secret is picked up); at the start, a config error."""
        ref = self.settings.password
        if ref is None:
            return None
        try:
            return ref.read()
        except ValueError as exc:
            if first:
                raise ConfigError("config", [f"sources.{SOURCE}.password: {exc}"]) from None
            log.warning("cannot read the Redis password again; using the one read before", error=str(exc))
            return self._password

    def _connect(self) -> aioredis.Redis:
        self._password = self._read_password()
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_SECONDS,
            "socket_timeout": self.settings.block.total_seconds() + READ_MARGIN_SECONDS,
            "retry": Retry(NoBackoff(), 0),  # the loop retries, with its own backoff and log line
        }
        if self._password is not None:
            options["password"] = self._password
        client: aioredis.Redis = aioredis.from_url(self.url, **options)
        return client

    async def _run(self) -> None:
        log.info("consuming a Redis stream", **self.where)
        while True:
            client = self._connect()
            try:
                await self._create_group(client)
                await self._consume(client)
            except (RedisError, OSError) as exc:  # Redis restarting, unreachable, or the group gone with its data
                log.warning(
                    "Redis stream unavailable; reconnecting",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=self._retry,
                    **self.where,
                )
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_SECONDS):
                        await client.aclose()
            await asyncio.sleep(self._retry)
            self._retry = min(self._retry * 2, RETRY_SECONDS[1])

    async def _create_group(self, client: aioredis.Redis) -> None:
        try:
            await client.xgroup_create(self.settings.stream, self.settings.group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        else:
            log.info("created the consumer group", **self.where)

    # --- reading -------------------------------------------------------------------------------------------------

    async def _consume(self, client: aioredis.Redis) -> None:
        """Own pending entries first, then claims and new entries, until an error ends the connection."""
        cursor: bytes | str = "0"
        taken_back = 0
        while entries := await self._read(client, cursor, block=None):
            taken_back += len(entries)
            await self._handle(client, entries)
            cursor = entries[-1][0]
        if taken_back:
            log.info("took back this consumer's own pending entries", count=taken_back, **self.where)
        self._retry = RETRY_SECONDS[0]  # connected and reading: the next failure starts the backoff afresh
        loop = asyncio.get_running_loop()
        claim_every = self.settings.claim_idle.total_seconds() / 2
        next_claim = loop.time()
        while True:
            if loop.time() >= next_claim:
                await self._claim(client)
                next_claim = loop.time() + claim_every
            wait = min(self.settings.block.total_seconds(), max(next_claim - loop.time(), 0.001))
            entries = await self._read(client, ">", block=wait)
            if entries:
                await self._handle(client, entries)
            self._retry = RETRY_SECONDS[0]

    async def _read(self, client: aioredis.Redis, cursor: bytes | str, *, block: float | None) -> list[StreamEntry]:
        """One XREADGROUP: ``0`` (or the last id) for this consumer's own pending entries, ``>`` for new ones."""
        settings = self.settings
        reply = await client.xreadgroup(
            settings.group,
            settings.consumer,
            {settings.stream: cursor},
            count=settings.batch,
            block=None if block is None else max(1, round(block * 1000)),
        )
        return _entries_of(reply)

    async def _claim(self, client: aioredis.Redis) -> None:
        """XAUTOCLAIM every entry pending longer than ``claim_idle`` for another consumer, and handle it."""
        settings = self.settings
        idle = max(1, round(settings.claim_idle.total_seconds() * 1000))
        start: bytes | str = NO_CURSOR
        while True:
            reply = await client.xautoclaim(
                settings.stream, settings.group, settings.consumer, idle, start_id=start, count=settings.batch
            )
            start, claimed = reply[0], [(i, f) for i, f in (reply[1] or []) if i is not None]
            if claimed:
                log.info(
                    "claimed entries left pending by another consumer",
                    count=len(claimed),
                    entries=[_text(i) for i, _ in claimed],
                    **self.where,
                )
                await self._handle(client, claimed)
            if _text(start) == NO_CURSOR.decode():
                return

    # --- handling ------------------------------------------------------------------------------------------------

    async def _handle(self, client: aioredis.Redis, entries: Sequence[StreamEntry]) -> None:
        """Decode a batch, store its events in the ledger, and only then acknowledge it; a poison entry goes dead."""
        settings = self.settings
        read: list[bytes] = []
        events: list[Event] = []
        for raw_id, fields in entries:
            if not fields:  # deleted (XDEL, a trim) while it was pending: nothing to read, nothing to keep
                log.info("a pending stream entry was deleted before it was read; acknowledged", entry=_text(raw_id))
                read.append(raw_id)
                continue
            received = utcnow()
            try:
                events.extend(self._decode(fields, entry_id=_text(raw_id), received=received))
            except Poison as exc:
                await self._dead_letter(client, entry_id=raw_id, fields=fields, reason=str(exc))
                continue
            read.append(raw_id)
        if events:
            stored: list[InboxEntry] = await self._until_recorded(lambda: self.intake.accept(events), what="events")
            for entry in stored:
                self.metrics.events_received.labels(source=SOURCE, status=entry.event.status).inc()
            log.info("stream entries recorded", entries=[_text(i) for i in read], events=[e.key for e in events])
        if read:
            await client.xack(settings.stream, settings.group, *read)

    def _decode(self, fields: Mapping[bytes, bytes], *, entry_id: str, received: datetime) -> list[Event]:
        """The events of one entry; :class:`Poison` with a one-line reason when it cannot be read."""
        body = fields.get(self.settings.field.encode())
        if body is None:
            names = ", ".join(sorted(_text(name) for name in fields))
            raise Poison(f"no field {self.settings.field!r} in the entry (its fields: {names})")
        try:
            messages = decode_any(body, now=_sent(entry_id, received=received))
            return [event_of(message, received_at=received, source=SOURCE) for message in messages]
        except DecodeError as exc:
            raise Poison(str(exc)) from None  # a DecodeError is one line already
        except Exception as exc:  # a decoder's bug fails the same way every time: a dead letter, not a crash loop
            log.exception("a stream entry could not be decoded", entry=entry_id)
            raise Poison(_one_line(f"could not be decoded: {type(exc).__name__}: {exc}")) from None

    async def _dead_letter(
        self, client: aioredis.Redis, *, entry_id: bytes, fields: Mapping[bytes, bytes], reason: str
    ) -> None:
        """Record why, copy the entry to the dead-letter stream with the reason, and acknowledge it (atomically)."""
        settings = self.settings
        entry = _text(entry_id)
        log.warning(
            "stream entry dead-lettered: it cannot be read",
            entry=entry,
            dead_letter=settings.dead_letter,
            reason=reason,
            **self.where,
        )
        decision = dead_letter_decision(
            source=SOURCE,
            labels={"stream": settings.stream, "entry": entry},
            reason=f"stream {settings.stream} entry {entry} moved to {settings.dead_letter}: {reason}",
            error=f"DecodeError: {reason}",
        )
        # The ledger first, like every entry: a crash after it and before the ack dead-letters the entry again.
        await self._until_recorded(lambda: self.recorder.record(decision), what="the dead-letter decision")
        dead: dict[FieldT, EncodableT] = dict(fields.items())
        dead.update({b"reason": reason.encode(), b"source_id": entry_id})
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(settings.dead_letter, dead, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            pipe.xack(settings.stream, settings.group, entry_id)
            await pipe.execute()

    async def _until_recorded(self, write: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Retry a ledger write while the ledger is unavailable (bounded backoff); the entries stay pending."""
        retry = RETRY_SECONDS[0]
        while True:
            try:
                return await write()
            except LedgerUnavailable as exc:
                log.error(
                    f"{what} from the stream not recorded; the entries stay pending, retrying",
                    error=str(exc),
                    retry_in=retry,
                    **self.where,
                )
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_SECONDS[1])


def _entries_of(reply: Any) -> list[StreamEntry]:
    """The entries of an XREADGROUP reply of one stream (RESP2's list of pairs, or RESP3's mapping)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    found: list[StreamEntry] = []
    for entries in streams:
        if entries and isinstance(entries[0], list):
            entries = entries[0]  # redis-py's RESP3 shape wraps a stream's entries once more
        found.extend((entry_id, fields or {}) for entry_id, fields in entries or [] if entry_id is not None)
    return found


def _sent(entry_id: str, *, received: datetime) -> datetime:
    """When the entry was added: its id's time (Redis's clock), unless the producer chose an id that is no time."""
    try:
        sent = datetime.fromtimestamp(int(entry_id.partition("-")[0]) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return received
    return sent if received - SENT_WINDOW <= sent <= received else received


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _redacted(url: str) -> str:
    """The url as logged: no password (the settings refuse one in the url; this is a second guard)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()
