"""
Preemption notices and scale intents, decoded from the messages that carry them; no I/O.

The agent hears of a machine going away, or of load coming, from queues (AMQP, Redis streams) and a webhook, in
several shapes: each cloud's own event and the agent's native JSON. Each shape is one module here with
``matches(data)`` (is this parsed JSON object mine?) and ``decode(body)`` / ``decode_data(data)`` (its
:class:`Notice` and :class:`Intent` records, or a :class:`DecodeError` saying in one line what is wrong, the
dead-letter reason). :data:`FORMATS` lists them; :func:`decode_any` parses a body once and hands it to the one
format that claims it, so a consumer need not be told the format of its queue. The modules are pure so the
consumers (and their tests) can stay thin: :func:`find_node` then names the Node a notice is about, from Nodes
the caller has listed.

* ``aws``: EventBridge EC2 Spot Instance Interruption Warning and Instance Rebalance Recommendation.
* ``gcp``: the Compute Engine audit-log entry of a preemption, and a metadata-server watcher's message.
* ``azure``: a Scheduled Events document (its Preempt events).
* ``native``: the agent's own preemption and intent messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from agent.notices import aws, azure, gcp, native
from agent.notices.base import DecodeError, InstanceRef, Intent, Message, Notice, parse_json
from agent.notices.providers import aks_node_name, find_node, parse_provider_id

__all__ = [
    "FORMATS",
    "DecodeError",
    "Format",
    "InstanceRef",
    "Intent",
    "Message",
    "Notice",
    "aks_node_name",
    "decode_any",
    "find_node",
    "parse_provider_id",
]


class Format(Protocol):
    """What a format module provides (each module of this package is one)."""

    NAME: str

    def matches(self, data: dict[str, Any]) -> bool: ...

    def decode(self, body: bytes, *, now: datetime | None = None) -> list[Message]: ...

    def decode_data(self, data: dict[str, Any], *, now: datetime | None = None) -> list[Message]: ...


FORMATS: dict[str, Format] = {module.NAME: module for module in (aws, gcp, azure, native)}


def decode_any(body: bytes, *, now: datetime | None = None) -> list[Message]:
    """
    The notices and intents in a message of any known format: the body is parsed once, and the one format that
    matches it decodes it. ``now`` is when it was received (a native ``in`` counts from it). A body that no
    format claims is a :class:`DecodeError` (``unknown format: …``) naming the keys it has.
    """
    data = parse_json(body)
    claimed = [fmt for fmt in FORMATS.values() if fmt.matches(data)]
    if len(claimed) > 1:  # the formats' matches() are disjoint by construction; a new one must keep them so
        raise DecodeError(f"ambiguous format: matches {', '.join(fmt.NAME for fmt in claimed)}")
    if not claimed:
        keys = sorted(data)
        shown = ", ".join(keys[:8]) + (f", … ({len(keys)} keys)" if len(keys) > 8 else "")
        raise DecodeError(
            f"unknown format: a JSON object with keys [{shown}] is none of {', '.join(FORMATS)} "
            "(an AWS EC2 event, a GCE audit-log entry or metadata watcher message, an Azure Scheduled Events "
            "document, or a native message with type preemption or intent)"
        )
    return claimed[0].decode_data(data, now=now)
