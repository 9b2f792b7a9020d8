"""
The capping timer: while a ``cap`` alert (HighMCPCost) fires, lower its caps one more step every ``every``.

Alertmanager repeats a firing alert as the very same notification, and the inbox takes a repeat for a
redelivery (a no-op, by design: nothing acknowledged runs twice). So the steps after the first come from here,
on the agent's own clock. The worker tells this engine what became of every event; a ``cap`` rule's first
decisions on a firing alert start one timer per alert (rule and fingerprint), and its resolve stops it (the
resolve itself gives the caps back, through the rules, like every other claim). Each tick plans the rule again
(the targets are re-priced: the most expensive now) and executes the plans; each step is recorded as a decision
that ``follows`` the alert's first cap decision, so ``scaling-agent decisions --follows ID`` reads the whole
capping. A tick that lowers nothing (every target at its floor or minimum) stops the timer: the caps hold until
the resolve or their expiry.

The resolve stops the timer *before* it is decided (:meth:`Capper.arriving`, a worker herald): a step due
while the resolve gives the caps back could otherwise take one again right after, to hold until its expiry. It
is stopped, not cancelled: a step already writing finishes and is recorded (the give-back waits for the
object's lock, then ends it), and no step starts after the resolve. Cancelled mid-write, its row would be left
`applying` and the give-back would erase the evidence that it landed, so it would be settled as failed.

After a restart, :meth:`Capper.resume` finds the alerts whose caps were stepping (a ``cap`` decision on a firing
alert, and no resolve recorded since) and starts their timers again, from the last step's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import structlog

from agent.actions.cap import CapSpec
from agent.executor import Executor
from agent.rules import Rules
from agent.structs import Decision, Event, EventKind, Outcome, utcnow

log = structlog.get_logger("agent.capping")

Key = tuple[str, str]  # (rule, alert fingerprint)
STOP_SECONDS = 10.0  # at the agent's stop, how long a step already writing may take to finish


class Capper:
    def __init__(self, *, rules: Rules, executor: Executor) -> None:
        self.rules = rules
        self.executor = executor
        self._running: dict[Key, asyncio.Task[None]] = {}
        self._stopping: dict[Key, asyncio.Event] = {}  # set when the alert resolves: no step starts after it

    def arriving(self, event: Event) -> None:
        """The worker's call before it decides an event: a resolve stops its alert's timers first."""
        if event.kind != EventKind.ALERT or event.status != "resolved":
            return
        for key in [key for key in self._stopping if key[1] == event.fingerprint]:
            self._halt(key, event)

    def _halt(self, key: Key, event: Event) -> None:
        stopping = self._stopping.pop(key, None)
        self._running.pop(key, None)
        if stopping is not None:
            stopping.set()
            log.info("capping stopped: the alert resolved", rule=key[0], alertname=event.alertname)

    def decided(self, event: Event, decisions: Sequence[Decision]) -> None:
        """The worker's call after each event: start (or stop) the timer of each cap rule that decided on it."""
        if event.kind != EventKind.ALERT:
            return
        firsts: dict[str, Decision] = {}
        for decision in decisions:
            if decision.rule is None or decision.action not in ("cap", "revert"):
                continue
            # A firing alert's timer starts when a cap took hold; a rule that found nothing to cap has no timer.
            if event.status == "resolved" or decision.outcome in (Outcome.APPLIED, Outcome.DRY_RUN):
                firsts.setdefault(decision.rule, decision)
        for rule, first in firsts.items():
            key = (rule, event.fingerprint)
            if event.status == "resolved":
                self._halt(key, event)
                continue
            self._start(key, event, anchor=first.follows or first.id, last=first.at)

    async def resume(self, decisions: Sequence[Decision]) -> int:
        """At start: the timers a stop cut short (decisions oldest first). Returns how many were started."""
        stepping: dict[Key, tuple[Decision, Decision]] = {}  # key → (first cap decision, last one)
        for decision in decisions:
            if decision.action not in ("cap", "revert") or decision.rule is None:
                continue
            key = (decision.rule, decision.trigger.fingerprint)
            if decision.trigger.status == "resolved":
                stepping.pop(key, None)
            elif decision.action == "cap" and decision.outcome in (Outcome.APPLIED, Outcome.NOOP, Outcome.DRY_RUN):
                first = stepping[key][0] if key in stepping else decision
                stepping[key] = (first, decision)
        for (rule, fingerprint), (first, last) in stepping.items():
            trigger = first.trigger
            event = Event(
                source=trigger.source,
                key=trigger.event_key or "",
                alertname=trigger.alertname,
                status="firing",
                fingerprint=fingerprint,
                labels=trigger.labels,
            )
            log.info("resuming a capping a stop cut short", rule=rule, alertname=trigger.alertname, first=first.id)
            self._start((rule, fingerprint), event, anchor=first.follows or first.id, last=last.at)
        return len(stepping)

    def _start(self, key: Key, event: Event, *, anchor: str, last: datetime) -> None:
        if key in self._running:
            return
        spec = self._spec(key[0])
        if spec is None:
            return
        stopping = asyncio.Event()
        task = asyncio.create_task(
            self._run(key, event, spec, anchor=anchor, last=last, stopping=stopping), name=f"cap {key[0]}"
        )
        self._running[key] = task
        self._stopping[key] = stopping
        task.add_done_callback(functools.partial(self._finished, key))

    def _spec(self, rule: str) -> CapSpec | None:
        config = self.rules.named(rule)
        return config.action if config is not None and isinstance(config.action, CapSpec) else None

    def _finished(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
            del self._stopping[key]

    async def stop(self) -> None:
        """At the agent's stop: no step starts, one already writing may finish (bounded), like the worker's."""
        tasks = list(self._running.values())
        for stopping in self._stopping.values():
            stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_SECONDS)
        self._running.clear()
        self._stopping.clear()

    async def _run(
        self, key: Key, event: Event, spec: CapSpec, *, anchor: str, last: datetime, stopping: asyncio.Event
    ) -> None:
        rule = key[0]
        try:
            wait = (last + spec.params.every - utcnow()).total_seconds()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), max(wait, 0.0))
                if stopping.is_set():
                    return
                wait = spec.params.every.total_seconds()
                lowered = await self.step(rule, event, anchor=anchor, stopping=stopping)
                if stopping.is_set():
                    return
                if not lowered:
                    log.info("capping holds: no target can go lower", rule=rule, alertname=event.alertname)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # a capping must never take the agent down, nor stop unsaid
            log.exception("capping failed; its caps hold until the resolve or their expiry", rule=rule)

    async def step(self, rule: str, event: Event, *, anchor: str, stopping: asyncio.Event) -> bool:
        """
        One step of one alert's caps: plan the rule again, execute. True when any cap went lower. A resolve heard
        meanwhile (``stopping``) ends it before the next write: the executor takes the object's lock at once when
        it is free, so no write of this step can slip in after the give-back's.
        """
        plans = [p for p in await self.rules.plan(event) if p.rule == rule and p.action == "cap"]
        lowered = False
        for plan in self.executor.guard.limit_blast_radius(plans):
            if stopping.is_set():
                return False
            decision = await self.executor.execute(replace(plan, follows=anchor))
            lowered = lowered or decision.outcome in (Outcome.APPLIED, Outcome.DRY_RUN)
        return lowered
