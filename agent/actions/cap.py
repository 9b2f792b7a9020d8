"""
``cap``: HighMCPCost's answer: a ceiling on the most expensive targets of the alert's namespace, lowered in steps.

The rules pick the targets (the ``targets`` most expensive objects of the rule's kind in the alert's namespace,
priced by agent/cost.py, among those whose ceiling can still go lower; at the resolve, every object the alert
capped). Each step takes one replica count (``step``) off the ceiling as a claim held by the alert, never below
the object's current floor (whoever holds it: a calendar window, an alert) nor ``minimum``, and for ``for`` at
most (the next step renews it; an agent that stops stepping gives it back at the expiry). Alertmanager repeats a
firing alert as the same notification, which the inbox takes as a redelivery, by design: the next steps come
from the agent's own timer (agent/capping.py), every ``every``, while the alert fires. The resolve gives every
cap back. A cap only lowers, so no cooldown refuses it, and no budget either.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from agent.actions.base import Hold, Intent, Limits, Params, Skip, Spec, release_on_resolved
from agent.claims import MAX_REPLICAS, MIN_REPLICAS, Want
from agent.durations import Duration, format_duration
from agent.structs import Event, Outcome
from agent.targets.base import TargetState


class CapParams(Params):
    step: int = Field(default=1, ge=1, description="replicas off the ceiling per step")
    every: Duration = Field(default=timedelta(minutes=5), description="one step this often while the alert fires")
    targets: int = Field(default=3, ge=1, le=20, description="the most expensive objects of the namespace")
    minimum: int = Field(default=1, ge=0, description="the lowest ceiling a cap sets")
    for_: Duration = Field(default=timedelta(hours=6), alias="for")

    @field_validator("every")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value


class CapSpec(Spec):
    type: Literal["cap"]
    params: CapParams = CapParams()


def cap_limit(state: TargetState, spec: CapSpec) -> int:
    """The lowest ceiling a cap may set on this object: its floor now, or the rule's minimum."""
    floor = state.values.get(MIN_REPLICAS)
    return max(floor if isinstance(floor, int) else 0, spec.params.minimum)


class Cap:
    name: ClassVar[str] = "cap"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = Want.CAP
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: CapSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return release_on_resolved(holder, event=event)
        current = state.values.get(MAX_REPLICAS)
        if not isinstance(current, int):
            return Skip(Outcome.FAILED, "the object has no max-replicas to cap")
        limit = cap_limit(state, spec)
        wanted = max(current - spec.params.step, limit)
        if wanted >= current:
            floor = state.values.get(MIN_REPLICAS)
            held = sorted({c.holder for c in state.claims.on(MIN_REPLICAS)})
            by = f" (held by {', '.join(held)})" if held else ""
            if isinstance(floor, int) and floor >= spec.params.minimum:
                why = f"its floor, min-replicas {floor}{by}: a cap never goes below a floor"
            else:
                why = f"the rule's minimum of {spec.params.minimum}"
            return Skip(Outcome.NOOP, f"{event.alertname}: max-replicas {current} is at {why}; the cap stops there")
        every, lasting = format_duration(spec.params.every), format_duration(spec.params.for_)
        return Hold(
            want=Want.CAP,
            value=wanted,
            reason=f"{event.alertname}: cap max-replicas at {wanted} (-{spec.params.step} every {every} while it "
            f"fires, not below {limit}; for {lasting} at most)",
            until=now + spec.params.for_,
            ends_on_resolve=True,
            cooldown=False,
        )
