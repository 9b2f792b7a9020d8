"""
Sources: where events come from. Each turns what it hears into
:class:`~agent.structs.Event` records and hands them to
:class:`~agent.worker.Intake`, acknowledging its sender only after ``accept``
returned (the events are then durable).

Today: the Alertmanager webhook. An AMQP consumer, a Redis-stream consumer or
a scheduler is one new module here with the same contract.
"""

from agent.sources.alertmanager import AlertmanagerSource

__all__ = ["AlertmanagerSource"]
