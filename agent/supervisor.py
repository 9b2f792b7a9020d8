"""
The supervisor: every background task of the agent runs under it, named, and none dies quietly.

A pod whose process answers HTTP but whose worker lane, ledger writer or
reconciler died is the worst kind of broken: it acknowledges alerts and never
acts on them. So each loop the agent keeps running (worker lanes, the
unpacker, the ledger's writer and checkpointer, the reconciler, the sinks,
housekeeping) is started with :meth:`Supervisor.spawn`, which:

- logs a crash with its traceback and counts it
  (``scaling_agent_task_crashes_total{task}``);
- restarts the task after a short backoff (it must be safe to run again from
  the top: each of the agent's loops keeps its state outside the coroutine,
  in the ledger or in a queue);
- gives up on a task that crashed more than ``max_restarts`` times within
  ``window`` seconds, or that may not be restarted, and reports it dead:
  ``/healthz`` then answers 503 so that Kubernetes restarts the pod.

A task that returns although it should run until stopped counts as a crash
too. Cancellation (the agent stopping) is not a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from agent.metrics import Metrics

log = structlog.get_logger("agent.supervisor")

Loop = Callable[[], Coroutine[Any, Any, None]]

MAX_RESTARTS = 5  # crashes within WINDOW_SECONDS before a task is declared dead
WINDOW_SECONDS = 60.0
BACKOFF_SECONDS = (0.1, 5.0)  # first and longest pause before a restart


class Supervisor:
    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        max_restarts: int = MAX_RESTARTS,
        window: float = WINDOW_SECONDS,
        backoff: tuple[float, float] = BACKOFF_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.max_restarts = max_restarts
        self.window = window
        self.backoff = backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dead: dict[str, str] = {}

    @property
    def dead(self) -> dict[str, str]:
        """The tasks that died for good, with their last error: non-empty means the agent is unhealthy."""
        return dict(self._dead)

    def fail(self, name: str, error: str) -> None:
        """A part that is not a task broke beyond repair in this process (the inbox journal's file was deleted):
        report it dead like a task, so that /healthz fails and the pod is restarted."""
        if name in self._dead:
            return
        self._dead[name] = error
        if self.metrics is not None:
            self.metrics.tasks_dead.set(len(self._dead))
        self._log(name, error, None, gives_up=True, crashes=0, delay=0.0)

    def spawn(self, name: str, loop: Loop, *, restart: bool = True) -> asyncio.Task[None]:
        """Run ``loop()`` as the background task ``name`` (unique among the running ones), watched."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"a background task named {name!r} is already running")
        self._dead.pop(name, None)
        task = asyncio.create_task(self._watch(name, loop, restart=restart), name=name)
        self._tasks[name] = task
        return task

    async def cancel(self, task: asyncio.Task[None] | None) -> None:
        """Stop one task and wait for it (the agent stopping, not a crash)."""
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _watch(self, name: str, loop: Loop, *, restart: bool) -> None:
        crashes: deque[float] = deque()
        delay = self.backoff[0]
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                failure: BaseException | None = exc
            else:
                error = "the task returned, but it should run until the agent stops"
                failure = None
            now = time.monotonic()
            crashes.append(now)
            while crashes and now - crashes[0] > self.window:
                crashes.popleft()
            if len(crashes) == 1:
                delay = self.backoff[0]  # the first crash in a while: restart soon
            gives_up = not restart or len(crashes) > self.max_restarts
            if gives_up:
                self._dead[name] = error  # before logging: whatever the log does, health must see it
            if self.metrics is not None:
                self.metrics.task_crashes.labels(task=name).inc()
                self.metrics.tasks_dead.set(len(self._dead))
            self._log(name, error, failure, gives_up=gives_up, crashes=len(crashes), delay=delay)
            if gives_up:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    def _log(
        self, name: str, error: str, failure: BaseException | None, *, gives_up: bool, crashes: int, delay: float
    ) -> None:
        message = (
            "background task died; /healthz now fails so that the pod is restarted"
            if gives_up
            else "background task crashed; restarting it"
        )
        with contextlib.suppress(Exception):  # a broken logger must not take the supervisor down with it
            log.error(
                message,
                task=name,
                error=error,
                crashes_in_window=crashes,
                restart_in=None if gives_up else delay,
                exc_info=failure,
            )
