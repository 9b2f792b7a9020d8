"""
``set_max`` / ``raise_max``: lift ``max-replicas`` for MCPAtMaximumScale, never past the ceiling.

``raise_max`` adds a step to the current maximum (clipped at the ceiling); ``set_max`` sets a value.
By default the raise stays until its expiry rather than the alert's resolve: the alert resolves
*because* there is room now, and taking the room away at once would bring it straight back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Apply, Intent, Limits, Params, Skip, Spec, revert_on_resolved
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import MAX_REPLICAS, TargetState


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


def _same_event(state: TargetState, event: Event) -> Skip | None:
    # Only the very same event is a repeat: a new firing of the alert (new startsAt) may raise again.
    owned = state.owned.get(MAX_REPLICAS)
    if owned is not None and owned.event_key and owned.event_key == event.key:
        return Skip(Outcome.NOOP, f"already applied by decision {owned.decision}")
    return None


class RaiseMax:
    name: ClassVar[str] = "raise_max"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False

    def decide(self, state: TargetState, spec: RaiseMaxSpec, *, event: Event, now: datetime, limits: Limits) -> Intent:
        if event.status == "resolved":
            return revert_on_resolved(state, (MAX_REPLICAS,), event=event)
        if (skip := _same_event(state, event)) is not None:
            return skip
        current = state.values.get(MAX_REPLICAS)
        if current is None:
            return Skip(Outcome.FAILED, "the object has no max-replicas to raise")
        # A rule's own ceiling can lower the guard's, never lift it.
        ceiling = min(limits.ceiling, spec.params.ceiling or limits.ceiling)
        if current >= ceiling:
            return Skip(Outcome.REFUSED, f"max-replicas {current} already at the ceiling of {ceiling}")
        wanted = min(current + spec.params.step, ceiling)
        return Apply(
            values={MAX_REPLICAS: wanted},
            reason=(
                f"{event.alertname}: raise max-replicas by {wanted - current} for {format_duration(spec.params.for_)}"
            ),
            expires_at=now + spec.params.for_,
            revert_on_resolve=spec.params.revert_on_resolve,
        )


class SetMax:
    name: ClassVar[str] = "set_max"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False

    def decide(self, state: TargetState, spec: SetMaxSpec, *, event: Event, now: datetime, limits: Limits) -> Intent:
        if event.status == "resolved":
            return revert_on_resolved(state, (MAX_REPLICAS,), event=event)
        if (skip := _same_event(state, event)) is not None:
            return skip
        wanted = spec.params.replicas
        if state.values.get(MAX_REPLICAS) == wanted:
            return Skip(Outcome.NOOP, f"max-replicas already {wanted}")
        return Apply(
            values={MAX_REPLICAS: wanted},
            reason=f"{event.alertname}: set max-replicas to {wanted} for {format_duration(spec.params.for_)}",
            expires_at=now + spec.params.for_,
            revert_on_resolve=spec.params.revert_on_resolve,
        )
