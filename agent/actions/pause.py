"""
``pause``: freeze a flapping ScaledObject (MCPFrequentScaling) at a replica count, for a while.

Writes KEDA's ``paused-replicas`` (the current count of the workload, or a given N) with an expiry.
On the alert's ``resolved`` (by default) or at expiry the agent removes it and restores any prior value.
A pause a human or kube-downscaler set is left alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Apply, Intent, Limits, Params, Skip, Spec, already_owned, revert_on_resolved
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import PAUSED_REPLICAS, PauseOwner, TargetState


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

    def decide(self, state: TargetState, spec: PauseSpec, *, event: Event, now: datetime, limits: Limits) -> Intent:
        if event.status == "resolved":
            return revert_on_resolved(state, (PAUSED_REPLICAS,), event=event)
        if state.pause is not None and state.pause.owner != PauseOwner.AGENT:
            return Skip(Outcome.NOOP, f"already paused by {state.pause.owner}; left alone")
        if (skip := already_owned(state, PAUSED_REPLICAS, event=event)) is not None:
            return skip
        replicas = spec.params.replicas if spec.params.replicas is not None else state.replicas
        if replicas is None:
            return Skip(Outcome.FAILED, "cannot read the workload's current replica count to pause at")
        return Apply(
            values={PAUSED_REPLICAS: replicas},
            reason=f"{event.alertname}: pause at {replicas} replicas for {format_duration(spec.params.for_)}",
            expires_at=now + spec.params.for_,
            revert_on_resolve=spec.params.revert_on_resolve,
        )
