"""
Sources: where events come from.

A source that is sent something (a webhook, later a queue consumer) stores it
as received through :meth:`agent.worker.Intake.receive` and acknowledges its
sender only once that returned (the delivery is then durable); its decoder,
registered in :data:`DECODERS` under the source's name, later turns the
delivery into :class:`~agent.structs.Event` records in the worker, off the
acknowledgement's path. A source that makes events itself (a scheduler) hands
them to :meth:`agent.worker.Intake.accept`.

Today: the Alertmanager webhook. An AMQP consumer, a Redis-stream consumer or
a scheduler is one new module here plus, for the first two, one entry in
:data:`DECODERS`.
"""

from collections.abc import Mapping

from agent.sources import alertmanager
from agent.sources.alertmanager import AlertmanagerSource
from agent.worker import Decoder

DECODERS: Mapping[str, Decoder] = {alertmanager.SOURCE: alertmanager.decode}

__all__ = ["DECODERS", "AlertmanagerSource"]
