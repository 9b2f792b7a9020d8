"""
Fixtures: the emulated Kubernetes API (kmock + agent.devcluster) with the seed's example objects, the real
kubernetes-asyncio client against it, a running agent on a loopback port, a local Slack endpoint for slack-sdk,
and a real redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from kubernetes_asyncio import client

from agent.app import Agent
from agent.claims import ANNOTATION as CLAIMS
from agent.claims import Claims
from agent.configfile import Config, parse_config
from agent.demo import demo_config
from agent.devcluster import DevCluster
from agent.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "deploy" / "examples"
TOKEN = "test-token-0123456789"
NS = "cortex-mcp"
SEED_ALERTS = (  # the seed's six alert rules, which the default rules answer
    "MCPHighLatencyDespiteScaling",
    "MCPAtMaximumScale",
    "MCPFrequentScaling",
    "MCPScaleToZeroStuck",
    "MCPColdStartSlow",
    "HighMCPCost",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kills",
        type=int,
        default=20,
        help="SIGKILLs per ledger in tests/test_kill.py (default 20; the full run: 100)",
    )


def kill_test_seconds(kills: int) -> float:
    """How long tests/test_kill.py may run under load: about 2 s a kill (a start and some work), plus slack."""
    return 120.0 + 3.0 * kills


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The kill test's length follows --kills; its time limit (pytest-timeout) must follow too.
    limit = kill_test_seconds(config.getoption("--kills")) + 180.0
    for item in items:
        if item.nodeid.startswith("tests/test_kill.py"):
            item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture(autouse=True, scope="session")
def _logs_to_stderr() -> None:
    # As in the real process: logs on stderr, so stdout carries only what a command prints.
    setup_logging(level="info", fmt="console")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture()
async def cluster() -> AsyncIterator[DevCluster]:
    async with DevCluster() as emulator, kmock.Server(emulator):
        emulator.load(sorted(EXAMPLES.glob("*.yaml")))
        yield emulator


@pytest_asyncio.fixture()
async def api(cluster: DevCluster) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration(host=str(cluster.url).rstrip("/"))
    async with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture()
def base_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The demo's config (the default rules), made quick and quiet for tests."""
    monkeypatch.setenv("SCALING_AGENT_DEMO_TOKEN", TOKEN)
    data = demo_config(tmp_path / "ledger.db")
    data["kubernetes"]["reconcile_interval"] = "1h"  # tests call reconcile_once() themselves
    data["kubernetes"]["api_backoff"] = "10ms"
    data["kubernetes"]["post_events"] = True
    data["guard"]["ceiling"] = 100
    return data


def build_config(data: dict[str, Any], **sections: dict[str, Any]) -> Config:
    merged = copy.deepcopy(data)
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return parse_config(merged, source="<test>")


class Console:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.lines)


StartAgent = Callable[..., Awaitable[Agent]]


@pytest_asyncio.fixture()
async def start_agent(api: client.ApiClient, base_config: dict[str, Any]) -> AsyncIterator[StartAgent]:
    started: list[Agent] = []

    async def start(config: Config | None = None, **kwargs: Any) -> Agent:
        kwargs.setdefault("console", Console())
        agent = Agent(config or build_config(base_config), api=api, **kwargs)
        await agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent._runner is not None:
            await agent.stop()


async def post(agent: Agent, body: Any, *, token: str | None = TOKEN) -> aiohttp.ClientResponse:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = f"{agent.url}/webhooks/alertmanager"
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as response:
        await response.read()
        return response


SETTLE_SECONDS = 30.0


async def settle(agent: Agent, *, within: float = SETTLE_SECONDS) -> None:
    """
    Wait until every event taken in is processed and every sink has delivered what it was given; raise
    TimeoutError (failing the test, not hanging it) if that takes longer than ``within`` seconds.
    """

    async def idle() -> None:
        await agent.worker.idle()
        for sink in agent.sinks:
            await sink.flush()

    try:
        await asyncio.wait_for(idle(), within)
    except TimeoutError:
        raise TimeoutError(f"the agent did not settle within {within:.0f} s (depth {agent.worker.depth})") from None


def scaledobject(cluster: DevCluster, name: str) -> dict[str, Any]:
    return cluster.get("scaledobjects", NS, name)


def annotations(cluster: DevCluster, name: str) -> dict[str, str]:
    return dict(scaledobject(cluster, name)["metadata"].get("annotations") or {})


def claims_on(cluster: DevCluster, name: str, plural: str = "scaledobjects", namespace: str | None = NS) -> Claims:
    """The agent's claims an object carries (none when it carries no claims annotation)."""
    marks = (cluster.get(plural, namespace, name)["metadata"].get("annotations")) or {}
    return Claims.from_json(marks[CLAIMS]) if CLAIMS in marks else Claims()


def patches(cluster: DevCluster, name: str) -> int:
    return sum(
        1
        for request in cluster
        if request.method.value == "PATCH"
        and request.resource is not None
        and request.resource.plural == "scaledobjects"
        and request.name == name
    )


# --- Slack: a local endpoint speaking enough of the Web API for slack-sdk ---------------------------------


class SlackServer:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.rate_limit_next = 0
        self.rate_limited = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def _post_message(self, request: web.Request) -> web.Response:
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            self.rate_limited += 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"})
        if self.fail_with is not None:
            return web.json_response({"ok": False, "error": "fatal_error"}, status=self.fail_with)
        data = await request.post() if request.content_type != "application/json" else await request.json()
        self.messages.append({**dict(data), "authorization": request.headers.get("Authorization")})
        return web.json_response({"ok": True, "channel": data.get("channel"), "ts": "1700000000.000100"})

    async def _incoming_webhook(self, request: web.Request) -> web.Response:
        self.messages.append({**(await request.json()), "via": "incoming-webhook"})
        return web.Response(text="ok")

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/XXXX"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/services/T000/B000/XXXX", self._incoming_webhook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture()
async def slack_server() -> AsyncIterator[SlackServer]:
    server = SlackServer()
    await server.start()
    yield server
    await server.stop()


# --- Redis: the real server on a loopback port -----------------------------------------------------------


def _require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (the README's test command installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI=true a missing server is a failure")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    binary = _require_binary("redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-test-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("redis-server did not start listening within 20 s")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture()
def write_yaml(tmp_path: Path) -> Callable[[Any], Path]:
    def write(data: Any, name: str = "agent.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return write
