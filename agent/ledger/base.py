"""
The ledger's contract: a durable inbox of events and a durable record of decisions.

The webhook answers 2xx only once :meth:`Ledger.accept` has returned, so an
event the agent acknowledged is never lost: after a crash, :meth:`pending`
gives back every event not yet marked processed. The inbox also deduplicates:
an event whose key was accepted before comes back with ``duplicate_of`` set,
and becomes a recorded no-op rather than a second change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from agent.structs import Decision, Event, InboxEntry, TargetRef


class LedgerUnavailable(Exception):
    """The ledger cannot take a write now; the caller should answer 503 so the sender retries."""


class Ledger(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]: ...

    async def pending(self) -> list[InboxEntry]: ...

    async def mark_processed(self, entry_id: int) -> None: ...

    async def prune_inbox(self) -> int:
        """Drop processed events older than the inbox retention; returns how many went."""
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
