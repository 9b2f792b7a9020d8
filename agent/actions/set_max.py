"""
``set_max`` / ``raise_max``: lift ``max-replicas`` for MCPAtMaximumScale, never past the ceiling.

``raise_max`` adds a step to the current maximum (clipped at the ceiling) and claims it as a raise;
``set_max`` sets a value: a raise when it is above the maximum from before the agent's claims, a cap when
below (on a workload nothing autoscales, a cap of its replica count). A raise lifts the ceiling only while
no cap holds it. By default the claim stays until its expiry rather than the alert's resolve: the alert
resolves *because* there is room now, and taking the room away at once would bring it straight back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Hold, Intent, Limits, Params, Skip, Spec, release_on_resolved, same_event
from agent.claims import MAX_REPLICAS, REPLICAS, Want
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import TargetState


class RaiseMaxParams(Params):
    step: int = Field(default=5, ge=1)
    ceiling: int | None = Field(default=None, ge=1, description="overrides guard.ceiling for this rule")
    for_: Duration = Field(default=timedelta(hours=24), alias="for")
    revert_on_resolve: bool = False


class RaiseMaxSpec(Spec):
    type: Literal["raise_max"]
    params: RaiseMaxParams = RaiseMaxParams()


class SetMaxParams(Params):
    replicas: int = Field(ge=1)
    for_: Duration = Field(default=timedelta(hours=24), alias="for")
    revert_on_resolve: bool = False


class SetMaxSpec(Spec):
    type: Literal["set_max"]
    params: SetMaxParams


class RaiseMax:
    name: ClassVar[str] = "raise_max"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = Want.RAISE
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: RaiseMaxSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return release_on_resolved(holder, event=event)
        # Only the very same event is a repeat: a new firing of the alert (new startsAt) may raise again.
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        current = state.values.get(MAX_REPLICAS)
        if not isinstance(current, int):
            return Skip(Outcome.FAILED, "the object has no max-replicas to raise")
        # The guard clips the raise at the ceiling (the rule's own may lower the guard's, never lift it).
        step, lasting = spec.params.step, format_duration(spec.params.for_)
        return Hold(
            want=Want.RAISE,
            value=current + step,
            reason=f"{event.alertname}: raise max-replicas by {step} for {lasting}",
            until=now + spec.params.for_,
            ends_on_resolve=spec.params.revert_on_resolve,
            up_to=spec.params.ceiling or limits.ceiling,
        )


class SetMax:
    name: ClassVar[str] = "set_max"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = None  # a raise or a cap, from the value
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: SetMaxSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return release_on_resolved(holder, event=event)
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        wanted = spec.params.replicas
        # Against the maximum from before the agent's claims; a workload nothing autoscales has only its count.
        field = MAX_REPLICAS if MAX_REPLICAS in state.values else REPLICAS
        before = state.claims.original(field, state.values.get(field))
        want = Want.CAP if isinstance(before, int) and wanted < before else Want.RAISE
        return Hold(
            want=want,
            value=wanted,
            reason=f"{event.alertname}: set max-replicas to {wanted} for {format_duration(spec.params.for_)}",
            until=now + spec.params.for_,
            ends_on_resolve=spec.params.revert_on_resolve,
        )
