"""
The reconciler: finds the agent's own temporary changes in the cluster and
gives back those whose time is up — on start and then periodically.

It reads everything from the objects' annotations, never from memory, so it
finishes after a restart what an earlier process started (level-triggered:
an expiry passed while the agent was down is reverted on the first pass).
It also:
- settles what a crash cut short (first, on every pass): a decision still
  ``applying`` in the ledger is completed against its object (``applied`` if
  the object carries the change, ``failed`` if it does not), and an ownership
  annotation naming a decision the ledger lacks is recorded as a recovered
  decision under its own id, so every change in the cluster has its row and
  the cooldown sees it;
- checks each resume the agent made: if KEDA still reports ``Paused=True``
  past ``kubernetes.resume_check_after``, that is recorded (``failed``) and posted;
- publishes the pauses in force (agent, human, kube-downscaler) with their age.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

import structlog

from agent.config import KubernetesConfig
from agent.decisions import DecisionRecorder
from agent.errors import KubernetesError, NotFound
from agent.executor import Executor, describe_error
from agent.metrics import Metrics
from agent.structs import Decision, Outcome, Ownership, TargetRef, Trigger, new_id, utcnow
from agent.supervisor import Supervisor
from agent.targets.base import MAX_REPLICAS, MIN_REPLICAS, PAUSED_REPLICAS, PauseOwner, TargetKind, TargetState

log = structlog.get_logger("agent.reconciler")

SOURCE = "reconciler"
GIVE_BACKS = ("revert", "resume")
# The action an ownership annotation stands for, when it predates annotations that name their action.
ACTION_OF_FIELD = {PAUSED_REPLICAS: "pause", MIN_REPLICAS: "set_min", MAX_REPLICAS: "set_max"}


class Reconciler:
    def __init__(
        self,
        *,
        targets: Mapping[str, TargetKind],
        executor: Executor,
        recorder: DecisionRecorder,
        metrics: Metrics,
        kubernetes: KubernetesConfig,
    ) -> None:
        self.targets = targets
        self.executor = executor
        self.recorder = recorder
        self.metrics = metrics
        self.kubernetes = kubernetes
        self._supervisor: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_seen: dict[str, datetime] = {}
        self._reported_in_dry_run: set[tuple[TargetRef, str, str]] = set()

    def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._task = supervisor.spawn("reconciler", self._loop)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            # The first pass runs at start, before the agent listens (Agent.start); this loop continues after it.
            await asyncio.sleep(self.kubernetes.reconcile_interval.total_seconds())
            try:
                await self.reconcile_once()
                self.metrics.reconcile_runs.labels(result="ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.reconcile_runs.labels(result="error").inc()
                log.error("reconcile pass failed; will try again", error=describe_error(exc))

    def _namespaces(self) -> list[str | None]:
        if "*" in self.kubernetes.namespaces:
            return [None]
        return list(self.kubernetes.namespaces)

    async def reconcile_once(self) -> list[Decision]:
        now = utcnow()
        decisions: list[Decision] = await self._settle_unfinished()
        states: list[TargetState] = []
        for kind in self.targets.values():
            for namespace in self._namespaces():
                states.extend(await kind.list(namespace))
        decisions.extend(await self._record_unknown_changes(states))
        for state in states:
            try:
                decisions.extend(await self._reconcile_object(state, now))
            except Exception as exc:  # one bad object must not stop the others
                log.error("reconciling an object failed", target=str(state.ref), error=describe_error(exc))
        self._publish_pauses(states, now)
        return decisions

    # --- what a crash cut short -----------------------------------------------------------------------------

    async def _settle_unfinished(self) -> list[Decision]:
        """Complete every ``applying`` row not in flight here: the process that wrote it died before the outcome."""
        decisions = []
        for row in await self.recorder.ledger.unfinished():
            # Checked now, not before the read: a change begun here is in flight before its row exists.
            if row.id in self.recorder.in_flight or row.target is None:
                continue
            state: TargetState | None
            try:
                state = await self.targets[row.target.kind].get(row.target.namespace, row.target.name)
            except NotFound:
                state = None
            except KubernetesError as exc:
                log.warning("cannot settle a decision yet", decision=row.id, error=str(exc))
                continue  # the next pass tries again
            decision = _settled(row, state)
            if await self.recorder.settle(decision):
                decisions.append(decision)
        return decisions

    async def _record_unknown_changes(self, states: list[TargetState]) -> list[Decision]:
        """Record, under its own id, each change the objects carry whose decision the ledger lacks."""
        by_decision: dict[str, list[tuple[TargetState, Ownership]]] = {}
        for state in states:
            for ownership in state.owned.values():
                by_decision.setdefault(ownership.decision, []).append((state, ownership))
        if not by_decision:
            return []
        known = await self.recorder.ledger.known(list(by_decision))
        decisions = []
        for decision_id, owned in by_decision.items():
            if decision_id in known or decision_id in self.recorder.in_flight:
                continue
            decision = _recovered(decision_id, owned)
            await self.recorder.record(decision)
            decisions.append(decision)
        return decisions

    async def _reconcile_object(self, state: TargetState, now: datetime) -> list[Decision]:
        decisions = []
        expired = tuple(
            name for name, o in sorted(state.owned.items()) if o.expires_at is not None and o.expires_at <= now
        )
        if expired and self.executor.guard.dry_run:
            # Nothing gets reverted in dry-run, so the same expiry would be reported on every pass: once is enough.
            marks = {(state.ref, name, state.owned[name].decision) for name in expired}
            expired = tuple(
                name
                for name in expired
                if (state.ref, name, state.owned[name].decision) not in self._reported_in_dry_run
            )
            self._reported_in_dry_run |= marks
        if expired:
            first = state.owned[expired[0]]
            trigger = Trigger(source=SOURCE, alertname=first.alertname, status="expired", fingerprint=first.fingerprint)
            when = ", ".join(f"{n} at {state.owned[n].expires_at:%Y-%m-%d %H:%M:%S}Z" for n in expired)
            decisions.append(
                await self.executor.revert(
                    state.ref, expired, trigger=trigger, reason=f"expired ({when}); restoring the value from before"
                )
            )
        if state.resumed is not None:
            decision = await self._check_resume(state, now)
            if decision is not None:
                decisions.append(decision)
        return decisions

    async def _check_resume(self, state: TargetState, now: datetime) -> Decision | None:
        mark = state.resumed
        assert mark is not None
        kind = self.targets[state.ref.kind]
        if state.paused_condition is True and now < mark.check_by:
            return None  # KEDA may not have caught up yet
        decision = None
        if state.paused_condition is True:
            waited = int((now - mark.at).total_seconds())
            decision = Decision(
                id=new_id(),
                at=now,
                trigger=Trigger(source=SOURCE, alertname="", status="resume-check", fingerprint=""),
                rule=None,
                action="resume-check",
                target=state.ref,
                before={},
                after={},
                reason=(
                    f"still Paused=True {waited}s after the agent resumed it (decision {mark.decision}); "
                    "KEDA did not pick the resume up — check the KEDA operator, or toggle "
                    'autoscaling.keda.sh/paused to "false"'
                ),
                dry_run=self.executor.guard.dry_run,
                outcome=Outcome.FAILED,
            )
            await self.recorder.record(decision)
        if not self.executor.guard.dry_run:
            await kind.patch(state, values={}, owned={}, resumed=None)
        return decision

    def _publish_pauses(self, states: list[TargetState], now: datetime) -> None:
        counts = {PauseOwner.AGENT: 0, PauseOwner.HUMAN: 0, PauseOwner.DOWNSCALER: 0}
        self.metrics.pause_age.clear()
        seen: set[str] = set()
        for state in states:
            if state.pause is None:
                continue
            key = str(state.ref)
            seen.add(key)
            counts[state.pause.owner] = counts.get(state.pause.owner, 0) + 1
            # A human pause carries no timestamp of its own; KEDA's Paused condition, or first sight, stands in.
            since = state.pause.since or self._first_seen.setdefault(key, now)
            self.metrics.pause_age.labels(
                namespace=state.ref.namespace, scaledobject=state.ref.name, owner=state.pause.owner
            ).set(max(0.0, (now - since).total_seconds()))
        for key in list(self._first_seen):
            if key not in seen:
                del self._first_seen[key]
        for owner, count in counts.items():
            self.metrics.pauses_in_force.labels(owner=owner).set(count)


def _settled(row: Decision, state: TargetState | None) -> Decision:
    """An ``applying`` row's outcome, read from the object: does it carry the change the row describes?"""
    if state is None:
        return replace(row, outcome=Outcome.FAILED, reason=f"{row.reason} — settled at start: the object is gone")
    if row.action in GIVE_BACKS:
        landed = all(name not in state.owned and state.values.get(name) == value for name, value in row.after.items())
    else:
        landed = all(name in state.owned and state.owned[name].decision == row.id for name in row.after)
    if landed:
        note = "settled at start: the object carries this change; the agent stopped before recording its outcome"
        return replace(row, outcome=Outcome.APPLIED, reason=f"{row.reason} — {note}")
    note = "settled at start: not applied; the agent stopped before the patch was confirmed and the object lacks it"
    return replace(row, outcome=Outcome.FAILED, reason=f"{row.reason} — {note}")


def _recovered(decision_id: str, owned: list[tuple[TargetState, Ownership]]) -> Decision:
    """A change found on an object with no row in the ledger, recorded under the id the object names."""
    state, first = owned[0]
    mine = [o for s, o in owned if s.ref == state.ref]
    return Decision(
        id=decision_id,
        at=first.applied_at,
        trigger=Trigger(
            source=SOURCE,
            alertname=first.alertname,
            status="recovered",
            fingerprint=first.fingerprint,
            event_key=first.event_key or None,
        ),
        rule=first.rule or None,
        action=first.action or ACTION_OF_FIELD.get(first.field, "unknown"),
        target=state.ref,
        before={o.field: o.before for o in mine},
        after={o.field: o.after for o in mine},
        reason=(
            f"{first.reason} — recovered: the object carries this change but the ledger had no record of it"
            " (written before the agent recorded changes first, or the ledger was replaced); recorded now"
        ),
        dry_run=False,
        outcome=Outcome.APPLIED,
    )
