"""
A sink: a background task fed by a bounded queue, delivering decisions somewhere.

The action path only calls :meth:`Sink.offer`, which never waits: a full
queue drops the decision for that sink (counted in a metric and logged; the
ledger still has it). Delivery retries are the sink's own business.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Collection

import structlog

from agent.metrics import Metrics
from agent.structs import Decision
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.sinks")


class Sink(ABC):
    name: str = "sink"

    def __init__(self, *, metrics: Metrics, outcomes: Collection[str] | None = None, queue_size: int = 1000) -> None:
        self.metrics = metrics
        self.outcomes = None if outcomes is None else frozenset(outcomes)
        self._queue: asyncio.Queue[Decision] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None

    def wants(self, decision: Decision) -> bool:
        return self.outcomes is None or str(decision.outcome) in self.outcomes

    def offer(self, decision: Decision) -> None:
        if not self.wants(decision):
            return
        try:
            self._queue.put_nowait(decision)
        except asyncio.QueueFull:
            self.metrics.sink_dropped.labels(sink=self.name).inc()
            log.warning("sink queue full; decision not delivered to it", sink=self.name, decision=decision.id)

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.spawn(f"sink-{self.name}", self._run)

    async def flush(self) -> None:
        """Wait until everything offered so far is delivered (or given up on)."""
        await self._queue.join()

    async def stop(self, *, drain_timeout: float = 5.0) -> None:
        """Deliver what is queued (up to the timeout), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=drain_timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self.close()

    async def _run(self) -> None:
        while True:
            decision = await self._queue.get()
            try:
                await self.deliver(decision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.sink_failures.labels(sink=self.name).inc()
                log.error("sink failed to deliver a decision", sink=self.name, decision=decision.id, error=str(exc))
            finally:
                self._queue.task_done()

    @abstractmethod
    async def deliver(self, decision: Decision) -> None: ...

    async def close(self) -> None:
        return None
