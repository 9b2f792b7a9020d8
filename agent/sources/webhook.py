"""
What every source that takes HTTP requests shares: the credentials check, the body limit and the error answers.

The Alertmanager webhook and the events webhook answer bad requests the same way, because their senders retry the
same way: a 4xx is final (the reason says why a retry would not help), a 5xx is retried. 401 for missing or wrong
credentials (constant-time compare; the secrets are read once, at start), 413 for a body over
``webhook.max_body_bytes``, and every refusal is counted in ``scaling_agent_webhook_rejections_total``.
"""

from __future__ import annotations

import base64
import hmac

from aiohttp import web

from agent.config import BasicAuth, BearerAuth, WebhookConfig
from agent.metrics import Metrics


class Authenticator:
    """Checks the ``Authorization`` header in constant time; secrets are read once, at start."""

    def __init__(self, config: WebhookConfig) -> None:
        auth = config.auth
        self.expected: bytes | None
        self.scheme: str
        if isinstance(auth, BearerAuth):
            self.scheme = "Bearer"
            self.expected = f"Bearer {auth.token.read()}".encode()
        elif isinstance(auth, BasicAuth):
            self.scheme = "Basic"
            credentials = f"{auth.username}:{auth.password.read()}".encode()
            self.expected = b"Basic " + base64.b64encode(credentials)
        else:
            self.scheme = ""
            self.expected = None

    def check(self, header: str | None) -> bool:
        if self.expected is None:
            return True
        return hmac.compare_digest((header or "").encode(), self.expected)


def error(status: int, reason: str, metrics: Metrics, **headers: str) -> web.Response:
    metrics.webhook_rejections.labels(code=str(status)).inc()
    return web.json_response({"status": "error", "error": reason}, status=status, headers=headers or None)


async def read_body(request: web.Request, *, auth: Authenticator, limit: int, metrics: Metrics) -> bytes | web.Response:
    """The request's body, once its credentials and size are checked; else the answer to send back."""
    if not auth.check(request.headers.get("Authorization")):
        return error(401, "missing or wrong credentials", metrics, **{"WWW-Authenticate": auth.scheme})
    if request.content_length is not None and request.content_length > limit:
        return error(413, f"body of {request.content_length} bytes is over the limit of {limit}", metrics)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"body is over the limit of {limit} bytes", metrics)
