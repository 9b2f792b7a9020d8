"""
``resume``: clear a pause the agent set (MCPScaleToZeroStuck: a stale pause keeps pods up).

Only the agent's own pause is removed. After the resume the reconciler watches KEDA's ``Paused``
condition: KEDA users report objects that stay ``Paused=True`` after the annotation is gone, and
that gets recorded and posted if it has not cleared in time.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from agent.actions.base import Intent, Limits, Revert, Skip, Spec
from agent.structs import Event, Outcome
from agent.targets.base import PAUSED_REPLICAS, PauseOwner, TargetState


class ResumeSpec(Spec):
    type: Literal["resume"]


class Resume:
    name: ClassVar[str] = "resume"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = True

    def decide(self, state: TargetState, spec: ResumeSpec, *, event: Event, now: datetime, limits: Limits) -> Intent:
        if event.status == "resolved":
            return Skip(Outcome.NOOP, f"alert {event.alertname} resolved; nothing to do")
        if state.pause is None:
            return Skip(Outcome.NOOP, "not paused")
        if state.pause.owner != PauseOwner.AGENT:
            return Skip(
                Outcome.REFUSED,
                f"paused by {state.pause.owner}, not by the agent; the agent never removes that pause",
            )
        owned = state.owned[PAUSED_REPLICAS]
        return Revert(
            fields=(PAUSED_REPLICAS,),
            reason=f"{event.alertname}: clear the agent's pause from decision {owned.decision}",
        )
