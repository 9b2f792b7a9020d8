"""
Kubernetes API failures, mapped once into the few kinds the agent acts on differently.

kubernetes-asyncio raises ``ApiException`` with an HTTP status, and aiohttp its
own errors when no answer comes; every stage used to look at statuses itself.
Now each target kind makes its calls through :func:`call`, and the stages above
(rules, executor, reconciler) only see these types:

- :class:`NotFound` (404): the object is gone; a decision about it fails, a
  settle marks it failed;
- :class:`Conflict` (409): the object changed since it was read; read again;
- :class:`Forbidden` (401, 403): RBAC or credentials; retrying will not help;
- :class:`Throttled` (429) and :class:`Unavailable` (5xx, timeouts, no
  connection): worth a retry with backoff (``transient``);
- :class:`Rejected` (any other 4xx): the request itself is wrong.

``status`` keeps the HTTP status (0 when no answer came) for metrics and logs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, ClassVar, TypeVar

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

T = TypeVar("T")


class KubernetesError(Exception):
    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubernetesError):
    pass


class Conflict(KubernetesError):
    pass


class Forbidden(KubernetesError):
    pass


class Throttled(KubernetesError):
    transient = True


class Unavailable(KubernetesError):
    transient = True


class Rejected(KubernetesError):
    pass


_BY_STATUS: dict[int, type[KubernetesError]] = {
    404: NotFound,
    409: Conflict,
    401: Forbidden,
    403: Forbidden,
    429: Throttled,
}
NO_ANSWER = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def classify(exc: BaseException) -> KubernetesError | None:
    """The typed error for an exception from a Kubernetes API call, or None if it is not one."""
    if isinstance(exc, KubernetesError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = f"Kubernetes API answered {status} {exc.reason}"
        if status in _BY_STATUS:
            return _BY_STATUS[status](message, status=status)
        if status == 0 or status >= 500:
            return Unavailable(message, status=status)
        return Rejected(message, status=status)
    if isinstance(exc, NO_ANSWER):
        return Unavailable(f"Kubernetes API unreachable: {type(exc).__name__}: {exc}".rstrip(": "))
    return None


async def call(awaitable: Awaitable[T]) -> T:
    """Await one API call; whatever goes wrong comes out as a :class:`KubernetesError`."""
    try:
        return await awaitable
    except (ApiException, *NO_ANSWER) as exc:
        typed = classify(exc)
        assert typed is not None
        raise typed from exc


async def call_json(awaitable: Awaitable[Any]) -> dict[str, Any]:
    """
    One API call made with ``_preload_content=False`` (the answer read as plain JSON, not a typed model), with
    the status check kubernetes-asyncio then leaves to the caller: a non-2xx answer comes out typed too.
    """
    response = await call(awaitable)
    try:
        body = await call(response.read())
        if not 200 <= response.status <= 299:
            typed = classify(ApiException(status=response.status, reason=response.reason))
            assert typed is not None
            raise typed
        data: dict[str, Any] = json.loads(body)
        return data
    finally:
        response.release()
