"""
What a source is: one module that owns its config section, its start and stop, its routes and its decoder.

The agent builds its sources from :data:`agent.sources.SOURCES` and the config's ``sources`` section, so a new
source (a queue consumer, the calendar) is its module plus one registry line, and app.py never names one. A
source hands what it hears to the :class:`~agent.worker.Intake`: a webhook stores the body as received
(``receive``) and the worker unpacks it later with the source's :meth:`Source.decode`, off the acknowledgement's
path; a source that builds its events itself stores them (``accept``). Either way nothing is acknowledged before
it is in the ledger.

A source's settings are its own pydantic model (``Settings``), validated from ``sources.<name>`` with errors
named by their field path and file like every other setting (:func:`agent.sources.check_sources`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from agent.configfile import RuleConfig
from agent.metrics import Metrics
from agent.structs import Decision, Delivery, Event, Outcome, Trigger, new_id, utcnow

if TYPE_CHECKING:
    from kubernetes_asyncio import client

    from agent.config import WebhookConfig
    from agent.decisions import DecisionRecorder
    from agent.supervisor import Supervisor
    from agent.worker import Intake


class SourceSettings(BaseModel):
    """Every source's section has ``enabled``; a source adds its own fields."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False

    def rules(self) -> list[RuleConfig]:
        """Rules the source brings with it (the calendar's schedules), beside the config's own ``rules``."""
        return []

    def retired(self, holder: str) -> str | None:
        """Why claims of ``holder`` (one of this source's) must be given back now, when their source is gone."""
        return None


@dataclass(frozen=True)
class SourceContext:
    """What every source is given: where to hand events, the metrics, and the HTTP server's shared settings."""

    intake: Intake
    metrics: Metrics
    webhook: WebhookConfig  # auth and body limit shared by every source that takes HTTP requests
    api: client.ApiClient  # for a source that follows up in the cluster (the calendar watches pods get Ready)
    recorder: DecisionRecorder  # ... and records what it found, as a decision


class Source(Protocol):
    name: ClassVar[str]
    Settings: ClassVar[type[SourceSettings]]

    def __init__(self, settings: Any, *, context: SourceContext) -> None: ...

    def routes(self) -> list[web.RouteDef]:
        """The HTTP routes it serves on the agent's server (none for a consumer)."""
        ...

    def start(self, supervisor: Supervisor) -> None:
        """Start its background work (a consumer, a timer) under the supervisor; nothing for a webhook."""
        ...

    async def stop(self) -> None: ...

    def decode(self, delivery: Delivery) -> list[Event]:
        """The events of one delivery it stored with ``Intake.receive``."""
        ...


@runtime_checkable
class FollowsDecisions(Protocol):
    """A source that wants to hear what became of events (the calendar follows a window's pods up); it is told
    about every event, and picks its own."""

    name: ClassVar[str]

    def decided(self, event: Event, decisions: Sequence[Decision]) -> None:
        """Called by the worker once an event's decisions are recorded; must not block (queue the work)."""
        ...


def dead_letter_decision(*, source: str, labels: Mapping[str, str], reason: str, error: str) -> Decision:
    """
    The record of a message a source set aside (a dead letter): no rule, no target, ``failed``, with where it came
    from in the trigger's labels. A dead letter is real in a dry run too: it is about the queue, not the cluster.
    """
    return Decision(
        id=new_id(),
        at=utcnow(),
        trigger=Trigger(source=source, alertname="", status="undecodable", fingerprint="", labels=labels),
        rule=None,
        action="dead-letter",
        target=None,
        before={},
        after={},
        reason=reason,
        dry_run=False,
        outcome=Outcome.FAILED,
        error=error,
    )
