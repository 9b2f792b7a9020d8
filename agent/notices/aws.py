"""
AWS: the EC2 events EventBridge sends about Spot Instances (to an SQS queue, or any target that forwards the
event's JSON as it is).

Two detail types are read::

    {"version": "0", "id": "<event id>", "source": "aws.ec2", "account": "123456789012",
     "detail-type": "EC2 Spot Instance Interruption Warning", "time": "2024-05-01T12:00:00Z",
     "region": "us-east-1", "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0abc…"],
     "detail": {"instance-id": "i-0abc…", "instance-action": "terminate" | "stop" | "hibernate"}}

    {… "detail-type": "EC2 Instance Rebalance Recommendation", … "detail": {"instance-id": "i-0abc…"}}

An interruption warning comes two minutes before the instance is stopped or terminated, so its deadline is the
event's ``time`` plus two minutes; a hibernation begins at once (AWS gives no two minutes then), so its deadline
is the event's time and the notice is ``late``. A rebalance recommendation is only a raised risk: kind
``rebalance``, no deadline. The event's ``id`` is the notice's. The event names the region, not the zone; the
instance id alone identifies the machine. Another ``aws.ec2`` event (a state change) is an error that says so: a
rule that routes it here is misconfigured.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from agent.notices.base import AwareTime, DecodeError, InstanceRef, Message, NonEmpty, Notice, convert, parse_json, utc

NAME = "aws"
WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
NOTICE_PERIOD = timedelta(minutes=2)

InstanceId = Annotated[str, msgspec.Meta(pattern=r"^i-[0-9a-f]+$")]


class WarningDetail(msgspec.Struct, frozen=True):
    instance_id: InstanceId = msgspec.field(name="instance-id")
    instance_action: Literal["terminate", "stop", "hibernate"] = msgspec.field(name="instance-action")


class RebalanceDetail(msgspec.Struct, frozen=True):
    instance_id: InstanceId = msgspec.field(name="instance-id")


class WarningEvent(msgspec.Struct, frozen=True):
    id: NonEmpty
    time: AwareTime
    detail: WarningDetail
    region: str = ""


class RebalanceEvent(msgspec.Struct, frozen=True):
    id: NonEmpty
    time: AwareTime
    detail: RebalanceDetail
    region: str = ""


def matches(data: dict[str, Any]) -> bool:
    """An EventBridge event from EC2 (its detail type is checked by :func:`decode_data`)."""
    return data.get("source") == "aws.ec2" and "detail-type" in data


def decode(body: bytes, *, now: datetime | None = None) -> list[Message]:
    return decode_data(parse_json(body), now=now)


def decode_data(data: dict[str, Any], *, now: datetime | None = None) -> list[Message]:
    """The notice in one EC2 event (``now`` is unused: every time comes from the event)."""
    detail_type = data.get("detail-type")
    if detail_type == WARNING:
        warning = convert(data, WarningEvent, what="aws spot interruption warning")
        action = warning.detail.instance_action
        at = utc(warning.time)
        hibernate = action == "hibernate"
        deadline = at if hibernate else at + NOTICE_PERIOD
        instance = InstanceRef(cloud="aws", instance_id=warning.detail.instance_id, region=warning.region or None)
        return [
            Notice(
                id=warning.id,
                cloud="aws",
                kind="preemption",
                instance=instance,
                node=None,
                provider_id=None,
                deadline=deadline,
                reason=f"EC2 Spot interruption warning: {instance} will {action}"
                + (" now" if hibernate else f" at {deadline:%H:%M:%S}Z"),
                received=at,
                late=hibernate,
            )
        ]
    if detail_type == REBALANCE:
        rebalance = convert(data, RebalanceEvent, what="aws rebalance recommendation")
        instance = InstanceRef(cloud="aws", instance_id=rebalance.detail.instance_id, region=rebalance.region or None)
        return [
            Notice(
                id=rebalance.id,
                cloud="aws",
                kind="rebalance",
                instance=instance,
                node=None,
                provider_id=None,
                deadline=None,
                reason=f"EC2 rebalance recommendation: {instance} is at elevated risk of interruption",
                received=utc(rebalance.time),
            )
        ]
    raise DecodeError(
        f"aws: detail-type: {detail_type!r} is not read here (only {WARNING!r} and {REBALANCE!r}); "
        "route only those to this queue"
    )
