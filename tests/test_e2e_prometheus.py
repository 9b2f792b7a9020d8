"""
End to end with the real monitoring stack: Prometheus evaluates the shipped PrometheusRule against a small
exporter serving the series the rules read (the metric names and labels of their real exporters: the MCP
servers' and kube-state-metrics'), Alertmanager routes the alerts through the shipped receiver to
`scaling-agent run` (a subprocess), and the agent changes ScaledObjects on the emulated Kubernetes API. Only
`for:`, the evaluation interval, MCPFrequentScaling's 15-minute window (cut to 15 s, as `for:` is cut from
minutes to seconds, so that its resolve comes from the metrics within the test), Alertmanager's group
intervals and Prometheus's resend delay are shortened here; the rest of the expressions, the route and the
receiver are the ones in deploy/.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from agent.devcluster import DevCluster, kubeconfig_for
from tests.conftest import NS, ROOT, TOKEN, _require_binary, annotations, claims_on, free_port, patches, scaledobject

pytestmark = pytest.mark.e2e

PROMETHEUS_RULE = ROOT / "deploy" / "base" / "prometheusrule.yaml"
ALERTMANAGER_EXAMPLE = ROOT / "deploy" / "alertmanager" / "alertmanager.yaml"
PAUSED = "autoscaling.keda.sh/paused-replicas"
DEADLINE = 60.0  # seconds any one step may take: bounded waits, never an open-ended loop
# MCPFrequentScaling counts the changes of the desired replicas of KEDA's HPA in a 15-minute window; here the
# window is 15 s. The exporter flips the count more slowly than Prometheus scrapes (every 1 s), so that every
# flip is one change: 12 in any 15 s, above the rule's 6.
FREQUENT_WINDOW = ("[15m]", "[15s]")
FLIP_EVERY = 1.25


class Exporter:
    """Serves /metrics in the text format from a table the test changes as it goes."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.types: dict[str, str] = {}
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def set(self, name: str, labels: dict[str, str], value: float, *, kind: str = "gauge") -> None:
        self.types[name] = kind
        self.series[name, tuple(sorted(labels.items()))] = value

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = []
        for name in sorted(self.types):
            lines.append(f"# TYPE {name} {self.types[name]}")
            for (series_name, labels), value in sorted(self.series.items()):
                if series_name == name:
                    text = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {value}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

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


@contextlib.asynccontextmanager
async def process(
    argv: list[str], *, ready_url: str, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, env=env)
    try:
        await until(lambda: _answers(ready_url), f"{argv[0]} to become ready (log: {log})")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _answers(url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    return False


async def until(check: Callable[[], Any], what: str, *, within: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


def rule_groups(*, for_: str) -> dict[str, Any]:
    """The PrometheusRule's groups as a Prometheus rule file, with every `for:` and MCPFrequentScaling's window
    shortened."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    groups = copy.deepcopy(rule["spec"]["groups"])
    for group in groups:
        group["interval"] = "1s"
        for item in group["rules"]:
            if "for" in item:
                item["for"] = for_
            if item.get("alert") == "MCPFrequentScaling":
                window, shorter = FREQUENT_WINDOW
                assert item["expr"].count(window) == 1, "MCPFrequentScaling's window is not the one this test cuts"
                item["expr"] = item["expr"].replace(window, shorter)
    return {"groups": groups}


async def flap(exporter: Exporter, labels: dict[str, str], *, low: float, high: float) -> None:
    """KEDA's HPA flapping: its desired replica count switches between `low` and `high` until cancelled, for at
    most three deadlines."""
    name = "kube_horizontalpodautoscaler_status_desired_replicas"
    for step in range(int(3 * DEADLINE / FLIP_EVERY)):
        exporter.set(name, labels, high if step % 2 else low)
        await asyncio.sleep(FLIP_EVERY)


def alertmanager_config(*, agent_url: str, token_file: Path) -> dict[str, Any]:
    """The shipped example, pointed at the agent on loopback, with short group intervals."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if hook["url"].endswith("/webhooks/alertmanager"):
                hook["url"] = f"{agent_url}/webhooks/alertmanager"
                hook["http_config"]["authorization"]["credentials_file"] = str(token_file)

    def shorten(route: dict[str, Any]) -> None:
        route["group_wait"], route["group_interval"], route["repeat_interval"] = "1s", "2s", "4s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return config


async def decisions(agent_url: str) -> list[dict[str, Any]]:
    """The agent's decisions as its /metrics counts them, by action and outcome."""
    async with aiohttp.ClientSession() as session, session.get(f"{agent_url}/metrics") as response:
        text = await response.text()
    counts = []
    for line in text.splitlines():
        if line.startswith("scaling_agent_decisions_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1 : line.index("}")].split(","))
            counts.append({k: v.strip('"') for k, v in labels.items()} | {"n": float(line.rsplit(" ", 1)[1])})
    return counts


def count(rows: list[dict[str, Any]], action: str, outcome: str) -> float:
    return sum(row["n"] for row in rows if row["action"] == action and row["outcome"] == outcome)


async def test_prometheus_and_alertmanager_drive_the_agent(
    cluster: DevCluster, base_config: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = _require_binary("prometheus")
    alertmanager = _require_binary("prometheus-alertmanager")
    if not PROMETHEUS_RULE.exists() or not ALERTMANAGER_EXAMPLE.exists():
        pytest.fail("deploy/ must ship the PrometheusRule and the Alertmanager example this test runs")

    agent_port, prom_port, am_port = free_port(), free_port(), free_port()
    agent_url = f"http://127.0.0.1:{agent_port}"
    token_file = tmp_path / "webhook-token"
    token_file.write_text(TOKEN)

    config = {**base_config, "webhook": {**base_config["webhook"], "port": agent_port}, "log": {"format": "json"}}
    # Prices from this Prometheus: OpenCost's node prices and kube-state-metrics' requests, from the exporter.
    config["cost"] = {"prometheus": {"url": f"http://127.0.0.1:{prom_port}"}, "cache": "0s"}
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig_for(str(cluster.url).rstrip("/"))))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(for_="1s")))
    (tmp_path / "alertmanager.yaml").write_text(
        yaml.safe_dump(alertmanager_config(agent_url=agent_url, token_file=token_file))
    )

    async with Exporter() as exporter:
        (tmp_path / "prometheus.yaml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yaml")],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                    "scrape_configs": [
                        {
                            "job_name": "mcp-exporters",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                        }
                    ],
                }
            )
        )
        env = {**os.environ, "SCALING_AGENT_DEMO_TOKEN": TOKEN}
        agent_argv = [sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "agent.yaml"),
                      "--kubeconfig", str(tmp_path / "kubeconfig")]  # fmt: skip
        am_argv = [alertmanager, f"--config.file={tmp_path / 'alertmanager.yaml'}",
                   f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                   "--cluster.listen-address="]  # fmt: skip
        prom_argv = [prometheus, f"--config.file={tmp_path / 'prometheus.yaml'}",
                     f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                     "--rules.alert.resend-delay=1s"]  # fmt: skip

        async with (
            process(agent_argv, ready_url=f"{agent_url}/readyz", log=tmp_path / "agent.log", env=env),
            process(am_argv, ready_url=f"http://127.0.0.1:{am_port}/-/ready", log=tmp_path / "am.log"),
            process(prom_argv, ready_url=f"http://127.0.0.1:{prom_port}/-/ready", log=tmp_path / "prom.log"),
        ):
            # Prometheus's discovery sends targets every few seconds: wait for its first scrape of the exporter.
            await until(lambda: _scraped(prom_port), "Prometheus to scrape the exporter")
            # Cold starts slow for the Deployment scaled by mcp-scale-to-zero: the MCP exporter's histogram per
            # pod, and kube-state-metrics' owner series that map the pod to its Deployment.
            pod = {"namespace": NS, "pod": "mcp-ephemeral-server-7d9f-abcde"}
            exporter.set(
                "kube_pod_owner", {**pod, "owner_kind": "ReplicaSet", "owner_name": "mcp-ephemeral-server-7d9f"}, 1
            )
            replicaset = {"namespace": NS, "replicaset": "mcp-ephemeral-server-7d9f"}
            deployment = {"owner_kind": "Deployment", "owner_name": "mcp-ephemeral-server"}
            exporter.set("kube_replicaset_owner", {**replicaset, **deployment}, 1)
            exporter.set("mcp_pod_startup_duration_seconds_sum", pod, 45.0, kind="untyped")
            exporter.set("mcp_pod_startup_duration_seconds_count", pod, 1.0, kind="untyped")
            # kube-state-metrics' series of the HPA that KEDA made for mcp-http-scaler (keda-hpa-<name>): its
            # desired replica count flaps between 3 and 4, until the test has seen the agent's pause and
            # Alertmanager's repeats, then stops, as the pause holds it.
            hpa = {"namespace": NS, "horizontalpodautoscaler": "keda-hpa-mcp-http-scaler"}
            flapping = asyncio.create_task(flap(exporter, hpa, low=3, high=4))
            try:
                await until(lambda: PAUSED in annotations(cluster, "mcp-http-scaler"), "MCPFrequentScaling to pause")
                await until(
                    lambda: scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 1,
                    "MCPColdStartSlow to set a warm floor",
                )
                [claim] = claims_on(cluster, "mcp-http-scaler").claims
                assert claim.holder.startswith("rule:pause-frequent-scaling:") and claim.value == 3

                # Alertmanager repeats firing notifications (repeat_interval 4s here): no second change.
                await until(
                    lambda: _redeliveries(agent_url), "Alertmanager's repeat notification to be recorded as a no-op"
                )
                assert patches(cluster, "mcp-http-scaler") == 1
                assert patches(cluster, "mcp-scale-to-zero") == 1
            finally:
                flapping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flapping

            # Cold starts are fast again, and the HPA's count has stopped changing since the pause: both alerts
            # resolve from the metrics (MCPFrequentScaling once 6 or fewer changes are left in its window), and
            # the agent gives back.
            exporter.set("mcp_pod_startup_duration_seconds_sum", pod, 5.0, kind="untyped")
            await until(
                lambda: scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 0,
                "MCPColdStartSlow's resolve to give the floor back",
            )
            await until(
                lambda: PAUSED not in annotations(cluster, "mcp-http-scaler"),
                "MCPFrequentScaling's resolve to remove the pause",
            )
            assert not {"MCPFrequentScaling", "MCPColdStartSlow"} & await _firing(prom_port)

            async def both_give_backs_recorded() -> bool:
                # The object changes when the patch lands; its decision is completed in the ledger just after.
                return count(await decisions(agent_url), "revert", "applied") == 2

            await until(both_give_backs_recorded, "both give-backs to be recorded as applied")
            rows = await decisions(agent_url)
            assert count(rows, "pause", "applied") == 1
            assert count(rows, "set_min", "applied") == 1
            assert count(rows, "revert", "applied") == 2
            assert "scaling-agent.cortex.io/claims" not in annotations(cluster, "mcp-scale-to-zero")

            # HighMCPCost: at OpenCost's prices, one pod of mcp-filesystem-server (3 vCPU at $40/vCPU-h) takes
            # cortex-mcp past $100/h. The alert carries the namespace; the agent prices the ScaledObjects there
            # from this Prometheus and caps the most expensive (one replica off its ceiling), and gives the cap
            # back when cheaper prices resolve the alert.
            node = {"node": "node-a", "instance_type": "m5.24xlarge", "region": "eu-central-1"}
            exporter.set("node_cpu_hourly_cost", node, 40.0)
            exporter.set("node_ram_hourly_cost", node, 1.0)
            expensive = {"namespace": NS, "pod": "mcp-filesystem-server-7d9f8c-aaaaa", "container": "mcp-server"}
            requests = {**expensive, "node": "node-a", "resource": "cpu", "unit": "core"}
            exporter.set("kube_pod_container_resource_requests", requests, 3.0)
            ceiling = scaledobject(cluster, "mcp-filesystem-scaler")["spec"]["maxReplicaCount"]
            await until(
                lambda: scaledobject(cluster, "mcp-filesystem-scaler")["spec"]["maxReplicaCount"] == ceiling - 1,
                "HighMCPCost to cap the most expensive ScaledObject of cortex-mcp",
            )
            [cap] = claims_on(cluster, "mcp-filesystem-scaler").claims
            assert cap.holder.startswith("rule:cap-high-cost:") and cap.value == ceiling - 1
            assert count(await decisions(agent_url), "cap", "applied") == 3  # the three most expensive
            logged = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines() if '"cap"' in line]
            [capped] = [d for d in logged if d.get("target") == f"ScaledObject/{NS}/mcp-filesystem-scaler"]
            # One replica: 3 vCPU x $40 (the one pod in Prometheus), priced from this Prometheus.
            assert (capped["price_source"], capped["price_per_replica_hour"]) == ("prometheus", 120.0)
            exporter.set("node_cpu_hourly_cost", node, 1.0)  # $3/h: the alert resolves
            await until(
                lambda: scaledobject(cluster, "mcp-filesystem-scaler")["spec"]["maxReplicaCount"] == ceiling,
                "HighMCPCost's resolve to give the cap back",
            )


async def _scraped(prom_port: int) -> bool:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query"
    async with aiohttp.ClientSession() as session, session.get(url, params={"query": "up"}) as response:
        result = (await response.json())["data"]["result"]
    return any(r["metric"].get("job") == "mcp-exporters" and r["value"][1] == "1" for r in result)


async def _firing(prom_port: int) -> set[str]:
    """The alerts Prometheus has firing now."""
    url = f"http://127.0.0.1:{prom_port}/api/v1/alerts"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        alerts = (await response.json())["data"]["alerts"]
    return {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}


async def _redeliveries(agent_url: str) -> bool:
    return count(await decisions(agent_url), "redelivery", "no-op") >= 1
