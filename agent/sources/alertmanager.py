"""
The Alertmanager webhook receiver: ``POST /webhooks/alertmanager`` (payload version 4).

Alertmanager retries a 5xx or a network error (never a 4xx) until the group's
next flush, and HA peers may send one notification twice. So the answers are:
401 for missing or wrong credentials, 413 for a body over the limit, 400 for
anything that is not a version-4 payload (with the reason: a retry would not
help), 503 when the ledger cannot record it (a retry will), and 200 only once
the notification is durably in the inbox.

The request does as little as that takes: it validates the payload and stores
its body as received (a :class:`~agent.structs.Delivery`). The worker later
runs :meth:`AlertmanagerSource.decode` on it, off the request, from the payload
the request already parsed (kept in memory for the deliveries not yet unpacked;
only after a restart, or past that bound, is a body parsed again): each alert becomes one
:class:`~agent.structs.Event` whose idempotency key is its fingerprint, status
and ``startsAt``, so a repeat notification of the same firing carries the same
key and turns into a recorded no-op. (Building and storing the events inside
the request cost more than aiohttp's own handling of it; see bench/README.md.)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

import msgspec
import structlog
from aiohttp import web

from agent.ledger import LedgerUnavailable
from agent.sources.base import SourceContext, SourceSettings
from agent.sources.webhook import Authenticator, error, read_body
from agent.structs import Delivery, Event, utcnow
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.sources.alertmanager")

SOURCE = "alertmanager"
PATH = "/webhooks/alertmanager"
PARSED_KEPT = 4096  # parsed payloads kept for the unpacker; past that (a storm's backlog) a body is parsed again
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


class AlertV4(msgspec.Struct, frozen=True):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    startsAt: datetime
    annotations: dict[str, str] = {}
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class PayloadV4(msgspec.Struct, frozen=True):
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: Annotated[list[AlertV4], msgspec.Meta(min_length=1)]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""


# msgspec, not pydantic, for this one schema: it parses and checks a notification in one pass at a third of
# pydantic's cost, and this runs inside every acknowledgement (bench/README.md). Unknown fields are ignored.
_DECODER = msgspec.json.Decoder(PayloadV4)


class PayloadError(ValueError):
    """Not an Alertmanager version-4 payload; the message says why, for the 400 answer."""


def parse_payload(body: bytes) -> PayloadV4:
    try:
        payload = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        where = where.removesuffix("`").removeprefix(".")
        if not where and message.startswith("Expected `object`"):
            raise PayloadError("payload must be a JSON object (Alertmanager webhook version 4)") from None
        raise PayloadError(f"not an Alertmanager version 4 payload: {where + ': ' if where else ''}{message}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc}") from None
    for i, alert in enumerate(payload.alerts):
        if not alert.labels.get("alertname"):
            raise PayloadError(f"not an Alertmanager version 4 payload: alerts[{i}].labels: alertname is required")
    return payload


def fingerprint_of(labels: dict[str, str]) -> str:
    """Alertmanager sends a fingerprint; older senders may not, so derive a stable one from the labels."""
    text = "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decode(delivery: Delivery) -> list[Event]:
    """The worker's half: the events of a notification the webhook validated and stored."""
    return to_events(parse_payload(delivery.body), received_at=delivery.received_at)


def to_events(payload: PayloadV4, *, received_at: datetime) -> list[Event]:
    events = []
    for alert in payload.alerts:
        fingerprint = alert.fingerprint or fingerprint_of(alert.labels)
        starts_at = alert.startsAt.astimezone(UTC) if alert.startsAt.tzinfo else alert.startsAt.replace(tzinfo=UTC)
        key_text = f"{SOURCE}|{fingerprint}|{alert.status}|{starts_at.isoformat()}"
        events.append(
            Event(
                source=SOURCE,
                key=hashlib.sha256(key_text.encode()).hexdigest()[:32],
                alertname=alert.labels["alertname"],
                status=alert.status,
                fingerprint=fingerprint,
                labels=alert.labels,
                annotations=alert.annotations,
                starts_at=starts_at,
                received_at=received_at,
            )
        )
    return events


class AlertmanagerSettings(SourceSettings):
    """``sources.alertmanager``: on unless turned off; its auth and body limit are the ``webhook`` section's."""

    enabled: bool = True


class AlertmanagerSource:
    name: ClassVar[str] = SOURCE
    Settings: ClassVar[type[SourceSettings]] = AlertmanagerSettings

    def __init__(self, settings: AlertmanagerSettings, *, context: SourceContext) -> None:
        self.config = context.webhook
        self.intake = context.intake
        self.metrics = context.metrics
        self.auth = Authenticator(context.webhook)
        self._parsed: OrderedDict[int, PayloadV4] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    def start(self, supervisor: Supervisor) -> None:
        """A webhook: nothing runs in the background."""

    async def stop(self) -> None:
        self._parsed.clear()

    def decode(self, delivery: Delivery) -> list[Event]:
        payload = self._parsed.pop(delivery.id, None) or parse_payload(delivery.body)
        return to_events(payload, received_at=delivery.received_at)

    async def handle(self, request: web.Request) -> web.Response:
        body = await read_body(request, auth=self.auth, limit=self.config.max_body_bytes, metrics=self.metrics)
        if isinstance(body, web.Response):
            return body
        try:
            payload = parse_payload(body)
        except PayloadError as exc:
            return error(400, str(exc), self.metrics)
        alerts = len(payload.alerts)
        try:
            delivery_id = await self.intake.receive(source=SOURCE, body=body, received_at=utcnow())
        except LedgerUnavailable as exc:
            log.error("notification not recorded; asking Alertmanager to retry", error=str(exc), alerts=alerts)
            return error(503, "cannot record the notification now; retry later", self.metrics)
        self._parsed[delivery_id] = payload  # parsed once: the unpacker takes it from here
        if len(self._parsed) > PARSED_KEPT:
            self._parsed.popitem(last=False)
        if payload.truncatedAlerts:
            log.warning("Alertmanager truncated this notification", truncated=payload.truncatedAlerts)
        # Formatted, not json.dumps-ed: two integers, on every acknowledgement's path.
        text = f'{{"status":"accepted","delivery":{delivery_id},"alerts":{alerts}}}'
        return web.Response(text=text, content_type="application/json")
