"""
``resume``: end the agent's pauses (MCPScaleToZeroStuck: a stale pause keeps pods up).

Only the agent's own pause claims end (whoever holds them); a pause someone else set is refused by the guard,
never removed. What comes back is what the claims rules give without the pauses. On a ScaledObject the kind then
watches KEDA's ``Paused`` condition: KEDA users report objects that stay ``Paused=True`` after the
annotation is gone, and that gets recorded and posted if it has not cleared in time.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from agent.actions.base import Intent, Limits, Release, Skip, Spec
from agent.claims import Want
from agent.structs import Event, Outcome
from agent.targets.base import TargetState


class ResumeSpec(Spec):
    type: Literal["resume"]


class Resume:
    name: ClassVar[str] = "resume"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = True
    want: ClassVar[Want | None] = None
    ends: ClassVar[Want | None] = Want.PAUSE  # the guard refuses when the pause is someone else's

    def decide(
        self, state: TargetState, spec: ResumeSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        if event.status == "resolved":
            return Skip(Outcome.NOOP, f"alert {event.alertname} resolved; nothing to do")
        if state.pause is None:
            return Skip(Outcome.NOOP, "not paused")
        decisions = ", ".join(sorted({c.decision for c in state.claims.claims if c.want == Want.PAUSE}))
        return Release(
            ends=lambda claim: claim.want == Want.PAUSE,
            reason=f"{event.alertname}: clear the agent's pause from decision {decisions}",
            nothing="not paused by the agent",
        )
