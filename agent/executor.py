"""
The executor: turns one plan into one decision, doing the Kubernetes I/O.

For a plan with a target it takes the target's lock (one change at a time per
object), reads the object, asks the action which claim the event takes or
ends, maps it onto the kind's fields, computes every field's value from all
the claims left (:func:`agent.claims.resolve`), asks the guard whether that is
allowed, and patches values and claims in one write — with retries on
transient API errors and a re-read on a 409 conflict. Every path ends in one
:class:`Decision` (one step, before → after), recorded through the recorder
(ledger first); nothing here raises to the caller.

When a field the agent holds no longer has the value the agent last wrote,
someone else changed it: the agent lets go of its claims on that field, leaves
the value, and the decision names who changed it (from ``managedFields``).

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

from agent.actions import ACTIONS, Hold, Intent, Release, Skip, holder_of
from agent.claims import COUNTS, Claim, Claims, TooManyClaims, Value, Want, resolve
from agent.config import KubernetesConfig
from agent.cost import Pricer, replicas_delta
from agent.decisions import DecisionRecorder
from agent.errors import Conflict, KubernetesError, NotFound, Unavailable
from agent.guard import Guard, Refused
from agent.ledger import LedgerUnavailable
from agent.metrics import Metrics
from agent.structs import Costing, Decision, Outcome, Plan, PriceSource, TargetRef, Trigger, new_id, utcnow
from agent.targets.base import TargetKind, TargetState, describe_manager

log = structlog.get_logger("agent.executor")
T = TypeVar("T")

CONFLICT_ATTEMPTS = 3
GIVE_BACKS = ("revert", "resume")  # decisions that end claims


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
        pricer: Pricer | None = None,
    ) -> None:
        self.targets = targets
        self.pricer = pricer
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
            follows=plan.follows,
        )
        action = ACTIONS[plan.action]
        holder = holder_of(plan.rule, plan.event)
        if plan.verdict is not None:
            error = plan.reason if plan.verdict == Outcome.FAILED else None
            decision = _finish(draft, plan.verdict, plan.reason, error=error)
        elif not action.needs_target:
            intent = action.decide(None, plan.spec, event=plan.event, holder=holder, now=now, limits=self.guard.limits)
            assert isinstance(intent, Skip)
            target_note = f" (target {plan.reason})" if plan.target is not None else ""
            decision = _finish(draft, intent.outcome, intent.reason + target_note)
        elif plan.target is None:
            decision = _finish(draft, Outcome.NOOP, plan.reason)
        else:
            kind = self.targets[plan.target.kind]

            def decide(state: TargetState) -> Intent:
                if plan.event.status != "resolved":
                    if action.want is not None:
                        self.guard.check_kind(kind, state, action.want)  # before the action reads fields it lacks
                    if action.ends is not None:
                        self.guard.check_own(state, action.ends)
                return action.decide(
                    state, plan.spec, event=plan.event, holder=holder, now=now, limits=self.guard.limits
                )

            # An event with a deadline (a preemption notice) is never refused for the changes already in flight.
            urgent = plan.event.deadline is not None
            decision = await self._on_target(
                draft, plan.target, decide, holder=holder, urgent=urgent, critical=plan.critical
            )
        await self.recorder.record(decision)
        return decision

    async def revert(
        self, ref: TargetRef, *, trigger: Trigger, reason: str, retired: frozenset[str] = frozenset()
    ) -> Decision:
        """
        End the claims on ``ref`` whose time is up, and those of ``retired`` holders (a schedule removed from the
        config): the reconciler's. Re-checked under the lock.
        """
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
            return Release(
                ends=lambda claim: _expired(claim, now) or claim.holder in retired,
                reason=reason,
                nothing="nothing left to give back (already given back)",
            )

        decision = await self._on_target(draft, ref, decide, holder="")
        await self.recorder.record(decision)
        return decision

    async def _on_target(
        self,
        draft: Decision,
        ref: TargetRef,
        decide: Callable[[TargetState], Intent],
        *,
        holder: str,
        urgent: bool = False,
        critical: bool = False,
    ) -> Decision:
        kind = self.targets[ref.kind]
        try:
            self.guard.check_namespace(ref, kind)
        except Refused as refusal:
            return _finish(draft, Outcome.REFUSED, refusal.reason)
        async with self._locks[ref]:
            try:
                for _ in range(CONFLICT_ATTEMPTS):
                    try:
                        decision = await self._attempt(
                            draft, kind, ref, decide, holder=holder, urgent=urgent, critical=critical
                        )
                        if decision.outcome == Outcome.APPLIED:  # the budget counts it until the spend can
                            self.guard.spent(ref.namespace, decision.cost)
                        return decision
                    except Conflict:
                        log.info("conflict on patch; reading again", target=str(ref))
                        kind.invalidate(ref.namespace, ref.name)  # the cached copy is stale: read the API
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
        holder: str,
        urgent: bool = False,
        critical: bool = False,
    ) -> Decision:
        now = draft.at
        state = await self._call("get", kind.get, ref.namespace, ref.name)
        begun = self.recorder.begun(draft.id)
        if begun is not None and landed(begun, state):
            # Read again after a lost answer or a 409: the patch had landed after all.
            return replace(
                begun, outcome=Outcome.APPLIED, reason=f"{begun.reason} (the patch landed although its answer was lost)"
            )
        try:
            intent = decide(state)
        except Refused as refusal:
            return _finish(draft, Outcome.REFUSED, refusal.reason)
        if isinstance(intent, Skip):
            return _finish(draft, intent.outcome, intent.reason)

        try:
            self.guard.check_readable(state)
        except Refused as refusal:
            return _finish(draft, Outcome.REFUSED, refusal.reason)
        # Every field someone else changed is let go first, whichever field this step is about: the values are
        # recomputed and written for every field the agent holds, and none may be written over a person's edit.
        claims, notes = _let_go_drifted(state, state.claims, tuple(sorted(state.claims.kept)))
        if isinstance(intent, Hold):
            try:
                fields = self.guard.check_kind(kind, state, intent.want)
                self.guard.check_opt_out(state)
                intent, clipped = self.guard.check_claim(intent, state, fields)
            except Refused as refusal:
                return _finish(draft, Outcome.REFUSED, refusal.reason)
            if clipped:
                notes.append(clipped)
            try:
                claims, taken = _take(state, claims, intent, fields, draft=draft, holder=holder)
            except Refused as refusal:
                return _finish(draft, Outcome.REFUSED, f"{refusal.reason}; the new claim is refused, the others stand")
            if not taken:
                reason = "; ".join([*notes, _nothing_to_take(state, intent, fields)])
                if notes:  # only letting go: still a step worth writing down
                    claims = claims.wrote({}, decision=draft.id)
                    return await self._write(draft, kind, state, claims, reason=reason, values={}, urgent=urgent)
                return _finish(draft, Outcome.NOOP, reason)
            reason = intent.reason
        else:
            dropped: tuple[Claim, ...]
            claims, dropped = claims.release(intent.ends)
            if not dropped and not notes:
                return _finish(draft, Outcome.NOOP, intent.nothing)
            fields = tuple(sorted({c.field for c in dropped}))
            reason = intent.reason if dropped else intent.nothing
            if draft.action not in GIVE_BACKS:
                # The give-back of a claim is its own kind of decision, whatever rule made it.
                draft = replace(draft, action="revert")

        resolved = resolve(claims, ceiling=self.guard.limits.ceiling, current=state.values)
        values = {name: r.value for name, r in resolved.items() if r.value != state.values.get(name)}
        for name in sorted(resolved):
            notes.extend(n for n in resolved[name].notes if n not in notes)
        if isinstance(intent, Hold):
            try:
                self.guard.check_result(state, values)
                # Only the claim's own fields: a floor lifting a paused count is not the pause moving again.
                moving = tuple(name for name in fields if name in values)
                if intent.cooldown:
                    await self.guard.check_cooldown(ref, want=intent.want, fields=moving, now=now, deciding=draft.id)
            except Refused as refusal:
                before = {name: state.values.get(name) for name in values}
                return _finish(draft, Outcome.REFUSED, refusal.reason, before=before, after=values)
        costing = await self._price(state, values, dropped=None if isinstance(intent, Hold) else dropped, urgent=urgent)
        if costing is not None:
            if isinstance(intent, Hold):
                try:
                    budget = await self.guard.check_budget(ref, costing, critical=critical, rule=draft.rule)
                except Refused as refusal:
                    before = {name: state.values.get(name) for name in values}
                    refused = replace(draft, cost=costing)
                    return _finish(refused, Outcome.REFUSED, refusal.reason, before=before, after=values)
                if budget:
                    costing = replace(costing, budget=budget)
                    notes.append(budget)
                claims = _with_replicas(claims, draft.id, costing.replicas_delta, previous=state.claims)
            draft = replace(draft, cost=costing)
        still = [name for name in fields if name not in values and claims.on(name)]
        if still:
            held = ", ".join(f"{name} stays {state.values.get(name)}" for name in still)
            notes.append(f"{held}: other claims hold it there")
        claims = claims.wrote({name: r.value for name, r in resolved.items()}, decision=draft.id)
        reason = "; ".join([reason, *notes])
        return await self._write(draft, kind, state, claims, reason=reason, values=values, urgent=urgent)

    async def _write(
        self,
        draft: Decision,
        kind: TargetKind,
        state: TargetState,
        claims: Claims,
        *,
        reason: str,
        values: Mapping[str, Value],
        urgent: bool = False,
    ) -> Decision:
        before = {name: state.values.get(name) for name in values}
        after = dict(values)
        if self.guard.dry_run:
            return _finish(draft, Outcome.DRY_RUN, f"would: {reason}", before=before, after=after)
        try:
            async with self.guard.slot(urgent=urgent):
                if draft.id not in self.recorder.in_flight:  # a re-plan after a 409 has its row already
                    try:
                        await self.recorder.begin(_finish(draft, Outcome.APPLYING, reason, before=before, after=after))
                    except LedgerUnavailable as exc:
                        reason = "not applied: the ledger cannot record the change before it is made"
                        return _finish(draft, Outcome.FAILED, reason, error=str(exc), before=before, after=after)
                await self._call(
                    "patch", kind.patch, state, values=values, claims=claims, decision=draft.id, now=draft.at
                )
        except Refused as refusal:
            return _finish(draft, Outcome.REFUSED, refusal.reason, before=before, after=after)
        return _finish(draft, Outcome.APPLIED, reason, before=before, after=after)

    async def _price(
        self, state: TargetState, values: Mapping[str, Value], *, dropped: tuple[Claim, ...] | None, urgent: bool
    ) -> Costing | None:
        """
        What the change costs per hour (agent/cost.py): the replicas it implies at the count seen, or for a
        give-back the opposite of what the claims it ends had implied. None for a kind without replica counts.
        """
        if self.pricer is None or not any(name in COUNTS for name in state.values):
            return None
        delta = replicas_delta(state.values, {**state.values, **values}, state.replicas)
        if dropped:
            taken = {c.decision: c.replicas for c in dropped if c.replicas is not None}
            if taken:
                delta = -sum(v for v in taken.values() if v is not None)
        price = await self.pricer.price(state, urgent=urgent)
        per_hour = None if price.per_hour is None or delta is None else round(delta * price.per_hour, 6)
        source = price.source if delta is not None else PriceSource.UNKNOWN
        note = price.note if delta is not None else f"replica count unknown; {price.note}"
        return Costing(
            replicas=state.replicas,
            replicas_delta=delta,
            per_replica_hour=price.per_hour,
            delta_per_hour=per_hour,
            source=source,
            note=note,
        )

    async def _call(self, operation: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """
        Call the API, retrying a transient error with exponential backoff (``api_attempts``, ``api_backoff``).
        The first attempt is a plain call: nearly every read is the cache's and nearly every patch lands at
        once, and entering tenacity's loop for each cost more CPU than the rest of the decision (bench/README.md).
        """

        def count(exc: BaseException) -> bool:
            status = exc.status if isinstance(exc, KubernetesError) else 0
            self.metrics.kube_api_errors.labels(operation=operation, status=str(status)).inc()
            return isinstance(exc, KubernetesError) and exc.transient

        attempts = self.kubernetes.api_attempts
        backoff = self.kubernetes.api_backoff.total_seconds()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not count(exc) or attempts == 1:
                raise
        await asyncio.sleep(backoff)
        retrying = AsyncRetrying(  # the attempts left, waiting 2, 4, ... times the backoff, at most 20 times
            stop=stop_after_attempt(attempts - 1),
            wait=wait_exponential(multiplier=backoff * 2, max=backoff * 20),
            retry=retry_if_exception(count),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn(*args, **kwargs)
        raise AssertionError("unreachable: tenacity either returns or raises")


def _take(
    state: TargetState, claims: Claims, intent: Hold, fields: tuple[str, ...], *, draft: Decision, holder: str
) -> tuple[Claims, bool]:
    """Add the intent's claim on each field where it asks for something the field lacks; says if any was."""
    taken = False
    for name in fields:
        current = state.values.get(name)
        before = claims.original(name, current)
        if claims.held_by(holder, name) is None and _already(intent.want, intent.value, before):
            continue  # the field is there without the agent: a claim would hold nothing
        claim = Claim(
            field=name,
            want=intent.want,
            value=intent.value,
            holder=holder,
            key=draft.trigger.event_key or "",
            decision=draft.id,
            reason=intent.reason,
            since=draft.at,
            until=intent.until,
            ends_on_resolve=intent.ends_on_resolve,
        )
        try:
            claims = claims.add(claim, current=current)
        except TooManyClaims as exc:
            raise Refused(str(exc)) from None
        taken = True
    return claims, taken


def _with_replicas(claims: Claims, decision: str, delta: int | None, *, previous: Claims) -> Claims:
    """
    Mark the claims this decision takes with the replicas they imply: a holder's renewed claim adds to what its
    earlier one implied, so that the give-back undoes both.
    """
    if delta is None:
        return claims
    marked = []
    for claim in claims.claims:
        if claim.decision == decision:
            earlier = previous.held_by(claim.holder, claim.field)
            claim = replace(claim, replicas=delta + ((earlier.replicas or 0) if earlier is not None else 0))
        marked.append(claim)
    return replace(claims, claims=tuple(marked))


def _already(want: Want, value: int | None, before: Value) -> bool:
    """The value from before the agent's claims already gives what the claim asks."""
    if want == Want.HOLD:
        return before is True
    if not isinstance(before, int) or isinstance(before, bool) or value is None:
        return False
    if want in (Want.FLOOR, Want.RAISE):
        return before >= value
    if want == Want.CAP:
        return before <= value
    return False


def _nothing_to_take(state: TargetState, intent: Hold, fields: tuple[str, ...]) -> str:
    shown = ", ".join(f"{name} already {state.values.get(name)}" for name in fields)
    wanted = "held" if intent.value is None else f"{intent.want} {intent.value}"
    return f"{shown} ({wanted} asks for nothing more)"


def _let_go_drifted(state: TargetState, claims: Claims, fields: tuple[str, ...]) -> tuple[Claims, list[str]]:
    """Let go of each field someone else changed since the agent last wrote it; say who, and leave the value."""
    notes = []
    for name in fields:
        current = state.values.get(name)
        if not claims.drifted(name, current):
            continue
        written = claims.kept[name].written
        who = describe_manager(state.changed_by[name]) if name in state.changed_by else "someone else"
        holders = ", ".join(sorted({c.holder for c in claims.on(name)})) or "none"
        notes.append(
            f"{name} was changed by {who} since (now {current}, the agent set {written}): "
            f"left as is, and the agent lets go of its claims on it ({holders})"
        )
        claims = claims.let_go(name)
    return claims, notes


def landed(row: Decision, state: TargetState) -> bool:
    """The object carries this decision's write: it is among the claims' recent writers, or (a give-back that
    ended the last claim, and took the annotation with it) the fields hold what it wrote and nobody claims them."""
    if row.id in state.claims.recent:
        # Its claims are there; its values too, unless a kind that writes them in a second step (a workload's
        # count through `scale`) stopped between the two.
        return all(state.values.get(name) == value for name, value in row.after.items())
    if row.action not in GIVE_BACKS or not row.after:
        return False
    return all(state.values.get(name) == value and not state.claims.on(name) for name, value in row.after.items())


def _expired(claim: Claim, now: datetime) -> bool:
    return claim.until is not None and claim.until <= now


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
