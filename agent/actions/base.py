"""
What an action is: a pure function from the target's current state to an intent.

Actions never talk to Kubernetes. They read a :class:`TargetState` and say what
should change (:class:`Apply`), what the agent should give back (:class:`Revert`)
or why nothing should happen (:class:`Skip`). The executor does the I/O, the
guard checks the bounds; so an action is easy to test and to add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from agent.structs import Event, Outcome
from agent.targets.base import TargetState


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Apply:
    values: Mapping[str, int]
    reason: str
    expires_at: datetime | None
    revert_on_resolve: bool


@dataclass(frozen=True)
class Revert:
    fields: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Skip:
    outcome: Outcome
    reason: str


Intent = Apply | Revert | Skip


@dataclass(frozen=True)
class Limits:
    """The guard's bounds, handed to actions that compute a value (so a raise stops at the ceiling)."""

    floor: int
    ceiling: int


class Action(Protocol):
    name: ClassVar[str]
    needs_target: ClassVar[bool]
    reverts: ClassVar[bool]  # True when the action gives back (exempt from cooldown and ceilings)

    def decide(self, state: Any, spec: Any, *, event: Event, now: datetime, limits: Limits) -> Intent: ...


def revert_on_resolved(state: TargetState, fields: tuple[str, ...], *, event: Event) -> Intent:
    """On a resolved alert, give back what this very alert (same fingerprint) made the agent change."""
    mine = tuple(
        name
        for name in fields
        if name in state.owned
        and state.owned[name].fingerprint == event.fingerprint
        and state.owned[name].revert_on_resolve
    )
    if mine:
        return Revert(fields=mine, reason=f"alert {event.alertname} resolved")
    return Skip(Outcome.NOOP, f"alert {event.alertname} resolved; nothing of its own to revert")


def already_owned(state: TargetState, name: str, *, event: Event) -> Skip | None:
    owned = state.owned.get(name)
    if owned is None:
        return None
    if owned.fingerprint == event.fingerprint:
        return Skip(Outcome.NOOP, f"already applied by decision {owned.decision}")
    return Skip(Outcome.NOOP, f"{name} already changed by the agent (decision {owned.decision}, {owned.alertname})")
