"""
``notify``: record and post only (MCPHighLatencyDespiteScaling; the cost advice, agent/advice.py).

No target is needed; when the alert names one it is shown in the decision all the same.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from agent.actions.base import Intent, Limits, Skip, Spec
from agent.claims import Want
from agent.structs import Event, Outcome
from agent.targets.base import TargetState


class NotifySpec(Spec):
    type: Literal["notify"]


def alert_text(event: Event) -> str:
    summary = event.annotations.get("summary") or event.alertname
    description = event.annotations.get("description")
    return f"{summary}: {description}" if description else summary


class Notify:
    name: ClassVar[str] = "notify"
    needs_target: ClassVar[bool] = False
    reverts: ClassVar[bool] = False
    want: ClassVar[Want | None] = None
    ends: ClassVar[Want | None] = None

    def decide(
        self, state: TargetState | None, spec: NotifySpec, *, event: Event, holder: str, now: datetime, limits: Limits
    ) -> Intent:
        return Skip(Outcome.APPLIED, f"{event.status}: {alert_text(event)}")
