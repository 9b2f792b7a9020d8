"""
Warming freshly scaled-up pods, so the first real user does not pay their cold start.

A pod that is Ready has passed its probe, not served a request: its first MCP session still pays for lazy
imports, connection pools, caches and JIT. Pre-scaling before business hours only helps if something pays that
price first, so once the new pods are Ready the agent does here what a user's client would do: an MCP session
(``initialize``, ``tools/list``, then the configured tool calls, all on one session, as a real client keeps
one) or plain HTTP requests for a server whose warm path is not MCP. The MCP side uses the official SDK client
rather than hand-written JSON-RPC, so a pod is warmed along the very code path users take.

Warming is a courtesy, never a gate: a pod that cannot be warmed is still serving, so a failure is reported
(per pod, with the last error in a few readable words for Slack and the ledger), never raised; only
cancellation propagates, because the agent stopping must not wait for a slow pod. Each attempt has a deadline
and the whole call leaves nothing running behind it: the agent may call this for every scale-up for months.

The concurrency limit bounds connections, not pods: the slot is held for an attempt and not during the backoff
after it, so one pod that keeps failing does not hold up the others waiting for a slot.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import aiohttp
import structlog
from pydantic import AfterValidator, Field, field_validator, model_validator

import agent
from agent.config import Model, positive_duration
from agent.durations import Duration, format_duration

if TYPE_CHECKING:  # the SDK is imported when a pod is first warmed over MCP: it takes ~1 s, and most runs never do
    import httpx2
    from mcp.types import CallToolResult

log = structlog.get_logger("agent.warmup")

CLIENT_NAME = "mcp-scaling-agent-warmup"
MAX_ERROR_CHARS = 200  # an error goes into one log line and one Slack line: the gist, not a traceback
# What the SDK's streamable HTTP transport says for a non-2xx answer that carries no JSON-RPC error;
# the status we recorded says more.
_TRANSPORT_STAND_INS = frozenset({"Server returned an error response", "Not Found", "Session terminated"})


def _starts_with_slash(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with /")
    return value


UrlPath = Annotated[str, AfterValidator(_starts_with_slash)]


class ToolCall(Model):
    tool: str = Field(min_length=1)
    arguments: dict[str, Any] = {}


class McpWarmup(Model):
    """An MCP session per pod: initialize, tools/list, then each call in order."""

    path: UrlPath = "/mcp"
    calls: list[ToolCall] = []


class HttpRequest(Model):
    """A request sent ``count`` times in a row; any 2xx, or a status listed in ``expect``, counts as success."""

    path: UrlPath
    method: str = "GET"
    body: str | None = None
    headers: dict[str, str] = {}
    count: int = Field(default=1, ge=1, le=100)
    # Statuses that are fine besides any 2xx (e.g. 401 from a pod behind auth still warmed its router).
    expect: list[int] = [200]

    @field_validator("method")
    @classmethod
    def _method_is_a_word(cls, value: str) -> str:
        if not value.isalpha():
            raise ValueError(f"{value!r} is not an HTTP method")
        return value.upper()

    @field_validator("expect")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        for status in value:
            if not 100 <= status <= 599:
                raise ValueError(f"{status} is not an HTTP status")
        return value


class WarmupSpec(Model):
    """How to warm the pods of one workload: where to reach them, how hard to try, and what to send."""

    port: int = Field(ge=1, le=65535)
    concurrency: int = Field(default=4, ge=1)
    timeout: Duration = timedelta(seconds=10)  # per attempt, the whole session or all requests
    attempts: int = Field(default=3, ge=1, le=10)
    backoff: Duration = timedelta(seconds=1)  # before the second attempt; doubled before each further one
    mcp: McpWarmup | None = None
    http: list[HttpRequest] | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout_positive(cls, value: timedelta) -> timedelta:
        return positive_duration(value)

    @field_validator("backoff")
    @classmethod
    def _backoff_not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> WarmupSpec:
        if self.mcp is not None and self.http is not None:
            raise ValueError("give either mcp (an MCP session) or http (plain requests) to warm a pod, not both")
        if self.mcp is None and self.http is None:
            raise ValueError("give mcp (an MCP session) or http (plain requests): how to warm a pod")
        if self.http is not None and not self.http:
            raise ValueError("http must list at least one request")
        return self


@dataclass(frozen=True)
class Pod:
    name: str
    ip: str


@dataclass(frozen=True, kw_only=True)
class PodResult:
    """One pod's outcome. ``seconds`` runs from its first attempt's start to success or to giving up."""

    name: str
    ok: bool
    attempts: int
    seconds: float
    error: str | None = None  # the last attempt's, short and readable


@dataclass(frozen=True)
class WarmupReport:
    results: tuple[PodResult, ...]  # in the order the pods were given

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failed(self) -> list[PodResult]:
        return [result for result in self.results if not result.ok]


class _Failed(Exception):
    """An attempt's failure, already worded for people."""


async def warm(pods: Sequence[Pod], spec: WarmupSpec) -> WarmupReport:
    """Warm every pod (up to ``spec.concurrency`` at once); failures are in the report, never raised."""
    slots = asyncio.Semaphore(spec.concurrency)
    async with asyncio.TaskGroup() as group:  # _warm_pod raises nothing but cancellation
        tasks = [group.create_task(_warm_pod(pod, spec=spec, slots=slots)) for pod in pods]
    return WarmupReport(results=tuple(task.result() for task in tasks))


async def _warm_pod(pod: Pod, *, spec: WarmupSpec, slots: asyncio.Semaphore) -> PodResult:
    loop = asyncio.get_running_loop()
    seconds = spec.timeout.total_seconds()
    started: float | None = None
    error: str | None = None
    attempt = 0
    for attempt in range(1, spec.attempts + 1):
        if attempt > 1:
            await asyncio.sleep(spec.backoff.total_seconds() * 2 ** (attempt - 2))
        async with slots:
            if started is None:
                started = loop.time()
            deadline = asyncio.timeout(seconds)
            try:
                async with deadline:
                    await _attempt(pod, spec=spec)
            except Exception as exc:
                error = f"timed out after {format_duration(spec.timeout)}" if deadline.expired() else _describe(exc)
            else:
                error = None
                break
    result = PodResult(
        name=pod.name, ok=error is None, attempts=attempt, seconds=loop.time() - (started or loop.time()), error=error
    )
    if result.ok:
        log.info("pod warmed", pod=pod.name, ip=pod.ip, attempts=attempt, seconds=round(result.seconds, 3))
    else:
        log.warning(
            "pod not warmed", pod=pod.name, ip=pod.ip, attempts=attempt, seconds=round(result.seconds, 3), error=error
        )
    return result


def _base_url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip  # an IPv6 address needs brackets in a URL
    return f"http://{host}:{port}"


async def _attempt(pod: Pod, *, spec: WarmupSpec) -> None:
    base = _base_url(pod.ip, spec.port)
    if spec.mcp is not None:
        await _warm_mcp(base + spec.mcp.path, warmup=spec.mcp, io_timeout=spec.timeout.total_seconds())
    else:
        assert spec.http is not None
        await _warm_http(base, spec.http)


class _BadStatus:
    """Remembers the last non-2xx answer to a POST: the SDK reports it as a bare "Server returned an error"."""

    def __init__(self) -> None:
        self.last: str | None = None

    async def __call__(self, response: httpx2.Response) -> None:
        if response.request.method == "POST" and response.status_code >= 400:
            self.last = f"HTTP {response.status_code} on POST {response.request.url.path}"

    def reason(self, exc: Exception) -> str:
        from mcp.shared.exceptions import MCPError

        if not isinstance(exc, MCPError):
            return _short(exc)
        if self.last is None:
            return _one_line(exc.message)
        if exc.message in _TRANSPORT_STAND_INS:
            return self.last
        return f"{self.last}: {_one_line(exc.message)}"


async def _warm_mcp(url: str, *, warmup: McpWarmup, io_timeout: float) -> None:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    client_info = Implementation(name=CLIENT_NAME, version=agent.__version__)
    bad_status = _BadStatus()
    # Our own client, for two reasons: its timeouts bound the cleanup after a deadline (the session's DELETE)
    # as well, and its response hook sees the HTTP status the SDK's error leaves out.
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(io_timeout), event_hooks={"response": [bad_status]}) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, client_info=client_info) as session,
    ):
        bad_status.last = None
        try:
            await session.initialize()
        except Exception as exc:
            raise _Failed(f"initialize failed: {bad_status.reason(exc)}") from exc
        bad_status.last = None
        try:
            await session.list_tools()
        except Exception as exc:
            raise _Failed(f"tools/list failed: {bad_status.reason(exc)}") from exc
        for call in warmup.calls:
            bad_status.last = None
            try:
                result = await session.call_tool(call.tool, call.arguments)
            except Exception as exc:
                raise _Failed(f"tool {call.tool} failed: {bad_status.reason(exc)}") from exc
            if result.is_error:
                raise _Failed(f"tool {call.tool} failed: {_tool_error_text(result)}")


def _tool_error_text(result: CallToolResult) -> str:
    from mcp.types import TextContent

    text = " ".join(block.text for block in result.content if isinstance(block, TextContent))
    return _one_line(text) if text.strip() else "the tool reported an error without text"


async def _warm_http(base: str, requests: Sequence[HttpRequest]) -> None:
    # A session per attempt: nothing (a half-read connection after a deadline) carries over to the next one.
    # No client timeout of its own: the attempt's deadline bounds it.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as session:
        for request in requests:
            data = None if request.body is None else request.body.encode()
            for _ in range(request.count):
                async with session.request(
                    request.method, base + request.path, data=data, headers=request.headers
                ) as response:
                    await response.read()  # the whole answer: the pod did all the work a real request makes
                    if not (200 <= response.status < 300 or response.status in request.expect):
                        raise _Failed(f"HTTP {response.status} on {request.method} {request.path}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (group members: the SDK's task groups wrap errors; causes), breadth first."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            queue.extend(current.exceptions)
        # httpcore wraps the OSError in its own error's args, then re-raises that "from None".
        queue.extend(arg for arg in current.args if isinstance(arg, BaseException))
        if current.__cause__ is not None:
            queue.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            queue.append(current.__context__)


def _describe(exc: Exception) -> str:
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, _Failed):
            return str(cause)
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    for cause in causes:
        if isinstance(cause, TimeoutError) or _is_http_timeout(cause):
            return "timed out"
        if isinstance(cause, OSError) and cause.errno is not None and cause.errno in errno.errorcode:
            return os.strerror(cause.errno).lower()  # "no route to host", "connection reset by peer", ...
    leaf = next((cause for cause in causes if not isinstance(cause, BaseExceptionGroup)), exc)
    return _short(leaf)


def _is_http_timeout(exc: BaseException) -> bool:
    """The MCP client's own timeouts (httpx2's), without importing it for a warm-up that never used it."""
    httpx2 = sys.modules.get("httpx2")
    return httpx2 is not None and isinstance(exc, httpx2.TimeoutException)


def _short(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
