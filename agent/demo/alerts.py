"""
Alertmanager webhook payloads (version 4) as Alertmanager builds them, for the demo, the tests and the bench.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

ZERO = "0001-01-01T00:00:00Z"


def alert(
    alertname: str,
    labels: Mapping[str, str] | None = None,
    *,
    status: str = "firing",
    starts_at: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    all_labels = {"alertname": alertname, **(labels or {})}
    fingerprint = hashlib.sha256(repr(sorted(all_labels.items())).encode()).hexdigest()[:16]
    start = starts_at or datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    return {
        "status": status,
        "labels": all_labels,
        "annotations": dict(annotations or {"summary": f"{alertname} is {status}"}),
        "startsAt": start.isoformat().replace("+00:00", "Z"),
        "endsAt": ZERO if status == "firing" else datetime.now(tz=UTC).isoformat().replace("+00:00", "Z"),
        "generatorURL": "http://prometheus.monitoring:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], receiver: str = "scaling-agent") -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    common = dict(alerts[0]["labels"]) if len(alerts) == 1 else {}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="' + alerts[0]["labels"]["alertname"] + '"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.monitoring:9093",
        "alerts": list(alerts),
    }
