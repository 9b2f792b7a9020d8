"""
The AMQP consumer: preemption notices and scale intents from a RabbitMQ queue (aio-pika).

It is the events webhook's twin for producers that publish rather than POST: every body is decoded by
agent/notices (AWS, GCP, Azure, native; :func:`~agent.notices.decode_any`), each message becomes events exactly as
the webhook makes them (:func:`~agent.sources.events.event_of`, with ``source`` ``amqp``; the key is the notice's
or intent's own id, so a message redelivered, or heard on the webhook too, is recorded as a redelivery and acted on
once), and they are stored with ``Intake.accept``, so a deadline goes straight to the worker's urgent lane.

Why it is built the way it is:

* **Ack only after the ledger.** A message is acknowledged only once ``Intake.accept`` has its events durably in
  the ledger. A crash, a stop or a lost connection before that leaves it unacknowledged, and the broker delivers it
  again: nothing acknowledged is lost, and the redelivery is a recorded no-op. When the ledger cannot take it
  (:class:`~agent.ledger.LedgerUnavailable`) the message is handed back (``nack``, requeued) after a short,
  bounded backoff that grows while the ledger stays down, so the broker keeps it and it is tried again.
* **Robust reconnect.** The connection is aio-pika's ``connect_robust``: after a broker restart or a network
  break it reconnects by itself (every ``reconnect``), declares the exchanges, queues and bindings again and
  resumes consuming. Only the first connection is this module's loop, with a backoff from ``reconnect`` doubling
  up to 30 s, so the agent starts (and serves its webhooks) while the broker is down.
* **Dead letters, with the reason.** A body no format claims, or that is not JSON (a
  :class:`~agent.notices.DecodeError`), would fail the same way on every delivery: it is published, as it came,
  to the dead-letter exchange (durable, topic; a durable queue ``<queue>.dead`` bound to it with ``#`` keeps it)
  with the reason, the queue, the original exchange, routing key and message id in ``x-scaling-agent-*``
  headers, then acknowledged, logged and recorded as a FAILED ``dead-letter`` decision, never retried forever.
  The queue itself is declared with that exchange as its ``x-dead-letter-exchange``, so a message this consumer
  rejects for any other reason (a bug) lands there too.
* **Prefetch bounds what is in hand.** At most ``prefetch`` messages are delivered and unacknowledged at a time
  (each handled in its own task, so one slow ledger write does not hold the others up); the rest wait in the
  broker, not in the agent's memory.

The password is a :class:`~agent.config.SecretRef` (an environment variable or a mounted file), read when the
consumer connects and merged into the URL there (the robust reconnects reuse it: a rotated password takes a
restart); the URL in the config names no password, and none is logged (aio-pika masks it too).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import ClassVar

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    AbstractRobustQueue,
    ConsumerTag,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiohttp import web
from pamqp.common import FieldValue
from pydantic import Field, ValidationInfo, field_validator
from yarl import URL

from agent.config import SecretRef
from agent.durations import Duration, format_duration
from agent.ledger import LedgerUnavailable
from agent.notices import DecodeError, decode_any
from agent.sources.base import SourceContext, SourceSettings, dead_letter_decision
from agent.sources.events import event_of
from agent.structs import Delivery, Event, utcnow
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.sources.amqp")

SOURCE = "amqp"
TASK = "amqp-consumer"
CONNECTION_NAME = "mcp-scaling-agent"
CONNECT_TIMEOUT_SECONDS = 15.0  # one connection attempt (TCP, AMQP handshake)
CONNECT_BACKOFF_MAX_SECONDS = 30.0  # the first connection's backoff grows from `reconnect` up to this
OPERATION_TIMEOUT_SECONDS = 10.0  # a declare, a dead-letter publish (its confirm), an ack
LEDGER_RETRY_SECONDS = (0.5, 10.0)  # before handing a message back while the ledger is down: first, longest
STOP_SECONDS = 5.0  # at a stop, how long the messages in hand may take to be recorded and acknowledged
BODY_EXCERPT = 2048  # bytes of a dead-lettered body put in the log
REASON_HEADER = "x-scaling-agent-reason"
HEADER_PREFIX = "x-scaling-agent-"


class AmqpSettings(SourceSettings):
    """``sources.amqp``: off until turned on; ``url`` is then required."""

    enabled: bool = False
    password: SecretRef | None = None  # before `url`, so that the url's check sees it
    url: str | None = Field(
        default=None,
        validate_default=True,
        description="amqp://user@host:port/vhost (amqps:// for TLS); the password goes in `password`",
    )
    queue: str = Field(default="scaling-agent.events", min_length=1)
    exchange: str = Field(default="scaling-agent", min_length=1)
    binding: str = Field(default="#", description="the queue's routing key on the (topic) exchange")
    prefetch: int = Field(default=16, ge=1, le=65535)
    dead_letter_exchange: str = Field(default="scaling-agent.dead", min_length=1)
    reconnect: Duration = Field(default=timedelta(seconds=1), description="first wait before connecting again")

    @field_validator("url")
    @classmethod
    def _broker_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            if info.data.get("enabled"):
                raise ValueError("is required when the source is enabled (amqp://user@host:port/vhost)")
            return None
        try:
            parsed = URL(url)
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
            raise ValueError("must be amqp://user@host:port/vhost (or amqps://)")
        if parsed.password is not None:
            raise ValueError("must not hold the password: give it in `password` (an env variable or a file)")
        if info.data.get("password") is not None and not parsed.user:
            raise ValueError("must name the user the password is for (amqp://user@host:port/vhost)")
        return url

    @field_validator("reconnect")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @property
    def dead_letter_queue(self) -> str:
        """The durable queue bound to the dead-letter exchange that keeps the dead letters."""
        return f"{self.queue}.dead"

    def broker_url(self) -> str:
        """The URL to connect to, the password (read now) merged in; never log it. Raises ValueError if unreadable."""
        assert self.url is not None, "validated: an enabled source has a url"
        url = URL(self.url)
        if self.password is None:
            return str(url)
        if not url.user:
            raise ValueError("sources.amqp.url names no user for the password (amqp://user@host:port/vhost)")
        return str(url.with_password(self.password.read()))


class AmqpSource:
    name: ClassVar[str] = SOURCE
    Settings: ClassVar[type[SourceSettings]] = AmqpSettings

    def __init__(self, settings: AmqpSettings, *, context: SourceContext) -> None:
        self.settings = settings
        self.intake = context.intake
        self.metrics = context.metrics
        self.recorder = context.recorder
        self.consuming = asyncio.Event()  # set while the consumer is declared and consuming (tests, the demo)
        self._supervisor: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self._dead_exchange: AbstractExchange | None = None
        self._in_hand: set[asyncio.Task[object]] = set()
        self._closing: set[asyncio.Future[None]] = set()
        self._ledger_retry = LEDGER_RETRY_SECONDS[0]

    def routes(self) -> list[web.RouteDef]:
        return []

    def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._task = supervisor.spawn(TASK, self._run)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel(self._task)  # its `finally` drains what is in hand and disconnects
        self._task = None

    def decode(self, delivery: Delivery) -> list[Event]:
        raise LookupError("the AMQP consumer stores its events itself; it has no deliveries to decode")

    # --- the connection -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, declare, consume; then wait (robust reconnects happen inside aio-pika) until cancelled."""
        self.consuming.clear()
        connection = await self._connect()
        queue: AbstractRobustQueue | None = None
        tag: ConsumerTag | None = None
        try:
            queue = await self._declare(connection)
            tag = await queue.consume(self._on_message, no_ack=False, timeout=OPERATION_TIMEOUT_SECONDS)
            self.consuming.set()
            log.info(
                "consuming from the AMQP queue",
                url=self.settings.url,
                queue=self.settings.queue,
                exchange=self.settings.exchange,
                binding=self.settings.binding,
                prefetch=self.settings.prefetch,
            )
            await asyncio.Event().wait()  # until cancelled: a return would be a crash
        finally:
            self.consuming.clear()
            await self._disconnect(connection, queue=queue, tag=tag)

    async def _connect(self) -> AbstractRobustConnection:
        delay = self.settings.reconnect.total_seconds()
        while True:
            try:
                connecting = asyncio.ensure_future(
                    aio_pika.connect_robust(
                        self.settings.broker_url(),
                        timeout=CONNECT_TIMEOUT_SECONDS,
                        reconnect_interval=self.settings.reconnect.total_seconds(),
                        client_properties={"connection_name": CONNECTION_NAME},
                    )
                )
                try:
                    connection = await asyncio.shield(connecting)
                except asyncio.CancelledError:  # stopped while connecting: a connection made after is closed
                    connecting.add_done_callback(self._close_late)
                    raise
            except (ValueError, *CONNECTION_EXCEPTIONS) as exc:  # ValueError: the password could not be read
                log.warning(
                    "cannot connect to the AMQP broker; will retry",
                    url=self.settings.url,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_BACKOFF_MAX_SECONDS)
                continue
            connection.close_callbacks.add(self._connection_lost)
            connection.reconnect_callbacks.add(self._reconnected)
            return connection

    def _close_late(self, connecting: asyncio.Future[aio_pika.RobustConnection]) -> None:
        if connecting.cancelled() or connecting.exception() is not None:
            return
        closing = asyncio.ensure_future(connecting.result().close())
        self._closing.add(closing)  # a strong reference until it is done
        closing.add_done_callback(self._closing.discard)

    def _connection_lost(self, _connection: object, error: BaseException | None = None) -> None:
        if error is not None and not isinstance(error, asyncio.CancelledError):
            log.warning(
                "lost the AMQP connection; reconnecting",
                url=self.settings.url,
                error=f"{type(error).__name__}: {error}",
                retry_every=format_duration(self.settings.reconnect),
            )

    def _reconnected(self, _connection: object) -> None:
        log.info("reconnected to the AMQP broker; consuming again", url=self.settings.url, queue=self.settings.queue)

    async def _declare(self, connection: AbstractRobustConnection) -> AbstractRobustQueue:
        """The exchange, the queue and its binding, the dead-letter exchange and its queue: all durable."""
        s = self.settings
        channel = await connection.channel()  # publisher confirms: a dead letter is acked only once it is kept
        await channel.set_qos(prefetch_count=s.prefetch, timeout=OPERATION_TIMEOUT_SECONDS)
        exchange = await channel.declare_exchange(
            s.exchange, aio_pika.ExchangeType.TOPIC, durable=True, timeout=OPERATION_TIMEOUT_SECONDS
        )
        dead = await channel.declare_exchange(
            s.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True, timeout=OPERATION_TIMEOUT_SECONDS
        )
        dead_queue = await channel.declare_queue(s.dead_letter_queue, durable=True, timeout=OPERATION_TIMEOUT_SECONDS)
        await dead_queue.bind(dead, routing_key="#", timeout=OPERATION_TIMEOUT_SECONDS)
        queue = await channel.declare_queue(
            s.queue,
            durable=True,
            arguments={"x-dead-letter-exchange": s.dead_letter_exchange},
            timeout=OPERATION_TIMEOUT_SECONDS,
        )
        await queue.bind(exchange, routing_key=s.binding, timeout=OPERATION_TIMEOUT_SECONDS)
        self._dead_exchange = dead
        return queue

    async def _disconnect(
        self, connection: AbstractRobustConnection, *, queue: AbstractRobustQueue | None, tag: ConsumerTag | None
    ) -> None:
        """Stop taking messages, let those in hand finish (bounded), then close. Whatever is left is redelivered."""
        with contextlib.suppress(Exception):  # TimeoutError, or the broker is gone: the close below still runs
            async with asyncio.timeout(STOP_SECONDS):
                if queue is not None and tag is not None and not connection.is_closed:
                    await queue.cancel(tag)
                if self._in_hand:
                    await asyncio.wait(set(self._in_hand))
        for task in list(self._in_hand):
            task.cancel()  # unacknowledged: the broker delivers it again, a recorded redelivery if it was stored
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_SECONDS):
                await connection.close()
        self._dead_exchange = None

    # --- one message --------------------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """aio-pika runs this in a task of its own for each delivery; at most ``prefetch`` run at once."""
        task = asyncio.current_task()
        if task is not None:
            self._in_hand.add(task)
        try:
            await self._handle(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not the message's fault nor the ledger's: keep it, with why
            log.exception("an AMQP message could not be handled", message_id=message.message_id)
            try:
                await self._dead_letter(message, why=f"internal error: {type(exc).__name__}: {exc}")
            except Exception:  # the broker dead-letters it then (the queue's x-dead-letter-exchange)
                with contextlib.suppress(Exception):
                    await message.reject(requeue=False)
        finally:
            if task is not None:
                self._in_hand.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        received = utcnow()
        try:
            messages = decode_any(message.body, now=received)
        except DecodeError as exc:
            await self._dead_letter(message, why=str(exc))
            return
        events = [event_of(one, received_at=received, source=SOURCE) for one in messages]
        if events:
            try:
                entries = await self.intake.accept(events)
            except LedgerUnavailable as exc:
                await self._hand_back(message, error=str(exc))
                return
            self._ledger_retry = LEDGER_RETRY_SECONDS[0]
            for entry in entries:
                self.metrics.events_received.labels(source=SOURCE, status=entry.event.status).inc()
        await self._ack(message)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        """Acknowledge a message whose events are in the ledger (or that is dead-lettered)."""
        try:
            await asyncio.wait_for(message.ack(), OPERATION_TIMEOUT_SECONDS)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            # The channel went away meanwhile (a broker restart): the broker delivers it again, and what this
            # delivery stored makes that a recorded redelivery.
            log.info(
                "could not acknowledge an AMQP message; the broker will deliver it again",
                message_id=message.message_id,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _hand_back(self, message: AbstractIncomingMessage, *, error: str) -> None:
        """The ledger cannot take it now: wait a little (longer while it stays down), then give it back."""
        delay = self._ledger_retry
        self._ledger_retry = min(delay * 2, LEDGER_RETRY_SECONDS[1])
        log.error(
            "AMQP message not recorded; handing it back to the broker",
            message_id=message.message_id,
            error=error,
            retry_in=delay,
        )
        await asyncio.sleep(delay)
        try:
            await asyncio.wait_for(message.nack(requeue=True), OPERATION_TIMEOUT_SECONDS)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:  # the channel is gone: the broker requeued it already
            log.info("could not hand an AMQP message back", message_id=message.message_id, error=str(exc))

    async def _dead_letter(self, message: AbstractIncomingMessage, *, why: str) -> None:
        """
        Record why, keep the body (the dead-letter exchange, with the reason in its headers), then acknowledge. If
        the ledger cannot record it, hand it back instead: nothing is dead-lettered twice for a ledger outage.
        """
        s = self.settings
        message_id = message.message_id or "(none)"
        routing_key = message.routing_key or ""
        log.warning(
            "AMQP message dead-lettered",
            queue=s.queue,
            message_id=message_id,
            routing_key=routing_key,
            reason=why,
            dead_letter_exchange=s.dead_letter_exchange,
            body=message.body[:BODY_EXCERPT].decode(errors="replace"),
        )
        decision = dead_letter_decision(
            source=SOURCE,
            labels={"queue": s.queue, "message_id": message_id, "routing_key": routing_key},
            reason=(
                f"message {message_id} from queue {s.queue} (routing key {routing_key or '(none)'}) was dead-lettered "
                f"to {s.dead_letter_exchange} (kept in {s.dead_letter_queue}): {why}"
            ),
            error=why,
        )
        try:
            await self.recorder.record(decision)
        except LedgerUnavailable as exc:
            await self._hand_back(message, error=str(exc))
            return
        exchange = self._dead_exchange
        if exchange is None:
            raise RuntimeError("no dead-letter exchange: the consumer is not connected")
        headers: dict[str, FieldValue] = dict(message.headers or {})
        headers.update(
            {
                REASON_HEADER: why,
                f"{HEADER_PREFIX}queue": s.queue,
                f"{HEADER_PREFIX}exchange": message.exchange or "",
                f"{HEADER_PREFIX}routing-key": routing_key,
                f"{HEADER_PREFIX}message-id": message.message_id or "",
                f"{HEADER_PREFIX}decision": decision.id,
            }
        )
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        try:
            # Confirmed by the broker (publisher confirms) before the original is acknowledged.
            await exchange.publish(copy, routing_key=routing_key, timeout=OPERATION_TIMEOUT_SECONDS)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            # Not kept, so not acknowledged: handed back (or, the channel gone, requeued by the broker) to come
            # again; that delivery records it again.
            log.error("could not dead-letter an AMQP message", message_id=message_id, error=f"{exc!r}")
            with contextlib.suppress(TimeoutError, *CONNECTION_EXCEPTIONS):
                await asyncio.wait_for(message.nack(requeue=True), OPERATION_TIMEOUT_SECONDS)
            return
        await self._ack(message)
