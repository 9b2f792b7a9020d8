"""
The actions a rule can name, and their config specs.

A new action is one module (a ``Spec`` pydantic model with a ``type`` literal and an
action class with ``decide``) plus one entry in :data:`ACTIONS` and one in :data:`ActionSpec`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agent.actions.base import Action, Hold, Intent, Release, Skip, holder_of
from agent.actions.cap import Cap, CapSpec
from agent.actions.cordon import Cordon, CordonSpec
from agent.actions.evacuate import Evacuate, EvacuateSpec
from agent.actions.intent import IntentAction, IntentSpec
from agent.actions.notify import Notify, NotifySpec
from agent.actions.pause import Pause, PauseSpec
from agent.actions.resume import Resume, ResumeSpec
from agent.actions.set_max import RaiseMax, RaiseMaxSpec, SetMax, SetMaxSpec
from agent.actions.set_min import SetMin, SetMinSpec
from agent.actions.window import WindowAction, WindowSpec

_ALL: tuple[Action, ...] = (
    Pause(),
    Resume(),
    SetMin(),
    SetMax(),
    RaiseMax(),
    Cordon(),
    Notify(),
    WindowAction(),
    Evacuate(),
    IntentAction(),
    Cap(),
)
ACTIONS: dict[str, Action] = {action.name: action for action in _ALL}

ActionSpec = Annotated[
    PauseSpec
    | ResumeSpec
    | SetMinSpec
    | SetMaxSpec
    | RaiseMaxSpec
    | CordonSpec
    | NotifySpec
    | WindowSpec
    | EvacuateSpec
    | IntentSpec
    | CapSpec,
    Field(discriminator="type"),
]

# Actions whose changes a cooldown counts: those that take claims (not give-backs, not posts), and not a window's
# edge: a planned floor must not make the alert that arrives minutes later wait out a cooldown.
FORWARD_ACTIONS = tuple(
    name for name, action in ACTIONS.items() if action.needs_target and not action.reverts and name != WindowAction.name
)

__all__ = ["ACTIONS", "FORWARD_ACTIONS", "Action", "ActionSpec", "Hold", "Intent", "Release", "Skip", "holder_of"]
