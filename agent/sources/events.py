"""
The events webhook: ``POST /webhooks/events`` takes preemption notices and scale intents.

A notice gives 30 seconds to 2 minutes (agent/notices), so the request itself decodes the message (every format
agent/notices knows: AWS EventBridge, GCP, Azure Scheduled Events, the native JSON) and stores its events with
``Intake.accept``: an event with a deadline then runs in the worker's urgent lane at once, never behind an alert
storm's backlog nor the single unpacker's turn (docs/sources/README.md, "Deadlines first"). The answers are the
Alertmanager webhook's (agent/sources/webhook.py): 401, 413, 400 with the decoder's one-line reason (a retry would
not help), 503 when the ledger cannot record it, and 200 only once every event is in the ledger.

An event's key is the notice's or the intent's own id (the cloud's event id, else the instance and the time), so a
redelivery, or two watchers forwarding the same notice, is recorded as a redelivery and acted on once. The
cloud's identity of the machine travels in the labels (``cloud``, ``node`` and ``provider_id`` where known, and the
identity's parts: ``instance_id``, ``zone``, ``project``, ``resource_group``, …), so a rule's Node target finds the
Node through its ``spec.providerID``.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import structlog
from aiohttp import web

from agent.ledger import LedgerUnavailable
from agent.notices import DecodeError, Intent, Message, Notice, decode_any
from agent.notices.providers import machine_labels
from agent.sources.base import SourceContext, SourceSettings
from agent.sources.webhook import Authenticator, error, read_body
from agent.structs import Delivery, Event, EventKind, utcnow
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.sources.events")

SOURCE = "events"
PATH = "/webhooks/events"
INTENT_KIND_LABELS = {"ScaledObject": "scaledObject", "Deployment": "deployment", "StatefulSet": "statefulset"}


class EventsSettings(SourceSettings):
    """``sources.events``: off until turned on; its auth and body limit are the ``webhook`` section's."""

    enabled: bool = False


def event_of(message: Message, *, received_at: datetime, source: str = SOURCE) -> Event:
    """One decoded message as the agent's event: a notice (with its deadline) or an intent, from ``source``."""
    if isinstance(message, Notice):
        labels = {"kind": message.kind, **machine_labels(message)}
        if message.deadline is not None:  # on the decisions too (their trigger's labels): a restart resumes by it
            labels["deadline"] = message.deadline.isoformat()
        if message.instance is not None:
            labels["instance"] = str(message.instance)  # for people: "EC2 instance i-… (us-east-1)"
        return Event(
            source=source,
            key=f"notice|{message.cloud}|{message.id}",
            alertname=message.kind,  # "preemption" or "rebalance": what a rule names
            status="firing",
            fingerprint=f"notice:{message.id}",
            labels=labels,
            annotations={"reason": message.reason, "late": "true" if message.late else "false"},
            starts_at=message.received,
            received_at=received_at,
            kind=EventKind.NOTICE,
            deadline=message.deadline,
        )
    assert isinstance(message, Intent)
    wanted: dict[str, str] = {"namespace": message.namespace, "target_kind": message.target_kind}
    # The window on the decisions too (their trigger's labels): a restart sets a scheduled intent's timer by it.
    wanted |= {"from": message.starts.isoformat(), "until": message.until.isoformat(), "floor": str(message.floor)}
    wanted[INTENT_KIND_LABELS.get(message.target_kind, "name")] = message.name
    return Event(
        source=source,
        key=f"intent|{message.id}",
        alertname="intent",
        status="firing",
        fingerprint=f"intent:{message.id}",
        labels=wanted,
        annotations={
            "reason": message.reason,
            "floor": str(message.floor),
            "from": message.starts.isoformat(),
            "until": message.until.isoformat(),
        },
        starts_at=message.starts,
        received_at=received_at,
        kind=EventKind.INTENT,
        namespace=message.namespace,
    )


class EventsSource:
    name: ClassVar[str] = SOURCE
    Settings: ClassVar[type[SourceSettings]] = EventsSettings

    def __init__(self, settings: EventsSettings, *, context: SourceContext) -> None:
        self.config = context.webhook
        self.intake = context.intake
        self.metrics = context.metrics
        self.auth = Authenticator(context.webhook)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    def start(self, supervisor: Supervisor) -> None:
        """A webhook: nothing runs in the background."""

    async def stop(self) -> None:
        pass

    def decode(self, delivery: Delivery) -> list[Event]:
        raise LookupError("the events webhook stores its events itself; it has no deliveries to decode")

    async def handle(self, request: web.Request) -> web.Response:
        body = await read_body(request, auth=self.auth, limit=self.config.max_body_bytes, metrics=self.metrics)
        if isinstance(body, web.Response):
            return body
        received = utcnow()
        try:
            messages = decode_any(body, now=received)
        except DecodeError as exc:
            return error(400, str(exc), self.metrics)
        events = [event_of(message, received_at=received) for message in messages]
        if events:
            try:
                entries = await self.intake.accept(events)
            except LedgerUnavailable as exc:
                log.error("events not recorded; asking the sender to retry", error=str(exc), events=len(events))
                return error(503, "cannot record the events now; retry later", self.metrics)
            for entry in entries:
                self.metrics.events_received.labels(source=SOURCE, status=entry.event.status).inc()
        ids = ",".join(str(entry.id) for entry in entries) if events else ""
        text = f'{{"status":"accepted","events":{len(events)},"ids":[{ids}]}}'
        return web.Response(text=text, content_type="application/json")
