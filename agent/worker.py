"""
The worker: takes recorded events off the inbox and drives them through rules → executor.

Events reach it only after the ledger has them (``Intake.accept``), so a crash
loses nothing: at start, :meth:`Worker.resume_pending` re-queues every event
not yet marked processed. Events of one alert (same fingerprint) always go to
the same lane and run in order, so a ``resolved`` never overtakes its
``firing``; different alerts run in parallel lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Sequence
from dataclasses import replace

import structlog

from agent.config import GuardConfig
from agent.decisions import DecisionRecorder
from agent.executor import Executor, new_decision_id
from agent.ledger import Ledger, LedgerUnavailable
from agent.metrics import Metrics
from agent.rules import Rules
from agent.structs import Decision, Event, InboxEntry, Outcome, Plan, Trigger, utcnow

log = structlog.get_logger("agent.worker")

GIVE_WAY_SECONDS = 0.005


class Intake:
    """What a source calls with the events it heard: record them durably, then queue them."""

    def __init__(self, *, ledger: Ledger, worker: Worker, metrics: Metrics) -> None:
        self.ledger = ledger
        self.worker = worker
        self.metrics = metrics

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]:
        self.worker.intake_started()
        try:
            entries = await self.ledger.accept(events)  # raises LedgerUnavailable: the source must not ack
        finally:
            self.worker.intake_finished()
        for event in events:
            self.metrics.events_received.labels(source=event.source, status=event.status).inc()
        self.worker.submit(entries)
        return entries


class Worker:
    def __init__(
        self,
        *,
        ledger: Ledger,
        rules: Rules,
        executor: Executor,
        recorder: DecisionRecorder,
        metrics: Metrics,
        guard: GuardConfig,
        lanes: int,
    ) -> None:
        self.ledger = ledger
        self.rules = rules
        self.executor = executor
        self.recorder = recorder
        self.metrics = metrics
        self.guard = guard
        self._lanes: list[asyncio.Queue[InboxEntry]] = [asyncio.Queue() for _ in range(lanes)]
        self._tasks: list[asyncio.Task[None]] = []
        self._intakes_in_flight = 0
        self._intake_quiet = asyncio.Event()
        self._intake_quiet.set()
        metrics.pending_events.set_function(lambda: self.depth)  # read at scrape time, free per event

    @property
    def depth(self) -> int:
        return sum(lane.qsize() for lane in self._lanes)

    def submit(self, entries: Sequence[InboxEntry]) -> None:
        for entry in entries:
            lane = zlib.crc32(entry.event.fingerprint.encode()) % len(self._lanes)
            self._lanes[lane].put_nowait(entry)

    async def resume_pending(self) -> int:
        entries = await self.ledger.pending()
        self.submit(entries)
        if entries:
            log.info("re-queued events taken in before a restart", count=len(entries))
        return len(entries)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"worker-lane-{i}") for i, lane in enumerate(self._lanes)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def intake_started(self) -> None:
        self._intakes_in_flight += 1
        self._intake_quiet.clear()

    def intake_finished(self) -> None:
        self._intakes_in_flight -= 1
        if not self._intakes_in_flight:
            self._intake_quiet.set()

    async def _give_way(self) -> None:
        """
        Let acknowledgements go first: while senders wait for their 2xx, a lane waits a moment before its
        next event. In an alert storm an unanswered webhook is retried and multiplies the load, while the
        events already taken in are safe in the ledger; the wait is bounded, so the lanes keep moving.
        """
        if not self._intake_quiet.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._intake_quiet.wait(), GIVE_WAY_SECONDS)

    async def idle(self) -> None:
        """Wait until every queued event is processed (tests, the demo, shutdown)."""
        for lane in self._lanes:
            await lane.join()

    async def _run(self, lane: asyncio.Queue[InboxEntry]) -> None:
        while True:
            entry = await lane.get()
            try:
                await self._give_way()
                await self.process(entry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event processing failed", event=entry.id, alertname=entry.event.alertname)
            finally:
                lane.task_done()

    async def process(self, entry: InboxEntry) -> list[Decision]:
        event = entry.event
        decisions: list[Decision] = []
        if entry.duplicate_of is not None:
            decisions.append(
                await self._note(
                    event, "redelivery", f"redelivery of event #{entry.duplicate_of} (same alert, status and start)"
                )
            )
        else:
            try:
                plans = await self.rules.plan(event)
                if not plans:
                    decisions.append(await self._note(event, "match", f"no rule matches {event.alertname}"))
                for plan in self._limit_blast_radius(plans):
                    decisions.append(await self.executor.execute(plan))
            except Exception as exc:
                log.exception("event could not be handled", event=entry.id)
                decisions.append(await self._note(event, "error", "internal error", outcome=Outcome.FAILED, error=exc))
        latency = (utcnow() - event.received_at).total_seconds()
        for decision in decisions:
            self.metrics.action_latency.labels(action=decision.action).observe(latency)
        try:
            await self.ledger.mark_processed(entry.id)
        except LedgerUnavailable as exc:
            # It will run again after a restart; the redelivery is then a recorded no-op or an idempotent no-op.
            log.error("could not mark event processed", event=entry.id, error=str(exc))
        return decisions

    def _limit_blast_radius(self, plans: list[Plan]) -> list[Plan]:
        """A rule whose selector hits more objects than allowed acts on none of them, and says so."""
        limit = self.guard.max_targets_per_event
        by_rule: dict[str, list[Plan]] = {}
        for plan in plans:
            by_rule.setdefault(plan.rule, []).append(plan)
        result: list[Plan] = []
        for rule, rule_plans in by_rule.items():
            if len(rule_plans) <= limit:
                result.extend(rule_plans)
                continue
            first = rule_plans[0]
            reason = (
                f"{len(rule_plans)} targets ({first.reason}) exceed guard.max_targets_per_event={limit}; "
                f"rule {rule} acted on none"
            )
            result.append(replace(first, target=None, reason=reason, verdict=Outcome.REFUSED))
        return result

    async def _note(
        self, event: Event, action: str, reason: str, *, outcome: Outcome = Outcome.NOOP, error: Exception | None = None
    ) -> Decision:
        now = utcnow()
        decision = Decision(
            id=new_decision_id(now),
            at=now,
            trigger=Trigger.of(event),
            rule=None,
            action=action,
            target=None,
            before={},
            after={},
            reason=reason,
            dry_run=self.executor.guard.dry_run,
            outcome=outcome,
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        await self.recorder.record(decision)
        return decision
