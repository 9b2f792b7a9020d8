"""
``pause``: freeze a flapping object (MCPFrequentScaling) at a replica count, for a while.

Claims a pause at the current count of the workload (or a given N) with an expiry. On a ScaledObject that
is KEDA's ``paused-replicas``; on an HPA, min = max = N; a workload nothing autoscales cannot be paused
(the guard refuses with the kind's reason). On the alert's ``resolved`` (by default) or at expiry the claim
ends and the value from before comes back, unless another reason still holds it. A pause a human or
kube-downscaler set is left alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Hold, Intent, Limits, Params, Skip, Spec, held, release_on_resolved, same_event
from agent.claims import Want
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import PauseOwner, TargetState


class PauseParams(Params):
    replicas: int | None = Field(default=None, ge=0, description="pause at N; default: the current count")
    for_: Duration = Field(default=timedelta(hours=2), alias="for")
    revert_on_resolve: bool = True


class PauseSpec(Spec):
    type: Literal["pause"]
    params: PauseParams = PauseParams()


class Pause:
    name: ClassVar[str] = "pause"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = Want.PAUSE
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: PauseSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return release_on_resolved(holder, event=event)
        if state.pause is not None and state.pause.owner != PauseOwner.AGENT:
            return Skip(Outcome.NOOP, f"already paused by {state.pause.owner}; left alone")
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        mine = held(state, holder)
        if spec.params.replicas is not None:
            replicas: int | None = spec.params.replicas
        elif mine is not None:
            replicas = mine.value  # a new firing of the same alert renews the pause at the count it holds
        else:
            replicas = state.replicas
        if replicas is None:
            return Skip(Outcome.FAILED, "cannot read the workload's current replica count to pause at")
        return Hold(
            want=Want.PAUSE,
            value=replicas,
            reason=f"{event.alertname}: pause at {replicas} replicas for {format_duration(spec.params.for_)}",
            until=now + spec.params.for_,
            ends_on_resolve=spec.params.revert_on_resolve,
        )
