"""
Pricing bench: what the pricer (``agent/cost.py``) costs per price and per spend, on a cache miss and on a hit,
what a miss costs the event loop, and how fast it falls back to the table when Prometheus is gone or hung.

One run, against a real Prometheus (Debian's ``prometheus``) scraping, every second, a small exporter in this
process that serves synthetic OpenCost and kube-state-metrics series (by default 50 nodes with their unit prices;
2,000 pods of 200 Deployments in 5 namespaces, each pod with a CPU and a memory request): the series the pricer
reads, with the label names their exporters use, as in ``tests/test_cost.py``. Then (see bench/README.md):

1. ``price()`` on a cache miss (``cost.cache: 0s``) for N different workloads, and on a hit (``5m``, the same
   workloads priced twice, the second round timed);
2. ``spend(None)`` on a miss;
3. a ticker on the loop (sleep 1 ms, note how late it wakes) while the loop is idle, while N misses run one after
   another through the pricer (its queries in its own threads), and while the same queries run synchronously on
   the loop (what the client would do without the pricer's pool);
4. the fallback: Prometheus terminated, N prices of workloads whose requests were seen (the table, connection
   refused); then a listener on Prometheus's port that accepts and reads but never answers (``cost.prometheus
   .timeout`` bounds each miss).

It prints ratios measured in this run and asserts nothing. All traffic is on 127.0.0.1; every loop is bounded in
count and every wait in time. Run ``python bench/pricing.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import common
import yaml
from aiohttp import web
from common import free_port, pct

from agent.config import CostConfig
from agent.cost import GIB, NODE_PRICES, REQUESTS, Pricer, pod_pattern
from agent.structs import TargetRef
from agent.targets.base import TargetState

START_TIMEOUT = 60.0  # seconds for Prometheus to be ready, and again to have scraped every series
STOP_TIMEOUT = 20.0  # ... for it to exit after SIGTERM before it is killed
TICK = 0.001  # the ticker's sleep
TICKER_MAX_SECONDS = 30.0  # the idle ticker's longest run
CPUS = [0.1, 0.25, 0.5, 1.0, 2.0]  # a workload's CPU request per pod, cores
MEMORIES = [128, 256, 512, 1024, 2048, 4096]  # ... memory request per pod, MiB


# ---------------------------------------------------------------------------------------------- the series


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    cpu: float  # cores per pod
    memory: int  # bytes per pod
    nodes: tuple[str, ...]  # one per pod

    def state(self) -> TargetState:
        """What the pricer is given: a ScaledObject's state naming this Deployment (as tests/test_cost.py's)."""
        return TargetState(
            ref=TargetRef("ScaledObject", self.namespace, f"{self.name}-scaler"),
            resource_version="1",
            values={"min-replicas": 0, "max-replicas": 20, "paused-replicas": None},
            replicas=len(self.nodes),
            workload=("Deployment", self.name),
        )


@dataclass(frozen=True)
class Cluster:
    nodes: dict[str, tuple[float, float]]  # node → $/vCPU-h, $/GiB-h
    workloads: list[Workload]

    def expected(self, workload: Workload) -> float:
        """One replica's price worked out here from the series: the average over its pods."""
        total = 0.0
        for node in workload.nodes:
            cpu, ram = self.nodes[node]
            total += workload.cpu * cpu + workload.memory / GIB * ram
        return total / len(workload.nodes)

    def metrics(self) -> str:
        """The exposition text, built once (the series do not change)."""
        lines = ["# TYPE node_cpu_hourly_cost gauge"]
        types = {}
        for i, node in enumerate(self.nodes):
            types[node] = "m5.xlarge" if i % 3 else "c5.2xlarge"
        for node, (cpu, _) in self.nodes.items():
            lines.append(
                f'node_cpu_hourly_cost{{instance_type="{types[node]}",node="{node}",region="eu-central-1"}} {cpu}'
            )
        lines.append("# TYPE node_ram_hourly_cost gauge")
        for node, (_, ram) in self.nodes.items():
            lines.append(
                f'node_ram_hourly_cost{{instance_type="{types[node]}",node="{node}",region="eu-central-1"}} {ram}'
            )
        lines.append("# TYPE kube_pod_container_resource_requests gauge")
        rng = random.Random(7)
        for w in self.workloads:
            template = "".join(rng.choices("bcdfghjklmnpqrstvwxz2456789", k=10))
            for node in w.nodes:
                pod = f"{w.name}-{template}-{''.join(rng.choices('bcdfghjklmnpqrstvwxz2456789', k=5))}"
                labels = f'container="mcp-server",namespace="{w.namespace}",node="{node}",pod="{pod}"'
                lines.append(f'kube_pod_container_resource_requests{{{labels},resource="cpu",unit="core"}} {w.cpu}')
                lines.append(
                    f'kube_pod_container_resource_requests{{{labels},resource="memory",unit="byte"}} {w.memory}'
                )
        return "\n".join(lines) + "\n"

    @property
    def series(self) -> int:
        return 2 * len(self.nodes) + 2 * sum(len(w.nodes) for w in self.workloads)


def make_cluster(nodes: int, workloads: int, pods: int, namespaces: int) -> Cluster:
    rng = random.Random(1)
    prices = {
        f"ip-10-0-{i // 250}-{i % 250 + 1}.eu-central-1.compute.internal": (
            round(rng.uniform(0.006, 0.05), 6),
            round(rng.uniform(0.0008, 0.006), 6),
        )
        for i in range(nodes)
    }
    names = list(prices)
    made = [
        Workload(
            namespace=f"bench-team-{i % namespaces}",
            name=f"mcp-server-{i:03d}",
            cpu=rng.choice(CPUS),
            memory=rng.choice(MEMORIES) * 1024 * 1024,
            nodes=tuple(rng.choice(names) for _ in range(pods)),
        )
        for i in range(workloads)
    ]
    return Cluster(prices, made)


class Exporter:
    """Serves the cluster's series at /metrics on 127.0.0.1, the same text at every scrape."""

    def __init__(self, text: str) -> None:
        self.body = text.encode()
        self.port = free_port()
        self.scrapes = 0
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(body=self.body, content_type="text/plain")

    async def __aenter__(self) -> Exporter:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


# ---------------------------------------------------------------------------------------------- Prometheus


class Prometheus:
    """The real binary on loopback, scraping the exporter every second (``honor_labels``, as in the tests)."""

    def __init__(self, binary: str, workdir: Path, exporter_port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.exporter_port = exporter_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        config = self.workdir / "prometheus.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "opencost-and-kube-state-metrics",
                            "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}],
                        }
                    ],
                }
            )
        )
        argv = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)
        if not await until(self._ready, START_TIMEOUT):
            raise RuntimeError(
                f"Prometheus not ready in {START_TIMEOUT:.0f} s; its log ends with:\n{common.tail(self.log)}"
            )

    async def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(
                f"Prometheus exited ({self.proc.returncode}); its log ends with:\n{common.tail(self.log)}"
            )
        with contextlib.suppress(aiohttp.ClientError, OSError):
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"{self.url}/-/ready") as answer:
                return answer.status == 200
        return False

    async def stop(self) -> None:
        """SIGTERM, and a kill if it has not exited in STOP_TIMEOUT."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class HungListener:
    """Accepts on 127.0.0.1:port and reads whatever comes, never writing a byte: a Prometheus that hangs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            while await reader.read(65536):  # until the client gives up and closes
                pass
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> HungListener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)


async def until(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Ask ``check`` every 0.25 s until it says yes (True) or ``within`` seconds have passed (False)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.25)
    return False


# ---------------------------------------------------------------------------------------------- measurements


def cost_config(url: str, *, cache: str, timeout: float) -> CostConfig:
    return CostConfig.model_validate({"prometheus": {"url": url, "timeout": f"{timeout}s"}, "cache": cache})


@dataclass
class Timed:
    """Latencies (seconds) of one measurement, and where its prices came from."""

    name: str
    seconds: list[float]
    sources: dict[str, int]
    wall: float = 0.0  # the measurement's duration
    note: str = ""


async def time_prices(pricer: Pricer, workloads: list[Workload], name: str) -> tuple[Timed, list[Any]]:
    """Price each workload once, one after another, timing each ``price()``."""
    seconds, prices = [], []
    sources: dict[str, int] = {}
    started = time.perf_counter()
    for workload in workloads:
        state = workload.state()
        t0 = time.perf_counter()
        price = await pricer.price(state)
        seconds.append(time.perf_counter() - t0)
        prices.append(price)
        sources[price.source.value] = sources.get(price.source.value, 0) + 1
    return Timed(name, seconds, sources, wall=time.perf_counter() - started), prices


def matching(cluster: Cluster, workloads: list[Workload], prices: list[Any]) -> int:
    """How many prices agree with the series (the pricer rounds to 6 decimals)."""
    return sum(
        1
        for w, p in zip(workloads, prices, strict=True)
        if p.per_hour is not None and abs(p.per_hour - cluster.expected(w)) <= 2e-6
    )


class Ticker:
    """A task on the loop that sleeps ``TICK`` and notes how late it wakes, until stopped (or ``limit`` s)."""

    def __init__(self, limit: float) -> None:
        self.late: list[float] = []
        self._stop = asyncio.Event()
        self._limit = limit
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        deadline = time.perf_counter() + self._limit
        while not self._stop.is_set() and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await asyncio.sleep(TICK)
            self.late.append(time.perf_counter() - t0 - TICK)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def done(self) -> list[float]:
        assert self._task is not None
        self._stop.set()
        await self._task
        return self.late


def blocking_queries(prometheus: Any, workload: Workload, cluster: Cluster) -> None:
    """The two queries of one miss, run synchronously on the calling thread (here: the loop's)."""
    match = (
        f'namespace="{workload.namespace}", pod=~`{pod_pattern("Deployment", workload.name)}`, resource=~"cpu|memory"'
    )
    prometheus.custom_query(REQUESTS.format(match=match))
    nodes = "|".join(re.escape(n) for n in sorted(set(workload.nodes)))
    prometheus.custom_query(NODE_PRICES.format(nodes=nodes))


@dataclass
class Results:
    cluster: Cluster
    busy: dict[str, float]
    miss: Timed | None = None
    hit: Timed | None = None
    spend: Timed | None = None
    ticks: dict[str, list[float]] | None = None
    tick_walls: dict[str, float] | None = None
    refused: Timed | None = None
    hung: Timed | None = None
    matched: int = 0
    example: str = ""


async def bench(args: argparse.Namespace, workdir: Path) -> Results:
    cluster = make_cluster(args.nodes, args.workloads, args.pods, args.namespaces)
    sample = cluster.workloads[: args.samples]
    results = Results(cluster=cluster, busy={})
    print(
        f"… {len(cluster.nodes)} nodes, {sum(len(w.nodes) for w in cluster.workloads):,} pods of "
        f"{len(cluster.workloads)} Deployments in {args.namespaces} namespaces: {cluster.series:,} series",
        flush=True,
    )
    async with Exporter(cluster.metrics()) as exporter:
        prom = Prometheus(args.prometheus, workdir, exporter.port)
        try:
            await prom.start()
            print(f"… Prometheus at {prom.url}, scraping {len(exporter.body) / 1024:.0f} KiB every second", flush=True)
            probe = Pricer(cost_config(prom.url, cache="0s", timeout=2.0), api=None)
            try:

                async def scraped() -> bool:
                    with contextlib.suppress(Exception):
                        rows = await probe.query(
                            'count({__name__=~"kube_pod_container_resource_requests|node_.*_hourly_cost"})'
                        )
                        return bool(rows) and int(float(rows[0]["value"][1])) == cluster.series
                    return False

                if not await until(scraped, START_TIMEOUT):
                    raise RuntimeError(
                        f"Prometheus did not scrape all {cluster.series} series in {START_TIMEOUT:.0f} s"
                    )
            finally:
                probe.close()
            await run_measurements(args, cluster, sample, prom, results)
        finally:
            await prom.stop()
    return results


async def run_measurements(
    args: argparse.Namespace, cluster: Cluster, sample: list[Workload], prom: Prometheus, results: Results
) -> None:
    timeout = args.timeout
    warm = sample[: min(20, len(sample))]

    # 1. price() on a miss, and on a hit
    results.busy["price"] = await common.settle(args.settle)
    print("… 1. price(): misses, then hits", flush=True)
    miss_pricer = Pricer(cost_config(prom.url, cache="0s", timeout=timeout), api=None)
    hit_pricer = Pricer(cost_config(prom.url, cache="5m", timeout=timeout), api=None)
    try:
        await time_prices(miss_pricer, warm, "warm-up")  # the connection, Prometheus's first postings
        results.miss, prices = await time_prices(miss_pricer, sample, "price() miss")
        results.matched = matching(cluster, sample, prices)
        first = prices[0]
        results.example = (
            f"{sample[0].namespace}/{sample[0].name}: ${first.per_hour}/h ({first.source.value}): {first.note}"
        )
        await time_prices(hit_pricer, sample, "fill the cache")
        results.hit, _ = await time_prices(hit_pricer, sample, "price() hit")

        # 2. spend(None) on a miss
        results.busy["spend"] = await common.settle(args.settle)
        print("… 2. spend(None): misses", flush=True)
        for _ in range(5):
            await miss_pricer.spend(None)
        seconds: list[float] = []
        sources: dict[str, int] = {}
        started = time.perf_counter()
        for _ in range(args.spends):
            t0 = time.perf_counter()
            spent = await miss_pricer.spend(None)
            seconds.append(time.perf_counter() - t0)
            sources[spent.source.value] = sources.get(spent.source.value, 0) + 1
        results.spend = Timed("spend(None) miss", seconds, sources, wall=time.perf_counter() - started)
        results.spend.note = f"${spent.per_hour:.4f}/h over {args.namespaces} namespaces"

        # 3. the loop: a ticker, idle / beside misses in the pricer's threads / beside the same queries on the loop
        results.busy["loop"] = await common.settle(args.settle)
        print("… 3. the loop: ticker idle, beside misses, beside blocking queries", flush=True)
        ticks: dict[str, list[float]] = {}
        walls: dict[str, float] = {}
        with Ticker(TICKER_MAX_SECONDS) as ticker:
            beside, _ = await time_prices(miss_pricer, sample, "misses beside the ticker")
            ticks["pricer"] = await ticker.done()
        walls["pricer"] = beside.wall
        idle_for = min(max(beside.wall, 2.0), TICKER_MAX_SECONDS)
        with Ticker(idle_for) as ticker:
            await asyncio.sleep(idle_for)
            ticks["idle"] = await ticker.done()
        walls["idle"] = idle_for
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        sync = PrometheusConnect(
            url=prom.url, retry=Retry(total=0, connect=0, read=0, redirect=0, status=0), timeout=timeout
        )
        try:
            with Ticker(TICKER_MAX_SECONDS) as ticker:
                started = time.perf_counter()
                for workload in sample:
                    blocking_queries(sync, workload, cluster)
                    await asyncio.sleep(0)  # the loop runs between two misses, never during one
                walls["blocking"] = time.perf_counter() - started
                ticks["blocking"] = await ticker.done()
        finally:
            sync.close()
        results.ticks, results.tick_walls = ticks, walls

        # 4. the fallback: Prometheus gone (connection refused), then hung (a listener that never answers)
        print("… 4. fallback: Prometheus terminated, then a listener that never answers", flush=True)
        fallback = Pricer(cost_config(prom.url, cache="0s", timeout=timeout), api=None)
        try:
            await time_prices(fallback, sample, "requests seen")  # remembers each workload's requests
            await prom.stop()
            results.busy["refused"] = await common.settle(args.settle)
            results.refused, prices = await time_prices(fallback, sample, "fallback, refused")
            results.refused.note = (
                f"{sum('last seen in Prometheus' in p.note for p in prices)} with the requests last seen"
            )
            async with HungListener(prom.port) as hung:
                results.hung, prices = await time_prices(fallback, sample[: args.hung], "fallback, hung")
            results.hung.note = (
                f"timeout {timeout:g} s; {hung.accepted} connections accepted, none answered; "
                f"{sum('last seen in Prometheus' in p.note for p in prices)} with the requests last seen"
            )
        finally:
            fallback.close()
    finally:
        miss_pricer.close()
        hit_pricer.close()


# ---------------------------------------------------------------------------------------------- report


def human(seconds: float) -> str:
    """Seconds in µs below 1 ms, in ms below 1 s, else in s."""
    if seconds != seconds:
        return "-"
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}x" if b > 0 else "-"


def sources_text(sources: dict[str, int]) -> str:
    return ", ".join(f"{n} {source}" for source, n in sorted(sources.items()))


def report(results: Results, args: argparse.Namespace) -> None:
    print()
    print(f"example: {results.example[:200]}{'…' if len(results.example) > 200 else ''}")
    print(f"machine busy before each phase (cores): {', '.join(f'{k} {v:.2f}' for k, v in results.busy.items())}")
    rows: list[tuple[str, str, str, str, str]] = []
    for timed in (results.miss, results.hit, results.spend, results.refused, results.hung):
        if timed is None:
            continue
        note = sources_text(timed.sources)
        if timed is results.miss:
            note += f"; {results.matched} match the series"
        if timed.note:
            note += f"; {timed.note}"
        rows.append(
            (timed.name, str(len(timed.seconds)), human(pct(timed.seconds, 0.5)), human(pct(timed.seconds, 0.99)), note)
        )
    if results.ticks is not None and results.tick_walls is not None:
        labels = {
            "idle": "ticker lateness, loop idle",
            "pricer": "ticker lateness, beside misses (pricer's threads)",
            "blocking": "ticker lateness, beside the same queries on the loop",
        }
        for key in ("idle", "pricer", "blocking"):
            late = results.ticks.get(key, [])
            worst = human(max(late, default=float("nan")))
            note = f"{len(late)} ticks in {results.tick_walls.get(key, 0):.2f} s; max {worst}"
            rows.append((labels[key], str(len(late)), human(pct(late, 0.5)), human(pct(late, 0.99)), note))
    widths = [max(len(row[i]) for row in [("measurement", "n", "p50", "p99", ""), *rows]) for i in range(4)]
    header = ("measurement", "n", "p50", "p99", "notes")
    print()
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, [*widths, 0], strict=True))
        )
    )
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(row[i].rjust(widths[i]) for i in (1, 2, 3)), row[4]]
        print("  ".join(cells))
    print()
    if results.miss and results.hit:
        miss, hit = results.miss.seconds, results.hit.seconds
        at50, at99 = ratio(pct(miss, 0.5), pct(hit, 0.5)), ratio(pct(miss, 0.99), pct(hit, 0.99))
        print(f"price() miss/hit: {at50} at p50, {at99} at p99")
    if results.ticks:
        idle = pct(results.ticks["idle"], 0.99)
        print(
            "ticker p99 lateness against the idle loop: "
            f"beside misses in the pricer's threads {ratio(pct(results.ticks['pricer'], 0.99), idle)}, "
            f"beside the same queries on the loop {ratio(pct(results.ticks['blocking'], 0.99), idle)} "
            f"(the GIL's switch interval: {human(sys.getswitchinterval())})"
        )
    if results.hung:
        print(
            f"hung Prometheus: p99 {human(pct(results.hung.seconds, 0.99))}, max {human(max(results.hung.seconds))}, "
            f"against cost.prometheus.timeout {args.timeout:g} s"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=50, help="nodes, each with OpenCost's two unit prices")
    parser.add_argument("--workloads", type=int, default=200, help="Deployments")
    parser.add_argument("--pods", type=int, default=10, help="pods per Deployment (a CPU and a memory request each)")
    parser.add_argument("--namespaces", type=int, default=5, help="namespaces the Deployments are spread over")
    parser.add_argument("--samples", type=int, default=200, help="workloads priced in each measurement (N)")
    parser.add_argument("--spends", type=int, default=100, help="spend(None) misses timed")
    parser.add_argument("--hung", type=int, default=20, help="prices timed against the listener that never answers")
    parser.add_argument("--timeout", type=float, default=0.5, help="cost.prometheus.timeout, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="max seconds to wait for a quiet machine per phase")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (Prometheus's config, log and TSDB)")
    args = parser.parse_args(argv)
    bounds = {
        "nodes": (1, 1000),
        "workloads": (1, 1000),
        "pods": (1, 100),
        "namespaces": (1, 100),
        "spends": (1, 10000),
        "hung": (1, 200),
        "timeout": (0.05, 10),
    }
    for name, (low, high) in bounds.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    if not 1 <= args.samples <= args.workloads:
        parser.error("--samples must be between 1 and --workloads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (os.path.exists(args.prometheus) or shutil.which(args.prometheus)):
        print(
            f"prometheus not found ({args.prometheus}); on Debian/Ubuntu: apt-get install prometheus", file=sys.stderr
        )
        return 2
    started = time.monotonic()
    with common.workdir("pricing-bench-", keep=args.keep) as workdir:
        results = asyncio.run(bench(args, workdir))
        report(results, args)
    print(f"(the run took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
