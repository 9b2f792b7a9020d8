"""
``evacuate``: a preemption notice's first step on its Node: cordon and taint it, at once.

The claim is the ``cordon`` action's (the Node's ``spec.unschedulable`` and the agent's own ``NoSchedule`` taint),
held by the notice. What follows (pre-scaling the workloads whose pods are on the Node, then draining it through
the Eviction API before the notice's deadline) is long work that must not hold a worker lane: the evacuation
engine (agent/evacuation.py) does it, from this decision, and records each step as a decision that follows it.

A preempted Node is going away, so its cordon is never given back by the agent; a rebalance recommendation is
only a risk, so its cordon ends after ``uncordon_after`` if the Node is still there, and it is drained only when
``drain_rebalance`` says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Hold, Intent, Limits, Params, Skip, Spec, same_event
from agent.claims import Want
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import TargetState


class EvacuateParams(Params):
    prescale_for: Duration = Field(default=timedelta(minutes=10), description="how long pre-scaled floors hold")
    drain_rebalance: bool = False  # a rebalance recommendation is tainted and pre-scaled; drained only if true
    uncordon_after: Duration = timedelta(hours=1)  # a rebalance hint's cordon ends after this (a preemption's never)
    parallel: int = Field(default=10, ge=1, le=100)  # evictions in flight at once


class EvacuateSpec(Spec):
    type: Literal["evacuate"]
    params: EvacuateParams = EvacuateParams()


class Evacuate:
    name: ClassVar[str] = "evacuate"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = Want.HOLD
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: EvacuateSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return Skip(Outcome.NOOP, "a notice does not resolve; the evacuation goes on")
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        rebalance = event.alertname == "rebalance"
        deadline = f", drain before {event.deadline:%H:%M:%S}Z" if event.deadline and not rebalance else ""
        if rebalance:
            lasting = format_duration(spec.params.uncordon_after)
            reason = f"rebalance recommendation: cordon and taint for {lasting}"
            if spec.params.drain_rebalance:
                reason += ", and drain"
        else:
            reason = f"preemption notice: cordon and taint, pre-scale elsewhere{deadline}"
        return Hold(
            want=Want.HOLD,
            value=None,
            reason=reason,
            until=now + spec.params.uncordon_after if rebalance else None,
            ends_on_resolve=False,
            cooldown=False,
        )
