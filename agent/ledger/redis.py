"""
The Redis ledger (``ledger.url: redis://…``), for agents that already run beside a Redis.

Layout under one key prefix:
- ``{p}:event-seq`` (counter), ``{p}:events`` (hash id → event JSON),
  ``{p}:event-key:{key}`` (first id of a key; SET NX makes the dedup atomic across replicas),
  ``{p}:pending`` (set of ids not yet processed);
- ``{p}:decisions`` (sorted set by time of decision ids), ``{p}:decision`` (hash id → JSON),
  ``{p}:last-change`` (hash target → JSON of the newest forward change, for the cooldown).

Durability is Redis's own: with ``appendonly yes`` and ``appendfsync everysec`` an
acknowledged event can be lost only with the Redis host itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agent.ledger.base import COOLDOWN_ACTIONS, LedgerUnavailable
from agent.structs import Decision, Event, InboxEntry, Outcome, TargetRef


class RedisLedger:
    def __init__(
        self, url: str, *, prefix: str = "scaling-agent", inbox_retention: timedelta = timedelta(days=7)
    ) -> None:
        self.inbox_retention = inbox_retention
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis | None = None  # decode_responses=True: every reply is str

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def _r(self) -> aioredis.Redis:
        if self._redis is None:
            raise LedgerUnavailable("redis ledger is not open")
        return self._redis

    async def open(self) -> None:
        self._redis = aioredis.from_url(self.url, decode_responses=True)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except RedisError as exc:
            raise LedgerUnavailable(f"redis unreachable: {exc}") from exc

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]:
        try:
            entries = []
            for event in events:
                entry_id = int(await self._r.incr(self._key("event-seq")))
                key = self._key("event-key", event.key)
                # One MULTI: the dedup key, the event and its pending mark land together or not at all.
                async with self._r.pipeline(transaction=True) as pipe:
                    # The dedup key lives as long as the inbox keeps events; the TTL is set once, on first sight.
                    pipe.set(key, entry_id, nx=True, ex=int(self.inbox_retention.total_seconds()))
                    pipe.get(key)
                    pipe.hset(self._key("events"), str(entry_id), event.to_json())
                    pipe.sadd(self._key("pending"), entry_id)
                    _, first, _, _ = await pipe.execute()
                duplicate_of = None if int(first) == entry_id else int(first)
                entries.append(InboxEntry(id=entry_id, event=event, duplicate_of=duplicate_of))
            return entries
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc

    async def pending(self) -> list[InboxEntry]:
        try:
            ids = sorted(int(i) for i in await self._r.smembers(self._key("pending")))
            entries = []
            for entry_id in ids:
                body = await self._r.hget(self._key("events"), str(entry_id))
                if body is None:
                    continue
                event = Event.from_json(str(body))
                first = await self._r.get(self._key("event-key", event.key))
                duplicate_of = None if first is None or int(first) == entry_id else int(first)
                entries.append(InboxEntry(id=entry_id, event=event, duplicate_of=duplicate_of))
            return entries
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc

    async def mark_processed(self, entry_id: int) -> None:
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.srem(self._key("pending"), entry_id)
                pipe.hdel(self._key("events"), str(entry_id))  # the decisions keep what mattered of it
                await pipe.execute()
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc

    async def prune_inbox(self) -> int:
        return 0  # processed events are dropped as they finish; dedup keys expire by themselves

    async def record(self, decision: Decision) -> None:
        body = json.dumps(decision.to_dict(), sort_keys=True)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("decision"), decision.id, body)
                pipe.zadd(self._key("decisions"), {decision.id: decision.at.timestamp()})
                if (
                    decision.target is not None
                    and decision.outcome == Outcome.APPLIED
                    and decision.action in COOLDOWN_ACTIONS
                ):
                    pipe.hset(self._key("last-change"), str(decision.target), body)
                await pipe.execute()
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc

    async def decisions(
        self, *, since: datetime | None = None, target: TargetRef | None = None, limit: int = 1000
    ) -> list[Decision]:
        try:
            low = since.timestamp() if since else "-inf"
            ids = [str(i) for i in await self._r.zrangebyscore(self._key("decisions"), low, "+inf")]
            if not ids:
                return []
            bodies = await self._r.hmget(self._key("decision"), ids)
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc
        result = [Decision.from_dict(json.loads(body)) for body in bodies if body is not None]
        if target is not None:
            result = [d for d in result if d.target == target]
        return result[-limit:] if limit > 0 else []  # the newest `limit`, oldest first

    async def last_change(self, target: TargetRef) -> Decision | None:
        try:
            body = await self._r.hget(self._key("last-change"), str(target))
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc
        return None if body is None else Decision.from_dict(json.loads(body))
