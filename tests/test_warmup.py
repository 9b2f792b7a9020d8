"""
Warming pods (agent.warmup) against real servers on loopback: the MCP SDK's own server over streamable HTTP
(uvicorn) and aiohttp servers that answer errors or nothing.

Every "pod" has its own loopback address on one shared port, as pods in a Deployment do, so one warm() call
can meet a healthy pod, a failing one and a dead one at once:

    127.0.0.1, 127.0.0.2 (and ::1 where available)  an MCP server (MCPServer) with /healthz and friends
    127.0.0.3                                         nothing listens: connection refused
    127.0.0.4                                         aiohttp, never answers (until the test ends)
    127.0.0.5                                         aiohttp, 503 to everything
    127.0.0.6                                         aiohttp, 500 to everything

The servers run on their own event loop in a thread, so the test's loop holds only the warming client: after
warm() returns, any task still on it was left behind by warm().
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from aiohttp import web
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from agent.config import format_errors
from agent.warmup import HttpRequest, McpWarmup, Pod, PodResult, ToolCall, WarmupReport, WarmupSpec, warm

MCP_IPS = ("127.0.0.1", "127.0.0.2")
REFUSED_IP = "127.0.0.3"
SILENT_IP = "127.0.0.4"
UNAVAILABLE_IP = "127.0.0.5"
BROKEN_IP = "127.0.0.6"
AIOHTTP_STATUS = {UNAVAILABLE_IP: 503, BROKEN_IP: 500}
BOUND = 30.0  # seconds: the most any single wait in these tests may take before the test fails instead of hangs


@dataclass
class Seen:
    """What the servers saw, by the local address a request came in on (the "pod")."""

    mcp: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)  # ip, method, tool, session
    http: list[tuple[str, str, str, bytes, str | None]] = field(default_factory=list)  # ip, method, path, body, header
    pings: int = 0
    slow_started: threading.Event = field(default_factory=threading.Event)
    ping_payloads: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def mcp_methods(self, ip: str) -> list[str]:
        return [method for seen_ip, method, _, _ in self.mcp if seen_ip == ip]

    def mcp_sessions(self, ip: str) -> set[str | None]:
        return {session for seen_ip, method, _, session in self.mcp if seen_ip == ip and method != "initialize"}

    def http_hits(self, ip: str) -> list[tuple[str, str]]:
        return [(method, path) for seen_ip, method, path, _, _ in self.http if seen_ip == ip]


def _local_ip(request: Request | web.Request) -> str:
    if isinstance(request, web.Request):
        assert request.transport is not None
        return str(request.transport.get_extra_info("sockname")[0])
    server = request.scope.get("server")
    assert server is not None
    return str(server[0])


def _mcp_server(seen: Seen, release: asyncio.Event) -> MCPServer:
    server = MCPServer("warmup-test", log_level="WARNING")

    async def record(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        assert isinstance(ctx.request, Request)
        name = ctx.params.get("name") if ctx.params else None
        seen.mcp.append((_local_ip(ctx.request), ctx.method, name, ctx.request.headers.get("mcp-session-id")))
        return await call_next(ctx)

    server.middleware.append(record)

    @server.tool()
    def ping(payload: str = "") -> str:
        seen.pings += 1
        seen.ping_payloads.append(payload)
        return "pong"

    @server.tool()
    def fail() -> str:
        raise ValueError("the cache is not there yet")

    @server.tool()
    async def slow() -> str:
        seen.slow_started.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), BOUND)
        return "late"

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> Response:
        seen.http.append((_local_ip(request), request.method, "/healthz", b"", None))
        return PlainTextResponse("ok")

    @server.custom_route("/warm", methods=["POST"])
    async def warm_route(request: Request) -> Response:
        body = await request.body()
        seen.http.append((_local_ip(request), request.method, "/warm", body, request.headers.get("x-warmup")))
        return PlainTextResponse("warm", status_code=201)

    @server.custom_route("/slowish", methods=["GET"])
    async def slowish(request: Request) -> Response:
        seen.http.append((_local_ip(request), request.method, "/slowish", b"", None))
        seen.in_flight += 1
        seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
        try:
            await asyncio.sleep(0.05)
        finally:
            seen.in_flight -= 1
        return PlainTextResponse("ok")

    return server


def _aiohttp_app(seen: Seen, release: asyncio.Event) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        ip = _local_ip(request)
        seen.http.append((ip, request.method, request.path, await request.read(), request.headers.get("x-warmup")))
        if ip == SILENT_IP:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), BOUND)
            return web.Response(text="too late")
        return web.Response(status=AIOHTTP_STATUS[ip], text="not now")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_available()


def _bind_all(ips: list[str]) -> tuple[int, dict[str, socket.socket]]:
    """One port free on every address (pods share a port), each socket bound and listening."""
    for _ in range(50):
        sockets: dict[str, socket.socket] = {}
        port = 0  # the first address picks it, the others follow
        try:
            for ip in ips:
                sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
                sockets[ip] = sock
                sock.bind((ip, port))
                port = sock.getsockname()[1]
                sock.listen(128)
                sock.setblocking(False)
            return port, sockets
        except OSError as exc:
            for sock in sockets.values():
                sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no port free on all the loopback addresses")


class Cluster:
    """The servers, on their own loop in a thread."""

    def __init__(self) -> None:
        self.seen = Seen()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="warmup-test-servers", daemon=True)
        self.mcp_ips = [*MCP_IPS, "::1"] if IPV6 else list(MCP_IPS)
        self.port = 0
        self._release: asyncio.Event | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None

    def call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=BOUND)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=BOUND)
            if not self.thread.is_alive():
                self.loop.close()

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self.port, sockets = _bind_all([*self.mcp_ips, SILENT_IP, UNAVAILABLE_IP, BROKEN_IP])
        # Pod addresses are no "localhost": like a pod, the server takes any Host header.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        app = _mcp_server(self.seen, self._release).streamable_http_app(transport_security=security)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self._uvicorn = uvicorn.Server(config)
        self._uvicorn_task = asyncio.create_task(self._uvicorn.serve(sockets=[sockets[ip] for ip in self.mcp_ips]))
        self._runner = web.AppRunner(_aiohttp_app(self.seen, self._release), shutdown_timeout=2)
        await self._runner.setup()
        for ip in (SILENT_IP, UNAVAILABLE_IP, BROKEN_IP):
            await web.SockSite(self._runner, sockets[ip]).start()
        async with asyncio.timeout(BOUND):
            while not self._uvicorn.started:
                assert not self._uvicorn_task.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        if self._release is not None:
            self._release.set()  # whatever still waits answers now, so the servers stop at once
        if self._runner is not None:
            await self._runner.cleanup()
        if self._uvicorn is not None and self._uvicorn_task is not None:
            self._uvicorn.should_exit = True
            await asyncio.wait_for(self._uvicorn_task, BOUND)
        # What the servers leave on their loop (sse-starlette's shutdown watcher) ends with it.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), BOUND)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    servers = Cluster()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def spec(cluster: Cluster, **fields: Any) -> WarmupSpec:
    # Small timings, so failing pods fail quickly; every test stays bounded by them.
    defaults: dict[str, Any] = {"port": cluster.port, "timeout": "2s", "backoff": "10ms", "attempts": 3}
    return WarmupSpec(**(defaults | fields))


async def warm_bounded(pods: list[Pod], warmup: WarmupSpec) -> WarmupReport:
    """warm(), with a bound on the wait, and a check that it left no task behind."""
    before = asyncio.all_tasks()
    async with asyncio.timeout(BOUND):
        report = await warm(pods, warmup)
    left = [task for task in asyncio.all_tasks() - before if not task.done()]
    assert not left, f"warm() left tasks behind: {left}"
    return report


def by_name(report: WarmupReport) -> dict[str, PodResult]:
    return {result.name: result for result in report.results}


async def test_mcp_session_per_pod(cluster: Cluster) -> None:
    pods = [Pod(name=f"pod-{ip}", ip=ip) for ip in cluster.mcp_ips]
    warmup = spec(cluster, mcp=McpWarmup(calls=[ToolCall(tool="ping", arguments={"payload": "warm"})]))
    report = await warm_bounded(pods, warmup)

    assert report.ok, report
    assert report.failed == []
    assert [result.name for result in report.results] == [pod.name for pod in pods]
    assert all(result.attempts == 1 and result.error is None for result in report.results)
    assert cluster.seen.pings == len(pods)
    assert cluster.seen.ping_payloads == ["warm"] * len(pods)
    for ip in cluster.mcp_ips:  # the handshake, the listing and the call, in order, on one session per pod
        assert cluster.seen.mcp_methods(ip) == ["initialize", "notifications/initialized", "tools/list", "tools/call"]
        sessions = cluster.seen.mcp_sessions(ip)
        assert len(sessions) == 1 and None not in sessions
    assert all(tool == "ping" for _, method, tool, _ in cluster.seen.mcp if method == "tools/call")


async def test_mcp_without_calls_still_initializes_and_lists(cluster: Cluster) -> None:
    report = await warm_bounded([Pod(name="a", ip=MCP_IPS[0])], spec(cluster, mcp=McpWarmup()))
    assert report.ok
    assert cluster.seen.mcp_methods(MCP_IPS[0]) == ["initialize", "notifications/initialized", "tools/list"]
    assert cluster.seen.pings == 0


async def test_tool_error_fails_the_pod(cluster: Cluster) -> None:
    warmup = spec(cluster, attempts=2, mcp=McpWarmup(calls=[ToolCall(tool="ping"), ToolCall(tool="fail")]))
    report = await warm_bounded([Pod(name="a", ip=MCP_IPS[0])], warmup)

    [result] = report.results
    assert not result.ok and result.attempts == 2
    assert result.error is not None and result.error.startswith("tool fail failed: ")
    assert cluster.seen.pings == 2  # each attempt is a whole new session, from initialize on


async def test_unknown_tool_fails_the_pod(cluster: Cluster) -> None:
    warmup = spec(cluster, attempts=1, mcp=McpWarmup(calls=[ToolCall(tool="no-such-tool")]))
    report = await warm_bounded([Pod(name="a", ip=MCP_IPS[0])], warmup)
    [result] = report.results
    assert not result.ok
    assert result.error is not None and result.error.startswith("tool no-such-tool failed: ")


async def test_http_failure_does_not_hold_the_others(cluster: Cluster) -> None:
    pods = [Pod(name="healthy", ip=MCP_IPS[0]), Pod(name="unavailable", ip=UNAVAILABLE_IP)]
    report = await warm_bounded(pods, spec(cluster, http=[HttpRequest(path="/healthz")]))

    assert not report.ok
    results = by_name(report)
    assert results["healthy"].ok and results["healthy"].attempts == 1 and results["healthy"].error is None
    assert report.failed == [results["unavailable"]]
    assert results["unavailable"].attempts == 3
    assert results["unavailable"].error == "HTTP 503 on GET /healthz"
    assert cluster.seen.http_hits(UNAVAILABLE_IP) == [("GET", "/healthz")] * 3
    assert cluster.seen.http_hits(MCP_IPS[0]) == [("GET", "/healthz")]


async def test_http_requests_as_configured(cluster: Cluster) -> None:
    requests = [
        HttpRequest(path="/healthz", count=2),
        HttpRequest(path="/warm", method="post", body='{"warm": true}', headers={"X-Warmup": "yes"}),
    ]
    report = await warm_bounded([Pod(name="a", ip=MCP_IPS[0])], spec(cluster, http=requests))

    assert report.ok  # 201 is a 2xx
    assert cluster.seen.http == [
        (MCP_IPS[0], "GET", "/healthz", b"", None),
        (MCP_IPS[0], "GET", "/healthz", b"", None),
        (MCP_IPS[0], "POST", "/warm", b'{"warm": true}', "yes"),
    ]


async def test_http_expected_status_is_success(cluster: Cluster) -> None:
    warmup = spec(cluster, http=[HttpRequest(path="/login", expect=[503])])
    report = await warm_bounded([Pod(name="a", ip=UNAVAILABLE_IP)], warmup)
    assert report.ok and report.results[0].attempts == 1


async def test_mcp_endpoint_answering_500(cluster: Cluster) -> None:
    pods = [Pod(name="broken", ip=BROKEN_IP), Pod(name="healthy", ip=MCP_IPS[1])]
    report = await warm_bounded(pods, spec(cluster, mcp=McpWarmup(calls=[ToolCall(tool="ping")])))

    results = by_name(report)
    assert results["healthy"].ok
    assert report.failed == [results["broken"]]
    assert results["broken"].attempts == 3
    assert results["broken"].error == "initialize failed: HTTP 500 on POST /mcp"
    assert [method for method, _ in cluster.seen.http_hits(BROKEN_IP)].count("POST") == 3


async def test_mcp_wrong_path(cluster: Cluster) -> None:
    warmup = spec(cluster, attempts=1, mcp=McpWarmup(path="/not-mcp"))
    report = await warm_bounded([Pod(name="a", ip=MCP_IPS[0])], warmup)
    [result] = report.results
    assert not result.ok
    assert result.error is not None and result.error.startswith("initialize failed: HTTP 404 on POST /not-mcp")


async def test_http_silent_pod_times_out(cluster: Cluster) -> None:
    warmup = spec(cluster, timeout="200ms", backoff="50ms", http=[HttpRequest(path="/healthz")])
    report = await warm_bounded([Pod(name="silent", ip=SILENT_IP), Pod(name="healthy", ip=MCP_IPS[0])], warmup)

    results = by_name(report)
    assert results["healthy"].ok
    assert not results["silent"].ok
    assert results["silent"].attempts == 3
    assert results["silent"].error == "timed out after 0.2s"


async def test_mcp_silent_pod_times_out(cluster: Cluster) -> None:
    warmup = spec(cluster, timeout="200ms", backoff="50ms", attempts=2, mcp=McpWarmup())
    report = await warm_bounded([Pod(name="silent", ip=SILENT_IP)], warmup)
    [result] = report.results
    assert not result.ok and result.attempts == 2
    assert result.error == "timed out after 0.2s"


async def test_mcp_slow_tool_times_out(cluster: Cluster) -> None:
    # The session is up when the deadline strikes, with the SDK's tasks running: they must all end with the attempt.
    warmup = spec(cluster, timeout="300ms", backoff="50ms", mcp=McpWarmup(calls=[ToolCall(tool="slow")]))
    report = await warm_bounded([Pod(name="slow", ip=MCP_IPS[0])], warmup)
    [result] = report.results
    assert not result.ok and result.attempts == 3
    assert result.error == "timed out after 0.3s"
    assert cluster.seen.mcp_methods(MCP_IPS[0]).count("initialize") == 3


@pytest.mark.parametrize("how", ["mcp", "http"])
async def test_connection_refused(cluster: Cluster, how: str) -> None:
    way: dict[str, Any] = {"mcp": McpWarmup()} if how == "mcp" else {"http": [HttpRequest(path="/healthz")]}
    report = await warm_bounded(
        [Pod(name="gone", ip=REFUSED_IP), Pod(name="healthy", ip=MCP_IPS[0])], spec(cluster, **way)
    )

    results = by_name(report)
    assert results["healthy"].ok
    assert not results["gone"].ok
    assert results["gone"].attempts == 3
    assert results["gone"].error == "connection refused"


async def test_concurrency_bounds_connections(cluster: Cluster) -> None:
    pods = [Pod(name=f"pod-{n}", ip=MCP_IPS[n % 2]) for n in range(6)]
    report = await warm_bounded(pods, spec(cluster, concurrency=2, http=[HttpRequest(path="/slowish")]))
    assert report.ok
    assert len(cluster.seen.http) == 6
    assert 1 <= cluster.seen.max_in_flight <= 2


async def test_no_pods(cluster: Cluster) -> None:
    report = await warm_bounded([], spec(cluster, mcp=McpWarmup()))
    assert report.ok and report.results == () and report.failed == []


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback here")
async def test_ipv6_pod(cluster: Cluster) -> None:
    pods = [Pod(name="v6", ip="::1")]
    report = await warm_bounded(pods, spec(cluster, mcp=McpWarmup(calls=[ToolCall(tool="ping")])))
    assert report.ok, report
    report = await warm_bounded(pods, spec(cluster, http=[HttpRequest(path="/healthz")]))
    assert report.ok, report
    assert cluster.seen.http_hits("::1") == [("GET", "/healthz")]


async def test_cancellation_propagates(cluster: Cluster) -> None:
    before = asyncio.all_tasks()
    warmup = spec(cluster, timeout="20s", mcp=McpWarmup(calls=[ToolCall(tool="slow")]))
    task = asyncio.create_task(warm([Pod(name="slow", ip=MCP_IPS[0]), Pod(name="silent", ip=SILENT_IP)], warmup))
    assert await asyncio.to_thread(cluster.seen.slow_started.wait, BOUND)  # the slow call is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    left = [other for other in asyncio.all_tasks() - before if not other.done()]
    assert not left, f"a cancelled warm() left tasks behind: {left}"


def test_spec_needs_exactly_one_way() -> None:
    with pytest.raises(ValidationError) as both:
        WarmupSpec(port=8080, mcp=McpWarmup(), http=[HttpRequest(path="/healthz")])
    assert format_errors(both.value) == [
        "(top level): give either mcp (an MCP session) or http (plain requests) to warm a pod, not both"
    ]
    with pytest.raises(ValidationError) as neither:
        WarmupSpec(port=8080)
    assert format_errors(neither.value) == [
        "(top level): give mcp (an MCP session) or http (plain requests): how to warm a pod"
    ]
    with pytest.raises(ValidationError) as empty:
        WarmupSpec.model_validate({"port": 8080, "http": []})
    assert format_errors(empty.value) == ["(top level): http must list at least one request"]


def test_spec_from_config_values() -> None:
    parsed = WarmupSpec.model_validate(
        {
            "port": 8080,
            "timeout": "5s",
            "backoff": "250ms",
            "mcp": {"calls": [{"tool": "ping", "arguments": {"payload": "x"}}]},
        }
    )
    assert parsed.timeout == timedelta(seconds=5) and parsed.backoff == timedelta(milliseconds=250)
    assert parsed.concurrency == 4 and parsed.attempts == 3
    assert parsed.mcp is not None and parsed.mcp.path == "/mcp"
    assert parsed.mcp.calls == [ToolCall(tool="ping", arguments={"payload": "x"})]
    defaults = WarmupSpec(port=1, http=[HttpRequest(path="/")])
    assert defaults.timeout == timedelta(seconds=10) and defaults.backoff == timedelta(seconds=1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timeout": "0s"}, "timeout: must be more than 0s"),
        ({"attempts": 0}, "attempts: must be ≥ 1"),
        ({"concurrency": 0}, "concurrency: must be ≥ 1"),
        ({"port": 0}, "port: must be ≥ 1"),
        ({"http": [{"path": "healthz"}]}, "http[0].path: must start with /"),
        ({"http": [{"path": "/", "expect": [42]}]}, "http[0].expect: 42 is not an HTTP status"),
        ({"http": [{"path": "/", "method": "GE T"}]}, "http[0].method: 'GE T' is not an HTTP method"),
        ({"mcp": {"path": "mcp"}}, "mcp.path: must start with /"),
        ({"mcp": {"calls": [{"tool": "ping", "args": {}}]}}, "mcp.calls[0].args: is not a known field"),
    ],
)
def test_spec_refuses(fields: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"port": 8080, "mcp": {}} | fields
    if "http" in fields:
        data.pop("mcp")
    with pytest.raises(ValidationError) as refused:
        WarmupSpec.model_validate(data)
    assert message in format_errors(refused.value)
