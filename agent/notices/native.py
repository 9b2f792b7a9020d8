"""
The agent's own message format, for producers that are not a cloud: a preemption notice and a scale intent.

A preemption (a node-termination handler, a script, another cluster's controller)::

    {"type": "preemption", "id": "evict-42",
     "node": "ip-10-0-1-23.ec2.internal"            (or "providerID": "aws:///us-east-1a/i-0abc…"),
     "deadline": "2024-05-01T12:02:00Z"             (or "in": "90s"),
     "reason": "spot capacity reclaimed", "time": "2024-05-01T12:00:30Z"}

Exactly one of ``node`` (a Node's name) and ``providerID`` (its ``spec.providerID``, one of AWS, GCE or Azure),
and exactly one of ``deadline`` (ISO 8601 with a zone) and ``in`` (a duration: "90s", "2m", or seconds).
``in`` counts from ``time`` (when the producer sent it, optional) or else from ``now``: when the message was
received, which the caller passes (it defaults to the decoding's own time).

An intent (a producer announcing load ahead, so capacity is there when it lands)::

    {"type": "intent", "id": "nightly-batch-2024-05-02",
     "target": {"kind": "ScaledObject", "namespace": "batch", "name": "workers"},
     "floor": 20, "from": "2024-05-02T01:45:00Z", "until": "2024-05-02T04:00:00Z",
     "reason": "a batch of 50,000 tasks lands at 02:00"}

``target.kind`` defaults to ScaledObject (also HorizontalPodAutoscaler, Deployment, StatefulSet, or "auto"),
``floor`` is at least 0, ``until`` is after ``from``. ``reason`` is optional in both.

This format is ours, so it is strict: an unknown field is an error (a typo such as ``deadine`` would otherwise be
read as a notice without a deadline), and a time without a zone is refused rather than guessed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from agent.durations import parse_duration
from agent.notices.base import (
    AwareTime,
    DecodeError,
    Intent,
    Message,
    NonEmpty,
    Notice,
    TargetKind,
    convert,
    parse_json,
    utc,
)
from agent.notices.providers import parse_provider_id
from agent.structs import utcnow

NAME = "native"
TYPES = ("preemption", "intent")

# Kubernetes object names: a DNS subdomain (Nodes, ScaledObjects, Deployments…) and a DNS label (namespaces).
ObjectName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)]
Namespace = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


class PreemptionMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["preemption"]
    id: NonEmpty
    node: ObjectName | None = None
    providerID: NonEmpty | None = None
    deadline: AwareTime | None = None
    in_: str | float | None = msgspec.field(name="in", default=None)
    reason: str = ""
    time: AwareTime | None = None


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    namespace: Namespace
    name: ObjectName
    kind: TargetKind = "ScaledObject"


class IntentMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["intent"]
    id: NonEmpty
    target: Target
    floor: Annotated[int, msgspec.Meta(ge=0)]
    from_: AwareTime = msgspec.field(name="from")
    until: AwareTime
    reason: str = ""
    time: AwareTime | None = None


def matches(data: dict[str, Any]) -> bool:
    """A native message: its ``type`` is one of ours."""
    return data.get("type") in TYPES


def decode(body: bytes, *, now: datetime | None = None) -> list[Message]:
    return decode_data(parse_json(body), now=now)


def decode_data(data: dict[str, Any], *, now: datetime | None = None) -> list[Message]:
    """The notice or intent in one native message; ``now`` is when it was received (``in`` counts from it)."""
    if data.get("type") == "intent":
        return [_intent(convert(data, IntentMessage, what="native intent"))]
    if data.get("type") == "preemption":
        return [_preemption(convert(data, PreemptionMessage, what="native preemption"), now=now)]
    raise DecodeError(f"native: type: {data.get('type')!r} is not one of {', '.join(TYPES)}")


def _preemption(message: PreemptionMessage, *, now: datetime | None) -> Notice:
    what = "native preemption"
    if (message.node is None) == (message.providerID is None):
        both = message.node is not None
        raise DecodeError(
            f"{what}: node, providerID: give "
            + ("only one of" if both else "one of")
            + " node (the Node's name) or providerID (its spec.providerID)"
        )
    if (message.deadline is None) == (message.in_ is None):
        both = message.deadline is not None
        raise DecodeError(
            f"{what}: deadline, in: give "
            + ("only one of" if both else "one of")
            + " deadline (an ISO 8601 time) or in (a duration such as 90s)"
        )
    instance = None
    if message.providerID is not None:
        instance = parse_provider_id(message.providerID)
        if instance is None:
            raise DecodeError(
                f"{what}: providerID: {message.providerID!r} is not an AWS (aws:///ZONE/i-…), "
                "GCE (gce://PROJECT/ZONE/NAME) or Azure (azure:///subscriptions/…) provider ID"
            )
    if message.deadline is not None:
        deadline = utc(message.deadline)
    else:
        try:
            period = parse_duration(message.in_)
        except ValueError as exc:
            raise DecodeError(f"{what}: in: {exc}") from None
        start = message.time or now or utcnow()
        deadline = utc(start) + period
    where = message.node if message.node is not None else str(instance)
    return Notice(
        id=message.id,
        cloud="native",
        kind="preemption",
        instance=instance,
        node=message.node,
        provider_id=message.providerID,
        deadline=deadline,
        reason=message.reason.strip() or f"preemption of {where} by {deadline:%H:%M:%S}Z",
        received=utc(message.time) if message.time else None,
    )


def _intent(message: IntentMessage) -> Intent:
    starts, until = utc(message.from_), utc(message.until)
    if until <= starts:
        raise DecodeError(
            f"native intent: until: {until.isoformat()} is not after from ({starts.isoformat()}); "
            "the floor would never hold"
        )
    return Intent(
        id=message.id,
        target_kind=message.target.kind,
        namespace=message.target.namespace,
        name=message.target.name,
        floor=message.floor,
        starts=starts,
        until=until,
        reason=message.reason.strip(),
    )
