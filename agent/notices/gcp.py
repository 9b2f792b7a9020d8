"""
GCP: a Compute Engine preemption, from the audit log or from a watcher on the instance's metadata server.

**The audit-log entry** (a Cloud Logging ``LogEntry``, as a log sink publishes it to Pub/Sub)::

    {"insertId": "-x1y2z3a4b5c", "logName": "projects/P/logs/cloudaudit.googleapis.com%2Fsystem_event",
     "timestamp": "2024-05-01T12:00:00.123456Z", "severity": "INFO",
     "resource": {"type": "gce_instance", "labels": {"project_id": "P", "zone": "Z", "instance_id": "123…"}},
     "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                      "serviceName": "compute.googleapis.com", "methodName": "compute.instances.preempted",
                      "resourceName": "projects/P/zones/Z/instances/NAME",
                      "status": {"message": "Instance was preempted."}}}

The machine is ``resourceName``'s (the labels carry the numeric instance id, which no providerID holds). A spot
or preemptible VM gets about 30 seconds, so the deadline is the entry's ``timestamp`` plus 30 s; but the entry is
written when the preemption is under way and often reaches the queue after it began, so the notice is ``late``.
The id is the entry's ``insertId`` (else the instance and the time).

**The metadata watcher's message** (this agent's own shape): a small process on each spot node polls
``http://metadata.google.internal/computeMetadata/v1/instance/preempted`` (``?wait_for_change=true``, header
``Metadata-Flavor: Google``) and, when it turns ``TRUE``, publishes::

    {"source": "gce-metadata", "type": "preempted", "project": "P", "zone": "Z", "instance": "NAME",
     "time": "2024-05-01T12:00:00Z"}

``time`` is when the watcher saw the flag, so it is timely: deadline ``time`` + 30 s, not late. Its id is the
instance and that time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from agent.notices.base import AwareTime, DecodeError, InstanceRef, Message, NonEmpty, Notice, convert, parse_json, utc

NAME = "gcp"
PREEMPTED = "compute.instances.preempted"
WATCHER = "gce-metadata"
NOTICE_PERIOD = timedelta(seconds=30)

_RESOURCE = re.compile(r"(?:.*/)?projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)")


class Status(msgspec.Struct, frozen=True):
    message: str = ""


class AuditLog(msgspec.Struct, frozen=True):
    methodName: NonEmpty
    resourceName: NonEmpty
    status: Status = Status()


class Resource(msgspec.Struct, frozen=True):
    type: str = ""
    labels: dict[str, str] = {}


class LogEntry(msgspec.Struct, frozen=True):
    protoPayload: AuditLog
    timestamp: AwareTime
    insertId: str = ""
    resource: Resource = Resource()


class WatcherMessage(msgspec.Struct, frozen=True):
    source: Literal["gce-metadata"]
    type: Literal["preempted"]
    project: NonEmpty
    zone: NonEmpty
    instance: NonEmpty
    time: AwareTime


def matches(data: dict[str, Any]) -> bool:
    """A Cloud Logging entry about Compute Engine, or the metadata watcher's message."""
    if data.get("source") == WATCHER:
        return True
    payload = data.get("protoPayload")
    if not isinstance(payload, dict):
        return False
    resource = data.get("resource")
    return payload.get("serviceName") == "compute.googleapis.com" or (
        isinstance(resource, dict) and resource.get("type") == "gce_instance"
    )


def decode(body: bytes, *, now: datetime | None = None) -> list[Message]:
    return decode_data(parse_json(body), now=now)


def decode_data(data: dict[str, Any], *, now: datetime | None = None) -> list[Message]:
    """The preemption in an audit-log entry or a watcher's message (``now`` is unused: the times are theirs)."""
    if data.get("source") == WATCHER:
        return [_from_watcher(convert(data, WatcherMessage, what="gcp metadata watcher message"))]
    entry = convert(data, LogEntry, what="gcp audit-log entry")
    method = entry.protoPayload.methodName
    if method.removeprefix("v1.") != PREEMPTED:
        raise DecodeError(
            f"gcp audit-log entry: protoPayload.methodName: {method!r} is not a preemption ({PREEMPTED!r}); "
            "filter the log sink on it"
        )
    match = _RESOURCE.fullmatch(entry.protoPayload.resourceName)
    if match is None:
        raise DecodeError(
            f"gcp audit-log entry: protoPayload.resourceName: {entry.protoPayload.resourceName!r} is not "
            "projects/PROJECT/zones/ZONE/instances/NAME"
        )
    instance = InstanceRef(cloud="gcp", project=match["project"], zone=match["zone"], name=match["name"])
    at = utc(entry.timestamp)
    machine_id = entry.resource.labels.get("instance_id") or match["name"]
    status = entry.protoPayload.status.message.strip()
    return [
        Notice(
            id=entry.insertId or f"{machine_id}@{at.isoformat()}",
            cloud="gcp",
            kind="preemption",
            instance=instance,
            node=None,
            provider_id=None,
            deadline=at + NOTICE_PERIOD,
            reason=f"GCE preemption (audit log, may arrive after it began): {instance}"
            + (f": {status}" if status else ""),
            received=at,
            late=True,
        )
    ]


def _from_watcher(message: WatcherMessage) -> Notice:
    instance = InstanceRef(cloud="gcp", project=message.project, zone=message.zone, name=message.instance)
    at = utc(message.time)
    deadline = at + NOTICE_PERIOD
    return Notice(
        id=f"{message.project}/{message.zone}/{message.instance}@{at.isoformat()}",
        cloud="gcp",
        kind="preemption",
        instance=instance,
        node=None,
        provider_id=None,
        deadline=deadline,
        reason=f"GCE preemption (metadata server): {instance} stops by {deadline:%H:%M:%S}Z",
        received=at,
    )
