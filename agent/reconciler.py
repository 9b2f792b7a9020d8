"""
The reconciler: finds the agent's claims in the cluster and ends those whose
time is up — on start and then periodically.

It reads everything from the objects' claims, never from memory, so it
finishes after a restart what an earlier process started (level-triggered:
an expiry passed while the agent was down is given back on the first pass).
It also:
- settles what a crash cut short (first, on every pass): a decision still
  ``applying`` in the ledger is completed against its object (``applied`` if
  the object carries the write, ``failed`` if it does not), and a claim naming
  a decision the ledger lacks is recorded as a recovered decision under its own
  id, so every change in the cluster has its row and the cooldown sees it;
- runs each kind's follow-up (for a ScaledObject: that KEDA's ``Paused``
  condition cleared after a resume) and records what it finds;
- publishes the pauses in force (agent, human, kube-downscaler) with their age.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

import structlog

from agent.claims import Claim, Want
from agent.config import KubernetesConfig
from agent.decisions import DecisionRecorder
from agent.errors import KubernetesError, NotFound
from agent.executor import Executor, describe_error, landed
from agent.metrics import Metrics
from agent.structs import Decision, Outcome, TargetRef, Trigger, new_id, utcnow
from agent.supervisor import Supervisor
from agent.targets.base import PauseOwner, TargetKind, TargetState

log = structlog.get_logger("agent.reconciler")

SOURCE = "reconciler"
# The action a claim stands for, for a change recovered from an object (claims do not name their action).
ACTION_OF_WANT = {
    Want.PAUSE: "pause",
    Want.FLOOR: "set_min",
    Want.CAP: "set_max",
    Want.RAISE: "raise_max",
    Want.HOLD: "cordon",
}


class Reconciler:
    def __init__(
        self,
        *,
        targets: Mapping[str, TargetKind],
        executor: Executor,
        recorder: DecisionRecorder,
        metrics: Metrics,
        kubernetes: KubernetesConfig,
        retired: Callable[[str], str | None] = lambda holder: None,
    ) -> None:
        self.targets = targets
        self.retired = retired  # why a holder no longer stands behind its claims (a schedule removed), or None
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
            for namespace in self._namespaces() if kind.namespaced else [None]:
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
        """Record, under its own id, each claim the objects carry whose decision the ledger lacks."""
        by_decision: dict[str, tuple[TargetState, list[Claim]]] = {}
        for state in states:
            for claim in state.claims.claims:
                by_decision.setdefault(claim.decision, (state, []))[1].append(claim)
        if not by_decision:
            return []
        known = await self.recorder.ledger.known(list(by_decision))
        decisions = []
        for decision_id, (state, claims) in by_decision.items():
            if decision_id in known or decision_id in self.recorder.in_flight:
                continue
            decision = _recovered(decision_id, state, [c for c in claims if c.field in state.claims.kept] or claims)
            await self.recorder.record(decision)
            decisions.append(decision)
        return decisions

    async def _reconcile_object(self, state: TargetState, now: datetime) -> list[Decision]:
        decisions: list[Decision] = []
        if state.notes:
            log.warning(
                "an object carries annotations the agent cannot read; it leaves them",
                target=str(state.ref),
                notes=list(state.notes),
            )
            return decisions
        expired = sorted(
            (c for c in state.claims.claims if c.until is not None and c.until <= now), key=lambda c: c.field
        )
        if expired and self.executor.guard.dry_run:
            # Nothing gets given back in dry-run, so the same expiry would be reported on every pass: once is enough.
            marks = {(state.ref, c.field, c.decision) for c in expired}
            expired = [c for c in expired if (state.ref, c.field, c.decision) not in self._reported_in_dry_run]
            self._reported_in_dry_run |= marks
        if expired:
            first = expired[0]
            trigger = Trigger(source=SOURCE, alertname=first.holder, status="expired", fingerprint=_fingerprint(first))
            when = ", ".join(f"{c.field} held by {c.holder} until {c.until:%Y-%m-%d %H:%M:%S}Z" for c in expired)
            decisions.append(await self.executor.revert(state.ref, trigger=trigger, reason=f"expired ({when})"))
        retired = {c.holder: why for c in state.claims.claims if (why := self.retired(c.holder)) is not None}
        if retired and not self.executor.guard.dry_run:
            trigger = Trigger(source=SOURCE, alertname=min(retired), status="retired", fingerprint="")
            reason = "; ".join(f"{holder}: {why}" for holder, why in sorted(retired.items()))
            decisions.append(
                await self.executor.revert(state.ref, trigger=trigger, reason=reason, retired=frozenset(retired))
            )
        found = await self.targets[state.ref.kind].follow_up(state, now=now, dry_run=self.executor.guard.dry_run)
        if found is not None:
            decision = Decision(
                id=new_id(),
                at=now,
                trigger=Trigger(source=SOURCE, alertname="", status=found.action, fingerprint=""),
                rule=None,
                action=found.action,
                target=state.ref,
                before={},
                after={},
                reason=found.reason,
                dry_run=self.executor.guard.dry_run,
                outcome=Outcome.FAILED,
            )
            await self.recorder.record(decision)
            decisions.append(decision)
        return decisions

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
                namespace=state.ref.namespace, kind=state.ref.kind, name=state.ref.name, owner=state.pause.owner
            ).set(max(0.0, (now - since).total_seconds()))
        for key in list(self._first_seen):
            if key not in seen:
                del self._first_seen[key]
        for owner, count in counts.items():
            self.metrics.pauses_in_force.labels(owner=owner).set(count)


def _fingerprint(claim: Claim) -> str:
    """The alert's fingerprint, for a claim a rule holds (``rule:<rule>:<fingerprint>``); else empty."""
    kind, _, rest = claim.holder.partition(":")
    return rest.rpartition(":")[2] if kind == "rule" else ""


def _rule(claim: Claim) -> str | None:
    kind, _, rest = claim.holder.partition(":")
    return (rest.rpartition(":")[0] or None) if kind == "rule" else None


def _settled(row: Decision, state: TargetState | None) -> Decision:
    """An ``applying`` row's outcome, read from the object: does it carry the write the row describes?"""
    if state is None:
        return replace(row, outcome=Outcome.FAILED, reason=f"{row.reason} — settled at start: the object is gone")
    if landed(row, state):
        note = "settled at start: the object carries this change; the agent stopped before recording its outcome"
        return replace(row, outcome=Outcome.APPLIED, reason=f"{row.reason} — {note}")
    note = "settled at start: not applied; the agent stopped before the patch was confirmed and the object lacks it"
    return replace(row, outcome=Outcome.FAILED, reason=f"{row.reason} — {note}")


def _recovered(decision_id: str, state: TargetState, claims: list[Claim]) -> Decision:
    """A claim found on an object with no row in the ledger, recorded under the id the object names."""
    first = claims[0]
    kept = state.claims.kept
    return Decision(
        id=decision_id,
        at=first.since,
        trigger=Trigger(
            source=SOURCE,
            alertname=first.holder,
            status="recovered",
            fingerprint=_fingerprint(first),
            event_key=first.key or None,
        ),
        rule=_rule(first),
        action=ACTION_OF_WANT.get(first.want, "unknown"),
        target=state.ref,
        before={c.field: kept[c.field].original for c in claims if c.field in kept},
        after={c.field: kept[c.field].written for c in claims if c.field in kept},
        reason=(
            f"{first.reason} — recovered: the object carries this change but the ledger had no record of it"
            " (written before the agent recorded changes first, or the ledger was replaced); recorded now"
        ),
        dry_run=False,
        outcome=Outcome.APPLIED,
    )
