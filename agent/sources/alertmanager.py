"""
The Alertmanager webhook receiver: ``POST /webhooks/alertmanager`` (payload version 4).

Alertmanager retries a 5xx or a network error (never a 4xx) until the group's
next flush, and HA peers may send one notification twice. So the answers are:
401 for missing or wrong credentials, 413 for a body over the limit, 400 for
anything that is not a version-4 payload (with the reason: a retry would not
help), 503 when the ledger cannot record the events (a retry will), and 200
only once every alert of the payload is durably in the inbox. Processing
happens afterwards, off the request.

Each alert becomes one :class:`~agent.structs.Event` whose idempotency key is
its fingerprint, status and ``startsAt``: a repeat notification of the same
firing carries the same key and turns into a recorded no-op.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config import BasicAuth, BearerAuth, WebhookConfig, format_errors
from agent.ledger import LedgerUnavailable
from agent.metrics import Metrics
from agent.structs import Event, utcnow
from agent.worker import Intake

log = structlog.get_logger("agent.sources.alertmanager")

SOURCE = "alertmanager"
PATH = "/webhooks/alertmanager"
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


class AlertV4(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("labels.alertname is required")
        return labels


class PayloadV4(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    alerts: list[AlertV4] = Field(min_length=1)


def fingerprint_of(labels: dict[str, str]) -> str:
    """Alertmanager sends a fingerprint; older senders may not, so derive a stable one from the labels."""
    text = "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


class Authenticator:
    """Checks the ``Authorization`` header in constant time; secrets are read once, at start."""

    def __init__(self, config: WebhookConfig) -> None:
        auth = config.auth
        self.expected: bytes | None
        self.scheme: str
        if isinstance(auth, BearerAuth):
            self.scheme = "Bearer"
            self.expected = f"Bearer {auth.token.read()}".encode()
        elif isinstance(auth, BasicAuth):
            self.scheme = "Basic"
            credentials = f"{auth.username}:{auth.password.read()}".encode()
            self.expected = b"Basic " + base64.b64encode(credentials)
        else:
            self.scheme = ""
            self.expected = None

    def check(self, header: str | None) -> bool:
        if self.expected is None:
            return True
        return hmac.compare_digest((header or "").encode(), self.expected)


def _explain(exc: ValidationError) -> str:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    if first["type"] == "model_type" and not first["loc"]:
        return "payload must be a JSON object (Alertmanager webhook version 4)"
    return "not an Alertmanager version 4 payload: " + "; ".join(format_errors(exc))


def _error(status: int, reason: str, metrics: Metrics, **headers: str) -> web.Response:
    metrics.webhook_rejections.labels(code=str(status)).inc()
    return web.json_response({"status": "error", "error": reason}, status=status, headers=headers or None)


class AlertmanagerSource:
    def __init__(self, config: WebhookConfig, *, intake: Intake, metrics: Metrics) -> None:
        self.config = config
        self.intake = intake
        self.metrics = metrics
        self.auth = Authenticator(config)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        if not self.auth.check(request.headers.get("Authorization")):
            return _error(401, "missing or wrong credentials", self.metrics, **{"WWW-Authenticate": self.auth.scheme})
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"body of {request.content_length} bytes is over the limit of {limit}", self.metrics)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body is over the limit of {limit} bytes", self.metrics)
        try:
            payload = PayloadV4.model_validate_json(body)  # parse and check in one pass: this is the hot path
        except ValidationError as exc:
            return _error(400, _explain(exc), self.metrics)
        events = to_events(payload, received_at=utcnow())
        try:
            entries = await self.intake.accept(events)
        except LedgerUnavailable as exc:
            log.error("events not recorded; asking Alertmanager to retry", error=str(exc), alerts=len(events))
            return _error(503, "cannot record the events now; retry later", self.metrics)
        duplicates = sum(1 for entry in entries if entry.duplicate_of is not None)
        if payload.truncatedAlerts:
            log.warning("Alertmanager truncated this notification", truncated=payload.truncatedAlerts)
        return web.json_response(
            {"status": "accepted", "accepted": len(entries), "duplicates": duplicates, "ids": [e.id for e in entries]}
        )
