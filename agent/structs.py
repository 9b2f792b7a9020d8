"""
The small immutable records that cross the stage boundaries.

Data flows one way: a source records what it hears as a :class:`Delivery`,
which its decoder later unpacks into :class:`Event` records (or it builds the
events itself); the rules turn an event into :class:`Plan` records, the
executor turns a plan into a :class:`Decision`. Each stage only reads the
records of the stage before it, so a new source, action or target kind never
has to know the others.

Records that are persisted (events in the inbox, decisions in the ledger)
convert to and from plain JSON here, in one place, so that every ledger backend
agrees on the format; the claims on objects do so in :mod:`agent.claims`.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class Outcome(enum.StrEnum):
    APPLYING = "applying"  # recorded before the patch is sent; completed (updated) once it is known
    APPLIED = "applied"
    NOOP = "no-op"
    REFUSED = "refused"
    FAILED = "failed"
    DRY_RUN = "dry-run"  # decided and recorded, deliberately not patched


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_LOCK = threading.Lock()
_ulid_last = [0, 0]  # the last id handed out: milliseconds, 80 random bits


def new_id() -> str:
    """
    A ULID (26 characters, sortable by time): 48 bits of milliseconds and 80 random bits, made monotonic in
    the process (a second id in the same millisecond is the last one plus one), so two ids never collide
    here by construction, and across processes only with odds of 2**-80 per millisecond. The ledgers insert
    with the id as a key and fail loudly on a duplicate; they never replace.
    """
    with _ULID_LOCK:
        ms = time.time_ns() // 1_000_000
        if ms <= _ulid_last[0]:
            ms, rand = _ulid_last[0], _ulid_last[1] + 1  # a clock step back must not reuse an id either
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments within one ms
        _ulid_last[0], _ulid_last[1] = ms, rand
    value = (ms << 80) | rand
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class EventKind(enum.StrEnum):
    """What an event is; rules match on it (``rules[].kind``)."""

    ALERT = "alert"  # an alert firing or resolving (Alertmanager)
    SCHEDULE = "schedule"  # a calendar window's edge
    NOTICE = "notice"  # a preemption notice: a node is going away
    INTENT = "intent"  # a producer announcing load ahead


@dataclass(frozen=True)
class Event:
    """
    One thing that happened, as a source heard it: an alert firing or resolving, a window opening, a notice.
    ``alertname`` is the event's name (an alert's ``alertname``, a schedule's name); ``deadline``, when set, puts
    the event in the worker's urgent lane, ahead of any backlog (a preemption notice gives 30 s to 2 minutes).
    """

    source: str
    key: str  # idempotency key: the same key twice is the same event delivered twice
    alertname: str
    status: str  # "firing" | "resolved"
    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    starts_at: datetime | None = None
    received_at: datetime = field(default_factory=utcnow)
    kind: EventKind = EventKind.ALERT
    namespace: str | None = None  # the event's own namespace, when it has one (else the labels' `namespace`)
    deadline: datetime | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "key": self.key,
                "alertname": self.alertname,
                "status": self.status,
                "fingerprint": self.fingerprint,
                "labels": dict(self.labels),
                "annotations": dict(self.annotations),
                "starts_at": _iso(self.starts_at),
                "received_at": _iso(self.received_at),
                "kind": str(self.kind),
                "namespace": self.namespace,
                "deadline": _iso(self.deadline),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        data = json.loads(text)
        return cls(
            source=data["source"],
            key=data["key"],
            alertname=data["alertname"],
            status=data["status"],
            fingerprint=data["fingerprint"],
            labels=data["labels"],
            annotations=data["annotations"],
            starts_at=_from_iso(data["starts_at"]),
            received_at=_from_iso(data["received_at"]) or utcnow(),
            kind=EventKind(data.get("kind", EventKind.ALERT)),  # events stored before kinds were alerts
            namespace=data.get("namespace"),
            deadline=_from_iso(data.get("deadline")),
        )


@dataclass(frozen=True)
class Delivery:
    """
    What a source received, exactly as it came (an Alertmanager notification's body), once it is durably
    recorded. The webhook acknowledges on this record alone; the worker later unpacks it into events with
    the source's decoder, off the acknowledgement's path.
    """

    id: int
    source: str
    body: bytes
    received_at: datetime


@dataclass(frozen=True)
class InboxEntry:
    """An event once it is durably recorded; ``duplicate_of`` names the first delivery of the same key."""

    id: int
    event: Event
    duplicate_of: int | None = None


@dataclass(frozen=True, order=True)
class TargetRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        # A cluster-scoped object (a Node) has no namespace: Node/node-1.
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> TargetRef:
        parts = text.split("/", 2)
        if len(parts) == 2:
            return cls(kind=parts[0], namespace="", name=parts[1])
        kind, namespace, name = parts
        return cls(kind=kind, namespace=namespace, name=name)


@dataclass(frozen=True)
class Trigger:
    """What caused a decision, copied from the event (or naming the reconciler)."""

    source: str
    alertname: str
    status: str
    fingerprint: str
    labels: Mapping[str, str] = field(default_factory=dict)
    event_key: str | None = None

    @classmethod
    def of(cls, event: Event) -> Trigger:
        return cls(
            source=event.source,
            alertname=event.alertname,
            status=event.status,
            fingerprint=event.fingerprint,
            labels=event.labels,
            event_key=event.key,
        )


@dataclass(frozen=True)
class Plan:
    """A rule's intention: do ``action`` (with its validated spec) on ``target`` because of ``event``."""

    event: Event
    rule: str
    action: str
    spec: Any  # the action's pydantic spec model, validated at config load
    target: TargetRef | None
    reason: str  # how the target was found, or why none was
    verdict: Outcome | None = None  # decided before execution (a failed lookup, a refused blast radius)
    follows: str | None = None  # the decision this one is a step of (an evacuation's pre-scale follows its cordon)
    critical: bool = False  # the rule is critical: its scale-ups go past a cost budget, flagged


@dataclass(frozen=True)
class Ownership:
    """
    What the release before claims wrote on an object for each field it changed temporarily (one annotation per
    field). Read only now, to upgrade such objects to claims (:meth:`agent.claims.Claims.from_ownerships`).
    """

    field: str
    before: int | None
    after: int | None
    decision: str
    rule: str
    alertname: str
    fingerprint: str
    reason: str
    applied_at: datetime
    expires_at: datetime | None
    revert_on_resolve: bool
    event_key: str = ""  # the delivery that caused it: re-processing that same event is a no-op
    action: str = ""  # the decision's action (pause, set_min, …); "" on annotations written before it was kept

    def to_json(self) -> str:
        return json.dumps(
            {
                "field": self.field,
                "before": self.before,
                "after": self.after,
                "decision": self.decision,
                "rule": self.rule,
                "alertname": self.alertname,
                "fingerprint": self.fingerprint,
                "reason": self.reason,
                "appliedAt": _iso(self.applied_at),
                "expiresAt": _iso(self.expires_at),
                "revertOnResolve": self.revert_on_resolve,
                "eventKey": self.event_key,
                "action": self.action,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Ownership:
        data = json.loads(text)
        return cls(
            field=data["field"],
            before=data["before"],
            after=data["after"],
            decision=data["decision"],
            rule=data.get("rule", ""),
            alertname=data.get("alertname", ""),
            fingerprint=data.get("fingerprint", ""),
            reason=data.get("reason", ""),
            applied_at=_from_iso(data["appliedAt"]) or utcnow(),
            expires_at=_from_iso(data.get("expiresAt")),
            revert_on_resolve=bool(data.get("revertOnResolve", True)),
            event_key=data.get("eventKey", ""),
            action=data.get("action", ""),
        )


class PriceSource(enum.StrEnum):
    """Where a decision's price came from (agent/cost.py)."""

    PROMETHEUS = "prometheus"  # OpenCost's node prices (or the cost recording rules) in Prometheus
    TABLE = "table"  # the config's pricing table: Prometheus down, or the series missing
    UNKNOWN = "unknown"  # neither: the change is not priced (``cost.on_unknown_price`` decides)


@dataclass(frozen=True)
class Costing:
    """
    What a decision's change costs per hour, priced before it was made: the replicas it implies at the count it
    saw (a floor of 5 on a workload running 3 adds 2), times the price of one replica. The report counts
    replica-hours and cost from these fields alone (``scaling-agent report``).
    """

    replicas: int | None  # the replica count the decision saw
    replicas_delta: int | None  # replicas the change implies at that count: + added, - removed
    per_replica_hour: float | None  # the price of one replica for an hour
    delta_per_hour: float | None  # replicas_delta * per_replica_hour; None when either is unknown
    source: PriceSource
    note: str = ""  # how it was priced: the requests, the unit prices, from where
    budget: str = ""  # what the budget check said, when it had something to say (an override, an unknown price)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cost_delta_per_hour": self.delta_per_hour,
            "price_source": str(self.source),
            "replicas": self.replicas,
            "replicas_delta": self.replicas_delta,
            "price_per_replica_hour": self.per_replica_hour,
            **({"price_note": self.note} if self.note else {}),
            **({"budget": self.budget} if self.budget else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Costing | None:
        if "price_source" not in data:
            return None
        return cls(
            replicas=data.get("replicas"),
            replicas_delta=data.get("replicas_delta"),
            per_replica_hour=data.get("price_per_replica_hour"),
            delta_per_hour=data.get("cost_delta_per_hour"),
            source=PriceSource(data["price_source"]),
            note=data.get("price_note", ""),
            budget=data.get("budget", ""),
        )

    def text(self) -> str:
        """``+2 replicas, +$0.0708/h (prometheus)``; the replicas part only when the change moves any."""
        parts = []
        if self.replicas_delta:
            parts.append(f"{self.replicas_delta:+d} replica{'s' if abs(self.replicas_delta) != 1 else ''}")
        if self.delta_per_hour is not None:
            sign = "-" if self.delta_per_hour < 0 else "+"
            parts.append(f"{sign}${abs(self.delta_per_hour):.4f}/h ({self.source})")
        else:
            parts.append(f"price {self.source}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Decision:
    """
    Everything the agent decided about one plan, including the refusals.

    Written to the ledger first, then fanned out to Slack, the log, metrics and
    a Kubernetes Event on the target.
    """

    id: str
    at: datetime
    trigger: Trigger
    rule: str | None
    action: str
    target: TargetRef | None
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    reason: str
    dry_run: bool
    outcome: Outcome
    error: str | None = None
    follows: str | None = None  # the decision this one follows up (a window's warm-up follows its opening)
    cost: Costing | None = None  # what the change costs per hour (changes to replicas; None for the rest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": _iso(self.at),
            "trigger": {
                "source": self.trigger.source,
                "alertname": self.trigger.alertname,
                "status": self.trigger.status,
                "fingerprint": self.trigger.fingerprint,
                "labels": dict(self.trigger.labels),
                "event_key": self.trigger.event_key,
            },
            "rule": self.rule,
            "action": self.action,
            "target": None if self.target is None else str(self.target),
            "before": dict(self.before),
            "after": dict(self.after),
            "reason": self.reason,
            "dry_run": self.dry_run,
            "outcome": str(self.outcome),
            "error": self.error,
            **({"follows": self.follows} if self.follows else {}),
            **(self.cost.to_dict() if self.cost is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        trigger = data["trigger"]
        return cls(
            id=data["id"],
            at=_from_iso(data["at"]) or utcnow(),
            trigger=Trigger(
                source=trigger["source"],
                alertname=trigger["alertname"],
                status=trigger["status"],
                fingerprint=trigger["fingerprint"],
                labels=trigger.get("labels", {}),
                event_key=trigger.get("event_key"),
            ),
            rule=data.get("rule"),
            action=data["action"],
            target=None if data.get("target") is None else TargetRef.parse(data["target"]),
            before=data.get("before", {}),
            after=data.get("after", {}),
            reason=data["reason"],
            dry_run=bool(data.get("dry_run")),
            outcome=Outcome(data["outcome"]),
            error=data.get("error"),
            follows=data.get("follows"),
            cost=Costing.from_dict(data),
        )

    def change(self) -> str:
        """The fields it changed (or would have), as ``field: before → after``; empty when none."""
        keys = sorted(set(self.before) | set(self.after))
        if not self.before:  # a report (a follow-up's counts), not a change
            return ", ".join(f"{k}: {self.after[k]}" for k in keys)
        return ", ".join(f"{k}: {self.before.get(k)} → {self.after.get(k)}" for k in keys)

    def summary(self) -> str:
        """One human line: what happened to what, and why."""
        target = str(self.target) if self.target else "-"
        change = f" {self.change()}" if self.before or self.after else ""
        error = f" error: {self.error}" if self.error else ""
        dry = " [dry-run]" if self.dry_run and self.outcome != Outcome.DRY_RUN else ""
        cost = f" [{self.cost.text()}]" if self.cost is not None else ""
        return (
            f"[{self.outcome}]{dry} {self.action} {target}{change}{cost} — {self.reason}"
            f" (alert {self.trigger.alertname} {self.trigger.status}, decision {self.id}){error}"
        )
