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

Last, the calendar: a schedule holds a floor of 10 on ``mcp-cron-scaling`` through
a window a few seconds long, opened early by its lead. The demo stands in for
the kubelet (it adds the scale-up's pods, Ready) and for the MCP server in them
(one built with the official ``mcp`` SDK, on loopback), so the window's
follow-up shows real figures: pods Ready, each new one warmed over MCP, and
whether the capacity was there by the window's nominal start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from datetime import datetime, timedelta
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
WINDOW_IN = timedelta(seconds=12)  # from start-up to the demo window's nominal start: after the alerts' steps
WINDOW_LEAD = timedelta(seconds=3)
WINDOW_LENGTH = timedelta(seconds=6)
WINDOW_TARGET = "mcp-cron-scaling"  # the seed's cron example; it scales Deployment mcp-batch-processor
WINDOW_WORKLOAD = "mcp-batch-processor"
NEW_PODS = 7  # the scale-up's pods (3 run already: a floor of 10)
WAIT_SECONDS = 60.0  # the longest the demo waits for the calendar's next step before it says so and goes on

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
        "HighMCPCost fires for cortex-mcp: the 3 most expensive ScaledObjects there get a lower ceiling",
        payload(
            alert("HighMCPCost", {"namespace": NAMESPACE}, annotations={"summary": "MCP server costs exceeding budget"})
        ),
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
        mcp_server = await _McpServer.start()
        data = demo_config(Path(tmp) / "ledger.db")
        window = _demo_schedule(port=mcp_server.port)
        data["sources"] = {"calendar": {"schedules": [window], "check_every": "1s", "follow_every": 0.2}}
        config = parse_config(data, source="<embedded demo config>")
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
                printed = await _calendar_step(agent, cluster, printed, window=window, step=len(SCRIPT) + 1)
                touched = sorted({d.target.name for d in await agent.ledger.decisions() if d.target is not None})
                await agent.stop()
            await mcp_server.stop()
            _print_state(cluster, touched, reconcile_every=config.kubernetes.reconcile_interval)
            print(f"\n{len(printed)} decisions recorded. Every one is in the ledger; in a real run, list them with")
            print("  scaling-agent decisions --config config/agent.yaml --since 1h")
            await _print_report(config)
    return 0


async def _print_report(config: Any) -> None:
    """The demo ends with the report of its own ledger (``scaling-agent report``), its lines clipped to WIDTH."""
    from agent.report import render_table, report_from_ledger

    report = await report_from_ledger(config.ledger, since=timedelta(hours=1), namespace=NAMESPACE)
    print("\nWhat the decisions cost and saved (scaling-agent report --since 1h --namespace cortex-mcp):\n")
    table = render_table(report).splitlines()
    # The full table's target rows are wider than the demo's lines; they are shown per target, more narrowly.
    top = next((i for i, line in enumerate(table) if line.startswith("Top targets")), len(table))
    rest = next((i for i, line in enumerate(table) if line.startswith("Refusals")), len(table))
    for line in table[:top]:
        print(line)
    print("Top targets: replica-hours added/removed, cost added/saved, and what the agent holds at the end")
    for f in report.targets[:8]:
        name = f.target.rpartition("/")[2]
        print(
            f"  {name:<24} {f.replica_hours_added:5.1f}/{f.replica_hours_removed:<5.1f}"
            f" ${f.cost_added:.2f}/${f.cost_saved:.2f}  {f.replicas_held:+d} replicas, {f.cost_held_per_hour:+.4f} $/h"
        )
    for line in table[rest - 1 if rest < len(table) else rest :]:
        print(line if len(line.encode()) <= WIDTH else line[: WIDTH - 3] + "…")  # "…" is 3 bytes


def _demo_schedule(*, port: int) -> dict[str, Any]:
    """A window a few seconds long, starting after the alerts' steps: the calendar, end to end, in one run."""
    start = utcnow() + WINDOW_IN
    return {
        "name": "demo-window",
        "timezone": "UTC",
        "start": f"{start:%H:%M:%S}",
        "end": f"{start + WINDOW_LENGTH:%H:%M:%S}",
        "lead": f"{int(WINDOW_LEAD.total_seconds())}s",
        "floor": 10,
        "targets": [{"namespace": NAMESPACE, "name": WINDOW_TARGET}],
        "warmup": {"port": port, "mcp": {"calls": [{"tool": "ping"}]}, "timeout": "5s"},
    }


def _pod(name: str, created: datetime) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app": WINDOW_WORKLOAD},
            "creationTimestamp": f"{created:%Y-%m-%dT%H:%M:%SZ}",
        },
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def _calendar_step(agent: Any, cluster: Any, printed: set[str], *, window: dict[str, Any], step: int) -> set[str]:
    """The calendar's window: opened (by its lead), its new pods Ready and warmed, then closed; each decision shown."""
    from agent.structs import Outcome

    _say(
        f"The calendar: schedule {window['name']} holds a floor of {window['floor']} on {WINDOW_TARGET} from "
        f"{window['start']} to {window['end']} UTC, opened {window['lead']} early; the new pods are warmed over "
        "MCP (the demo adds them, Ready, as the kubelet would)",
        first=f"▶ {step}. ",
        rest="     ",
    )
    now = utcnow()
    for i in range(3):  # running since before: not new, not warmed
        cluster.add(_pod(f"{WINDOW_WORKLOAD}-old-{i}", now - timedelta(hours=1)))

    async def decided(check: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    found = [d for d in await agent.ledger.decisions() if check(d)]
                    if found:
                        return found[0]
                    await asyncio.sleep(0.1)
        except TimeoutError:
            print(f"  (no {what} within {WAIT_SECONDS:.0f} s: the demo goes on)")
            return None

    opened = await decided(lambda d: d.action == "window" and d.outcome == Outcome.APPLIED, "window opening")
    printed = await _print_new(agent, printed)
    if opened is None:
        return printed
    created = utcnow()
    for i in range(NEW_PODS):
        cluster.add(_pod(f"{WINDOW_WORKLOAD}-new-{i}", created))
    await decided(lambda d: d.follows == opened.id, "follow-up")
    printed = await _print_new(agent, printed)
    await decided(lambda d: d.action == "revert" and d.trigger.source == "calendar", "window closing")
    for sink in agent.sinks:
        await sink.flush()
    return await _print_new(agent, printed)


class _McpServer:
    """An MCP server built with the official SDK, on loopback: what the demo's pods run, for the warm-up."""

    def __init__(self, server: Any, task: asyncio.Task[None], port: int) -> None:
        self._server, self._task, self.port = server, task, port

    @classmethod
    async def start(cls) -> _McpServer:
        import socket

        import uvicorn
        from mcp.server.mcpserver import MCPServer
        from mcp.server.transport_security import TransportSecuritySettings

        mcp = MCPServer("demo-mcp-server", log_level="WARNING")

        @mcp.tool()
        def ping() -> str:
            return "pong"

        # The agent reaches a pod by its address, not by "localhost": like a pod, take any Host header.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        app = mcp.streamable_http_app(transport_security=security)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        async with asyncio.timeout(WAIT_SECONDS):
            while not server.started:
                if task.done():
                    task.result()  # it failed: say why
                await asyncio.sleep(0.01)
        return cls(server, task, port)

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, WAIT_SECONDS)


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
