"""
The ledger's contract: a durable inbox of events and a durable record of decisions.

The inbox has two steps, so that acknowledging a sender costs as little as
possible. The webhook answers 2xx once :meth:`Ledger.receive` has stored the
body it was sent (a :class:`~agent.structs.Delivery`); the worker later
decodes it and :meth:`Ledger.unpack` stores its events and marks the delivery
unpacked, in one transaction. Sources that build events themselves use
:meth:`Ledger.accept`. Nothing acknowledged is lost: after a crash,
:meth:`pending_deliveries` gives back every delivery not yet unpacked and
:meth:`pending` every event not yet marked processed.

The inbox also deduplicates: an event whose key was seen before comes back
with ``duplicate_of`` set, and becomes a recorded no-op rather than a second
change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from agent.structs import Decision, Delivery, Event, InboxEntry, TargetRef


class LedgerUnavailable(Exception):
    """The ledger cannot take a write now; the caller should answer 503 so the sender retries."""


class Ledger(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def receive(self, *, source: str, body: bytes, received_at: datetime) -> int:
        """Store a delivery as received; returns its id. Raises :class:`LedgerUnavailable`."""
        ...

    async def pending_deliveries(self, *, limit: int) -> list[Delivery]:
        """The oldest ``limit`` deliveries not yet unpacked, oldest first."""
        ...

    async def unpack(self, unpacked: Sequence[tuple[int, Sequence[Event]]]) -> list[list[InboxEntry]]:
        """
        Store the events of deliveries (id, events), in order, and mark those deliveries unpacked, all in one
        transaction: a delivery is never marked unpacked without its events, nor its events stored twice.
        """
        ...

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]: ...

    async def pending(self) -> list[InboxEntry]: ...

    async def mark_processed(self, entry_id: int) -> None: ...

    async def prune_inbox(self) -> int:
        """Drop processed events and unpacked deliveries older than the inbox retention; returns how many went."""
        ...

    async def record(self, decision: Decision) -> None: ...

    async def decisions(
        self, *, since: datetime | None = None, target: TargetRef | None = None, limit: int = 1000
    ) -> list[Decision]: ...

    async def last_change(self, target: TargetRef) -> Decision | None:
        """The newest applied decision on ``target`` that was not a give-back (for the cooldown)."""
        ...


# Decisions that count for the cooldown: forward changes, not give-backs or posts.
COOLDOWN_ACTIONS = ("pause", "set_min", "set_max", "raise_max")
