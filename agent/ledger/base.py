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

Decisions are inserted, never replaced: a second :meth:`Ledger.record` of an id
raises :class:`DuplicateDecision`. A decision that changes the cluster is
recorded twice over: first as ``applying`` (:meth:`Ledger.record`, before the
patch is sent), then completed with its outcome (:meth:`Ledger.complete`, an
update of that row). A crash between the two leaves an ``applying`` row, which
the agent settles against the object at its next start
(:meth:`Ledger.unfinished`); so no change in the cluster lacks its row.

One process writes a ledger: ``scaling-agent run`` opens it for writing
(:meth:`Ledger.open`), and readers such as ``scaling-agent decisions`` open it
read-only (``readonly=True``), which changes nothing, ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from agent.structs import Decision, Delivery, Event, InboxEntry, Outcome, TargetRef


class LedgerUnavailable(Exception):
    """The ledger cannot take a write now; the caller should answer 503 so the sender retries."""


class LedgerNotFound(LedgerUnavailable):
    """A reader was pointed at a ledger that does not exist (a reader never creates one)."""


class LedgerLocked(LedgerUnavailable):
    """Another agent process holds the ledger for writing."""


class DuplicateDecision(Exception):
    """A decision id was recorded twice: a bug, never to be papered over by replacing the first row."""


class UnknownDecision(Exception):
    """:meth:`Ledger.complete` on an id that was never recorded as ``applying``."""


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

    async def mark_processed(self, entry_ids: Sequence[int]) -> None:
        """Mark events processed (their decisions are recorded), all in one write."""
        ...

    async def prune_inbox(self) -> int:
        """Drop processed events and unpacked deliveries older than the inbox retention; returns how many went."""
        ...

    async def record(self, decision: Decision) -> None:
        """Insert a decision (``applying`` or final). Raises :class:`DuplicateDecision` if its id exists."""
        ...

    async def complete(self, decision: Decision) -> None:
        """Give an ``applying`` row its outcome (same id). Raises :class:`UnknownDecision` if there is none."""
        ...

    async def unfinished(self) -> list[Decision]:
        """The decisions still ``applying``, oldest first: at start, those a crash cut short."""
        ...

    async def known(self, ids: Sequence[str]) -> set[str]:
        """Which of these decision ids the ledger has."""
        ...

    async def decisions(
        self, *, since: datetime | None = None, target: TargetRef | None = None, limit: int = 1000
    ) -> list[Decision]: ...

    async def last_change(self, target: TargetRef, *, fields: Sequence[str], actions: Sequence[str]) -> Decision | None:
        """
        The newest change on ``target`` by one of ``actions`` that moved one of ``fields``, applied or still
        applying (for the cooldown): a change whose completion a crash cut short counts too.
        """
        ...


# The outcomes of changes a cooldown counts (which actions count is the caller's: agent.actions.FORWARD_ACTIONS).
COOLDOWN_OUTCOMES = (str(Outcome.APPLIED), str(Outcome.APPLYING))


CHANGES_SCANNED = 50  # the newest changes of a target looked through for one that moved a field


def moved(decision: Decision, fields: Sequence[str]) -> bool:
    """The decision changed one of ``fields`` (a claim that moved nothing does not count)."""
    return any(name in decision.after and decision.before.get(name) != decision.after[name] for name in fields)
