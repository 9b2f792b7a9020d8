"""
Preemption bench: how fast the agent cordons a Node on a preemption notice, next to one direct PATCH of a Node,
with and without an alert storm; and how long it takes to evacuate a Node with 110 pods.

Two measurements, each against the emulated Kubernetes API on loopback, in one run (see bench/README.md):

- notice → Node cordoned: N native preemption notices, one at a time, each for a Node of its own (no pods), are
  published to a Redis stream the agent consumes (``sources.redis_stream``, a ``redis-server`` started here; or
  posted to ``/webhooks/events`` with ``--via webhook``), and timed until a watch on the emulated API's Nodes sees
  ``spec.unschedulable: true``. Between them, N direct PATCHes of other Nodes (``spec.unschedulable: true``)
  through kubernetes-asyncio, timed the same way, to the same watch: the ratio of the two is the agent's cost. Once
  quiet, once with wrk posting Alertmanager notifications to the agent's ``/webhooks/alertmanager`` beside it;
- evacuation: one Node with 110 pods (ReplicaSets of four example Deployments, no PodDisruptionBudget) and one
  DaemonSet pod, one notice with a generous deadline, timed until the agent records its ``drain`` decision (its
  ledger); then the pods left on the Node are listed through the API.

Each server runs in its own child process (this script started with ``--serve cluster|agent``), fresh for each
phase; redis-server and wrk are separate processes too. All traffic is on 127.0.0.1; every phase is bounded in
count and time. Run ``python bench/preemption.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sqlite3
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import common
import yaml
from common import free_port, pct

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
EXAMPLES = ROOT / "deploy" / "examples"
LUA = SELF.with_name("alerts.lua")  # the webhook bench's wrk script: one distinct Alertmanager alert per request
NAMESPACE = "cortex-mcp"
TOKEN_ENV = "SCALING_AGENT_BENCH_TOKEN"
START_TIMEOUT = 60.0  # seconds for a child to say it is up
REDIS_START_TIMEOUT = 20.0
HTTP_TIMEOUT = 10.0  # one request of the parent's (a POST of a notice, /metrics, a PATCH)
WATCH_SECONDS = 900  # the watches' own timeoutSeconds: longer than any phase
WRK_STOP_TIMEOUT = 15.0  # seconds for wrk to print its summary after SIGINT
RATIO_TARGET = 5.0  # notice → cordoned over one direct PATCH, with the storm, at p50 and p99
EVACUATE_TARGET_SECONDS = 20.0  # notice → drain recorded, 110 pods
AGENT_CPU, OTHERS_CPU = 0, 1  # the agent alone on core 0; the emulator, redis-server, wrk and this script on core 1

NOTICE_NODE = "bench-notice-{:03d}"  # cordoned by the agent on a notice
DIRECT_NODE = "bench-direct-{:03d}"  # cordoned by a direct PATCH
EVACUATE_NODE = "bench-evacuate-{}"  # the Node with the pods
DAEMON_POD = "node-exporter-{}"
# The example Deployments whose ReplicaSets own the pods on the evacuated Node (each has a ScaledObject in
# deploy/examples, through which the agent pre-scales it).
WORKLOADS = ("mcp-ai-server", "mcp-queue-processor", "mcp-ai-inference-server", "mcp-batch-processor")
EVACUATE_RULE = {  # as tests/test_evacuation.py
    "name": "evacuate-on-preemption",
    "kind": "notice",
    "matchers": ['kind=~"preemption|rebalance"'],
    "action": {"type": "evacuate", "params": {"prescale_for": "10m"}},
    "target": {"kind": "Node"},
}


# ---------------------------------------------------------------------------------------------- objects


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"bench": "preemption"}}}


def pod(name: str, *, node_name: str, owner: tuple[str, str], app: str, template_hash: str = "") -> dict[str, Any]:
    kind, owner_name = owner
    labels = {"app": app}
    if template_hash:
        labels["pod-template-hash"] = template_hash
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "controller": True}],
        },
        "spec": {"nodeName": node_name, "containers": [{"name": "server", "image": f"example/{app}:1"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def spread(pods: int) -> dict[str, int]:
    """The pods on the evacuated Node, per Deployment: as even as it goes (110: 28, 28, 27, 27)."""
    base, extra = divmod(pods, len(WORKLOADS))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(WORKLOADS)}


def evacuate_objects(cluster: Any, round_: int, pods: int) -> None:
    """One Node with ``pods`` pods of the four Deployments, and one DaemonSet pod; no budget covers any of them."""
    node_name = EVACUATE_NODE.format(round_)
    cluster.add(node(node_name))
    for deployment, count in spread(pods).items():
        # As in a real cluster: a Deployment runs at least the pods it has here (the examples run 3 or 50).
        current = int(cluster.get("deployments", NAMESPACE, deployment)["spec"].get("replicas") or 0)
        if current < count:
            cluster.change("deployments", NAMESPACE, deployment, {"spec": {"replicas": count}})
        template_hash = f"{zlib.crc32(deployment.encode()) % 0xFFFFF:05x}"
        replicaset = f"{deployment}-{template_hash}"
        for i in range(count):
            cluster.add(
                pod(
                    f"{replicaset}-{i:03d}",
                    node_name=node_name,
                    owner=("ReplicaSet", replicaset),
                    app=deployment,
                    template_hash=template_hash,
                )
            )
    exporter = DAEMON_POD.format(round_)
    cluster.add(pod(exporter, node_name=node_name, owner=("DaemonSet", "node-exporter"), app="node-exporter"))


def notice_body(notice_id: str, node_name: str, deadline: str) -> dict[str, Any]:
    return {"type": "preemption", "id": notice_id, "node": node_name, "in": deadline, "reason": "bench"}


def alert_template(alertname: str) -> str:
    """The webhook bench's payload: one firing alert (MCPFrequentScaling); @@ID@@ and @@SO@@ vary per request."""
    from agent.demo.alerts import alert, payload

    one = alert(
        alertname,
        {"namespace": NAMESPACE, "scaledObject": "@@SO@@", "instance": "bench-@@ID@@", "severity": "warning"},
        starts_at=datetime.now(tz=UTC).replace(microsecond=0),
        annotations={"summary": "ScaledObject is scaling too often", "description": "bench alert @@ID@@"},
    )
    one["fingerprint"] = "@@ID@@"
    return json.dumps(payload(one), separators=(",", ":"))


def scaledobject_names() -> list[str]:
    names = set()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ScaledObject":
                meta = doc.get("metadata") or {}
                if meta.get("namespace") == NAMESPACE and meta.get("name"):
                    names.add(str(meta["name"]))
    return sorted(names)


# ---------------------------------------------------------------------------------------------- child servers


class _NullStream:
    """Where the console sink writes: nowhere."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


async def _wait_for_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_cluster(args: argparse.Namespace) -> None:
    """
    The emulated Kubernetes API (kmock) with the examples and the scenario's objects, in its own process at the
    lowest CPU priority, as in bench/webhook.py: it stands in for an API server on another machine.
    """
    import kmock

    os.nice(19)

    from agent.devcluster import DevCluster

    async with DevCluster(keep_requests=False) as cluster, kmock.Server(cluster) as server:
        cluster.load(sorted(EXAMPLES.glob("*.yaml")))
        if args.scenario == "notices":
            for i in range(args.notices):
                cluster.add(node(NOTICE_NODE.format(i)))
                cluster.add(node(DIRECT_NODE.format(i)))
        else:
            evacuate_objects(cluster, args.round, args.pods)
        common.announce(str(server.url).rstrip("/"))
        await _wait_for_term()
    # Not reached when the parent ends it quickly; nothing to keep.


def agent_config(workdir: Path, *, workers: int, redis_url: str | None, stream: str) -> dict[str, Any]:
    """
    The demo's config (its six default rules, guard cooldown 5m, ceiling 100) plus the evacuate rule, live (not
    dry-run: a cordon is a real PATCH), with the events webhook and the Redis-stream consumer on.
    """
    from agent.demo import demo_config

    data = demo_config(workdir / "ledger.db")
    data["webhook"]["auth"]["token"] = {"env": TOKEN_ENV}
    data["kubernetes"]["reconcile_interval"] = "30s"  # the production default, not the demo's 2s
    data["log"] = {"level": "warning", "format": "json"}
    data["workers"] = workers
    data["rules"] = [*data["rules"], EVACUATE_RULE]
    sources: dict[str, Any] = {"events": {"enabled": True}}
    if redis_url is not None:
        sources["redis_stream"] = {
            "enabled": True,
            "url": redis_url,
            "stream": stream,
            "group": "scaling-agent",
            "consumer": "bench-agent",
            "dead_letter": f"{stream}:dead",
        }
    data["sources"] = sources
    return data


async def serve_agent(args: argparse.Namespace) -> None:
    """The real agent (live) against the emulated API; exits at once on SIGTERM, as a killed pod would."""
    from agent.app import Agent
    from agent.configfile import parse_config
    from agent.devcluster import kubeconfig_for
    from agent.kube import make_api_client
    from agent.logs import setup_logging

    workdir = Path(args.workdir)
    setup_logging(level="warning", fmt="json")
    data = agent_config(workdir, workers=args.workers, redis_url=args.redis_url, stream=args.stream)
    config = parse_config(data, source="<bench>")
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(args.kube_url)))
    api = await make_api_client(kubeconfig=str(kubeconfig))
    agent = Agent(config, api=api, console=_NullStream())
    await agent.start()
    common.announce(agent.url)
    await _wait_for_term()
    # No agent.stop(): the parent reads the ledger file after the process is gone, as after a killed pod.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_child(args: argparse.Namespace) -> int:
    common.pin(OTHERS_CPU if args.serve == "cluster" else AGENT_CPU, args)
    asyncio.run(serve_cluster(args) if args.serve == "cluster" else serve_agent(args))
    return 0


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    @classmethod
    async def start(cls, name: str, argv: list[str], *, log: Path, env: dict[str, str]) -> Child:
        proc, url = await common.start_child(SELF, argv, name=name, log=log, env=env, wait=START_TIMEOUT)
        return cls(name=name, proc=proc, url=url, log=log)

    async def stop(self) -> None:
        await common.stop_child(self.proc)


# ---------------------------------------------------------------------------------------------- redis-server, wrk


@dataclass
class Redis:
    proc: asyncio.subprocess.Process
    url: str

    @classmethod
    async def start(cls, binary: str, workdir: Path) -> Redis:
        """redis-server on a loopback port, nothing saved; it inherits this process's core (the shared one)."""
        import redis.asyncio as aioredis

        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (workdir / "redis.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, "--dir", str(workdir), stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
            )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            client = aioredis.from_url(url, socket_connect_timeout=1)
            try:
                if await client.ping():
                    return cls(proc=proc, url=url)
            except Exception:
                if time.monotonic() > deadline or proc.returncode is not None:
                    await common.stop_child(proc)
                    raise RuntimeError(f"redis-server did not start: {common.tail(workdir / 'redis.log')}") from None
            finally:
                await client.aclose()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await common.stop_child(self.proc)


@dataclass
class Storm:
    """wrk posting distinct Alertmanager notifications to the agent until told to stop (SIGINT), or at its -d."""

    proc: asyncio.subprocess.Process
    started: float
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def start(cls, args: argparse.Namespace, url: str, env: dict[str, str]) -> Storm:
        argv = [args.wrk, "-t1", f"-c{args.storm_connections}", f"-d{args.storm_max}s", "--timeout", "5s"]
        argv += ["-s", str(LUA), url + "/webhooks/alertmanager"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        return cls(proc=proc, started=time.monotonic())

    async def stop(self) -> dict[str, Any]:
        """SIGINT: wrk stops, prints its summary and the script's WRK_JSON line."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), WRK_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
            return {}
        seconds = time.monotonic() - self.started
        text = out.decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("WRK_JSON "):
                self.result = json.loads(line.removeprefix("WRK_JSON "))
                self.result["seconds"] = seconds
                self.result["non2xx"] = next(
                    (int(x.rsplit(":", 1)[1]) for x in text.splitlines() if "Non-2xx or 3xx responses:" in x), 0
                )
                return self.result
        raise RuntimeError(
            f"wrk gave no summary (exit {self.proc.returncode}):\n{text}\n{err.decode(errors='replace')}"
        )


# ---------------------------------------------------------------------------------------------- watching the API


class Watch:
    """
    One watch on the emulated API (raw HTTP, newline-delimited JSON), each event stamped with this process's
    ``time.time()`` as it arrives; ``on_event(type, object, at)`` sees them all, the initial ADDEDs included.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        on_event: Callable[[str, dict[str, Any], float], None],
        params: dict[str, str] | None = None,
    ) -> None:
        self.http = http
        self.url = url
        self.params = {"watch": "true", "timeoutSeconds": str(WATCH_SECONDS), **(params or {})}
        self.on_event = on_event
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> Watch:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_TIMEOUT, sock_read=None)
        try:
            async with self.http.get(self.url, params=self.params, timeout=timeout) as response:
                response.raise_for_status()
                async for line in response.content:
                    at = time.time()
                    if line.strip():
                        event = json.loads(line)
                        self.on_event(str(event.get("type")), event.get("object") or {}, at)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc


class Cordons:
    """Which Nodes a watch has seen cordoned (``spec.unschedulable: true``), and when it first did."""

    def __init__(self) -> None:
        self.listed: set[str] = set()
        self.at: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self.changed = asyncio.Event()

    def on_event(self, kind: str, obj: dict[str, Any], at: float) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if kind in ("ADDED", "MODIFIED"):
            self.listed.add(name)
            if (obj.get("spec") or {}).get("unschedulable") is True and name not in self.at:
                self.at[name] = at
                waiter = self._waiters.pop(name, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(at)
        self.changed.set()

    async def wait_listed(self, names: set[str], *, within: float) -> None:
        async with asyncio.timeout(within):
            while not names <= self.listed:
                self.changed.clear()
                await self.changed.wait()

    async def cordoned(self, name: str, *, within: float) -> float | None:
        """When the watch saw ``name`` cordoned; None if it did not within ``within`` seconds."""
        if name in self.at:
            return self.at[name]
        waiter = self._waiters.setdefault(name, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            return None


# ---------------------------------------------------------------------------------------------- CPU and metrics


class Meter:
    """Each process's CPU (100% = one core) over a stretch of time, and the machine's."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.wall = time.monotonic()
        self.busy = common.machine_busy()
        self.cpu = {name: common.process_cpu(pid) for name, pid in pids.items()}

    def stop(self) -> str:
        wall = time.monotonic() - self.wall
        if wall <= 0:
            return "-"
        used = {name: common.process_cpu(pid) - self.cpu[name] for name, pid in self.pids.items()}
        others = max(0.0, common.machine_busy() - self.busy - sum(used.values()))
        parts = [f"{name} {seconds / wall:.0%}" for name, seconds in used.items()]
        return ", ".join([*parts, f"others {others / wall:.0%}"])


async def read_gauges(http: aiohttp.ClientSession, url: str, names: tuple[str, ...]) -> dict[str, float]:
    """A few unlabelled gauges from the agent's /metrics (a plain line scan)."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with http.get(url + "/metrics", timeout=timeout) as response:
        text = await response.text()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    return found


# ---------------------------------------------------------------------------------------------- the ledger


def read_ledger(path: Path, actions: tuple[str, ...]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """
    What the agent left in its sqlite file, read-only (same machine, same clock): each notice's event (by key) with
    when its source received it, and the decisions of ``actions`` (their body, with ``at``).
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        events = {
            str(key): float(received)
            for key, received in db.execute("SELECT key, received_at FROM events WHERE key LIKE 'notice|%'")
        }
        marks = ",".join("?" for _ in actions)
        rows = db.execute(f"SELECT at, body FROM decisions WHERE action IN ({marks}) ORDER BY at", actions).fetchall()
    finally:
        db.close()
    decisions = []
    for at, body in rows:
        decision = json.loads(body)
        decision["_at"] = float(at)
        decisions.append(decision)
    return events, decisions


def event_key(decision: dict[str, Any]) -> str:
    return str((decision.get("trigger") or {}).get("event_key") or "")


# ---------------------------------------------------------------------------------------------- the phases


@dataclass
class Sample:
    """One notice, or one direct PATCH: seconds from its start (time.time()) to each point; None: never."""

    name: str
    sent: float
    seen: float | None = None  # the watch saw the Node cordoned
    answered: float | None = None  # direct PATCH: its answer read; notice: the POST's answer (webhook)
    received: float | None = None  # notice: the event's received_at in the ledger (the source decoded it)
    begun: float | None = None  # notice: the evacuate decision's `at` (the urgent lane began deciding)
    outcome: str = ""
    reason: str = ""  # notice: the evacuate decision's reason, when it was not applied

    def to(self, point: float | None) -> float | None:
        return None if point is None else point - self.sent


@dataclass
class NoticePhase:
    name: str  # quiet | storm
    notices: list[Sample] = field(default_factory=list)
    direct: list[Sample] = field(default_factory=list)
    storm: dict[str, Any] = field(default_factory=dict)  # wrk's summary
    throttled: list[float] = field(default_factory=list)  # scaling_agent_worker_throttled samples during the run
    backlog: list[float] = field(default_factory=list)  # scaling_agent_pending_events samples
    cpu: str = ""
    quiet: float = 0.0
    seconds: float = 0.0
    drains: int = 0
    logs: str = ""


@dataclass
class Evacuation:
    round: int
    pods: int
    sent: float = 0.0
    seen: float | None = None  # the watch saw the Node cordoned
    begun: float | None = None  # the evacuate decision's `at`
    prescale: list[tuple[float, str, str]] = field(default_factory=list)  # (at, target, outcome) of each set_min
    drained: float | None = None  # the drain decision's `at`
    drain: dict[str, Any] = field(default_factory=dict)
    waits: int = 0  # drain-waits decisions
    deletions: list[float] = field(default_factory=list)  # when the pods watch saw each pod go
    left: list[str] = field(default_factory=list)  # non-DaemonSet pods still on the Node (listed through the API)
    daemon_left: list[str] = field(default_factory=list)
    cpu: str = ""
    quiet: float = 0.0
    logs: str = ""

    def to(self, point: float | None) -> float | None:
        return None if point is None else point - self.sent


def log_summary(path: Path) -> str:
    """The agent's warning/error lines, counted by message."""
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            key = f"{record.get('level', '?')}: {record.get('event', '?')}"
        except (json.JSONDecodeError, AttributeError):
            key = "(not JSON) " + line[:80]
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
    return "; ".join(f"{n} x {message}" for message, n in ranked) or "none"


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.token = secrets.token_urlsafe(24)
        self.run_id = secrets.token_hex(3)
        self.redis: Redis | None = None
        self._closers: list[Callable[[], Any]] = []  # the phase's clients to close (its publisher's)
        (workdir / "body.json").write_text(alert_template(args.storm_alert))
        self.env = {
            **os.environ,
            TOKEN_ENV: self.token,
            "WEBHOOK_BENCH_BODY": str(workdir / "body.json"),
            "WEBHOOK_BENCH_TARGETS": ",".join(scaledobject_names()),
            "WEBHOOK_BENCH_TOKEN": self.token,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }

    # --- children ------------------------------------------------------------------------------------------------

    async def children(self, tag: str, scenario: list[str]) -> tuple[Child, Child]:
        """The emulated API with the scenario's objects, then the agent against it."""
        cluster = await Child.start(
            f"{tag} cluster", ["--serve", "cluster", *scenario], log=self.workdir / f"{tag}-cluster.log", env=self.env
        )
        try:
            agent_dir = self.workdir / tag
            agent_dir.mkdir()
            argv = ["--serve", "agent", "--kube-url", cluster.url, "--workdir", str(agent_dir)]
            argv += ["--workers", str(self.args.workers), "--stream", f"bench-{self.run_id}-{tag}:events"]
            if self.redis is not None:
                argv += ["--redis-url", self.redis.url]
            agent = await Child.start(f"{tag} agent", argv, log=self.workdir / f"{tag}-agent.log", env=self.env)
        except BaseException:
            await cluster.stop()
            raise
        return cluster, agent

    async def kube(self, url: str) -> Any:
        """A kubernetes-asyncio client for the emulated API, made as the agent makes its own."""
        from agent.devcluster import kubeconfig_for
        from agent.kube import make_api_client

        path = self.workdir / f"kubeconfig-{secrets.token_hex(4)}"
        path.write_text(yaml.safe_dump(kubeconfig_for(url)))
        return await make_api_client(kubeconfig=str(path))

    async def publisher(self, agent: Child, tag: str, http: aiohttp.ClientSession) -> Callable[[dict[str, Any]], Any]:
        """How a notice is sent: XADD to the agent's stream, or a POST to its events webhook (then: its answer time)."""
        if self.redis is not None:
            import redis.asyncio as aioredis

            client = aioredis.from_url(self.redis.url, socket_timeout=HTTP_TIMEOUT)
            stream = f"bench-{self.run_id}-{tag}:events"
            self._closers.append(client.aclose)

            async def publish_redis(body: dict[str, Any]) -> float | None:
                await client.xadd(stream, {"body": json.dumps(body)})
                return None

            return publish_redis

        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)

        async def publish_webhook(body: dict[str, Any]) -> float | None:
            async with http.post(
                agent.url + "/webhooks/events", data=json.dumps(body), headers=headers, timeout=timeout
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the events webhook answered {response.status}")
            return time.time()

        return publish_webhook

    # --- measurement 1 -------------------------------------------------------------------------------------------

    async def notices(self, name: str, *, storm: bool) -> NoticePhase:
        args = self.args
        result = NoticePhase(name=name)
        tag = f"notices-{name}"
        cluster, agent = await self.children(tag, ["--scenario", "notices", "--notices", str(args.notices)])
        self._closers = []
        wrk: Storm | None = None
        sampler: asyncio.Task[None] | None = None
        api = None
        started = time.monotonic()
        try:
            api = await self.kube(cluster.url)
            from kubernetes_asyncio import client as k8s

            core = k8s.CoreV1Api(api)
            cordons = Cordons()
            async with aiohttp.ClientSession() as http, Watch(http, cluster.url + "/api/v1/nodes", cordons.on_event):
                wanted = {NOTICE_NODE.format(i) for i in range(args.notices)}
                wanted |= {DIRECT_NODE.format(i) for i in range(args.notices)}
                await cordons.wait_listed(wanted, within=START_TIMEOUT)
                publish = await self.publisher(agent, tag, http)
                result.quiet = await common.settle(args.settle)
                pids = {"agent": agent.proc.pid, "cluster": cluster.proc.pid, "bench": os.getpid()}
                if self.redis is not None:
                    pids["redis"] = self.redis.proc.pid
                if storm:
                    wrk = await Storm.start(args, agent.url, self.env)
                    pids["wrk"] = wrk.proc.pid
                meter = Meter(pids)
                sampler = asyncio.create_task(self.sample(http, agent.url, result))
                if storm:
                    await asyncio.sleep(args.warmup)
                order = random.Random(args.seed)
                for i in range(args.notices):
                    pair = [self.one_notice, self.one_patch]
                    order.shuffle(pair)  # which goes first in each pair, at random: no systematic neighbour
                    for step in pair:
                        await step(i, result, cordons=cordons, publish=publish, core=core)
                        await asyncio.sleep(order.uniform(0.5, 1.5) * args.gap)
                result.cpu = meter.stop()  # before wrk is reaped: its /proc entry goes with it
                if storm and wrk is not None:
                    result.storm = await wrk.stop()
                    wrk = None
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            if wrk is not None:
                with contextlib.suppress(Exception):
                    await wrk.stop()
            for close in self._closers:
                with contextlib.suppress(Exception):
                    await close()
            if api is not None:
                await api.close()
            await agent.stop()
            await cluster.stop()
        result.seconds = time.monotonic() - started
        events, decisions = read_ledger(self.workdir / tag / "ledger.db", ("evacuate", "drain"))
        by_key = {event_key(d): d for d in decisions if d.get("action") == "evacuate"}
        result.drains = sum(1 for d in decisions if d.get("action") == "drain")
        for sample in result.notices:
            key = f"notice|native|{sample.name}"
            if key in events:
                sample.received = events[key]
            decision = by_key.get(key)
            if decision is not None:
                sample.begun = decision["_at"]
                sample.outcome = str(decision.get("outcome"))
                if sample.outcome != "applied":
                    sample.reason = str(decision.get("reason"))
        result.logs = log_summary(self.workdir / f"{tag}-agent.log")
        return result

    async def one_notice(self, i: int, result: NoticePhase, *, cordons: Cordons, publish: Any, core: Any) -> None:
        node_name = NOTICE_NODE.format(i)
        notice_id = f"bench-{self.run_id}-{result.name}-{i:03d}"
        sent = time.time()
        answered = await publish(notice_body(notice_id, node_name, self.args.deadline))
        seen = await cordons.cordoned(node_name, within=self.args.notice_timeout)
        result.notices.append(Sample(name=notice_id, sent=sent, seen=seen, answered=answered))

    async def one_patch(self, i: int, result: NoticePhase, *, cordons: Cordons, publish: Any, core: Any) -> None:
        """One direct PATCH of a Node, as the agent's cordon writes it (a merge patch through kubernetes-asyncio)."""
        node_name = DIRECT_NODE.format(i)
        sent = time.time()
        response = await asyncio.wait_for(
            core.patch_node(
                node_name,
                {"spec": {"unschedulable": True}},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            ),
            HTTP_TIMEOUT,
        )
        try:
            json.loads(await response.read())  # read and parsed, as the agent reads its answer
        finally:
            response.release()
        answered = time.time()
        seen = await cordons.cordoned(node_name, within=self.args.notice_timeout)
        result.direct.append(Sample(name=node_name, sent=sent, seen=seen, answered=answered, outcome="applied"))

    async def sample(self, http: aiohttp.ClientSession, url: str, result: NoticePhase) -> None:
        """The agent's storm gate and backlog, from /metrics, every --sample seconds."""
        names = ("scaling_agent_worker_throttled", "scaling_agent_pending_events")
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                found = await read_gauges(http, url, names)
                if names[0] in found:
                    result.throttled.append(found[names[0]])
                if names[1] in found:
                    result.backlog.append(found[names[1]])
            await asyncio.sleep(self.args.sample)

    # --- measurement 2 -------------------------------------------------------------------------------------------

    async def evacuation(self, round_: int) -> Evacuation:
        args = self.args
        result = Evacuation(round=round_, pods=args.pods)
        tag = f"evacuate-{round_}"
        node_name = EVACUATE_NODE.format(round_)
        cluster, agent = await self.children(
            tag, ["--scenario", "evacuate", "--pods", str(args.pods), "--round", str(round_)]
        )
        self._closers = []
        api = None
        ledger = self.workdir / tag / "ledger.db"
        try:
            api = await self.kube(cluster.url)
            from kubernetes_asyncio import client as k8s

            core = k8s.CoreV1Api(api)
            cordons = Cordons()
            gone: dict[str, float] = {}
            listed: set[str] = set()
            changed = asyncio.Event()

            def on_pod(kind: str, obj: dict[str, Any], at: float) -> None:
                name = str((obj.get("metadata") or {}).get("name", ""))
                if kind == "ADDED":
                    listed.add(name)
                elif kind == "DELETED":
                    gone.setdefault(name, at)
                changed.set()

            pods_url = cluster.url + "/api/v1/pods"
            selector = {"fieldSelector": f"spec.nodeName={node_name}"}
            async with (
                aiohttp.ClientSession() as http,
                Watch(http, cluster.url + "/api/v1/nodes", cordons.on_event),
                Watch(http, pods_url, on_pod, selector),
            ):
                await cordons.wait_listed({node_name}, within=START_TIMEOUT)
                async with asyncio.timeout(START_TIMEOUT):
                    while len(listed) < args.pods + 1:
                        changed.clear()
                        await changed.wait()
                publish = await self.publisher(agent, tag, http)
                result.quiet = await common.settle(args.settle)
                pids = {"agent": agent.proc.pid, "cluster": cluster.proc.pid, "bench": os.getpid()}
                if self.redis is not None:
                    pids["redis"] = self.redis.proc.pid
                meter = Meter(pids)
                notice_id = f"bench-{self.run_id}-evacuate-{round_}"
                result.sent = time.time()
                await publish(notice_body(notice_id, node_name, args.evacuate_deadline))
                result.seen = await cordons.cordoned(node_name, within=args.notice_timeout)
                # The drain decision, from the ledger (read-only, beside the running agent), bounded in time.
                deadline = time.monotonic() + args.evacuate_timeout
                while time.monotonic() < deadline:
                    _, found = read_ledger(ledger, ("drain",))
                    if found:
                        break
                    await asyncio.sleep(0.1)
                result.cpu = meter.stop()
                answer = await core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={node_name}", _preload_content=False
                )
                try:
                    items = json.loads(await answer.read()).get("items", [])
                finally:
                    answer.release()
                for item in items:
                    meta = item.get("metadata") or {}
                    owners = meta.get("ownerReferences") or [{}]
                    daemon = owners[0].get("kind") == "DaemonSet"
                    (result.daemon_left if daemon else result.left).append(str(meta.get("name")))
                result.deletions = sorted(gone.values())
        finally:
            for close in self._closers:
                with contextlib.suppress(Exception):
                    await close()
            if api is not None:
                await api.close()
            await agent.stop()
            await cluster.stop()
        _, decisions = read_ledger(ledger, ("evacuate", "set_min", "drain", "drain-waits"))
        for decision in decisions:
            action, at = decision.get("action"), decision["_at"]
            if action == "evacuate" and result.begun is None:
                result.begun = at
            elif action == "set_min":
                target = decision.get("target") or {}
                shown = target.get("name", "?") if isinstance(target, dict) else str(target)
                result.prescale.append((at, shown, str(decision.get("outcome"))))
            elif action == "drain" and result.drained is None:
                result.drained = at
                result.drain = decision
            elif action == "drain-waits":
                result.waits += 1
        result.logs = log_summary(self.workdir / f"{tag}-agent.log")
        return result

    # --- the run -------------------------------------------------------------------------------------------------

    async def run(self) -> tuple[list[NoticePhase], list[Evacuation]]:
        args = self.args
        if args.via == "redis":
            self.redis = await Redis.start(args.redis_server, self.workdir)
        phases: list[NoticePhase] = []
        evacuations: list[Evacuation] = []
        try:
            if not args.skip_quiet:
                print(f"… notices without a storm: {args.notices} notices, {args.notices} direct PATCHes", flush=True)
                phases.append(await self.notices("quiet", storm=False))
            if not args.skip_storm:
                print(f"… notices with an alert storm (wrk -c{args.storm_connections})", flush=True)
                phases.append(await self.notices("storm", storm=True))
            for round_ in range(1, 0 if args.skip_evacuation else args.evacuations + 1):
                print(f"… evacuation {round_}/{args.evacuations}: a Node with {args.pods} pods", flush=True)
                evacuations.append(await self.evacuation(round_))
        finally:
            if self.redis is not None:
                await self.redis.stop()
        return phases, evacuations


# ---------------------------------------------------------------------------------------------- report


def ms(value: float | None) -> str:
    """Seconds shown in milliseconds (in seconds from 10 s up)."""
    if value is None or value != value:
        return "-"
    return f"{value:.1f}s" if value >= 10 else f"{value * 1000:.1f}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def spans(samples: list[Sample], point: Callable[[Sample], float | None]) -> list[float]:
    return [v for v in (point(s) for s in samples) if v is not None]


def report(phases: list[NoticePhase], evacuations: list[Evacuation], args: argparse.Namespace) -> bool:
    out = io.StringIO()
    w = out.write
    checks: list[tuple[str, bool]] = []
    via = "a Redis stream (sources.redis_stream)" if args.via == "redis" else "POST /webhooks/events"
    w(f"\nPreemption bench: native preemption notices via {via}; the agent live (not dry-run), workers={args.workers},")
    w("\nthe demo's rules plus evacuate-on-preemption; the emulated Kubernetes API in its own process (nice 19).\n")
    w(f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {platform.platform()}.\n")

    if phases:
        w(f"\nNotice → Node cordoned, {args.notices} notices per phase, one at a time (each its own Node, no pods), ")
        w("interleaved with\nas many direct PATCHes of other Nodes (spec.unschedulable: true, a kubernetes-asyncio ")
        w("merge patch). Both are timed from\njust before the XADD/POST (or the PATCH) to the moment a watch on the ")
        w("emulated API's Nodes saw unschedulable: true.\nMilliseconds.\n")
        w(f"  {'phase':<7}{'what':<15}{'seen':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}   ")
        w("ratio notice/PATCH p50, p99\n")
        for phase in phases:
            notice = spans(phase.notices, lambda s: s.to(s.seen))
            direct = spans(phase.direct, lambda s: s.to(s.seen))
            answer = spans(phase.direct, lambda s: s.to(s.answered))
            r50 = pct(notice, 0.5) / pct(direct, 0.5) if direct else float("nan")
            r99 = pct(notice, 0.99) / pct(direct, 0.99) if direct else float("nan")
            rows = [
                ("notice", notice, len(phase.notices), f"{r50:.2f}x, {r99:.2f}x"),
                ("direct PATCH", direct, len(phase.direct), ""),
                ("  its answer", answer, len(phase.direct), ""),
            ]
            for label, values, total, extra in rows:
                w(f"  {phase.name:<7}{label:<15}{f'{len(values)}/{total}':>7}")
                w("".join(f"{ms(pct(values, q)):>9}" for q in (0.5, 0.9, 0.99)))
                w(f"{ms(max(values, default=float('nan'))):>9}   {extra}\n")
            if phase.name == "storm":
                ok = r50 <= RATIO_TARGET and r99 <= RATIO_TARGET
                checks.append((f"with the storm, notice/PATCH ratio p50 {r50:.2f}x and p99 {r99:.2f}x ≤ 5x", ok))
            all_seen = len(notice) == len(phase.notices) == args.notices and len(direct) == args.notices
            checks.append((f"{phase.name}: every notice and every direct PATCH seen cordoned", all_seen))

        w("\nWhere a notice's time goes (the agent's ledger, same clock): sent → its source read and decoded it ")
        w("(event received_at)\n→ the urgent lane began the evacuate decision (its `at`) → the watch saw the cordon. ")
        w("Milliseconds, p50 / p99.\n")
        w(f"  {'phase':<7}{'sent → received':>20}{'→ decision begun':>20}{'→ cordon seen':>20}   outcomes\n")
        for phase in phases:
            legs = [
                spans(phase.notices, lambda s: None if s.received is None else s.received - s.sent),
                spans(phase.notices, lambda s: None if s.begun is None or s.received is None else s.begun - s.received),
                spans(phase.notices, lambda s: None if s.seen is None or s.begun is None else s.seen - s.begun),
            ]
            outcomes: dict[str, int] = {}
            for s in phase.notices:
                outcomes[s.outcome or "no decision"] = outcomes.get(s.outcome or "no decision", 0) + 1
            w(f"  {phase.name:<7}")
            w("".join(f"{f'{ms(pct(v, 0.5))} / {ms(pct(v, 0.99))}':>20}" for v in legs))
            w(f"   {outcomes}; {phase.drains} drain decisions\n")
            for s in phase.notices:
                if s.outcome != "applied":
                    w(f"  {'':<7}not cordoned: {s.name}: {s.outcome or 'no evacuate decision'}: {s.reason or '-'}\n")

        for phase in phases:
            w(f"\n  {phase.name}: {phase.seconds:.1f} s in all; CPU while measuring (100% = one core): {phase.cpu}; ")
            w(f"before: {phase.quiet:.2f} cores busy\n")
            if phase.storm:
                s = phase.storm
                seconds = s["duration_us"] / 1e6
                rate = s["requests"] / seconds if seconds else float("nan")
                w(f"  storm: wrk -t1 -c{args.storm_connections}, {s['requests']:,} Alertmanager notifications ")
                w(f"({args.storm_alert}, each distinct) answered in {seconds:.1f} s ({rate:,.0f}/s), ")
                w(f"non-2xx {s['non2xx']}, ")
                w(f"wrk p50 {s['latency_us']['p50'] / 1000:.1f} ms, p99 {s['latency_us']['p99'] / 1000:.1f} ms\n")
            if phase.throttled:
                on = sum(1 for v in phase.throttled if v >= 1)
                w(f"  the agent's storm gate (scaling_agent_worker_throttled) on in {on} of {len(phase.throttled)} ")
                w(f"samples; backlog (pending events) {int(phase.backlog[0]) if phase.backlog else '-'} → ")
                w(f"{int(max(phase.backlog, default=0)):,} max → {int(phase.backlog[-1]) if phase.backlog else '-'}")
                w(" last\n")
            w(f"  warnings/errors logged by the agent: {phase.logs}\n")

    for ev in evacuations:
        w(f"\nEvacuation {ev.round}: one Node with {ev.pods} pods (ReplicaSets of {', '.join(spread(ev.pods))}: ")
        w(f"{', '.join(str(n) for n in spread(ev.pods).values())}),\nno PodDisruptionBudget, and one DaemonSet pod; ")
        w(f"one notice (in: {args.evacuate_deadline}). Seconds from the notice sent:\n")
        pre = sorted(ev.prescale)
        w(f"  cordon seen {secs(ev.to(ev.seen))}; evacuate decision begun {secs(ev.to(ev.begun))}; ")
        if pre:
            w(f"pre-scaled {len(pre)} ScaledObjects {secs(ev.to(pre[0][0]))} → {secs(ev.to(pre[-1][0]))} ")
            w(f"({', '.join(sorted({p[2] for p in pre}))}); ")
        if ev.deletions:
            w(f"\n  pods deleted (watch): first {secs(ev.to(ev.deletions[0]))}, last {secs(ev.to(ev.deletions[-1]))}, ")
            span = ev.deletions[-1] - ev.deletions[0]
            rate = (len(ev.deletions) - 1) / span if span > 0 else float("nan")
            w(f"{len(ev.deletions)} in all ({rate:,.0f}/s between the first and the last); ")
        w(f"\n  drain recorded {secs(ev.to(ev.drained))}: ")
        if ev.drain:
            w(f"{ev.drain.get('outcome')}, {ev.drain.get('after')}")
        else:
            w(f"NOT within {args.evacuate_timeout:g} s")
        w(f"; drain-waits {ev.waits}\n")
        w(f"  left on the Node (listed through the API): {len(ev.left)} pods, {len(ev.daemon_left)} DaemonSet pod(s)\n")
        w(f"  CPU (100% = one core): {ev.cpu}; before: {ev.quiet:.2f} cores busy\n")
        w(f"  warnings/errors logged by the agent: {ev.logs}\n")
        took = ev.to(ev.drained)
        evicted = (ev.drain.get("after") or {}).get("evicted-pods") if ev.drain else None
        checks.append(
            (
                f"evacuation {ev.round}: notice → drain recorded {secs(took)} < {EVACUATE_TARGET_SECONDS:g} s",
                took is not None and took < EVACUATE_TARGET_SECONDS,
            )
        )
        checks.append(
            (
                f"evacuation {ev.round}: all {ev.pods} evicted (drain says {evicted}; {len(ev.left)} left, "
                f"DaemonSet pods stay: {len(ev.daemon_left)})",
                evicted == ev.pods and not ev.left and len(ev.daemon_left) == 1,
            )
        )

    w("\nTargets:\n")
    for text, ok in checks:
        w(f"  {'met    ' if ok else 'NOT met'}  {text}\n")
    print(out.getvalue(), end="")
    return all(ok for _, ok in checks)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Preemption bench: notice → Node cordoned (vs one direct PATCH), and a 110-pod evacuation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--notices", type=int, default=50, help="notices (and direct PATCHes) per phase")
    parser.add_argument("--via", choices=["redis", "webhook"], default="redis", help="how the notices are sent")
    parser.add_argument("--deadline", default="120s", help="the notices' `in` (measurement 1)")
    parser.add_argument("--gap", type=float, default=0.1, help="mean seconds between two steps (0.5-1.5x at random)")
    parser.add_argument("--notice-timeout", type=float, default=10.0, help="seconds to wait for one cordon")
    parser.add_argument("--storm-connections", type=int, default=32, help="wrk connections for the alert storm")
    parser.add_argument(
        "--storm-alert",
        default="MCPFrequentScaling",
        help="the storm's alert; one no rule matches (BenchNoRule) leaves the agent's Kubernetes writes out",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of storm before the first notice")
    parser.add_argument("--storm-max", type=int, default=180, help="wrk's -d: the storm's longest run in seconds")
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between reads of the agent's /metrics")
    parser.add_argument("--pods", type=int, default=110, help="pods on the evacuated Node (besides a DaemonSet's)")
    parser.add_argument("--evacuations", type=int, default=1, help="evacuations, each with fresh servers")
    parser.add_argument("--evacuate-deadline", default="120s", help="the evacuation notice's `in`")
    parser.add_argument("--evacuate-timeout", type=float, default=60.0, help="seconds to wait for the drain decision")
    parser.add_argument("--workers", type=int, default=8, help="the agent's worker lanes (config workers)")
    parser.add_argument("--settle", type=float, default=10.0, help="max seconds to wait for a quiet machine")
    parser.add_argument("--seed", type=int, default=1, help="seed for the order within each pair and the gaps")
    parser.add_argument("--skip-quiet", action="store_true", help="no notices without the storm")
    parser.add_argument("--skip-storm", action="store_true", help="no notices with the storm (no wrk needed)")
    parser.add_argument("--skip-evacuation", action="store_true", help="no evacuation")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="path of wrk")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the targets are met")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (ledgers, logs)")
    parser.add_argument("--no-pin", action="store_true", help="do not give the agent a core of its own")
    # Internal: this script started as one of the servers.
    parser.add_argument("--serve", choices=["cluster", "agent"], help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=["notices", "evacuate"], help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--kube-url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--stream", default="scaling-agent:events", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.serve:
        bounds = {
            "notices": (1, 500),
            "gap": (0, 10),
            "notice_timeout": (0.1, 120),
            "storm_connections": (1, 1000),
            "warmup": (0, 60),
            "storm_max": (5, 3600),
            "sample": (0.05, 60),
            "pods": (1, 1000),
            "evacuations": (1, 20),
            "evacuate_timeout": (1, 600),
            "workers": (1, 64),
            "settle": (0, 300),
        }
        for name, (low, high) in bounds.items():
            if not low <= getattr(args, name) <= high:
                parser.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return run_child(args)
    if not args.skip_storm and shutil.which(args.wrk) is None:
        print(f"wrk not found ({args.wrk}); on Debian/Ubuntu: apt-get install wrk (or --skip-storm)", file=sys.stderr)
        return 2
    if args.via == "redis" and shutil.which(args.redis_server) is None:
        print(f"redis-server not found ({args.redis_server}); or --via webhook", file=sys.stderr)
        return 2
    if args.no_pin:
        os.environ["BENCH_NO_PIN"] = "1"  # for the children
    common.pin(OTHERS_CPU, args)  # the parent, and redis-server and wrk, which inherit it
    started = time.monotonic()
    with common.workdir("preemption-bench-", keep=args.keep) as workdir:
        phases, evacuations = asyncio.run(Bench(args, workdir).run())
        met = report(phases, evacuations, args)
    print(f"(the run took {time.monotonic() - started:.0f} s)")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
