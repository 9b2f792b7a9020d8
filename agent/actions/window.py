"""
``window``: a schedule's floor (or ceiling) while its window is open.

A calendar window is a claim like any other, held by ``schedule:<name>``: a floor composes with alert floors
(the highest wins), a ceiling with other caps (the lowest wins), and someone else's edit inside the window makes
the agent let go, as the claims rules say (docs/concepts.md). The claim lasts until the window's close (the
event says when), so a window the agent never saw close, because it was down, is given back by the reconciler
like any other expiry; the close event gives it back on time and says why. A window edge is never refused by a
cooldown: it is planned, not a reaction (its Hold says so).

Schedules write no rules of their own: the calendar source turns each schedule into rules of this action
(agent/sources/calendar.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from agent.actions.base import Hold, Intent, Limits, Params, Release, Skip, Spec, same_event
from agent.claims import Want
from agent.structs import Event, Outcome
from agent.targets.base import TargetState

CLOSES = "closes"  # the event's annotations: when the window closes (ISO 8601, UTC)
WINDOW = "window"  # ... and which window (the schedule's local nominal start)


class WindowParams(Params):
    hold: Literal["floor", "ceiling"] = "floor"
    replicas: int = Field(ge=0)


class WindowSpec(Spec):
    type: Literal["window"]
    params: WindowParams


class WindowAction:
    name: ClassVar[str] = "window"
    needs_target: ClassVar[bool] = True
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = None  # a floor or a ceiling, from the params
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState, spec: WindowSpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        want = Want.FLOOR if spec.params.hold == "floor" else Want.CAP
        window = event.annotations.get(WINDOW, "?")
        if event.status == "resolved":
            return Release(
                ends=lambda claim: claim.holder == holder and claim.want == want,
                reason=f"schedule {event.alertname}: window {window} closed",
                nothing=f"schedule {event.alertname}: window {window} closed; it holds nothing here any more",
            )
        if (skip := same_event(state, holder, event=event)) is not None:
            return skip
        closes = datetime.fromisoformat(event.annotations[CLOSES])
        if closes <= now:
            return Skip(Outcome.NOOP, f"schedule {event.alertname}: window {window} closed at {closes:%H:%M}Z already")
        what = "floor" if want == Want.FLOOR else "ceiling"
        return Hold(
            want=want,
            value=spec.params.replicas,
            reason=f"schedule {event.alertname}: window {window} open until {closes:%Y-%m-%d %H:%M}Z, "
            f"{what} of {spec.params.replicas}",
            until=closes,
            ends_on_resolve=True,
            cooldown=False,
        )
