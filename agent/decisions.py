"""
Recording decisions: the ledger first, then a fan-out that never blocks.

:meth:`DecisionRecorder.record` awaits the ledger write (the durable record),
logs a structlog line and counts the metric, then *offers* the decision to
each sink's own queue and returns. Slack being slow or down, or the API
server refusing an Event, never delays the next change.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from agent.ledger import Ledger, LedgerUnavailable
from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.structs import Decision

log = structlog.get_logger("agent.decisions")


class DecisionRecorder:
    def __init__(self, *, ledger: Ledger, sinks: Sequence[Sink], metrics: Metrics) -> None:
        self.ledger = ledger
        self.sinks = list(sinks)
        self.metrics = metrics

    async def record(self, decision: Decision) -> None:
        try:
            await self.ledger.record(decision)
        except LedgerUnavailable as exc:
            # The change (if any) is already made; losing the fan-out too would hide it. Say so loudly.
            log.error("decision not written to the ledger", decision=decision.id, error=str(exc))
        self.metrics.decisions.labels(action=decision.action, outcome=str(decision.outcome)).inc()
        data = decision.to_dict()
        log.info(
            decision.summary(),
            **{k: v for k, v in data.items() if k not in ("trigger",)},
            alertname=decision.trigger.alertname,
            alert_status=decision.trigger.status,
            fingerprint=decision.trigger.fingerprint,
        )
        for sink in self.sinks:
            sink.offer(decision)
