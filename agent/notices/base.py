"""
What every notice format decodes to, and the one way a message is turned down.

A preemption notice says a machine is going away (a :class:`Notice`); a scale intent says load is coming (an
:class:`Intent`). Each cloud says the first in its own shape, so each shape is one module with a ``decode`` that
ends in these records, and everything after the decoders (matching the machine to a Node, the rules) reads only
them. The records are plain frozen dataclasses, not pydantic or msgspec models: they are built by code that has
already checked the message, and they outlive the message's schema.

A message that cannot be decoded raises :class:`DecodeError` with one readable line naming the field (the
dead-letter reason a person reads later), built from msgspec's own errors by :func:`convert`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

Cloud = Literal["aws", "gcp", "azure"]
NoticeCloud = Literal["aws", "gcp", "azure", "native"]
NoticeKind = Literal["preemption", "rebalance"]
TargetKind = Literal["ScaledObject", "HorizontalPodAutoscaler", "Deployment", "StatefulSet", "auto"]

# The msgspec field types the format modules share: a time must say its zone (a deadline off by the host's offset
# would be worse than none), and an identity must not be empty.
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

T = TypeVar("T")


class DecodeError(ValueError):
    """The message is not in a format the agent reads, or breaks its format's rules; one line says which."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the parts held


@dataclass(frozen=True, kw_only=True)
class InstanceRef:
    """
    A cloud machine, as much of its identity as the message gives. AWS: ``instance_id`` (with ``zone`` from a
    provider ID, ``region`` from an event). GCP: ``project``, ``zone``, ``name``. Azure: ``vm_name`` for a VM, or
    ``vmss`` and ``instance`` (the number) for a scale set's VM, with ``subscription`` and ``resource_group`` when
    known (a Scheduled Events document alone does not carry them).
    """

    cloud: Cloud
    instance_id: str | None = None
    zone: str | None = None
    region: str | None = None
    project: str | None = None
    name: str | None = None
    subscription: str | None = None
    resource_group: str | None = None
    vm_name: str | None = None
    vmss: str | None = None
    instance: int | None = None

    def __str__(self) -> str:
        if self.cloud == "aws":
            where = self.zone or self.region
            return f"EC2 instance {self.instance_id}" + (f" ({where})" if where else "")
        if self.cloud == "gcp":
            return f"GCE instance {self.project}/{self.zone}/{self.name}"
        vm = self.vm_name if self.vm_name is not None else f"{self.vmss}_{self.instance}"
        group = f" in resource group {self.resource_group}" if self.resource_group else ""
        return f"Azure VM {vm}{group}"


@dataclass(frozen=True, kw_only=True)
class Notice:
    """
    A machine is going away (``preemption``) or is at elevated risk of it (``rebalance``, no hard deadline).

    ``id`` is the idempotency key: the cloud's event id, else the instance and the event's time, so the same
    notice delivered twice (a queue's redelivery, two watchers) is recognised. The machine is ``instance`` (a
    cloud's identity), or ``node`` / ``provider_id`` as the native format gives them. ``deadline`` is when the
    machine goes (UTC), ``received`` the event's own time. ``late`` says the notice usually arrives after the
    preemption began (a GCP audit-log entry), so the deadline may already have passed.
    """

    id: str
    cloud: NoticeCloud
    kind: NoticeKind
    instance: InstanceRef | None
    node: str | None
    provider_id: str | None
    deadline: datetime | None
    reason: str
    received: datetime | None
    late: bool = False


@dataclass(frozen=True, kw_only=True)
class Intent:
    """
    A producer announces load ahead: keep at least ``floor`` replicas on the target from ``starts`` until
    ``until`` (both UTC). ``target_kind`` "auto" leaves the kind to the agent (whatever scales the name).
    """

    id: str
    target_kind: TargetKind = "ScaledObject"
    namespace: str
    name: str
    floor: int
    starts: datetime
    until: datetime
    reason: str


Message = Notice | Intent


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; anything else is a :class:`DecodeError`."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed JSON: {str(exc).removeprefix('JSON is malformed: ')}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"expected a JSON object, got {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")


def convert(data: Any, type_: type[T], *, what: str, at: str = "") -> T:
    """
    ``data`` (parsed JSON) checked and converted to ``type_``; a mismatch becomes a :class:`DecodeError` reading
    ``<what>: <field path>: <problem>``, the path in the message's own field names (``detail.instance-id``),
    under ``at`` when ``data`` is part of a larger message.
    """
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{what}: {describe(exc, at=at)}") from None


def describe(exc: msgspec.ValidationError, *, at: str = "") -> str:
    message, _, where = str(exc).partition(" - at `$")
    path = join_path(at, where.removesuffix("`").removeprefix("."))
    if match := _MISSING.fullmatch(message):
        return f"{join_path(path, match['field'])}: is required"
    if match := _UNKNOWN.fullmatch(message):
        return f"{join_path(path, match['field'])}: is not a field of this format"
    if message.startswith("Expected `str` of length >= 1"):
        message = "must not be empty"
    message = message[:1].lower() + message[1:]
    return f"{path}: {message}" if path else message


def join_path(*parts: str) -> str:
    path = ""
    for part in parts:
        if part:
            path = part if not path else path + part if part.startswith("[") else f"{path}.{part}"
    return path
