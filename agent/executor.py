"""
The executor: turns one plan into one decision, doing the Kubernetes I/O.

For a plan with a target it takes the target's lock (one change at a time per
object), reads the object, asks the action what to do, asks the guard whether
that is allowed, and patches — with retries on transient API errors and a
re-read on a 409 conflict. Every path ends in a :class:`Decision`, recorded
through the recorder (ledger first); nothing here raises to the caller.

A change is recorded before it is made: the decision's row is written as
``applying`` (:meth:`DecisionRecorder.begin`) before the patch is sent, and
completed with its outcome after. If that first write fails, nothing is
patched. So a crash at any moment leaves, for every change in the cluster, a
row the reconciler can settle against the object at the next start.

The executor never knows which source an event came from: alerts, queues and
the calendar all arrive as plans. The reconciler uses :meth:`Executor.revert`
for expiries, which runs the same lock, guard and record path.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from agent.actions import ACTIONS, Apply, Intent, Revert, Skip
from agent.config import KubernetesConfig
from agent.decisions import DecisionRecorder
from agent.errors import Conflict, KubernetesError, NotFound, Unavailable
from agent.guard import Guard, Refused
from agent.ledger import LedgerUnavailable
from agent.metrics import Metrics
from agent.structs import Decision, Outcome, Ownership, Plan, TargetRef, Trigger, new_id, utcnow
from agent.targets.base import PAUSED_REPLICAS, UNSET, ResumeMark, TargetKind, TargetState, Unset, describe_manager

log = structlog.get_logger("agent.executor")
T = TypeVar("T")

CONFLICT_ATTEMPTS = 3


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, KubernetesError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Executor:
    def __init__(
        self,
        *,
        targets: Mapping[str, TargetKind],
        guard: Guard,
        recorder: DecisionRecorder,
        metrics: Metrics,
        kubernetes: KubernetesConfig,
    ) -> None:
        self.targets = targets
        self.guard = guard
        self.recorder = recorder
        self.metrics = metrics
        self.kubernetes = kubernetes
        self._locks: defaultdict[TargetRef, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def execute(self, plan: Plan) -> Decision:
        now = utcnow()
        draft = Decision(
            id=new_id(),
            at=now,
            trigger=Trigger.of(plan.event),
            rule=plan.rule,
            action=plan.action,
            target=plan.target,
            before={},
            after={},
            reason=plan.reason,
            dry_run=self.guard.dry_run,
            outcome=Outcome.NOOP,
        )
        action = ACTIONS[plan.action]
        if plan.verdict is not None:
            error = plan.reason if plan.verdict == Outcome.FAILED else None
            decision = _finish(draft, plan.verdict, plan.reason, error=error)
        elif not action.needs_target:
            intent = action.decide(None, plan.spec, event=plan.event, now=now, limits=self.guard.limits)
            assert isinstance(intent, Skip)
            target_note = f" (target {plan.reason})" if plan.target is not None else ""
            decision = _finish(draft, intent.outcome, intent.reason + target_note)
        elif plan.target is None:
            decision = _finish(draft, Outcome.NOOP, plan.reason)
        else:
            decision = await self._on_target(
                draft,
                plan.target,
                lambda state: action.decide(state, plan.spec, event=plan.event, now=now, limits=self.guard.limits),
                gives_back=action.reverts,
            )
        await self.recorder.record(decision)
        return decision

    async def revert(self, ref: TargetRef, fields: tuple[str, ...], *, trigger: Trigger, reason: str) -> Decision:
        """Give back fields the agent owns on ``ref`` (expiry), re-checked under the lock."""
        now = utcnow()
        draft = Decision(
            id=new_id(),
            at=now,
            trigger=trigger,
            rule=None,
            action="revert",
            target=ref,
            before={},
            after={},
            reason=reason,
            dry_run=self.guard.dry_run,
            outcome=Outcome.NOOP,
        )

        def decide(state: TargetState) -> Intent:
            still = tuple(f for f in fields if f in state.owned and _expired(state.owned[f], now))
            if not still:
                return Skip(Outcome.NOOP, "nothing left to revert (already given back)")
            return Revert(fields=still, reason=reason)

        decision = await self._on_target(draft, ref, decide, gives_back=True)
        await self.recorder.record(decision)
        return decision

    async def _on_target(
        self,
        draft: Decision,
        ref: TargetRef,
        decide: Callable[[TargetState], Intent],
        *,
        gives_back: bool,
    ) -> Decision:
        try:
            self.guard.check_namespace(ref)
        except Refused as refusal:
            return _finish(draft, Outcome.REFUSED, refusal.reason)
        kind = self.targets[ref.kind]
        async with self._locks[ref]:
            try:
                for _ in range(CONFLICT_ATTEMPTS):
                    try:
                        return await self._attempt(draft, kind, ref, decide, gives_back=gives_back)
                    except Conflict:
                        log.info("conflict on patch; reading again", target=str(ref))
                        continue
                    except NotFound as exc:
                        return _finish(draft, Outcome.FAILED, f"{ref} not found", error=str(exc))
                    except Unavailable as exc:
                        return _finish(draft, Outcome.FAILED, "Kubernetes API unreachable", error=str(exc))
                    except KubernetesError as exc:
                        return _finish(draft, Outcome.FAILED, "Kubernetes API call failed", error=str(exc))
                reason = f"the object kept changing under the agent ({CONFLICT_ATTEMPTS} conflicts)"
                return _finish(draft, Outcome.FAILED, reason)
            except BaseException:
                self.recorder.abandon(draft.id)  # no outcome: its `applying` row, if any, is the reconciler's now
                raise

    async def _attempt(
        self,
        draft: Decision,
        kind: TargetKind,
        ref: TargetRef,
        decide: Callable[[TargetState], Intent],
        *,
        gives_back: bool,
    ) -> Decision:
        now = draft.at
        state = await self._call("get", kind.get, ref.namespace, ref.name)
        if draft.id in self.recorder.in_flight and (landed := _landed(draft, state)) is not None:
            return landed  # read again after a lost answer or a 409: the patch had landed after all
        intent = decide(state)
        if isinstance(intent, Skip):
            return _finish(draft, intent.outcome, intent.reason)

        values: dict[str, int | None]
        owned: dict[str, Ownership | None]
        resumed: ResumeMark | Unset | None = UNSET
        notes: list[str] = []
        if isinstance(intent, Apply):
            try:
                if not gives_back:
                    self.guard.check_opt_out(state)
                    self.guard.check_bounds(state, intent)
                    await self.guard.check_cooldown(ref, now=now, deciding=draft.id)
            except Refused as refusal:
                return _finish(draft, Outcome.REFUSED, refusal.reason, before=_values(state, intent.values))
            values = dict(intent.values)
            owned = {
                name: Ownership(
                    field=name,
                    # A second change to a field the agent already owns keeps the original value to go back to.
                    before=state.owned[name].before if name in state.owned else state.values.get(name),
                    after=value,
                    decision=draft.id,
                    rule=draft.rule or "",
                    alertname=draft.trigger.alertname,
                    fingerprint=draft.trigger.fingerprint,
                    reason=intent.reason,
                    applied_at=now,
                    expires_at=intent.expires_at,
                    revert_on_resolve=intent.revert_on_resolve,
                    event_key=draft.trigger.event_key or "",
                    action=draft.action,
                )
                for name, value in intent.values.items()
            }
            reason = intent.reason
        else:
            values, owned, notes = give_back(state, intent)
            if PAUSED_REPLICAS in values:
                resumed = ResumeMark(decision=draft.id, at=now, check_by=now + self.kubernetes.resume_check_after)
            reason = "; ".join([intent.reason, *notes])
            if draft.action not in ("resume", "revert"):
                # The give-back of a pause or a floor is its own kind of decision, whatever rule made the change.
                draft = replace(draft, action="revert")

        before = _values(state, owned)
        after = {**before, **values}
        if self.guard.dry_run:
            return _finish(draft, Outcome.DRY_RUN, f"would: {reason}", before=before, after=after)
        try:
            async with self.guard.slot():
                if draft.id not in self.recorder.in_flight:  # a re-plan after a 409 has its row already
                    try:
                        await self.recorder.begin(_finish(draft, Outcome.APPLYING, reason, before=before, after=after))
                    except LedgerUnavailable as exc:
                        reason = "not applied: the ledger cannot record the change before it is made"
                        return _finish(draft, Outcome.FAILED, reason, error=str(exc), before=before, after=after)
                await self._call("patch", kind.patch, state, values=values, owned=owned, resumed=resumed)
        except Refused as refusal:
            return _finish(draft, Outcome.REFUSED, refusal.reason, before=before, after=after)
        return _finish(draft, Outcome.APPLIED, reason, before=before, after=after)

    async def _call(self, operation: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        def count(exc: BaseException) -> bool:
            status = exc.status if isinstance(exc, KubernetesError) else 0
            self.metrics.kube_api_errors.labels(operation=operation, status=str(status)).inc()
            return isinstance(exc, KubernetesError) and exc.transient

        backoff = self.kubernetes.api_backoff.total_seconds()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.kubernetes.api_attempts),
            wait=wait_exponential(multiplier=backoff, max=backoff * 20),
            retry=retry_if_exception(count),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn(*args, **kwargs)
        raise AssertionError("unreachable: tenacity either returns or raises")


def give_back(
    state: TargetState, intent: Revert
) -> tuple[dict[str, int | None], dict[str, Ownership | None], list[str]]:
    """Restore each owned field's value from before, unless someone changed it since: then only let go."""
    values: dict[str, int | None] = {}
    owned: dict[str, Ownership | None] = {}
    notes: list[str] = []
    for name in intent.fields:
        ownership = state.owned[name]
        current = state.values.get(name)
        if current == ownership.after:
            values[name] = ownership.before
        else:
            who = describe_manager(state.changed_by[name]) if name in state.changed_by else "someone else"
            notes.append(
                f"{name} was changed by {who} since (now {current}, the agent set {ownership.after}): left as is"
            )
        owned[name] = None
    return values, owned, notes


def _landed(draft: Decision, state: TargetState) -> Decision | None:
    """The decision as applied, if the object already carries this very decision's change."""
    mine = sorted((name, o) for name, o in state.owned.items() if o.decision == draft.id)
    if not mine:
        return None
    reason = f"{mine[0][1].reason} (the patch landed although its answer was lost)"
    before = {name: o.before for name, o in mine}
    after = {name: o.after for name, o in mine}
    return _finish(draft, Outcome.APPLIED, reason, before=before, after=after)


def _expired(ownership: Ownership, now: datetime) -> bool:
    return ownership.expires_at is not None and ownership.expires_at <= now


def _values(state: TargetState, names: Mapping[str, Any]) -> dict[str, int | None]:
    return {name: state.values.get(name) for name in names}


def _finish(
    draft: Decision,
    outcome: Outcome,
    reason: str,
    *,
    error: str | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> Decision:
    return replace(draft, outcome=outcome, reason=reason, error=error, before=before or {}, after=after or {})
