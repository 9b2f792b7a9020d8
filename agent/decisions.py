"""
Recording decisions: the ledger first, then a fan-out that never blocks.

:meth:`DecisionRecorder.record` awaits the ledger write (the durable record),
logs a structlog line and counts the metric, then *offers* the decision to
each sink's own queue and returns. Slack being slow or down, or the API
server refusing an Event, never delays the next change.

A decision that changes the cluster is written twice: :meth:`begin` inserts it
as ``applying`` before the patch is sent (if that write fails, the executor
does not patch), and :meth:`record` then completes that same row with the
outcome. The recorder remembers which ids it began, so :meth:`record` knows an
update from an insert, and the reconciler can tell a change in flight from one
a crash cut short (:attr:`in_flight`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import structlog

from agent.ledger import DuplicateDecision, Ledger, LedgerUnavailable, UnknownDecision
from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.structs import Decision, Outcome

log = structlog.get_logger("agent.decisions")


class DecisionRecorder:
    def __init__(self, *, ledger: Ledger, sinks: Sequence[Sink], metrics: Metrics) -> None:
        self.ledger = ledger
        self.sinks = list(sinks)
        self.metrics = metrics
        self._begun: dict[str, Decision] = {}

    @property
    def in_flight(self) -> frozenset[str]:
        """Ids recorded ``applying`` by this process whose outcome is not recorded yet."""
        return frozenset(self._begun)

    def begun(self, decision_id: str) -> Decision | None:
        """The ``applying`` row this process wrote for ``decision_id``, while its outcome is not recorded."""
        return self._begun.get(decision_id)

    async def begin(self, decision: Decision) -> None:
        """Record a change as ``applying`` before its patch. Raises LedgerUnavailable: then do not patch."""
        # In flight before the row exists: the reconciler, reading `applying` rows meanwhile, must never take
        # this one for a row a crash left behind.
        applying = replace(decision, outcome=Outcome.APPLYING)
        self._begun[decision.id] = applying
        try:
            await self.ledger.record(applying)
        except BaseException:
            self._begun.pop(decision.id, None)
            raise

    def abandon(self, decision_id: str) -> None:
        """The executor gave up on a begun decision without an outcome: the reconciler settles it."""
        self._begun.pop(decision_id, None)

    async def record(self, decision: Decision) -> None:
        """Record a decision: complete its ``applying`` row if :meth:`begin` wrote one, else insert it."""
        begun = decision.id in self._begun
        try:
            await self._write(decision, complete=begun)
        finally:
            self._begun.pop(decision.id, None)  # completed, or (ledger down) left for the reconciler to settle

    async def settle(self, decision: Decision) -> bool:
        """
        Give an ``applying`` row that no one here is completing its outcome (the reconciler). False, and nothing
        published, when the row turns out to be completed already (its executor finished meanwhile).
        """
        try:
            await self.ledger.complete(decision)
        except UnknownDecision:
            return False
        self._publish(decision)
        return True

    async def _write(self, decision: Decision, *, complete: bool) -> None:
        try:
            if complete:
                await self.ledger.complete(decision)
            else:
                await self.ledger.record(decision)
        except LedgerUnavailable as exc:
            # A change (if any) is already made and its `applying` row, if any, is in the ledger for the
            # reconciler to settle; losing the fan-out too would hide it. Say so loudly.
            log.error("decision not written to the ledger", decision=decision.id, error=str(exc))
        except (DuplicateDecision, UnknownDecision) as exc:
            log.error("decision refused by the ledger; this is a bug", decision=decision.id, error=str(exc))
        self._publish(decision)

    def _publish(self, decision: Decision) -> None:
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
