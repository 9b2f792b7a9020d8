"""
``cordon``: keep new pods off a Node (a node an alert says is failing or about to go).

Claims the Node's cordon (``spec.unschedulable``) and the agent's own ``NoSchedule`` taint together, held
while any reason holds them; when the last claim ends (the alert resolves, or the expiry passes) both go
back to what they were, unless someone changed them meanwhile. Only Nodes take it; the guard refuses it on
any other kind. Draining is not part of it: evicting pods needs the preemption notice's deadline and
PodDisruptionBudgets, which come with spot evacuation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Hold, Intent, Limits, Params, Spec, release_on_resolved, same_event
from agent.claims import Want
from agent.durations import Duration, format_duration
from agent.structs import Event
from agent.targets.base import TargetState


class CordonParams(Params):
    for_: Duration = Field(default=timedelta(hours=1), alias="for")
    revert_on_resolve: bool = True


class CordonSpec(Spec):
    type: Literal["cordon"]
    params: CordonParams = CordonParams()


class Cordon:
    name: ClassVar[str] = "cordon"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = Want.HOLD
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: CordonSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return release_on_resolved(holder, event=event)
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        return Hold(
            want=Want.HOLD,
            value=None,
            reason=f"{event.alertname}: cordon and taint for {format_duration(spec.params.for_)}",
            until=now + spec.params.for_,
            ends_on_resolve=spec.params.revert_on_resolve,
        )
