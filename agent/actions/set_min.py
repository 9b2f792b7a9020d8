"""
``set_min``: a temporary warm floor for MCPColdStartSlow, with an expiry.

A floor claim: ``minReplicaCount`` on a ScaledObject, ``minReplicas`` on an HPA, the replica count of a
workload nothing autoscales. Floors take the highest; a floor never lowers what was there before the
agent's claims (then it is a no-op), and never passes the effective ceiling (clamped, and said so).
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
    want: ClassVar[Want | None] = Want.FLOOR
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: SetMinSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return release_on_resolved(holder, event=event)
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        wanted = spec.params.replicas
        return Hold(
            want=Want.FLOOR,
            value=wanted,
            reason=f"{event.alertname}: warm floor of {wanted} for {format_duration(spec.params.for_)}",
            until=now + spec.params.for_,
            ends_on_resolve=spec.params.revert_on_resolve,
        )
