"""
The worker: takes recorded deliveries and events off the inbox and drives them through rules → executor.

Everything reaches it only after the ledger has it (``Intake.receive`` and
``Intake.accept``), so a crash loses nothing. One unpacker task reads the
deliveries not yet unpacked from the ledger, oldest first, decodes each with
its source's decoder and stores the events (``Ledger.unpack``); reading them
back from the ledger rather than from memory keeps a backlog on disk, however
large it grows, and makes the restart path the normal one. Events of one alert
(same fingerprint) always go to the same lane and run in order, so a
``resolved`` never overtakes its ``firing``; different alerts run in parallel
lanes. A lane hands each decided event to one marker task, which marks those
waiting processed in one write, so the lane need not wait for that commit. At
start, :meth:`Worker.resume_pending` re-queues every event not yet marked
processed before the unpacker adds newer ones.

Acknowledgements go first (:class:`Gate`): every unit of the worker's work
waits for its turn, so that in an alert storm senders get their 2xx quickly
and the work, safe in the ledger, catches up afterwards.

Deadlines go before both. An event that carries a deadline (a preemption
notice gives 30 s to 2 minutes) runs in its own urgent lane, which never waits
for the gate nor behind the other lanes' backlog. It has to be urgent from
intake on: a source of such events builds them at intake and stores them with
:meth:`Intake.accept` (never as a delivery for the single, gated unpacker), and
they are queued in the urgent lane as soon as they are in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime

import structlog

from agent.decisions import DecisionRecorder
from agent.executor import Executor
from agent.ledger import Ledger, LedgerUnavailable
from agent.metrics import Metrics
from agent.rules import Rules
from agent.structs import Decision, Delivery, Event, InboxEntry, Outcome, Trigger, new_id, utcnow
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.worker")

Decoder = Callable[[Delivery], list[Event]]  # a source's: the events of one of its deliveries
Follower = Callable[[Event, Sequence[Decision]], None]  # a source's: hears what became of its events
Herald = Callable[[Event], None]  # told of an event before it is decided (a timer that must stop first)

GIVE_WAY_SECONDS = 0.005
STORM_TURN_SECONDS = 0.02  # in a storm the worker takes one unit of work per 20 ms at most: ~50 events/s
STORM_SHARE = 0.05  # ... and less if its units take long: at most this share of the time
STORM_MAX_GAP_SECONDS = 1.0  # ... but never less than one unit a second
STORM_BUSY = 0.75  # share of a core the event loop's thread used over the last sample
STORM_WAITING = 2.0  # ... while this many acknowledgements were in flight on average (senders kept waiting)
STORM_SAMPLE_SECONDS = 0.1
STORM_RECENT_SECONDS = 0.05  # an acknowledgement this recent means senders are still sending
UNPACK_BATCH = 32  # deliveries per unpacker turn: one ledger read, one commit
STOP_SECONDS = 10.0  # at a stop, how long the events in hand may take to finish
LEDGER_RETRY_SECONDS = (0.5, 30.0)  # the unpacker's backoff, first and longest, while the ledger is down
DECODE_FAILURE_EXCERPT = 2048  # bytes of an undecodable delivery's body put in the log


class Gate:
    """
    Decides when the worker may take its next unit of work, so that acknowledgements go first.

    Normally a unit waits at most 5 ms for the acknowledgements in flight. In a storm — over the last 100 ms
    the event loop's thread was busy most of the time *and* senders were kept waiting (two or more
    acknowledgements in flight on average), and they are still sending — the whole worker runs one unit at a
    time and takes at most 5% of the time (see :meth:`turn`): a webhook left unanswered is retried and
    multiplies the load, while what was acknowledged is safe in the ledger. The worker is never stopped,
    only slowed, and it catches up once the storm passes (measured in bench/README.md).

    A busy loop alone is not a storm: at a steady 1,000 alerts/s, every alert acting, the agent's loop is 60 to 80%
    busy while its acknowledgements are answered in about a millisecond (0.1 to 0.7 in flight on average); in a
    wrk storm, 10 to 12 are. Throttling on CPU alone held the worker back under that steady load, and its backlog
    grew (bench/README.md).
    """

    def __init__(
        self, *, on_storm: Callable[[bool], None] | None = None, cpu_time: Callable[[], float] = time.thread_time
    ) -> None:
        # Called on the event loop's thread, thread_time() is the loop's own CPU, not the ledger writer's.
        self._cpu_time = cpu_time
        self._in_flight = 0
        self._waiting_area = 0.0  # integral of acknowledgements in flight over time, since the last sample
        self._area_at = time.monotonic()
        self._waiting = 0.0  # acknowledgements in flight on average over the last sample
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._last_ack = -1e9
        self._next_storm_turn = -1e9
        self._sample_at = time.monotonic()
        self._sample_cpu = cpu_time()
        self._busy = 0.0
        self._storm = False
        self._on_storm = on_storm
        self._lock = asyncio.Lock()

    def _account(self) -> float:
        now = time.monotonic()
        self._waiting_area += self._in_flight * (now - self._area_at)
        self._area_at = now
        return now

    def intake_started(self) -> None:
        self._account()
        self._in_flight += 1
        self._quiet.clear()

    def intake_finished(self) -> None:
        self._last_ack = self._account()
        self._in_flight -= 1
        if not self._in_flight:
            self._quiet.set()

    def storm(self) -> bool:
        now = time.monotonic()
        if now - self._sample_at >= STORM_SAMPLE_SECONDS:
            cpu = self._cpu_time()
            self._account()
            self._busy = (cpu - self._sample_cpu) / (now - self._sample_at)
            self._waiting = self._waiting_area / (now - self._sample_at)
            self._waiting_area = 0.0
            self._sample_at, self._sample_cpu = now, cpu
        senders = self._in_flight > 0 or now - self._last_ack < STORM_RECENT_SECONDS
        storm = self._busy >= STORM_BUSY and self._waiting >= STORM_WAITING and senders
        if storm != self._storm:
            self._storm = storm
            if self._on_storm is not None:
                self._on_storm(storm)
        return storm

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """
        Run one unit of work inside ``async with gate.turn() as storm``. In a storm (``storm`` is True) units
        run one at a time, and the next may start only when the worker has used at most 5% of the time since
        this one started (at least 20 ms later, at most 1 s): a unit that waits on the Kubernetes API for 10 ms
        makes the next one wait 200 ms. Take one small unit then (one event, one delivery), not a batch.
        """
        async with self._lock:
            while self.storm():
                wait = self._next_storm_turn - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                started = time.monotonic()
                try:
                    yield True
                finally:
                    spent = time.monotonic() - started
                    gap = min(max(STORM_TURN_SECONDS, spent / STORM_SHARE), STORM_MAX_GAP_SECONDS)
                    self._next_storm_turn = started + gap
                return
        if not self._quiet.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), GIVE_WAY_SECONDS)
        yield False


class Intake:
    """What a source calls with what it heard: record it durably, then let the worker know."""

    def __init__(self, *, ledger: Ledger, worker: Worker, metrics: Metrics) -> None:
        self.ledger = ledger
        self.worker = worker
        self.metrics = metrics

    async def receive(self, *, source: str, body: bytes, received_at: datetime) -> int:
        """A delivery as it came, for the worker to decode; returns its id. Raises LedgerUnavailable: do not ack."""
        self.worker.gate.intake_started()
        try:
            delivery_id = await self.ledger.receive(source=source, body=body, received_at=received_at)
        finally:
            self.worker.gate.intake_finished()
        self.worker.delivered()
        return delivery_id

    async def accept(self, events: Sequence[Event]) -> list[InboxEntry]:
        """Events a source built itself. Raises LedgerUnavailable: the source must not ack."""
        self.worker.gate.intake_started()
        try:
            entries = await self.ledger.accept(events)
        finally:
            self.worker.gate.intake_finished()
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
        lanes: int,
        decoders: Mapping[str, Decoder] | None = None,
    ) -> None:
        self.ledger = ledger
        self.decoders: Mapping[str, Decoder] = decoders or {}  # the sources' (set once they are built)
        self.followers: list[Follower] = []  # told what became of every event (the calendar, the evacuations)
        self.heralds: list[Herald] = []  # told of every event before it is decided (the capping timers)
        self.rules = rules
        self.executor = executor
        self.recorder = recorder
        self.metrics = metrics
        self._lanes: list[asyncio.Queue[InboxEntry]] = [asyncio.Queue() for _ in range(lanes)]
        self._urgent: asyncio.Queue[InboxEntry] = asyncio.Queue()  # events with a deadline: never gated
        self._marks: asyncio.Queue[int] = asyncio.Queue()  # events decided, to be marked processed
        self._in_hand = 0  # events the lanes are processing now
        self._none_in_hand = asyncio.Event()
        self._none_in_hand.set()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.gate = Gate(on_storm=self._storm_changed)
        self._delivered = asyncio.Event()  # a delivery may be waiting to be unpacked
        self._unpacked = asyncio.Event()  # the unpacker found none left
        self._unpacked.set()
        self._deliveries_waiting = 0
        metrics.pending_events.set_function(lambda: self.depth)  # read at scrape time, free per event

    @property
    def depth(self) -> int:
        """Deliveries not yet unpacked and events not yet processed."""
        return self._deliveries_waiting + self._urgent.qsize() + sum(lane.qsize() for lane in self._lanes)

    def submit(self, entries: Sequence[InboxEntry]) -> None:
        for entry in entries:
            if entry.event.deadline is not None:
                self._urgent.put_nowait(entry)
                continue
            lane = zlib.crc32(entry.event.fingerprint.encode()) % len(self._lanes)
            self._lanes[lane].put_nowait(entry)

    def delivered(self, count: int = 1) -> None:
        self._deliveries_waiting += count
        self._unpacked.clear()
        self._delivered.set()

    async def resume_pending(self) -> int:
        """Re-queue the events taken in before a restart, then let the unpacker look for deliveries left."""
        entries = await self.ledger.pending()
        self.submit(entries)
        if entries:
            log.info("re-queued events taken in before a restart", count=len(entries))
        self.delivered(0)  # the unpacker starts here, after the older events: it finds any deliveries left
        return len(entries)

    def start(self, supervisor: Supervisor) -> None:
        """Run the lanes and the unpacker under the supervisor: each may be restarted, as its work is queued
        (the lane's queue) or in the ledger (the deliveries), never only in the crashed coroutine."""
        self._tasks = [
            supervisor.spawn(f"worker-lane-{i}", functools.partial(self._run, lane))
            for i, lane in enumerate(self._lanes)
        ]
        self._tasks.append(supervisor.spawn("worker-urgent", functools.partial(self._run, self._urgent, gated=False)))
        self._tasks.append(supervisor.spawn("worker-unpacker", self._unpack_loop))
        self._tasks.append(supervisor.spawn("worker-marker", self._mark_loop))

    async def stop(self) -> None:
        # A stop (SIGTERM) lets the events in hand finish (bounded), so that a change made is also recorded,
        # instead of being left `applying` for the next start to settle; lanes take no new event meanwhile.
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):
                await self._none_in_hand.wait()
                await self._marks.join()  # and their processed marks land, before the ledger closes
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _storm_changed(self, storm: bool) -> None:
        self.metrics.worker_throttled.set(1 if storm else 0)

    async def idle(self) -> None:
        """Wait until every delivery is unpacked and every queued event processed (tests, the demo)."""
        while True:
            await self._unpacked.wait()
            for lane in (self._urgent, *self._lanes):
                await lane.join()
            await self._marks.join()
            if self._unpacked.is_set():
                return

    async def _unpack_loop(self) -> None:
        retry = LEDGER_RETRY_SECONDS[0]
        while True:
            await self._delivered.wait()
            self._delivered.clear()  # before reading, so that a delivery stored meanwhile sets it again
            while True:
                try:
                    async with self.gate.turn() as storm:
                        deliveries = await self.ledger.pending_deliveries(limit=1 if storm else UNPACK_BATCH)
                        if deliveries:
                            await self._unpack(deliveries)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the deliveries stay in the ledger; the unpacker must not die
                    if isinstance(exc, LedgerUnavailable):
                        log.error("cannot unpack deliveries; will retry", error=str(exc), retry_in=retry)
                    else:
                        log.exception("unpacking deliveries failed; will retry", retry_in=retry)
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, LEDGER_RETRY_SECONDS[1])
                    continue
                retry = LEDGER_RETRY_SECONDS[0]
                if not deliveries:
                    break
            if not self._delivered.is_set():
                self._deliveries_waiting = 0
                self._unpacked.set()

    async def _mark_loop(self) -> None:
        """
        Mark decided events processed, all those waiting in one ledger write. A lane does not wait for its
        event's mark: at a steady 1,000 alerts/s that second commit was about half of each event's time in the
        lane (bench/README.md). The mark is queued only once the event's decisions are committed, so it never
        lands before them. A mark that does not land (the ledger down, a crash first) leaves the event to run
        again at the next start, where it finds its claims already held: a recorded no-op.
        """
        while True:
            ids = [await self._marks.get()]
            while not self._marks.empty():
                ids.append(self._marks.get_nowait())
            try:
                await self.ledger.mark_processed(ids)
            except LedgerUnavailable as exc:
                log.error(
                    "could not mark events processed; they run again at the next start", entries=ids, error=str(exc)
                )
            except Exception:  # never lose the loop over it: the outcome is the same as above
                log.exception("marking events processed failed; they run again at the next start", entries=ids)
            finally:
                for _ in ids:
                    self._marks.task_done()

    async def _unpack(self, deliveries: list[Delivery]) -> None:
        decoded: list[list[Event]] = []
        for delivery in deliveries:
            try:
                decoder = self.decoders.get(delivery.source)
                if decoder is None:  # stored while a source now turned off (or removed) was on
                    raise LookupError(f"no source named {delivery.source!r} is enabled to decode it")
                decoded.append(decoder(delivery))
            except Exception as exc:  # stored but unreadable (a decoder bug, a downgrade): say so, and skip it
                log.exception(
                    "delivery could not be decoded; skipped",
                    delivery=delivery.id,
                    source=delivery.source,
                    body=delivery.body[:DECODE_FAILURE_EXCERPT].decode(errors="replace"),
                )
                trigger = Trigger(source=delivery.source, alertname="", status="undecodable", fingerprint="")
                reason = f"delivery #{delivery.id} could not be decoded and was skipped; its body is in the log"
                await self._note(trigger, "decode", reason, outcome=Outcome.FAILED, error=exc)
                decoded.append([])
        stored = await self.ledger.unpack([(d.id, events) for d, events in zip(deliveries, decoded, strict=True)])
        self._deliveries_waiting = max(0, self._deliveries_waiting - len(deliveries))
        for entries in stored:
            for entry in entries:
                self.metrics.events_received.labels(source=entry.event.source, status=entry.event.status).inc()
            self.submit(entries)

    async def _run(self, lane: asyncio.Queue[InboxEntry], *, gated: bool = True) -> None:
        while True:
            entry = await lane.get()
            if self._stopping:  # no new event once a stop began (it stays in the ledger for the next start)
                lane.task_done()
                await asyncio.Event().wait()  # wait to be cancelled: a return is a crash
            self._in_hand += 1
            self._none_in_hand.clear()
            try:
                if gated:
                    async with self.gate.turn():
                        await self.process(entry)
                else:  # the urgent lane: a deadline does not wait for acknowledgements to calm down
                    await self.process(entry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event processing failed", entry=entry.id, alertname=entry.event.alertname)
            finally:
                self._in_hand -= 1
                if not self._in_hand:
                    self._none_in_hand.set()
                lane.task_done()

    async def process(self, entry: InboxEntry) -> list[Decision]:
        event = entry.event
        decisions: list[Decision] = []
        if entry.duplicate_of is not None:
            reason = f"redelivery of event #{entry.duplicate_of} (same alert, status and start)"
            decisions.append(await self._note(Trigger.of(event), "redelivery", reason))
        else:
            for herald in self.heralds:
                try:
                    herald(event)
                except Exception:  # the event is decided all the same
                    log.exception("a herald failed", source=event.source, entry=entry.id)
            try:
                plans = await self.rules.plan(event)
                if not plans:
                    decisions.append(await self._note(Trigger.of(event), "match", f"no rule matches {event.alertname}"))
                for plan in self.executor.guard.limit_blast_radius(plans):
                    decisions.append(await self.executor.execute(plan))
            except Exception as exc:
                log.exception("event could not be handled", entry=entry.id)
                decisions.append(
                    await self._note(Trigger.of(event), "error", "internal error", outcome=Outcome.FAILED, error=exc)
                )
        latency = (utcnow() - event.received_at).total_seconds()
        for decision in decisions:
            self.metrics.action_latency.labels(action=decision.action).observe(latency)
        for follower in self.followers:
            try:
                follower(event, decisions)
            except Exception:  # a follow-up of its own; the event is decided and recorded all the same
                log.exception("a follow-up could not be started", source=event.source, entry=entry.id)
        # The mark goes to the marker; the lane takes its next event meanwhile (see _mark_loop).
        self._marks.put_nowait(entry.id)
        return decisions

    async def _note(
        self,
        trigger: Trigger,
        action: str,
        reason: str,
        *,
        outcome: Outcome = Outcome.NOOP,
        error: Exception | None = None,
    ) -> Decision:
        now = utcnow()
        decision = Decision(
            id=new_id(),
            at=now,
            trigger=trigger,
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
