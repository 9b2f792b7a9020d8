"""
Slack: decisions posted through slack-sdk, as a bot (chat.postMessage) or an incoming webhook.

slack-sdk's own retry handlers do the waiting: a 429 is retried after its
``Retry-After``, 5xx and connection errors with backoff, up to
``slack.attempts`` tries in all. This runs in the sink's own task, so none of
it delays an action. Without a ``slack`` section, :class:`ConsoleSink` prints
the same messages to the console instead.
"""

from __future__ import annotations

import sys
from typing import Protocol

from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from agent.config import SlackConfig
from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.structs import Decision, Outcome

ICONS = {
    Outcome.APPLIED: ":white_check_mark:",
    Outcome.NOOP: ":heavy_minus_sign:",
    Outcome.REFUSED: ":no_entry:",
    Outcome.FAILED: ":x:",
    Outcome.DRY_RUN: ":test_tube:",
}


def format_message(decision: Decision) -> str:
    target = f"`{decision.target}`" if decision.target else "no target"
    lines = [f"{ICONS[decision.outcome]} *{decision.action}* {target} — *{decision.outcome}*"]
    if decision.before or decision.after:
        lines.append(decision.change())
    if decision.cost is not None:
        lines.append(f"cost: {decision.cost.text()}" + (f" — {decision.cost.budget}" if decision.cost.budget else ""))
    lines.append(decision.reason)
    if decision.error:
        lines.append(f"error: {decision.error}")
    trigger = decision.trigger
    lines.append(
        f"_{trigger.source}: {trigger.alertname} {trigger.status} · rule {decision.rule or '-'}"
        f" · decision {decision.id}" + (" · dry-run_" if decision.dry_run else "_")
    )
    return "\n".join(lines)


class SlackSink(Sink):
    name = "slack"

    def __init__(self, config: SlackConfig, *, metrics: Metrics) -> None:
        super().__init__(metrics=metrics, outcomes=config.post_outcomes, queue_size=config.queue_size)
        retries = config.attempts - 1
        handlers = [
            AsyncConnectionErrorRetryHandler(max_retry_count=retries),
            AsyncRateLimitErrorRetryHandler(max_retry_count=retries),
            AsyncServerErrorRetryHandler(max_retry_count=retries),
        ]
        self.channel = config.channel or ""
        self._web: AsyncWebClient | None = None
        self._hook: AsyncWebhookClient | None = None
        if config.webhook_url is not None:
            self._hook = AsyncWebhookClient(url=config.webhook_url.read(), timeout=10, retry_handlers=handlers)
        else:
            assert config.token is not None
            self._web = AsyncWebClient(
                token=config.token.read(), base_url=config.base_url, timeout=10, retry_handlers=handlers
            )

    async def deliver(self, decision: Decision) -> None:
        text = format_message(decision)
        if self._hook is not None:
            response = await self._hook.send(text=text)
            if response.status_code >= 300:
                raise RuntimeError(f"Slack webhook answered {response.status_code}: {response.body}")
        else:
            assert self._web is not None
            # Raises SlackApiError on an error answer (after the retry handlers gave up).
            await self._web.chat_postMessage(channel=self.channel, text=text, mrkdwn=True)


class Console(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class ConsoleSink(Sink):
    """Slack's stand-in when no Slack is configured: the same message, on the console."""

    name = "console"

    def __init__(self, *, metrics: Metrics, outcomes: list[str], stream: Console | None = None) -> None:
        super().__init__(metrics=metrics, outcomes=outcomes)
        self.stream = stream

    async def deliver(self, decision: Decision) -> None:
        stream = self.stream or sys.stdout
        stream.write(format_message(decision).replace("\n", "\n    ") + "\n\n")
        stream.flush()
