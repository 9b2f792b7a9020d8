"""
``intent``: a producer's announced load ("a batch of 50,000 tasks lands at 02:00") as a floor claim.

The event (kind ``intent``) carries the floor and its window (``from``, ``until``); the target comes from its labels
like an alert's. Inside the window the intent is a floor claim held by ``intent:<id>`` until ``until``, composed
with every other claim; the reconciler gives it back at ``until`` like any expiry. Announced ahead of ``from``, it
is a recorded ``scheduled`` no-op, and the intent scheduler (agent/intents.py) hands the worker the same intent
again at ``from``.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from agent.actions.base import Hold, Intent, Limits, Skip, Spec, same_event
from agent.claims import Want
from agent.structs import Event, Outcome
from agent.targets.base import TargetState

SCHEDULED = "scheduled"  # the start of a no-op's reason: the scheduler takes it from there


class IntentSpec(Spec):
    type: Literal["intent"]


class IntentAction:
    name: ClassVar[str] = "intent"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = Want.FLOOR
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: IntentSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        starts = datetime.fromisoformat(event.annotations["from"])
        until = datetime.fromisoformat(event.annotations["until"])
        floor = int(event.annotations["floor"])
        why = event.annotations.get("reason") or "announced load"
        if until <= now:
            return Skip(Outcome.NOOP, f"intent: its window ended at {until:%Y-%m-%d %H:%M}Z")
        if starts > now:
            return Skip(
                Outcome.NOOP,
                f"{SCHEDULED}: a floor of {floor} from {starts:%Y-%m-%d %H:%M}Z until {until:%H:%M}Z ({why})",
            )
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        return Hold(
            want=Want.FLOOR,
            value=floor,
            reason=f"intent: a floor of {floor} until {until:%Y-%m-%d %H:%M}Z ({why})",
            until=until,
            ends_on_resolve=False,
        )
