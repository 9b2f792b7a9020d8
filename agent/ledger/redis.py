"""
The Redis ledger (``ledger.url: redis://…``), for agents that already run beside a Redis.

Layout under one key prefix:
- ``{p}:delivery-seq`` (counter), ``{p}:deliveries`` (hash id → JSON of source, time and the base64 body),
  ``{p}:pending-deliveries`` (sorted set of the ids not yet unpacked, by id);
- ``{p}:event-seq`` (counter), ``{p}:events`` (hash id → event JSON),
  ``{p}:event-key:{key}`` (first id of a key; SET NX makes the dedup atomic across replicas),
  ``{p}:pending`` (set of ids not yet processed);
- ``{p}:decisions`` (sorted set by time of decision ids), ``{p}:decision`` (hash id → JSON),
  ``{p}:applying`` (set of the ids recorded ``applying`` and not yet completed),
  ``{p}:changes:{target}`` (sorted set by time of the forward changes applied or applying on a target,
  for the cooldown).

A decision is inserted with HSETNX inside a Lua script (atomic with its index entries): a second record of
the same id fails loudly and changes nothing. Completing an ``applying`` decision is another script.

One agent writes a Redis ledger (a key prefix) until high availability arrives: nothing stops a second one
yet, so give each agent its own ``ledger.key_prefix``. Readers (``scaling-agent decisions``) open it with
``readonly=True`` and only read.

Durability is Redis's own: with ``appendonly yes`` and ``appendfsync everysec`` an
acknowledged event can be lost only with the Redis host itself.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agent.ledger.base import (
    CHANGES_SCANNED,
    COOLDOWN_OUTCOMES,
    DuplicateDecision,
    LedgerUnavailable,
    UnknownDecision,
    moved,
)
from agent.structs import Decision, Delivery, Event, InboxEntry, Outcome, TargetRef

# KEYS: decision hash, decisions by time, the target's changes, the applying set.
# ARGV: id, body, time, counts for the cooldown ("1"/"0"), applying ("1"/"0").
RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
if ARGV[5] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
return 1
"""
COMPLETE = """
if redis.call('SREM', KEYS[4], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) else redis.call('ZREM', KEYS[3], ARGV[1]) end
return 1
"""


def _counts_for_cooldown(decision: Decision) -> bool:
    # Every change of a field is indexed; which actions and fields count is decided when the cooldown reads it.
    return decision.target is not None and str(decision.outcome) in COOLDOWN_OUTCOMES and bool(decision.after)


class RedisLedger:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "scaling-agent",
        inbox_retention: timedelta = timedelta(days=7),
        readonly: bool = False,
    ) -> None:
        self.inbox_retention = inbox_retention
        self.url = url
        self.prefix = prefix
        self.readonly = readonly
        self._redis: aioredis.Redis | None = None  # decode_responses=True: every reply is str

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def _r(self) -> aioredis.Redis:
        if self._redis is None:
            raise LedgerUnavailable("redis ledger is not open")
        return self._redis

    @property
    def _w(self) -> aioredis.Redis:
        if self.readonly:
            raise LedgerUnavailable("the ledger is open read-only")
        return self._r

    async def open(self) -> None:
        try:
            self._redis = aioredis.from_url(self.url, decode_responses=True)
        except ValueError as exc:  # a URL redis-py cannot parse
            raise LedgerUnavailable(f"bad redis URL: {exc}") from exc
        self._record = self._redis.register_script(RECORD)
        self._complete = self._redis.register_script(COMPLETE)
        if self.readonly:
            await self.ping()  # a reader wants one clear line now, not a traceback at its first read

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except (RedisError, OSError) as exc:
            raise LedgerUnavailable(f"redis unreachable at {self.url}: {exc}") from exc

    async def receive(self, *, source: str, body: bytes, received_at: datetime) -> int:
        record = {"source": source, "at": received_at.timestamp(), "body": base64.b64encode(body).decode()}
        try:
            delivery_id = int(await self._w.incr(self._key("delivery-seq")))
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("deliveries"), str(delivery_id), json.dumps(record))
                pipe.zadd(self._key("pending-deliveries"), {str(delivery_id): delivery_id})
                await pipe.execute()
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc
        return delivery_id

    async def pending_deliveries(self, *, limit: int) -> list[Delivery]:
        try:
            ids = [int(str(i)) for i in await self._r.zrange(self._key("pending-deliveries"), 0, limit - 1)]
            bodies = await self._r.hmget(self._key("deliveries"), [str(i) for i in ids]) if ids else []
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc
        deliveries = []
        orphans = [str(i) for i, text in zip(ids, bodies, strict=True) if text is None]
        if orphans:  # cannot happen through this class (one MULTI each way); never let one block the rest
            try:
                await self._w.zrem(self._key("pending-deliveries"), *orphans)
            except RedisError as exc:
                raise LedgerUnavailable(f"redis write failed: {exc}") from exc
            return await self.pending_deliveries(limit=limit)
        for delivery_id, text in zip(ids, bodies, strict=True):
            if text is None:
                continue
            record = json.loads(text)
            deliveries.append(
                Delivery(
                    id=delivery_id,
                    source=record["source"],
                    body=base64.b64decode(record["body"]),
                    received_at=datetime.fromtimestamp(record["at"], UTC),
                )
            )
        return deliveries

    async def unpack(self, unpacked: Sequence[tuple[int, Sequence[Event]]]) -> list[list[InboxEntry]]:
        return await self._store_events(unpacked)

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]:
        [entries] = await self._store_events([(None, events)])
        return entries

    async def _store_events(self, groups: Sequence[tuple[int | None, Sequence[Event]]]) -> list[list[InboxEntry]]:
        """Events in groups, each from a delivery (its id) or from a source directly (None)."""
        count = sum(len(events) for _, events in groups)
        try:
            last_id = int(await self._w.incrby(self._key("event-seq"), count)) if count else 0
            # One MULTI: the dedup keys, the events, their pending marks and the deliveries' unpacked marks land
            # together or not at all.
            async with self._r.pipeline(transaction=True) as pipe:
                entry_id = last_id - count
                for delivery_id, events in groups:
                    for event in events:
                        entry_id += 1
                        key = self._key("event-key", event.key)
                        # The dedup key lives as long as the inbox keeps events; its TTL is set once, on first sight.
                        pipe.set(key, entry_id, nx=True, ex=int(self.inbox_retention.total_seconds()))
                        pipe.get(key)
                        pipe.hset(self._key("events"), str(entry_id), event.to_json())
                        pipe.sadd(self._key("pending"), entry_id)
                    if delivery_id is not None:
                        pipe.zrem(self._key("pending-deliveries"), str(delivery_id))
                        pipe.hdel(self._key("deliveries"), str(delivery_id))  # its events now hold what it said
                replies = iter(await pipe.execute())
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc
        result = []
        entry_id = last_id - count
        for delivery_id, events in groups:
            entries = []
            for event in events:
                entry_id += 1
                _, first, _, _ = next(replies), next(replies), next(replies), next(replies)
                duplicate_of = None if int(first) == entry_id else int(first)
                entries.append(InboxEntry(id=entry_id, event=event, duplicate_of=duplicate_of))
            if delivery_id is not None:
                next(replies), next(replies)
            result.append(entries)
        return result

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

    async def mark_processed(self, entry_ids: Sequence[int]) -> None:
        if not entry_ids:
            return
        try:
            async with self._w.pipeline(transaction=True) as pipe:
                pipe.srem(self._key("pending"), *entry_ids)
                pipe.hdel(self._key("events"), *(str(i) for i in entry_ids))  # the decisions keep what mattered
                await pipe.execute()
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc

    async def prune_inbox(self) -> int:
        return 0  # processed events are dropped as they finish; dedup keys expire by themselves

    async def record(self, decision: Decision) -> None:
        if not await self._script(self._record, decision):
            raise DuplicateDecision(f"decision {decision.id} is already in the ledger")

    async def complete(self, decision: Decision) -> None:
        if not await self._script(self._complete, decision):
            raise UnknownDecision(f"no applying decision {decision.id} to complete")

    async def _script(self, script: Any, decision: Decision) -> bool:
        client = self._w  # raises on a read-only ledger
        target = "-" if decision.target is None else str(decision.target)
        keys = [self._key("decision"), self._key("decisions"), self._key("changes", target), self._key("applying")]
        args = [
            decision.id,
            json.dumps(decision.to_dict(), sort_keys=True),
            decision.at.timestamp(),
            "1" if _counts_for_cooldown(decision) else "0",
            "1" if decision.outcome == Outcome.APPLYING else "0",
        ]
        try:
            return bool(await script(keys=keys, args=args, client=client))
        except RedisError as exc:
            raise LedgerUnavailable(f"redis write failed: {exc}") from exc

    async def unfinished(self) -> list[Decision]:
        try:
            ids = sorted(str(i) for i in await self._r.smembers(self._key("applying")))
            bodies = await self._r.hmget(self._key("decision"), ids) if ids else []
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc
        found = [Decision.from_dict(json.loads(body)) for body in bodies if body is not None]
        return sorted(found, key=lambda d: (d.at, d.id))

    async def known(self, ids: Sequence[str]) -> set[str]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return set()
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for decision_id in unique:
                    pipe.hexists(self._key("decision"), decision_id)
                present = await pipe.execute()
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc
        return {decision_id for decision_id, there in zip(unique, present, strict=True) if there}

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

    async def last_change(self, target: TargetRef, *, fields: Sequence[str], actions: Sequence[str]) -> Decision | None:
        try:
            newest = [
                str(i) for i in await self._r.zrevrange(self._key("changes", str(target)), 0, CHANGES_SCANNED - 1)
            ]
            if newest:
                bodies = await self._r.hmget(self._key("decision"), newest)
            else:  # a ledger written before changes:{target} existed kept the newest change here
                bodies = [await self._r.hget(self._key("last-change"), str(target))]
        except RedisError as exc:
            raise LedgerUnavailable(f"redis read failed: {exc}") from exc
        for body in bodies:
            if body is None:
                continue
            decision = Decision.from_dict(json.loads(body))
            if str(decision.outcome) in COOLDOWN_OUTCOMES and decision.action in actions and moved(decision, fields):
                return decision
        return None
