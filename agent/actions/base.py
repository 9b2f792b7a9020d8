"""
What an action is: a pure function from the target's current state to an intent.

Actions never talk to Kubernetes, and never compute a field's value from the
other reasons that hold it. They read a :class:`TargetState` and say which
claim this event takes (:class:`Hold`: a floor, a cap, a raise, a pause, a
cordon), which claims it ends (:class:`Release`), or why nothing should happen
(:class:`Skip`). The executor maps the claim onto the kind's fields and
resolves every live claim into the value to write (:func:`agent.claims.resolve`);
the guard checks the bounds. So an action is easy to test and to add.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from agent.claims import Claim, Want
from agent.structs import Event, EventKind, Outcome
from agent.targets.base import TargetState


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Hold:
    """Take (or renew) this event's claim on the target: what it wants, and until when."""

    want: Want
    value: int | None  # None for a cordon (Want.HOLD)
    reason: str
    until: datetime | None
    ends_on_resolve: bool
    up_to: int | None = None  # a raise up to a limit: clipped at the lower of this and the guard's ceiling
    cooldown: bool = True  # False for a planned change (a window's edge): a cooldown never refuses it


@dataclass(frozen=True)
class Release:
    """End the claims ``ends`` picks; ``nothing`` is the no-op's reason when there are none."""

    ends: Callable[[Claim], bool]
    reason: str
    nothing: str


@dataclass(frozen=True)
class Skip:
    outcome: Outcome
    reason: str


Intent = Hold | Release | Skip


@dataclass(frozen=True)
class Limits:
    """The guard's bounds, handed to actions that compute a value (so a raise stops at the ceiling)."""

    floor: int
    ceiling: int


class Action(Protocol):
    name: ClassVar[str]
    needs_target: ClassVar[bool]
    reverts: ClassVar[bool]  # True when the action only gives back (exempt from cooldown and ceilings)
    want: ClassVar[Want | None]  # the claim it takes, when always the same: the guard checks the kind takes it
    ends: ClassVar[Want | None]  # the claims it ends, when it only ends (resume): the guard checks they are ours

    def decide(self, state: Any, spec: Any, *, event: Event, holder: str, now: datetime, limits: Limits) -> Intent: ...


def holder_of(rule: str, event: Event) -> str:
    """
    Who holds a claim: for an alert, the rule and the alert, so the alert's resolve ends exactly that claim; for any
    other event, what it is about, by its kind: ``schedule:<name>`` (whichever window and target), ``notice:<id>``,
    ``intent:<id>`` (its fingerprint, which a source may already have prefixed with the kind).
    """
    if event.kind == EventKind.ALERT:
        return f"rule:{rule}:{event.fingerprint}"
    return f"{event.kind}:{event.fingerprint.removeprefix(f'{event.kind}:')}"


def release_on_resolved(holder: str, *, event: Event) -> Release:
    """On a resolved alert, give back what this very alert (same holder) made the agent claim."""
    return Release(
        ends=lambda claim: claim.holder == holder and claim.ends_on_resolve,
        reason=f"alert {event.alertname} resolved",
        nothing=f"alert {event.alertname} resolved; nothing of its own to give back",
    )


def same_event(state: TargetState, holder: str, *, event: Event) -> Skip | None:
    """The very same event again (a redelivery the inbox could not tell): its claim is there already."""
    for claim in state.claims.claims:
        if claim.holder == holder and claim.key and claim.key == event.key:
            return Skip(Outcome.NOOP, f"already applied by decision {claim.decision}")
    return None


def held(state: TargetState, holder: str) -> Claim | None:
    """This holder's claim on the object (on any field), if it holds one."""
    return next((claim for claim in state.claims.claims if claim.holder == holder), None)
