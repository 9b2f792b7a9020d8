"""
``set_min``: a temporary warm floor (``min-replicas``) for MCPColdStartSlow, with an expiry.

Never lowers an existing floor: if the minimum is already at least N it is a no-op.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Apply, Intent, Limits, Params, Skip, Spec, already_owned, revert_on_resolved
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import MIN_REPLICAS, TargetState


class SetMinParams(Params):
    replicas: int = Field(ge=0)
    for_: Duration = Field(default=timedelta(hours=1), alias="for")
    revert_on_resolve: bool = True


class SetMinSpec(Spec):
    type: Literal["set_min"]
    params: SetMinParams


class SetMin:
    name: ClassVar[str] = "set_min"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False

    def decide(self, state: TargetState, spec: SetMinSpec, *, event: Event, now: datetime, limits: Limits) -> Intent:
        if event.status == "resolved":
            return revert_on_resolved(state, (MIN_REPLICAS,), event=event)
        if (skip := already_owned(state, MIN_REPLICAS, event=event)) is not None:
            return skip
        current = state.values.get(MIN_REPLICAS) or 0
        wanted = spec.params.replicas
        if current >= wanted:
            return Skip(Outcome.NOOP, f"min-replicas already {current} (≥ {wanted})")
        return Apply(
            values={MIN_REPLICAS: wanted},
            reason=f"{event.alertname}: warm floor of {wanted} for {format_duration(spec.params.for_)}",
            expires_at=now + spec.params.for_,
            revert_on_resolve=spec.params.revert_on_resolve,
        )
