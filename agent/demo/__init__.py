"""
``scaling-agent demo``: the agent's main job on an embedded default, with no cluster needed.

It starts the emulated Kubernetes API (:mod:`agent.devcluster`) on loopback with
the seed's example ScaledObjects and Deployments, runs the real agent against
it (the same :class:`~agent.app.Agent` that ``run`` starts) with a sqlite
ledger and Slack messages printed to the console, then sends a scripted series
of the seed's alerts to the agent's own webhook over HTTP and prints each
decision as it is recorded, and finally the state of the objects it touched.
Every line it prints is at most :data:`WIDTH` characters (and bytes) wide, and a legend
says what each kind of line and each column means.

Two objects are prepared the way a real cluster might look: a pause an earlier
agent process left on ``mcp-filesystem-scaler`` (the kind MCPScaleToZeroStuck
is about) and a pause a human set on ``mcp-cost-optimized``; and a warm floor
on ``mcp-keda`` whose time ran out while "the agent was down", which the
reconciler reverts at start-up from the annotations alone. The earlier
process's marks are written the way the release before claims wrote them (one
ownership annotation per field), so the demo also shows the upgrade: the agent
reads them as claims and replaces them with its one claims annotation on its
next write to the object.
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

from agent.configfile import parse_config
from agent.demo.alerts import alert, payload
from agent.structs import Ownership, utcnow
from agent.targets.base import MIN_REPLICAS, OWNERSHIP_ANNOTATIONS, PAUSED_REPLICAS

NAMESPACE = "cortex-mcp"
TOKEN_ENV = "SCALING_AGENT_DEMO_TOKEN"
WIDTH = 100  # the widest line the demo prints

LEGEND = """\
How to read it: each ▶ step posts alerts to the agent's webhook, then shows what followed.
  webhook →  the agent's HTTP answer: the notification is in the ledger's inbox as delivery ID,
             with N alerts; the agent acts on them afterwards, off the request
  slack │    the message the agent posts to Slack (none is configured here: the console)
  decision   what the ledger recorded: [outcome] action target field: before → after — reason
             (alert NAME STATUS, decision ID); target - means none (a notification, a repeat)
"""


def _width(line: str) -> int:
    """A line's width in UTF-8 bytes: never less than in characters, so both ways of counting stay in bounds."""
    return len(line.encode())


def _wrap(text: str, *, first: str = "", rest: str | None = None) -> list[str]:
    """``text`` after the prefix ``first``, wrapped at :data:`WIDTH` with ``rest`` before later lines.

    Lines break only between words (a name or an id is never split, nor a change ``before → after``); a single
    word wider than the line stays whole.
    """
    words: list[str] = []
    for word in text.split():
        if words and (word == "→" or words[-1].endswith(" →")):
            words[-1] = f"{words[-1]} {word}"
        else:
            words.append(word)
    lines: list[str] = []
    line, empty = first, True
    for word in words:
        candidate = line + word if empty else f"{line} {word}"
        if not empty and _width(candidate) > WIDTH:
            lines.append(line)
            candidate = (first if rest is None else rest) + word
        line, empty = candidate, False
    lines.append(line)
    return lines


def _say(text: str, *, first: str = "", rest: str | None = None) -> None:
    print("\n".join(_wrap(text, first=first, rest=rest)))


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
        cluster.change("scaledobjects", NAMESPACE, name, {"metadata": {"annotations": merged}})

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
    cluster.change("scaledobjects", NAMESPACE, "mcp-keda", {"spec": {"minReplicaCount": 4}})
    annotate("mcp-keda", {OWNERSHIP_ANNOTATIONS[MIN_REPLICAS]: owned(MIN_REPLICAS, 2, 4, -timedelta(minutes=5))})


def _print_state(cluster: Any, names: list[str], *, reconcile_every: timedelta) -> None:
    print("\nFinal state of the ScaledObjects the agent touched:")
    print(f"  {'name':<26} {'paused-replicas':>15} {'min':>4} {'max':>4}  agent annotations")
    for name in names:
        obj = cluster.get("scaledobjects", NAMESPACE, name)
        annotations = obj["metadata"].get("annotations") or {}
        mine = sorted(k.split("/", 1)[1] for k in annotations if k.startswith("scaling-agent.cortex.io/"))
        row = (
            f"  {name:<26} {annotations.get('autoscaling.keda.sh/paused-replicas', '-'):>15}"
            f" {obj['spec'].get('minReplicaCount', '-'):>4} {obj['spec'].get('maxReplicaCount', '-'):>4}"
        )
        _say(", ".join(mine) or "-", first=f"{row}  ", rest=" " * (len(row) + 2))
    seconds = int(reconcile_every.total_seconds())
    print(
        "  paused-replicas: KEDA's autoscaling.keda.sh/paused-replicas annotation (-: not paused)\n"
        "  min, max: spec.minReplicaCount and spec.maxReplicaCount\n"
        "  agent annotations: the agent's own scaling-agent.cortex.io/… annotations on the object:\n"
        "    claims: the reasons the agent holds fields of the object for, with each field's value\n"
        "      from before; a claim ends when its alert resolves or its time runs out, and the value\n"
        "      from before comes back with the last one\n"
        "    resumed: the agent removed a pause and has not yet checked that KEDA's Paused condition\n"
        f"      cleared; its reconciler checks on its next pass (every {seconds} s here), then drops the mark\n"
        "    -: none; the agent holds nothing on the object now"
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
            _say(f"from {_shown(folder)}")
            print()
            print(LEGEND)
            _prepare(cluster)
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(str(server.url).rstrip("/"))))
            api = await make_api_client(kubeconfig=str(kubeconfig))
            async with api:
                agent = Agent(config, api=api, console=_SlackConsole())
                print("▶ Start-up: the reconciler's first pass over the ScaledObjects, before the webhook listens")
                await agent.start()
                for sink in agent.sinks:
                    await sink.flush()
                printed = await _print_new(agent, set())
                rules = ", ".join(r.name for r in config.rules)
                _say(f"rules: {rules}", first=f"Agent listening at {agent.url}; ", rest="  ")
                print()
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                    for step, (title, body) in enumerate(SCRIPT, start=1):
                        _say(title, first=f"▶ {step}. ", rest="     ")
                        async with http.post(f"{agent.url}/webhooks/alertmanager", json=body) as response:
                            _say(f"HTTP {response.status} {await response.text()}", first="  webhook → ", rest=" " * 13)
                        await agent.worker.idle()
                        for sink in agent.sinks:
                            await sink.flush()
                        printed = await _print_new(agent, printed)
                        await asyncio.sleep(pace)
                touched = sorted({d.target.name for d in await agent.ledger.decisions() if d.target is not None})
                await agent.stop()
            _print_state(cluster, touched, reconcile_every=config.kubernetes.reconcile_interval)
            print(f"\n{len(printed)} decisions recorded. Every one is in the ledger; in a real run, list them with")
            print("  scaling-agent decisions --config config/agent.yaml --since 1h")
    return 0


def _shown(folder: Path) -> str:
    """The folder as the user would type it: relative to the current directory when it is under it."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(folder)


class _SlackConsole:
    """Where the console stand-in for Slack writes: indented under the step, marked as Slack."""

    def write(self, text: str) -> int:
        prefix = "  slack │ "
        for line in text.rstrip("\n").splitlines():
            indent = prefix + line[: len(line) - len(line.lstrip())]
            _say(line.strip(), first=indent, rest=indent + "  ")
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


async def _print_new(agent: Any, printed: set[str]) -> set[str]:
    # The ledger is the demo's own, new at start: every decision in it is this run's (some, recovered from the
    # cluster's annotations at start-up, carry the time of the change they describe, before the run began).
    for decision in await agent.ledger.decisions():
        if decision.id not in printed:
            _print_decision(decision.summary())
            printed.add(decision.id)
    return printed


def _print_decision(summary: str) -> None:
    """A decision's summary line, wrapped where its parts meet: what — why (which alert, which decision)."""
    what, dash, rest = summary.partition(" — ")
    why, paren, trailer = rest.rpartition(" (alert ")
    parts = [what, f"— {why}", f"(alert {trailer}"] if dash and paren else [summary]
    lines = _wrap(parts[0], first="  decision ", rest=" " * 11)
    for part in parts[1:]:
        if _width(f"{lines[-1]} {part}") <= WIDTH:
            lines[-1] = f"{lines[-1]} {part}"
        else:
            lines += _wrap(part, first=" " * 11)
    print("\n".join(lines))
