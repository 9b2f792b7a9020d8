"""
Webhook bench: how fast the agent acknowledges Alertmanager notifications, next to a bare aiohttp handler.

Two measurements, each against both servers in the same run (see bench/README.md):

- throughput: ``wrk`` (a compiled load generator, separate process) posts Alertmanager v4 payloads for a
  fixed time over a fixed number of keep-alive connections; alerts/s for each server and their ratio;
- latency: an open-loop paced sender (asyncio + aiohttp) posts one payload every 1 ms (1,000 alerts/s)
  for a fixed count and records each ack's latency; p50/p99 for each server;
- the worker behind the acks (agent only): decisions/s during the load, the backlog sampled from /metrics, and
  for the paced load the time from each ack to its decision in the ledger (p50/p99/max).

Each server runs in its own child process (this script started with ``--serve bare|agent|cluster``), a
fresh one per measurement: the bare handler; or the agent (dry-run, sqlite ledger in a temp dir) with the
emulated Kubernetes API in a third process, as a real API server would be elsewhere. All traffic is on
127.0.0.1; every phase is bounded in count and time. Run ``python bench/webhook.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import io
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import common
import yaml
from aiohttp import web
from common import pct

from agent.demo.alerts import alert, payload

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
LUA = SELF.with_name("alerts.lua")
PATH = "/webhooks/alertmanager"
NAMESPACE = "cortex-mcp"
TOKEN_ENV = "SCALING_AGENT_BENCH_TOKEN"
START_TIMEOUT = 60.0  # seconds for a child server to say it listens
RATIO_TARGET = 0.7
P99_TARGET_MS = 20.0
DECISION_P99_TARGET_MS = 50.0  # the worker's target at --rate: ack -> decision recorded, p99
BACKLOG_FLAT_FACTOR = 2.0  # ... and the backlog flat: last sample <= 2 x the first nonzero one, or <= the floor
BACKLOG_FLOOR = 50
SAMPLE_SECONDS = 0.5  # how often the backlog is read from /metrics during the load
PACED_ID_THREAD = 0xFF00  # the paced sender's "thread number" in alert ids (wrk's threads count from 0)


# ---------------------------------------------------------------------------------------------- payloads


def body_template(alertname: str = "MCPFrequentScaling") -> str:
    """One firing alert; @@ID@@ (fingerprint, ``instance`` label) and @@SO@@ (``scaledObject``) vary per request."""
    one = alert(
        alertname,
        {"namespace": NAMESPACE, "scaledObject": "@@SO@@", "instance": "bench-@@ID@@", "severity": "warning"},
        starts_at=datetime.now(tz=UTC).replace(microsecond=0),
        annotations={"summary": "ScaledObject is scaling too often", "description": "bench alert @@ID@@"},
    )
    one["fingerprint"] = "@@ID@@"
    return json.dumps(payload(one), separators=(",", ":"))


def ident_of(tid: int, counter: int) -> str:
    """The alert's fingerprint (and ``instance`` suffix), as alerts.lua makes it."""
    return f"{tid:04x}{counter:012x}"


def render(template: str, *, tid: int, counter: int, targets: list[str]) -> bytes:
    """The same substitution alerts.lua does, for the paced sender."""
    ident = ident_of(tid, counter)
    target = targets[counter % len(targets)] if targets else ""
    return template.replace("@@ID@@", ident).replace("@@SO@@", target).encode()


def scaledobject_names(examples: Path) -> list[str]:
    names = []
    for path in sorted(examples.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ScaledObject":
                meta = doc.get("metadata") or {}
                if meta.get("namespace") == NAMESPACE and meta.get("name"):
                    names.append(str(meta["name"]))
    return sorted(set(names))


# ---------------------------------------------------------------------------------------------- child servers


class _NullStream:
    """Where the console sink writes: nowhere, and cheaply (no growing buffer, no syscalls)."""

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


async def serve_bare() -> None:
    """The baseline: aiohttp, one POST route that reads the body and answers 200 with a small JSON body."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.add_routes([web.post(PATH, handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = getattr(site._server, "sockets", None)  # asyncio's or uvloop's server
    assert sockets
    common.announce(f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
    await _wait_for_term()
    await runner.cleanup()


async def serve_cluster(files: list[Path]) -> None:
    """
    The emulated Kubernetes API (kmock) with the example objects, in its own process at the lowest CPU priority:
    it stands in for an API server on another machine, so it gets the CPU the agent and wrk leave over.
    """
    import kmock

    os.nice(19)

    from agent.devcluster import DevCluster

    async with DevCluster(keep_requests=False) as cluster, kmock.Server(cluster) as server:
        cluster.load(files)
        common.announce(str(server.url).rstrip("/"))
        await _wait_for_term()


def agent_config(workdir: Path, *, workers: int) -> dict[str, Any]:
    from agent.demo import demo_config

    data = demo_config(workdir / "ledger.db")
    data["webhook"]["auth"]["token"] = {"env": TOKEN_ENV}
    data["kubernetes"]["reconcile_interval"] = "30s"  # the production default, not the demo's 2s
    data["guard"].update({"cooldown": "0s", "ceiling": 1000, "dry_run": True})
    data["log"] = {"level": "warning", "format": "json"}
    data["workers"] = workers
    return data


async def serve_agent(kube_url: str, workdir: Path, *, workers: int, profile: Path | None) -> None:
    """The real agent (dry-run) against the emulated API; stops by exiting at once on SIGTERM."""
    from agent.app import Agent
    from agent.configfile import parse_config
    from agent.devcluster import kubeconfig_for
    from agent.kube import make_api_client
    from agent.logs import setup_logging

    setup_logging(level="warning", fmt="json")
    config = parse_config(agent_config(workdir, workers=workers), source="<bench>")
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(kube_url)))
    api = await make_api_client(kubeconfig=str(kubeconfig))
    agent = Agent(config, api=api, dry_run=True, console=_NullStream())
    await agent.start()
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    common.announce(agent.url)
    await _wait_for_term()
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    # No agent.stop(): with a backlog it would spend its drain timeouts on the sinks. Exiting abruptly is what
    # a killed pod does; the parent then reads the ledger file to check that every acknowledged alert is in it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


SERVER_CPU = 0  # the server under test (bare or agent) runs alone on this core ...
OTHERS_CPU = 1  # ... and everything else (wrk, the paced sender, the emulated API) shares this one


def run_child(args: argparse.Namespace) -> int:
    common.pin(OTHERS_CPU if args.serve == "cluster" else SERVER_CPU, args)
    if args.serve == "bare":
        asyncio.run(serve_bare())
    elif args.serve == "cluster":
        asyncio.run(serve_cluster(sorted(Path(args.examples).glob("*.yaml"))))
    else:
        profile = Path(args.profile_out) if args.profile_out else None
        asyncio.run(serve_agent(args.kube_url, Path(args.workdir), workers=args.workers, profile=profile))
    return 0


@dataclass
class Child:
    name: str
    role: str
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    @classmethod
    async def start(cls, name: str, argv: list[str], *, log: Path, env: dict[str, str]) -> Child:
        proc, url = await common.start_child(SELF, argv, name=f"{name} server", log=log, env=env, wait=START_TIMEOUT)
        return cls(name=name, role=argv[1], proc=proc, url=url, log=log)

    async def stop(self) -> None:
        await common.stop_child(self.proc)


# ---------------------------------------------------------------------------------------------- load


async def run_wrk(url: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    argv = [args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "5s"]
    argv += ["-s", str(LUA), url + PATH]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), args.duration + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError("wrk did not finish in time") from None
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["non2xx"] = next(
                (int(x.rsplit(":", 1)[1]) for x in text.splitlines() if "Non-2xx or 3xx responses:" in x), 0
            )
            result["socket_errors"] = sum(result["errors"][k] for k in ("connect", "read", "write", "timeout"))
            return result
    raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}):\n{text}\n{err.decode(errors='replace')}")


@dataclass
class Paced:
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    starts: list[float] = field(default_factory=list)
    acks: dict[str, float] = field(default_factory=dict)  # fingerprint -> wall clock (time.time()) at its 200
    first_sent: float = float("nan")  # wall clock of the first request's start
    last_answered: float = float("nan")  # ... and of the last answer

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def send_rate(self) -> float:
        """Requests started per second, first to last (what the server was offered)."""
        span = max(self.starts, default=0.0) - min(self.starts, default=0.0)
        return (len(self.starts) - 1) / span if span > 0 else float("nan")


async def run_paced(url: str, *, token: str, template: str, targets: list[str], count: int, rate: float) -> Paced:
    """
    Open loop: request i starts at t0 + i/rate whatever happened to the earlier ones (they run as tasks), so a
    slow answer does not slow the sender. Latency is from the start of the request to the end of the answer;
    how late the sender itself started each request is kept apart (``lag_ms``) to show the pacing held.
    """
    result = Paced()
    interval = 1.0 / rate
    # The sender's own garbage collections (of everything earlier rounds kept) paused it for tens of ms and
    # showed up as the agent's latency: collect once now, then keep the collector out of the measurement.
    gc.collect()
    gc.disable()
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as http:

        async def one(i: int, due: float) -> None:
            body = render(template, tid=PACED_ID_THREAD, counter=i + 1, targets=targets)
            now = loop.time()
            if not result.starts:
                result.first_sent = time.time()
            result.starts.append(now)
            result.lag_ms.append((now - due) * 1000)
            start = time.perf_counter()
            try:
                async with http.post(url + PATH, data=body) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            if status == "200":
                result.latencies_ms.append((time.perf_counter() - start) * 1000)
                # The ack's wall-clock time, for the ack -> decision figure: the agent's ledger stamps decisions
                # with the same clock (one machine).
                result.acks[ident_of(PACED_ID_THREAD, i + 1)] = result.last_answered = time.time()
            result.statuses[status] += 1

        tasks: list[asyncio.Task[None]] = []
        t0 = loop.time() + 0.05
        for i in range(count):
            due = t0 + i * interval
            delay = due - loop.time()
            if delay > 0:  # the loop's timers are ~1 ms coarse: requests that are due meanwhile go out together
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
            result.sent += 1
        _, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
            result.statuses["unfinished"] += 1
    gc.enable()
    return result


# ---------------------------------------------------------------------------------------------- what happened


async def read_metrics(url: str) -> dict[str, float]:
    """Each sample name of the agent's /metrics summed over its label sets, plus decisions and drops by label."""
    from prometheus_client.parser import text_string_to_metric_families

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url + "/metrics") as response:
        text = await response.text()
    totals: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
            if sample.name == "scaling_agent_decisions_total":
                totals[f"decisions {sample.labels['action']}/{sample.labels['outcome']}"] += sample.value
            if sample.name == "scaling_agent_sink_dropped_total":
                totals[f"dropped by sink {sample.labels['sink']}"] += sample.value
    return dict(totals)


async def sample_backlog(url: str, samples: list[tuple[float, int]], *, every: float = SAMPLE_SECONDS) -> None:
    """
    Until cancelled: every ``every`` seconds, (wall clock, ``scaling_agent_pending_events``) from the agent's
    /metrics. The line is found by a plain scan, not the Prometheus parser, so that the paced sender sharing
    this event loop is not held up. A scrape that fails or takes longer than ``every`` is skipped.
    """
    timeout = aiohttp.ClientTimeout(total=every)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            started, asked = time.monotonic(), time.time()  # a sample is stamped when it was asked for
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(url + "/metrics") as response:
                    text = await response.text()
                for line in text.splitlines():
                    if line.startswith("scaling_agent_pending_events "):
                        samples.append((asked, int(float(line.split()[1]))))
                        break
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


@dataclass
class Decided:
    """One bench alert's first decision, and its event, as the ledger has them (epoch seconds, one clock)."""

    at: float  # the decision's ``at``: taken when the worker began to decide, before its API reads
    received: float  # the event's ``received_at``: when the webhook handler took the notification in
    processed: float  # the event's ``processed_at``: committed after the decision's row (<= 1 writer batch later)


def read_decisions(path: Path) -> tuple[dict[str, Decided], list[float]]:
    """
    From the killed agent's sqlite file, read-only: each alert's (fingerprint's) first decision joined to its
    event by the trigger's event key, and the ``at`` of every decision (for decisions/s).
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        events = {
            str(key): (float(received), None if processed is None else float(processed))
            for key, received, processed in db.execute("SELECT key, received_at, processed_at FROM events")
        }
        rows = db.execute("SELECT at, body FROM decisions ORDER BY at").fetchall()
    finally:
        db.close()
    decided: dict[str, Decided] = {}
    ats = []
    for at, body in rows:
        ats.append(float(at))
        trigger = json.loads(body).get("trigger") or {}
        fingerprint, key = trigger.get("fingerprint"), trigger.get("event_key")
        event = events.get(key) if isinstance(key, str) else None
        if not isinstance(fingerprint, str) or fingerprint in decided or event is None:
            continue
        received, processed = event
        # An event without its processed mark (the process was killed between the two writes) counts as
        # recorded at its decision's `at`; the mark is what the figure normally uses.
        decided[fingerprint] = Decided(at=float(at), received=received, processed=processed or float(at))
    return decided, ats


def journal_ids(directory: Path) -> list[int]:
    """
    The delivery ids in an inbox journal, oldest first, read without changing anything: ``Journal.open()``
    would cut off a torn tail and delete spent segments. Reading stops in a segment where ``open()`` would
    cut it (a record cut short or failing its checksum).
    """
    from agent.ledger.journal import SUFFIX, _records  # the journal's own record format, not a copy of it

    ids: list[int] = []
    for segment in sorted(directory.glob("*" + SUFFIX)):
        if segment.name.removesuffix(SUFFIX).isdigit():
            ids += [delivery_id for _, delivery_id, _ in _records(segment.read_bytes())]
    return ids


def read_ledger(path: Path) -> dict[str, int]:
    """
    What the killed agent left, read-only: deliveries, events, decisions. Delivery ids run 1, 2, 3, … and
    ``meta.unpacked_through`` is the last one unpacked, so deliveries = that + the ones still waiting in the
    journal. ``in_order`` (1 or 0): the waiting ones are exactly the ids after the cursor, no gap.
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (events,) = db.execute("SELECT count(*) FROM events").fetchone()
        (unique,) = db.execute("SELECT count(*) FROM event_keys").fetchone()
        (processed,) = db.execute("SELECT count(*) FROM events WHERE processed_at IS NOT NULL").fetchone()
        (decisions,) = db.execute("SELECT count(*) FROM decisions").fetchone()
        row = db.execute("SELECT value FROM meta WHERE key = 'unpacked_through'").fetchone()
    finally:
        db.close()
    unpacked = int(row[0]) if row else 0
    # The journal may still hold unpacked deliveries, in a segment not yet spent: those are not waiting.
    waiting = [i for i in journal_ids(path.with_name(path.name + "-inbox")) if i > unpacked]
    return {
        "deliveries": unpacked + len(waiting),
        "unpacked": unpacked,
        "in_order": int(waiting == list(range(unpacked + 1, unpacked + 1 + len(waiting)))),
        "events": events,
        "unique": unique,
        "processed": processed,
        "decisions": decisions,
    }


def log_summary(path: Path) -> str:
    """The agent's warning/error lines, counted by message (a flood of them is a finding)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            counts[f"{record.get('level', '?')}: {record.get('event', '?')}"] += 1
        except (json.JSONDecodeError, AttributeError):
            counts["(not JSON) " + line[:80]] += 1
    return "; ".join(f"{n} x {message}" for message, n in counts.most_common(4)) or "none"


def own_cpu() -> float:
    """This process and its reaped children (wrk): user + system CPU seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Cpu:
    """Where the CPU went while the load ran: each server process, the load generator, everything else."""

    wall: float = 0.0
    busy: float = 0.0
    servers: dict[str, float] = field(default_factory=dict)
    generator: float = 0.0

    @property
    def other(self) -> float:
        return max(0.0, self.busy - sum(self.servers.values()) - self.generator)

    def describe(self) -> str:
        if not self.wall:
            return "-"
        parts = [f"{name} {seconds / self.wall:.0%}" for name, seconds in self.servers.items()]
        parts += [f"load gen {self.generator / self.wall:.0%}", f"others {self.other / self.wall:.0%}"]
        return ", ".join(parts)


class Meter:
    """CPU use over a stretch of time, from /proc (all on the machine, and per server process) and getrusage."""

    def __init__(self, children: dict[str, int]) -> None:
        self.children = children
        self.wall = time.perf_counter()
        self.busy = common.machine_busy()
        self.servers = {name: common.process_cpu(pid) for name, pid in children.items()}
        self.generator = own_cpu()

    def stop(self) -> Cpu:
        return Cpu(
            wall=time.perf_counter() - self.wall,
            busy=common.machine_busy() - self.busy,
            servers={name: common.process_cpu(pid) - self.servers[name] for name, pid in self.children.items()},
            generator=own_cpu() - self.generator,
        )


# ---------------------------------------------------------------------------------------------- orchestration


@dataclass
class Phase:
    round: int
    target: str  # bare | agent
    kind: str  # throughput | latency
    wrk: dict[str, Any] | None = None
    paced: Paced | None = None
    cpu: Cpu = field(default_factory=Cpu)
    quiet: float = 0.0  # cores busy just before the load started
    metrics: dict[str, float] = field(default_factory=dict)
    drained: tuple[int, float] | None = None  # decisions recorded while watching the worker, seconds watched
    load: tuple[float, float] = (float("nan"), float("nan"))  # wall clock: the load's start and end
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (wall clock, pending events) during the load
    stopped_at: float = float("nan")  # wall clock when the agent was sent SIGTERM (it exits at once)
    decided: dict[str, Decided] = field(default_factory=dict)  # fingerprint -> its first decision
    decision_ats: list[float] = field(default_factory=list)  # every decision's `at`
    ledger: dict[str, int] = field(default_factory=dict)
    logs: str = ""
    profile: Path | None = None

    @property
    def acked(self) -> int:
        if self.wrk is not None:
            return int(self.wrk["requests"] - self.wrk["non2xx"])
        return self.paced.ok if self.paced is not None else 0


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.token = secrets.token_urlsafe(24)
        self.template = body_template(args.alertname)
        self.targets = scaledobject_names(Path(args.examples))
        if not self.targets:
            raise SystemExit(f"no ScaledObjects in namespace {NAMESPACE} found in {args.examples}")
        (workdir / "body.json").write_text(self.template)
        self.env = {
            **os.environ,
            TOKEN_ENV: self.token,
            "WEBHOOK_BENCH_BODY": str(workdir / "body.json"),
            "WEBHOOK_BENCH_TARGETS": ",".join(self.targets),
            "WEBHOOK_BENCH_TOKEN": self.token,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }

    async def servers(self, tag: str, target: str, profile: Path | None) -> list[Child]:
        """Start the server(s) for one phase; the one to load is last."""
        if target == "bare":
            return [await Child.start(tag, ["--serve", "bare"], log=self.workdir / f"{tag}.log", env=self.env)]
        children = []
        try:
            children.append(
                await Child.start(
                    f"{tag}-cluster",
                    ["--serve", "cluster", "--examples", self.args.examples],
                    log=self.workdir / f"{tag}-cluster.log",
                    env=self.env,
                )
            )
            agent_dir = self.workdir / tag
            agent_dir.mkdir()
            argv = ["--serve", "agent", "--kube-url", children[0].url, "--workdir", str(agent_dir)]
            argv += ["--workers", str(self.args.workers)]
            if profile is not None:
                argv += ["--profile-out", str(profile)]
            children.append(await Child.start(tag, argv, log=self.workdir / f"{tag}.log", env=self.env))
        except BaseException:
            for child in reversed(children):
                await child.stop()
            raise
        return children

    async def phase(self, number: int, target: str, kind: str) -> Phase:
        result = Phase(round=number, target=target, kind=kind)
        tag = f"{target}-{kind}-{number}"
        first_kind = "latency" if self.args.skip_throughput else "throughput"
        if target == "agent" and kind == first_kind and self.args.profile and number == 1:
            result.profile = self.workdir / tag / "agent.prof"
        children = await self.servers(tag, target, result.profile)
        server = children[-1]
        sampler: asyncio.Task[None] | None = None
        try:
            result.quiet = await common.settle(self.args.settle)
            if target == "agent" and self.args.sample > 0:
                sampler = asyncio.create_task(sample_backlog(server.url, result.backlog, every=self.args.sample))
            meter = Meter({c.role: c.proc.pid for c in children})
            started = time.time()
            if kind == "throughput":
                result.wrk = await run_wrk(server.url, self.args, self.env)
                result.load = (started, time.time())
            else:
                result.paced = await run_paced(
                    server.url,
                    token=self.token,
                    template=self.template,
                    targets=self.targets,
                    count=self.args.requests,
                    rate=self.args.rate,
                )
                result.load = (result.paced.first_sent, result.paced.last_answered)
            result.cpu = meter.stop()
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                sampler = None
            if target == "agent":
                # The backlog at the end of the load, whatever the sampler's phase; then, the worker processing
                # asynchronously, watch it drain with no new intake for a moment.
                asked = time.time()
                before = await read_metrics(server.url)
                result.backlog.append((asked, int(before.get("scaling_agent_pending_events", 0))))
                await asyncio.sleep(self.args.observe)
                result.metrics = await read_metrics(server.url)
                decided = result.metrics.get("scaling_agent_decisions_total", 0) - before.get(
                    "scaling_agent_decisions_total", 0
                )
                result.drained = (int(decided), self.args.observe)
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            result.stopped_at = time.time()
            for child in reversed(children):
                await child.stop()
        if target == "agent":
            result.ledger = read_ledger(self.workdir / tag / "ledger.db")
            result.decided, result.decision_ats = read_decisions(self.workdir / tag / "ledger.db")
            result.logs = log_summary(self.workdir / f"{tag}.log")
        return result

    async def run(self) -> list[Phase]:
        phases = []
        kinds = [k for k in ("throughput", "latency") if not getattr(self.args, f"skip_{k}")]
        for number in range(1, self.args.rounds + 1):
            for kind in kinds:
                for target in ("bare", "agent"):
                    print(f"… round {number}/{self.args.rounds}: {kind} against the {target} server", flush=True)
                    phases.append(await self.phase(number, target, kind))
        return phases


# ---------------------------------------------------------------------------------------------- report


Bounded = list[tuple[float, bool]]  # (ms, censored): censored = undecided at the end, the value a lower bound


def pct_bounded(values: Bounded, q: float) -> tuple[float, bool]:
    """
    The q-quantile of (value, censored) pairs, where a censored value is only a lower bound (an alert still
    undecided when the agent was stopped: it waited at least that long). Returns (quantile, exact): not exact
    when a censored value is at or below it, as its true value could be higher and raise the quantile.
    """
    if not values:
        return float("nan"), True
    found = pct([v for v, _ in values], q)
    return found, not any(censored and v <= found for v, censored in values)


def fmt_bounded(values: Bounded, q: float | None) -> str:
    """A quantile (or the max, q=None) in ms, or seconds when large, with ≥ when only a lower bound is known."""
    if q is None:
        found = max((v for v, _ in values), default=float("nan"))
        exact = not any(censored for _, censored in values)  # any undecided alert may have waited longer
    else:
        found, exact = pct_bounded(values, q)
    text = f"{found / 1000:.2f} s" if found >= 1000 else f"{found:.1f} ms"
    return text if exact else f"≥ {text}"


@dataclass
class WorkerFigures:
    """The worker during one agent phase's load, and (paced) how long each acked alert waited for its decision."""

    acked: int
    decided: int  # of the acked alerts (paced), or of all decisions recorded (wrk: acks are not known per alert)
    rate: float  # decisions/s while the load ran
    backlog: list[int]  # pending events sampled during the load, the last at its end
    to_begun: Bounded  # ms from the ack to the decision's `at`
    to_recorded: Bounded  # ms from the ack to the event's processed mark (the decision recorded)

    @property
    def flat(self) -> bool:
        """Not growing: needs two samples at least (with --sample 0 there is only the one at the end)."""
        if len(self.backlog) < 2:
            return False
        first = next((n for n in self.backlog if n > 0), 0)
        last = self.backlog[-1] if self.backlog else 0
        return last <= max(BACKLOG_FLOOR, BACKLOG_FLAT_FACTOR * first)

    def describe_backlog(self) -> str:
        if not self.backlog:
            return "no samples"
        first = next((n for n in self.backlog if n > 0), 0)
        b = self.backlog
        return f"first {first:,}, min {min(b):,}, max {max(b):,}, last {b[-1]:,} ({len(b)} samples)"


def worker_figures(p: Phase) -> WorkerFigures:
    start, end = p.load
    span = end - start
    during = sum(1 for at in p.decision_ats if start <= at <= end)
    backlog = [n for t, n in p.backlog if t >= start]
    to_begun: Bounded = []
    to_recorded: Bounded = []
    if p.paced is not None:
        for fingerprint, acked in p.paced.acks.items():
            d = p.decided.get(fingerprint)
            if d is None:
                waited = (p.stopped_at - acked) * 1000
                to_begun.append((waited, True))
                to_recorded.append((waited, True))
            else:
                to_begun.append(((d.at - acked) * 1000, False))
                to_recorded.append(((d.processed - acked) * 1000, False))
        decided = sum(1 for f in p.paced.acks if f in p.decided)
    else:
        decided = len(p.decided)
    return WorkerFigures(
        acked=p.acked,
        decided=decided,
        rate=during / span if span > 0 else float("nan"),
        backlog=backlog,
        to_begun=to_begun,
        to_recorded=to_recorded,
    )


def cpu_note(p: Phase) -> str:
    return f"{p.cpu.describe()}; before: {p.quiet:.2f} cores busy"


def report_worker(w: Any, agent_phases: list[Phase], args: argparse.Namespace) -> list[tuple[str, bool]]:
    """The worker during the load, and ack -> decision at the paced rate; returns the worker's targets."""
    checks: list[tuple[str, bool]] = []
    w("\nThe worker during the load: decisions/s from the decisions' `at` in the ledger, between the load's first")
    w("\nrequest and its last answer. Backlog: scaling_agent_pending_events, read from /metrics every ")
    w(f"{args.sample:g} s during the\nload (0: never) and once at its end; flat when the last sample is ")
    w(f"≤ {BACKLOG_FLAT_FACTOR:g}x the first nonzero one, or ≤ {BACKLOG_FLOOR}.\n")
    figures = {(p.kind, p.round): worker_figures(p) for p in agent_phases}
    for p in agent_phases:
        f = figures[p.kind, p.round]
        if p.paced is not None:
            by_end = f"{f.decided:,} of the {f.acked:,} acked alerts decided by the end"
        else:
            by_end = f"{f.decided:,} alerts decided by the end, of {f.acked:,} acked"
        w(f"  {p.kind:<10} r{p.round}: {f.rate:,.0f} decisions/s; backlog {f.describe_backlog()}, ")
        trend = "flat" if f.flat else "GROWING" if len(f.backlog) >= 2 else "trend unknown"
        w(f"{trend}; {by_end}\n")

    paced = [p for p in agent_phases if p.paced is not None]
    if not paced:
        return checks
    w(f"\nAck → decision at {args.rate:,.0f} alerts/s: from the paced sender's clock at each 200 to the ledger's ")
    w("times (one machine,\none clock). *begun*: the decision's `at`, taken before the worker's API reads. ")
    w("*recorded*: the event's processed\nmark, committed after the decision's row (at most one writer batch ")
    w("later). Alerts still undecided when the agent\nwas stopped count with the time they had waited by then, ")
    w("so a figure they reach is only a lower bound (≥).\n")
    w(f"  {'round':<6}{'decided':>14}   {'begun p50':>11}{'p99':>11}{'max':>11}")
    w(f"   {'recorded p50':>12}{'p99':>11}{'max':>11}\n")

    def row(label: str, begun: Bounded, recorded: Bounded) -> None:
        decided = sum(1 for _, censored in recorded if not censored)
        w(f"  {label:<6}{f'{decided:,}/{len(recorded):,}':>14}   ")
        w("".join(f"{fmt_bounded(begun, q):>11}" for q in (0.5, 0.99, None)))
        w(f"   {fmt_bounded(recorded, 0.5):>12}")
        w("".join(f"{fmt_bounded(recorded, q):>11}" for q in (0.99, None)) + "\n")

    pooled_begun: Bounded = []
    pooled_recorded: Bounded = []
    for p in paced:
        f = figures[p.kind, p.round]
        pooled_begun += f.to_begun
        pooled_recorded += f.to_recorded
        row(str(p.round), f.to_begun, f.to_recorded)
    row("all", pooled_begun, pooled_recorded)

    p99, exact = pct_bounded(pooled_recorded, 0.99)
    target = f"< {DECISION_P99_TARGET_MS:g} ms at {args.rate:,.0f}/s"
    shown = fmt_bounded(pooled_recorded, 0.99)
    checks.append((f"ack → decision recorded p99 {shown} {target}", exact and p99 < DECISION_P99_TARGET_MS))
    flat = [figures[p.kind, p.round] for p in paced]
    lasts = ", ".join(f"{f.backlog[-1]:,}" if f.backlog else "-" for f in flat)
    checks.append(
        (
            f"the worker keeps up at {args.rate:,.0f}/s: backlog flat in every round (last sample {lasts})",
            all(f.flat for f in flat),
        )
    )
    return checks


def report(phases: list[Phase], args: argparse.Namespace, targets: list[str]) -> tuple[bool, bool]:
    """Prints the report; returns (the webhook's targets met, the worker's targets met)."""
    out = io.StringIO()
    w = out.write
    checks: list[tuple[str, bool]] = []
    worker_checks: list[tuple[str, bool]] = []
    w(f"\nWebhook bench: Alertmanager v4 payloads, one firing {args.alertname} alert each, every alert distinct\n")
    w(f"(fingerprint and instance label), scaledObject cycling over {len(targets)} ScaledObjects in {NAMESPACE}.\n")
    w(f"Agent: dry-run, sqlite ledger, workers={args.workers}, emulated Kubernetes API in its own process (nice 19).\n")
    w(f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {platform.platform()}.\n")

    thr = {(p.round, p.target): p for p in phases if p.kind == "throughput"}
    if thr:
        w(f"\nThroughput: wrk -t{args.threads} -c{args.connections} -d{args.duration}s -s {LUA.name}, per round\n")
        w(f"  {'round':<6}{'server':<7}{'alerts/s':>9}{'requests':>10}{'non-2xx':>8}{'sock err':>9}")
        w(f"{'wrk p50':>9}{'wrk p99':>9}   CPU while loaded (100% = one core)\n")
        ratios: list[float] = []
        rps: dict[str, list[float]] = {"bare": [], "agent": []}
        for number in range(1, args.rounds + 1):
            for target in ("bare", "agent"):
                p = thr[number, target]
                r = p.wrk
                assert r is not None
                w(f"  {number:<6}{target:<7}{r['rps']:>9,.0f}{r['requests']:>10,}{r['non2xx']:>8}")
                rps[target].append(r["rps"])
                latency = r["latency_us"]
                w(f"{r['socket_errors']:>9}{latency['p50'] / 1000:>7.1f}ms{latency['p99'] / 1000:>7.1f}ms")
                w(f"   {cpu_note(p)}\n")
            ratios.append(rps["agent"][-1] / rps["bare"][-1])
        ratio = statistics.median(ratios)
        bare_rps, agent_rps = statistics.median(rps["bare"]), statistics.median(rps["agent"])
        w(f"  median: bare {bare_rps:,.0f} alerts/s, agent {agent_rps:,.0f} alerts/s; ratio agent/bare per round ")
        w(", ".join(f"{x:.3f}" for x in ratios) + f", median {ratio:.3f}\n")
        w("  (wrk's latencies are closed-loop at saturation, not the latency target; that is measured below)\n")
        checks.append((f"throughput ratio {ratio:.3f} ≥ {RATIO_TARGET}", ratio >= RATIO_TARGET))

    lat = {(p.round, p.target): p for p in phases if p.kind == "latency"}
    if lat:
        w(f"\nAck latency: open-loop paced sender (aiohttp), {args.requests:,} requests at {args.rate:,.0f}/s")
        w(", per round\n")
        w(f"  {'round':<6}{'server':<7}{'sent/s':>7}{'200s':>7}{'other':>6}")
        w(f"{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}{'send lag p99':>13}   CPU while loaded (100% = one core)\n")
        pooled: dict[str, list[float]] = {"bare": [], "agent": []}
        all_ok = True
        for number in range(1, args.rounds + 1):
            for target in ("bare", "agent"):
                p = lat[number, target]
                pr = p.paced
                assert pr is not None
                other = sum(n for s, n in pr.statuses.items() if s != "200")
                all_ok &= target == "bare" or other == 0
                values = pr.latencies_ms
                pooled[target] += values
                w(f"  {number:<6}{target:<7}{pr.send_rate:>7,.0f}{pr.ok:>7,}{other:>6}")
                for q in (0.5, 0.9, 0.99):
                    w(f"{pct(values, q):>8.2f}ms")
                w(f"{max(values, default=float('nan')):>8.1f}ms{pct(pr.lag_ms, 0.99):>11.2f}ms   {cpu_note(p)}\n")
                if other:
                    w(f"        answers other than 200: {dict(pr.statuses)}\n")
        for target in ("bare", "agent"):
            values = pooled[target]
            w(f"  all rounds, {target:<5}: p50 {pct(values, 0.5):.2f} ms, p99 {pct(values, 0.99):.2f} ms ")
            w(f"over {len(values):,} acks\n")
        p99 = pct(pooled["agent"], 0.99)
        checks.append((f"agent p99 {p99:.2f} ms < {P99_TARGET_MS:g} ms at {args.rate:,.0f}/s", p99 < P99_TARGET_MS))
        checks.append(("every paced request to the agent answered 200", all_ok))

    agent_phases = [p for p in phases if p.target == "agent"]
    if agent_phases:
        w("\nNothing lost: acks vs. the agent's /metrics (read before the process was ended) and its ledger file\n")
        w(f"(read after). wrk stops counting at its deadline, so up to {args.connections} requests in flight then\n")
        w("may be in the ledger without an ack counted.\n")
        lost_any = False
        for p in agent_phases:
            m, led = p.metrics, p.ledger
            received = int(m.get("scaling_agent_events_received_total", 0))
            # Without an answer (wrk's deadline, a client timeout) an alert may be recorded but not seen acked.
            slack = sum(p.paced.statuses.values()) - p.paced.ok if p.paced is not None else args.connections
            stored = p.acked <= led["deliveries"] <= p.acked + slack
            # One alert per notification: each unpacked delivery is one event, and every one is distinct.
            unpacked = led["unpacked"] == led["events"] == led["unique"] and received <= led["events"]
            # The waiting deliveries follow the cursor with no gap.
            ok = stored and unpacked and bool(led["in_order"])
            lost_any |= not ok
            w(f"  {p.kind:<10} r{p.round}: acked {p.acked:,}, notifications stored {led['deliveries']:,} ")
            w(f"(unpacked {led['unpacked']:,} into {led['events']:,} events, {led['unique']:,} distinct): ")
            w(f"{'ok' if ok else 'MISMATCH'}")
            if not led["in_order"]:
                w("; the waiting deliveries are not the ids right after unpacked_through")
            w("\n")
        checks.append(("no acknowledged alert missing from the ledger", not lost_any))

        w("\nThe worker (asynchronous, after the ack): progress by the end of each agent run\n")
        for p in agent_phases:
            m, led = p.metrics, p.ledger
            kinds = {k.removeprefix("decisions "): int(v) for k, v in m.items() if k.startswith("decisions ")}
            drops = {k.removeprefix("dropped by sink "): int(v) for k, v in m.items() if k.startswith("dropped by ")}
            w(f"  {p.kind:<10} r{p.round}: {led['unpacked']:,} of {led['deliveries']:,} notifications unpacked, ")
            w(f"{led['processed']:,} events processed, ")
            w(f"{int(m.get('scaling_agent_pending_events', 0)):,} pending; ")
            if p.drained is not None and p.drained[1] > 0:
                decided, seconds = p.drained
                emptied = " (backlog emptied: a lower bound)" if not m.get("scaling_agent_pending_events") else ""
                w(f"{decided / seconds:,.0f} decisions/s in the {seconds:g} s after the load{emptied}; ")
            w(f"decisions {kinds or '-'}; sink drops {drops or 'none'}; ")
            w(f"rejections {int(m.get('scaling_agent_webhook_rejections_total', 0))}\n")
            w(f"  {'':<10}     warnings/errors logged: {p.logs}\n")

        worker_checks += report_worker(w, agent_phases, args)

    busy = [p for p in phases if p.quiet >= common.QUIET_CORES]
    if busy:
        w(f"\nCaution: {len(busy)} of {len(phases)} measurements started on a busy machine (--settle ran out with ")
        w(f"≥ {common.QUIET_CORES:g} cores busy): {', '.join(f'{p.target} {p.kind} r{p.round}' for p in busy)}.\n")
        w("Other work shared the CPU with them; their figures are suspect, and so is any comparison using them.\n")

    w("\nTargets:\n")
    for text, ok in checks:
        w(f"  {'met    ' if ok else 'NOT met'}  {text}\n")
    for text, ok in worker_checks:
        w(f"  {'met    ' if ok else 'NOT met'}  {text} (worker: fails --check only with --check-worker)\n")
    if args.profile:
        w("(--profile: the agent's first run in round 1 ran under cProfile, which slows it; see the profile below)\n")
    print(out.getvalue(), end="")
    for p in phases:
        if p.profile is not None and p.profile.exists():
            print_profile(p.profile, args.profile_top)
    return all(ok for _, ok in checks), all(ok for _, ok in worker_checks)


def print_profile(path: Path, top: int) -> None:
    import pstats

    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(str(path), stream=text).strip_dirs().sort_stats(order).print_stats(top)
        lines = text.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        print(f"\nAgent event loop (main thread) under wrk, round 1, top {top} by {order}:")
        print("\n".join(lines[start:]).rstrip())


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Alertmanager webhook bench: the agent (dry-run, emulated API) next to a bare aiohttp handler.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every measurement on both servers")
    parser.add_argument("--duration", type=int, default=5, help="wrk seconds per server per round")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the other core to the server)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced sender: alerts per second")
    parser.add_argument("--requests", type=int, default=5000, help="paced sender: requests per server per round")
    parser.add_argument("--observe", type=float, default=3.0, help="seconds to watch the agent's worker after load")
    parser.add_argument(
        "--sample",
        type=float,
        default=SAMPLE_SECONDS,
        help="read the agent's backlog from /metrics this often during the load (0: only at its end)",
    )
    parser.add_argument("--settle", type=float, default=20.0, help="max seconds to wait for a quiet machine")
    parser.add_argument("--workers", type=int, default=8, help="the agent's worker lanes (config workers)")
    parser.add_argument(
        "--alertname",
        default="MCPFrequentScaling",
        help="alert to send; one no rule matches (BenchNoRule) leaves the Kubernetes calls out",
    )
    parser.add_argument("--examples", default=str(ROOT / "deploy" / "examples"), help="objects for the emulated API")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="path of wrk")
    parser.add_argument("--skip-throughput", action="store_true", help="only the paced latency measurement")
    parser.add_argument("--skip-latency", action="store_true", help="only the wrk throughput measurement")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the agent's event loop in round 1's first run (wrk, or paced with --skip-throughput)",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="profile lines to print")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the webhook's targets are met")
    parser.add_argument(
        "--check-worker",
        action="store_true",
        help="exit 1 unless every target is met, the worker's too (ack -> decision p99, backlog flat)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (ledgers, logs, profile)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not give the server under test a core of its own (default: pinned when there are 2+ cores)",
    )
    # Internal: this script started as one of the servers.
    parser.add_argument("--serve", choices=["bare", "agent", "cluster"], help=argparse.SUPPRESS)
    parser.add_argument("--kube-url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.serve:
        bounds = {"rounds": (1, 20), "duration": (1, 120), "connections": (1, 1000), "threads": (1, 16)}
        bounds |= {
            "requests": (1, 100_000),
            "rate": (1, 20_000),
            "observe": (0, 60),
            "sample": (0, 60),
            "settle": (0, 300),
            "workers": (1, 64),
        }
        for name, (low, high) in bounds.items():
            if not low <= getattr(args, name) <= high:
                parser.error(f"--{name} must be between {low} and {high}")
    return args


async def bench_main(args: argparse.Namespace, workdir: Path) -> tuple[bool, bool]:
    bench = Bench(args, workdir)
    phases = await bench.run()
    return report(phases, args, bench.targets)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return run_child(args)
    if shutil.which(args.wrk) is None:
        print(f"wrk not found ({args.wrk}); on Debian/Ubuntu: apt-get install wrk", file=sys.stderr)
        return 2
    if args.no_pin:
        os.environ["BENCH_NO_PIN"] = "1"  # for the children
    common.pin(OTHERS_CPU, args)  # the parent, and wrk which inherits it
    with common.workdir("webhook-bench-", keep=args.keep) as workdir:
        met, worker_met = asyncio.run(bench_main(args, workdir))
    if args.check_worker:
        return 0 if met and worker_met else 1
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
