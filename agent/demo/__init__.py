"""
``scaling-agent demo``: the agent's main job on an embedded default, with no cluster needed.

It starts the emulated Kubernetes API (:mod:`agent.devcluster`) on loopback with
the seed's example ScaledObjects and Deployments, runs the real agent against
it (the same :class:`~agent.app.Agent` that ``run`` starts) with a sqlite
ledger and Slack messages printed to the console, then sends a scripted series
of the seed's alerts to the agent's own webhook over HTTP and prints each
decision as it is recorded, and finally the state of the objects it touched.

Two objects are prepared the way a real cluster might look: a pause an earlier
agent process left on ``mcp-filesystem-scaler`` (the kind MCPScaleToZeroStuck
is about) and a pause a human set on ``mcp-cost-optimized``; and a warm floor
on ``mcp-keda`` whose time ran out while "the agent was down", which the
reconciler reverts at start-up from the annotations alone.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from agent.config import parse_config
from agent.demo.alerts import alert, payload
from agent.structs import Ownership, utcnow
from agent.targets.base import MIN_REPLICAS, OWNERSHIP_ANNOTATIONS, PAUSED_REPLICAS

NAMESPACE = "cortex-mcp"
TOKEN_ENV = "SCALING_AGENT_DEMO_TOKEN"


def _default_examples() -> Path:
    return Path(__file__).resolve().parents[2] / "deploy" / "examples"


def demo_config(ledger_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(resources.files("agent.demo").joinpath("config.yaml").read_text())
    data["ledger"]["url"] = f"sqlite:///{ledger_path}"
    return data


SCRIPT: list[tuple[str, dict[str, Any]]] = [
    (
        "MCPFrequentScaling fires for mcp-http-scaler (KEDA's metric labels it scaledObject)",
        payload(alert("MCPFrequentScaling", {"namespace": NAMESPACE, "scaledObject": "mcp-http-scaler"})),
    ),
    (
        "Alertmanager repeats the same notification (HA peer or repeat_interval)",
        payload(alert("MCPFrequentScaling", {"namespace": NAMESPACE, "scaledObject": "mcp-http-scaler"})),
    ),
    (
        "MCPAtMaximumScale fires for Deployment mcp-queue-processor (two ScaledObjects scale it)",
        payload(alert("MCPAtMaximumScale", {"namespace": NAMESPACE, "deployment": "mcp-queue-processor"})),
    ),
    (
        "MCPColdStartSlow fires; its avg() keeps no labels, so the rule's selector finds the target",
        payload(alert("MCPColdStartSlow")),
    ),
    (
        "MCPHighLatencyDespiteScaling fires",
        payload(
            alert(
                "MCPHighLatencyDespiteScaling",
                {"server": "filesystem"},
                annotations={"summary": "MCP server latency high despite scaling", "description": "P95 is 2.7s"},
            )
        ),
    ),
    (
        "MCPScaleToZeroStuck fires for mcp-filesystem-server (a stale agent pause keeps pods up)",
        payload(alert("MCPScaleToZeroStuck", {"namespace": NAMESPACE, "deployment": "mcp-filesystem-server"})),
    ),
    (
        "MCPScaleToZeroStuck fires for mcp-cost-optimized-server (paused by a human)",
        payload(alert("MCPScaleToZeroStuck", {"namespace": NAMESPACE, "deployment": "mcp-cost-optimized-server"})),
    ),
    (
        "HighMCPCost fires",
        payload(alert("HighMCPCost", annotations={"summary": "MCP server costs exceeding budget"})),
    ),
    (
        "MCPFrequentScaling resolves",
        payload(
            alert("MCPFrequentScaling", {"namespace": NAMESPACE, "scaledObject": "mcp-http-scaler"}, status="resolved")
        ),
    ),
    ("MCPColdStartSlow resolves", payload(alert("MCPColdStartSlow", status="resolved"))),
]


def _prepare(cluster: Any) -> None:
    """Make the cluster look lived-in: an old agent pause, a human pause, an expired agent floor."""
    now = utcnow()

    def annotate(name: str, annotations: Mapping[str, str]) -> None:
        obj = cluster.get("scaledobjects", NAMESPACE, name)
        merged = {**(obj["metadata"].get("annotations") or {}), **annotations}
        cluster.objects["keda.sh/v1alpha1/scaledobjects", NAMESPACE, name].patch({"metadata": {"annotations": merged}})

    def owned(name: str, before: int | None, after: int, expires_in: timedelta) -> str:
        return Ownership(
            field=name,
            before=before,
            after=after,
            decision="20261128T221500-0a1b2c",
            rule="pause-frequent-scaling" if name == PAUSED_REPLICAS else "warm-floor-on-slow-cold-start",
            alertname="MCPFrequentScaling" if name == PAUSED_REPLICAS else "MCPColdStartSlow",
            fingerprint="0f1e2d3c4b5a6978",
            reason="set by an earlier agent process",
            applied_at=now - timedelta(hours=10),
            expires_at=now + expires_in,
            revert_on_resolve=True,
        ).to_json()

    annotate(
        "mcp-filesystem-scaler",
        {
            "autoscaling.keda.sh/paused-replicas": "3",
            OWNERSHIP_ANNOTATIONS[PAUSED_REPLICAS]: owned(PAUSED_REPLICAS, None, 3, timedelta(hours=14)),
        },
    )
    annotate("mcp-cost-optimized", {"autoscaling.keda.sh/paused-replicas": "2"})
    cluster.objects["keda.sh/v1alpha1/scaledobjects", NAMESPACE, "mcp-keda"].patch({"spec": {"minReplicaCount": 4}})
    annotate("mcp-keda", {OWNERSHIP_ANNOTATIONS[MIN_REPLICAS]: owned(MIN_REPLICAS, 2, 4, -timedelta(minutes=5))})


def _print_state(cluster: Any, names: list[str]) -> None:
    print("\nFinal state of the ScaledObjects the agent touched:")
    print(f"  {'name':<26} {'paused-replicas':>15} {'min':>4} {'max':>4}  agent annotations")
    for name in names:
        obj = cluster.get("scaledobjects", NAMESPACE, name)
        annotations = obj["metadata"].get("annotations") or {}
        mine = sorted(k.split("/", 1)[1] for k in annotations if k.startswith("scaling-agent.cortex.io/"))
        print(
            f"  {name:<26} {annotations.get('autoscaling.keda.sh/paused-replicas', '-'):>15}"
            f" {obj['spec'].get('minReplicaCount', '-'):>4} {obj['spec'].get('maxReplicaCount', '-'):>4}"
            f"  {', '.join(mine) or '-'}"
        )


async def run_demo(*, examples: str | None = None, pace: float = 0.3) -> int:
    try:
        from agent.devcluster import DevCluster, kubeconfig_for
    except ImportError:
        print("the demo needs kmock: pip install -e '.[demo]'", file=sys.stderr)
        return 1
    import kmock

    from agent.app import Agent
    from agent.kube import make_api_client
    from agent.logs import setup_logging

    folder = Path(examples) if examples else _default_examples()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        print(f"no example objects found in {folder} (use --examples DIR)", file=sys.stderr)
        return 1
    setup_logging(level="warning", fmt="console")
    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(24))
    token = os.environ[TOKEN_ENV]

    with tempfile.TemporaryDirectory(prefix="scaling-agent-demo-") as tmp:
        config = parse_config(demo_config(Path(tmp) / "ledger.db"), source="<embedded demo config>")
        async with DevCluster(keep_requests=False) as cluster, kmock.Server(cluster) as server:
            loaded = cluster.load(files)
            kinds = sorted({o["kind"] for o in loaded})
            print(f"Emulated Kubernetes API at {server.url} with {len(loaded)} objects ({', '.join(kinds)})")
            print(f"from {folder}\n")
            _prepare(cluster)
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(str(server.url).rstrip("/"))))
            api = await make_api_client(kubeconfig=str(kubeconfig))
            async with api:
                agent = Agent(config, api=api, console=_SlackConsole())
                started = utcnow()
                await agent.start()
                print(f"Agent listening at {agent.url}; rules: {', '.join(r.name for r in config.rules)}\n")
                printed = await _print_new(agent, started, set())
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                    for step, (title, body) in enumerate(SCRIPT, start=1):
                        print(f"▶ {step}. {title}")
                        async with http.post(f"{agent.url}/webhooks/alertmanager", json=body) as response:
                            print(f"  webhook → HTTP {response.status} {await response.text()}")
                        await agent.worker.idle()
                        for sink in agent.sinks:
                            await sink.flush()
                        printed = await _print_new(agent, started, printed)
                        await asyncio.sleep(pace)
                touched = sorted({d.target.name for d in await agent.ledger.decisions() if d.target is not None})
                await agent.stop()
            _print_state(cluster, touched)
            print(f"\n{len(printed)} decisions recorded. Every one is in the ledger; in a real run, list them with")
            print("  scaling-agent decisions --config config/agent.yaml --since 1h")
    return 0


class _SlackConsole:
    """Where the console stand-in for Slack writes: indented under the step, marked as Slack."""

    def write(self, text: str) -> int:
        for line in text.rstrip("\n").splitlines():
            sys.stdout.write(f"    slack │ {line}\n")
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


async def _print_new(agent: Any, since: Any, printed: set[str]) -> set[str]:
    for decision in await agent.ledger.decisions(since=since):
        if decision.id not in printed:
            print(f"  decision {decision.summary()}")
            printed.add(decision.id)
    return printed
