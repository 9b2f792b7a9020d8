"""
The intent scheduler: a scale intent announced ahead of its window comes back to the worker when it opens.

A producer says "a batch of 50,000 tasks lands at 02:00" at 01:00: the ``intent`` action records that as a
``scheduled`` no-op (agent/actions/intent.py), and this scheduler hands the worker the same intent again at its
``from``, under a key of its own (``<key>|start``), so it is applied once however often it is handed. The intent is
in the ledger from the start; what a restart loses is only the timer, so at start the agent looks at the recent
``scheduled`` decisions (their trigger's labels carry the window) and sets the timers again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import structlog

from agent.actions.intent import SCHEDULED
from agent.ledger import LedgerUnavailable
from agent.structs import Decision, Event, EventKind, Outcome, utcnow
from agent.worker import Intake

log = structlog.get_logger("agent.intents")

RETRY_SECONDS = 5.0  # the ledger refused the intent at its start: try again this soon (until its window ends)
WINDOW_LABELS = ("from", "until", "floor", "reason")


class IntentScheduler:
    def __init__(self, *, intake: Intake) -> None:
        self.intake = intake
        self._waiting: dict[str, asyncio.Task[None]] = {}  # by the intent's key

    def decided(self, event: Event, decisions: Sequence[Decision]) -> None:
        """The worker's call after each event: an intent recorded as scheduled gets its timer."""
        if event.kind != EventKind.INTENT or event.key.endswith("|start"):
            return
        if any(
            d.action == "intent" and d.outcome == Outcome.NOOP and d.reason.startswith(SCHEDULED) for d in decisions
        ):
            self._schedule(event)

    def _schedule(self, event: Event) -> None:
        if event.key in self._waiting:
            return
        task = asyncio.create_task(self._at_start(event), name=f"intent {event.key}")
        self._waiting[event.key] = task
        task.add_done_callback(lambda _: self._waiting.pop(event.key, None))

    async def _at_start(self, event: Event) -> None:
        try:
            await self._hand_again(event)
        except asyncio.CancelledError:
            raise
        except Exception:  # a timer must never take the agent down, nor fail unsaid
            log.exception("a scheduled intent could not be handed again", intent=event.key)

    async def _hand_again(self, event: Event) -> None:
        starts = datetime.fromisoformat(event.annotations["from"])
        until = datetime.fromisoformat(event.annotations["until"])
        await asyncio.sleep(max(0.0, (starts - utcnow()).total_seconds()))
        again = replace(event, key=f"{event.key}|start", received_at=utcnow())
        while utcnow() < until:
            try:
                await self.intake.accept([again])
                return
            except LedgerUnavailable as exc:
                log.error("an intent's start was not recorded; trying again", intent=event.key, error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)

    async def resume(self, decisions: Sequence[Decision]) -> int:
        """At start: set the timers of the intents recorded as scheduled whose window has not ended."""
        started = {
            d.trigger.event_key.removesuffix("|start")
            for d in decisions
            if d.trigger.event_key and d.trigger.event_key.endswith("|start") and d.action == "intent"
        }
        now = utcnow()
        count = 0
        for decision in decisions:
            key = decision.trigger.event_key
            labels = decision.trigger.labels
            if decision.action != "intent" or not decision.reason.startswith(SCHEDULED) or not key or key in started:
                continue
            if not all(label in labels for label in WINDOW_LABELS[:3]):
                continue
            with contextlib.suppress(ValueError):
                if datetime.fromisoformat(labels["until"]) <= now:
                    continue
                event = Event(
                    source=decision.trigger.source,
                    key=key,
                    alertname=decision.trigger.alertname,
                    status="firing",
                    fingerprint=decision.trigger.fingerprint,
                    labels=labels,
                    annotations={label: labels[label] for label in WINDOW_LABELS if label in labels},
                    kind=EventKind.INTENT,
                    namespace=labels.get("namespace"),
                )
                self._schedule(event)
                count += 1
        return count

    async def stop(self) -> None:
        tasks = list(self._waiting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
