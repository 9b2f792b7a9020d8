"""
Watch bench: what the watch-backed cache costs, in memory and in time to ready, with 10,000 ScaledObjects and the
10,000 Deployments they scale.

The processes (see bench/README.md):

- the emulated Kubernetes API (``agent.devcluster.DevCluster``, ``keep_requests=False``, and here ``limit`` on a
  list honoured as the API server does), in a process of its own so its memory does not count, loaded with N
  ScaledObjects shaped like ``deploy/examples`` (triggers, a kubectl last-applied annotation, managedFields, KEDA's
  status) and N Deployments (a pod template with a container, env, resources, probes, a last-applied annotation,
  managedFields, status);
- the agent (dry-run), started in a child process as ``scaling-agent run`` starts it, twice: against an empty
  namespace (the idle agent), then against the namespace holding the objects. The parent times it from the
  child's start to the first 200 of ``/readyz`` (every cache listed), then has it collect garbage and reads its
  RSS (``VmRSS`` in ``/proc/<pid>/status``);
- a bare reader, twice: a process that reads the same lists as the cache does (``json.loads``, ``prune``) and
  reports its RSS growth, with each list in one answer and in pages of 500;
- this script, which also measures with tracemalloc what the same objects take as whole dicts and as the cache's
  records (``CachedScaledObject`` / ``CachedDeployment``), and which fields the records spend it on.

All traffic is on 127.0.0.1; every wait is bounded. Run ``python bench/watch.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ctypes
import gc
import json
import os
import platform
import signal
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import common
import yaml

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
EXAMPLES = ROOT / "deploy" / "examples"
NAMESPACE = "bench-watch"  # holds the N ScaledObjects and N Deployments
IDLE_NAMESPACE = "bench-idle"  # empty: the idle agent watches it
TOKEN_ENV = "SCALING_AGENT_BENCH_TOKEN"
TARGET_MIB = 40.0  # the issue's target: RSS above the idle agent, with 10,000 + 10,000 objects
CLUSTER_START_TIMEOUT = 600.0  # seconds for the emulator to build and load its objects
AGENT_START_TIMEOUT = 300.0  # ... for the agent to listen, and again to answer /readyz 200
COMMAND_TIMEOUT = 60.0  # ... for the agent to answer a command (gc, stats)
TRACE_TOP = 15  # --trace: allocation sites shown
PAGE = 500  # objects per page for the paged reading (client-go's pager lists 500 at a time)
POLL_SECONDS = 0.05  # /readyz is asked this often until it answers 200
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------- the objects


def _examples(kind: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                docs.append(doc)
    return docs


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def fields_of(obj: Any) -> dict[str, Any]:
    """The fieldsV1 set of what ``obj`` sets, as the API server writes it into managedFields."""
    if isinstance(obj, Mapping):
        return {f"f:{key}": fields_of(value) for key, value in obj.items()}
    if isinstance(obj, list) and obj and all(isinstance(item, Mapping) for item in obj):
        result: dict[str, Any] = {}
        for item in obj:
            key = next((k for k in ("name", "type", "containerPort") if k in item), None)
            if key is None:
                return {}
            result[f"k:{json.dumps({key: item[key]}, separators=(',', ':'))}"] = {".": {}, **fields_of(item)}
        return result
    if isinstance(obj, list):
        return {f"v:{json.dumps(item)}": {} for item in obj}
    return {}


def _managed(manager: str, at: datetime, api_version: str, fields: Any, subresource: str | None = None) -> dict:
    entry = {
        "manager": manager,
        "operation": "Update",
        "apiVersion": api_version,
        "time": _stamp(at),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


def _last_applied(obj: Mapping[str, Any]) -> str:
    """kubectl's annotation: the applied manifest, compact JSON and a newline."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n"


def scaled_object(i: int, template: Mapping[str, Any], created: datetime) -> dict[str, Any]:
    """An example ScaledObject, renamed (``<name>-<i>``, scaling ``<target>-<i>``) and as a cluster holds it."""
    name = f"{template['metadata']['name']}-{i:05d}"
    spec = copy.deepcopy(template["spec"])
    target = f"{spec['scaleTargetRef']['name']}-{i:05d}"
    spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
    labels = {
        "app.kubernetes.io/name": target,
        "app.kubernetes.io/part-of": "mcp-platform",
        "app.kubernetes.io/managed-by": "kubectl",
        "team": f"team-{i % 40:02d}",
    }
    marks = dict(template["metadata"].get("annotations") or {})
    applied = {
        "apiVersion": template["apiVersion"],
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels, "annotations": marks},
        "spec": spec,
    }
    annotations = {**marks, "kubectl.kubernetes.io/last-applied-configuration": _last_applied(applied)}
    metrics = [f"s{k}-{trigger['type']}" for k, trigger in enumerate(spec.get("triggers") or [])]
    active = _stamp(created + timedelta(hours=2, seconds=i % 3600))
    status = {
        "scaleTargetKind": "apps/v1.Deployment",
        "scaleTargetGVKR": {"group": "apps", "kind": "Deployment", "resource": "deployments", "version": "v1"},
        "originalReplicaCount": 3,
        "lastActiveTime": active,
        "externalMetricNames": metrics,
        "health": {metric: {"numberOfFailures": 0, "status": "Happy"} for metric in metrics},
        "hpaName": f"keda-hpa-{name}",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "ScaledObjectReady",
                "message": "ScaledObject is defined correctly and is ready for scaling",
            },
            {
                "type": "Active",
                "status": "True" if i % 3 else "False",
                "reason": "ScalerActive" if i % 3 else "ScalerNotActive",
                "message": "Scaling is performed because triggers are active"
                if i % 3
                else "Scaling is not performed because triggers are not active",
            },
            {"type": "Fallback", "status": "False", "reason": "NoFallbackFound", "message": "No fallback was found"},
            {
                "type": "Paused",
                "status": "False",
                "reason": "ScaledObjectUnpaused",
                "message": "pause annotation removed",
            },
        ],
    }
    version = template["apiVersion"]
    managed = [
        _managed(
            "kubectl-client-side-apply",
            created,
            version,
            {"f:metadata": fields_of({"annotations": annotations, "labels": labels}), "f:spec": fields_of(spec)},
        ),
        _managed("keda", created, version, {"f:metadata": {"f:finalizers": fields_of(["finalizer.keda.sh"])}}),
        _managed("keda", created + timedelta(hours=2), version, {"f:status": fields_of(status)}, "status"),
    ]
    return {
        "apiVersion": version,
        "kind": "ScaledObject",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "generation": 1,
            "labels": labels,
            "annotations": annotations,
            "finalizers": ["finalizer.keda.sh"],
            "managedFields": managed,
        },
        "spec": spec,
        "status": status,
    }


def deployment(name: str, template: Mapping[str, Any] | None, created: datetime, i: int) -> dict[str, Any]:
    """A Deployment as kubectl applied it and the controllers completed it: one container, env, resources, probes."""
    base = (template or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    image = str(base[0].get("image") or "cortex/mcp-server:latest").replace(":latest", ":1.8.3")
    container_name = str(base[0].get("name") or "mcp-server")
    labels = {"app": name, "app.kubernetes.io/part-of": "mcp-platform", "team": f"team-{i % 40:02d}"}
    probe = {"port": "http", "scheme": "HTTP"}
    container = {
        "name": container_name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ],
        "env": [
            {"name": "MCP_SERVER_NAME", "value": name},
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "MAX_CONCURRENT_REQUESTS", "value": "64"},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.monitoring:4317"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            },
            {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "mcp-redis", "key": "url"}}},
            {
                "name": "GOMAXPROCS",
                "valueFrom": {
                    "resourceFieldRef": {"containerName": container_name, "divisor": "0", "resource": "limits.cpu"}
                },
            },
        ],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **probe},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **probe},
            "periodSeconds": 5,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/mcp", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    spec = {
        "replicas": 3,
        "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
        "revisionHistoryLimit": 10,
        "progressDeadlineSeconds": 600,
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            },
            "spec": {
                "containers": [container],
                "volumes": [
                    {"name": "config", "configMap": {"name": f"{name}-config", "defaultMode": 420}},
                    {"name": "tmp", "emptyDir": {}},
                ],
                "serviceAccountName": "mcp-server",
                "securityContext": {"fsGroup": 65532},
                "dnsPolicy": "ClusterFirst",
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "terminationGracePeriodSeconds": 30,
            },
        },
    }
    applied = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": spec,
    }
    annotations = {
        "deployment.kubernetes.io/revision": "4",
        "kubectl.kubernetes.io/last-applied-configuration": _last_applied(applied),
    }
    replica_set = f"{name}-{(i * 2654435761) % 16**10:010x}"
    later = _stamp(created + timedelta(minutes=3))
    status = {
        "observedGeneration": 4,
        "replicas": 3,
        "updatedReplicas": 3,
        "readyReplicas": 3,
        "availableReplicas": 3,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "lastUpdateTime": later,
                "lastTransitionTime": later,
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "lastUpdateTime": later,
                "lastTransitionTime": _stamp(created),
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{replica_set}" has successfully progressed.',
            },
        ],
    }
    managed = [
        _managed(
            "kubectl-client-side-apply",
            created,
            "apps/v1",
            {"f:metadata": fields_of({"annotations": annotations, "labels": labels}), "f:spec": fields_of(spec)},
        ),
        _managed("kube-controller-manager", created, "apps/v1", {"f:spec": {"f:replicas": {}}}, "scale"),
        _managed(
            "kube-controller-manager",
            created + timedelta(minutes=3),
            "apps/v1",
            {
                "f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}},
                "f:status": fields_of(status),
            },
            "status",
        ),
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "generation": 4,
            "labels": labels,
            "annotations": annotations,
            "managedFields": managed,
        },
        "spec": spec,
        "status": status,
    }


def objects(n: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """N ScaledObjects, each with the Deployment it scales: the 13 examples in turn, numbered."""
    scaled = _examples("ScaledObject")
    workloads = {doc["metadata"]["name"]: doc for doc in _examples("Deployment")}
    created = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    for i in range(n):
        template = scaled[i % len(scaled)]
        obj = scaled_object(i, template, created + timedelta(seconds=i))
        target = template["spec"]["scaleTargetRef"]["name"]
        yield obj, deployment(obj["spec"]["scaleTargetRef"]["name"], workloads.get(target), created, i)


# ---------------------------------------------------------------------------------------------- child processes


async def serve_cluster(n: int) -> None:
    """The emulated API with the N + N objects, in a process of its own (its memory is not the agent's)."""
    import kmock

    from agent.devcluster import DevCluster

    lists: Counter[str] = Counter()  # lists served, by plural and whole or limited

    class Cluster(DevCluster):  # type: ignore[misc]
        """
        Honours ``limit`` on a list, as the API server does: ``/readyz`` pings each kind with ``limit=1``, and the
        emulator (kmock ignores the parameter) would answer all 10,000 objects to each ping. Counts the lists.
        """

        async def _serve_list(self, request: Any) -> Any:
            payload = await super()._serve_list(request)
            limit = int(request.params.get("limit") or 0)
            lists[f"{request.resource.plural} {'limit' if limit else 'whole'}"] += 1
            if limit > 0 and len(payload["items"]) > limit:
                payload["items"] = payload["items"][:limit]
                payload["metadata"]["continue"] = "bench"
            return payload

    started = time.monotonic()
    async with Cluster(keep_requests=False) as cluster, kmock.Server(cluster) as server:
        sizes: Counter[str] = Counter()
        for so, dep in objects(n):
            sizes["scaledobject_bytes"] += len(json.dumps(so, separators=(",", ":")))
            sizes["deployment_bytes"] += len(json.dumps(dep, separators=(",", ":")))
            sizes["so_last_applied_bytes"] += len(so["metadata"]["annotations"][_LAST_APPLIED])
            sizes["dep_last_applied_bytes"] += len(dep["metadata"]["annotations"][_LAST_APPLIED])
            cluster.add(so)
            cluster.add(dep)
        gc.collect()
        gc.freeze()  # 20,000 big objects: keep the cyclic collector from walking them during the lists
        info = {"url": str(server.url).rstrip("/"), "seconds": time.monotonic() - started, **sizes}
        common.announce(json.dumps(info))
        await _commands(lambda command: {"lists": dict(lists), "watching": cluster.watching})


_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _namespaced(value: Any, namespace: str) -> Any:
    if isinstance(value, dict):
        return {key: _namespaced(item, namespace) for key, item in value.items()}
    if isinstance(value, list):
        return [_namespaced(item, namespace) for item in value]
    return namespace if value == "cortex-mcp" else value


def agent_config(workdir: Path, namespace: str) -> dict[str, Any]:
    """The demo's config (its six default rules), watching ``namespace``, dry-run, production intervals."""
    from agent.demo import demo_config

    data = _namespaced(demo_config(workdir / "ledger.db"), namespace)
    data["webhook"]["auth"]["token"] = {"env": TOKEN_ENV}
    data["kubernetes"]["reconcile_interval"] = "30s"  # the production default, not the demo's 2s
    data["guard"]["dry_run"] = True
    data["log"] = {"level": "warning", "format": "json"}
    return data


def _rss() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in bytes."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def _malloc_trim() -> bool:
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    return False


async def serve_agent(kube_url: str, workdir: Path, namespace: str, started: float) -> None:
    """
    The agent as ``scaling-agent run --dry-run`` runs it (``agent.cli._run``: the config file's model, an API
    client from a kubeconfig, ``Agent.start()``), plus commands on stdin for the parent: ``gc``, ``trim``,
    ``stats``, ``trace``. It announces its URL and when its imports were done and ``Agent.start()`` returned.
    """
    from agent.app import Agent
    from agent.configfile import parse_config
    from agent.devcluster import kubeconfig_for
    from agent.kube import make_api_client
    from agent.logs import setup_logging
    from agent.targets.cache import ObjectCache

    imported = time.time()
    setup_logging(level="warning", fmt="json")
    config = parse_config(agent_config(workdir, namespace), source="<bench>")
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(kube_url)))
    api = await make_api_client(kubeconfig=str(kubeconfig))
    agent = Agent(config, api=api, dry_run=True)
    await agent.start()
    common.announce(json.dumps({"url": agent.url, "started": started, "imported": imported, "listening": time.time()}))

    def caches() -> dict[str, int]:
        counts = {}
        for kind in agent.targets.values():
            for value in vars(kind).values():
                if isinstance(value, ObjectCache):
                    counts[value.name] = len(value.items()) if value.ready else -1
        return counts

    def answer(line: str) -> dict[str, Any]:
        answer: dict[str, Any] = {}
        if line == "gc":
            answer["collected"] = gc.collect()
        elif line == "trim":
            answer["trimmed"] = _malloc_trim()
        elif line == "trace" and tracemalloc.is_tracing():
            gc.collect()
            snapshot = tracemalloc.take_snapshot()
            answer["traced"] = tracemalloc.get_traced_memory()[0]
            answer["top"] = [
                [str(stat.traceback[0]), stat.size, stat.count] for stat in snapshot.statistics("lineno")[:TRACE_TOP]
            ]
        elif line == "stats":
            answer["caches"] = caches()
            answer["gc_frozen"] = gc.get_freeze_count()
        answer.update(_rss())
        return answer

    await _commands(answer)


async def _commands(answer: Callable[[str], dict[str, Any]]) -> None:
    """
    Answer the parent's commands, one JSON line each, until stdin closes (or SIGTERM); then exit at once, as a
    killed pod would: the agent's stop() is not what is measured, nor the emulator's teardown of 20,000 objects.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    loop.add_signal_handler(signal.SIGTERM, reader.feed_eof)
    while line := (await reader.readline()).decode().strip():
        sys.stdout.write(json.dumps(answer(line)) + "\n")
        sys.stdout.flush()
    sys.stdout.flush()
    os._exit(0)


CLUSTER_CPU, AGENT_CPU = 1, 0  # the agent alone on core 0; the emulator and this script on core 1


def run_child(args: argparse.Namespace) -> int:
    if args.serve == "cluster":
        common.pin(CLUSTER_CPU, args)
        asyncio.run(serve_cluster(args.objects))
    elif args.serve == "parse":
        parse_lists(Path(args.workdir), args.mode)
    else:
        common.pin(AGENT_CPU, args)
        if args.trace:
            tracemalloc.start(1)
        asyncio.run(serve_agent(args.kube_url, Path(args.workdir), args.namespace, args.started))
    return 0


# ---------------------------------------------------------------------------------------------- the parent


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    info: dict[str, Any]
    log: Path

    @classmethod
    async def start(cls, name: str, argv: list[str], *, log: Path, wait: float) -> Child:
        env = {**os.environ, TOKEN_ENV: "bench-watch-token"}
        stdin = asyncio.subprocess.PIPE  # the parent's commands (gc, stats, ...); closing it ends the child
        proc, said = await common.start_child(SELF, argv, name=name, log=log, env=env, wait=wait, stdin=stdin)
        return cls(name=name, proc=proc, info=json.loads(said), log=log)

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), COMMAND_TIMEOUT)
        if not line:
            raise RuntimeError(f"{self.name} ended; its log ends with:\n{common.tail(self.log)}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stop(self) -> None:
        await common.stop_child(self.proc)


@dataclass
class AgentRun:
    namespace: str
    spawn_to_imported: float = 0.0
    spawn_to_listening: float = 0.0
    spawn_to_ready: float = 0.0
    readyz_polls: int = 0
    rss_ready: int = 0  # after ready and --settle, before the collection
    rss_gc: int = 0  # after gc.collect(): the figure compared
    rss_trim: int = 0  # after malloc_trim(0) too: what glibc held free
    hwm: int = 0  # the peak
    caches: dict[str, int] = field(default_factory=dict)
    traced: int = 0  # --trace: what tracemalloc counts live after the collection
    top: list[list[Any]] = field(default_factory=list)  # --trace: the lines that allocated most of it
    lists: dict[str, int] = field(default_factory=dict)  # lists the emulator served from its start to ready


async def run_agent(cluster: Child, namespace: str, workdir: Path, args: argparse.Namespace) -> AgentRun:
    run = AgentRun(namespace=namespace)
    kube_url = cluster.info["url"]
    before = Counter((await cluster.ask("stats"))["lists"])
    agent_dir = workdir / namespace
    agent_dir.mkdir()
    started = time.time()
    argv = ["--serve", "agent", "--kube-url", kube_url, "--workdir", str(agent_dir), "--namespace", namespace]
    argv += ["--trace"] if args.trace else []
    child = await Child.start(
        f"agent ({namespace})",
        [*argv, "--started", repr(started)],
        log=workdir / f"agent-{namespace}.log",
        wait=AGENT_START_TIMEOUT,
    )
    try:
        run.spawn_to_imported = child.info["imported"] - started
        run.spawn_to_listening = child.info["listening"] - started
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                run.readyz_polls += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(child.info["url"] + "/readyz") as response:
                        await response.read()
                        if response.status == 200:
                            run.spawn_to_ready = time.time() - started
                            run.lists = dict(Counter((await cluster.ask("stats"))["lists"]) - before)
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the agent was not ready in {AGENT_START_TIMEOUT:.0f} s ({namespace})")
                await asyncio.sleep(POLL_SECONDS)
        await asyncio.sleep(args.settle)
        run.rss_ready = (await child.ask("stats"))["VmRSS"]
        run.rss_gc = (await child.ask("gc"))["VmRSS"]
        stats = await child.ask("stats")
        run.caches = stats["caches"]
        run.rss_trim = (await child.ask("trim"))["VmRSS"]
        run.hwm = stats["VmHWM"]
        if args.trace:
            traced = await child.ask("trace")
            run.traced, run.top = traced["traced"], traced["top"]
    finally:
        await child.stop()
    return run


@dataclass
class Footprint:
    kind: str
    count: int
    body_bytes: int  # the list's JSON, as the API answers it
    whole: int  # tracemalloc: the list's items as whole dicts (json.loads, as the cache's list reads them)
    projected: int  # ... and the projections alone, once the whole dicts are dropped
    fields: list[tuple[str, int]]  # bytes per field of the projections (sys.getsizeof, shared objects once)


async def time_lists(url: str) -> dict[str, tuple[float, int]]:
    """How long the emulator takes to answer each whole list to a client that only reads it (no parse)."""
    served = {}
    timeout = aiohttp.ClientTimeout(total=COMMAND_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for plural, path in (
            ("ScaledObjects", f"/apis/keda.sh/v1alpha1/namespaces/{NAMESPACE}/scaledobjects"),
            ("Deployments", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"),
        ):
            start = time.perf_counter()
            async with http.get(url + path) as response:
                body = await response.read()
            served[plural] = (time.perf_counter() - start, len(body))
    return served


def _deep(obj: Any, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep(key, seen) + _deep(value, seen) for key, value in obj.items())
    elif isinstance(obj, list | tuple):
        size += sum(_deep(item, seen) for item in obj)
    return size


def field_sizes(projections: list[Any], keep: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Bytes each projected field takes over all projections (the dicts that hold them under "(containers)")."""
    seen: set[int] = set()
    totals: Counter[str] = Counter()

    def walk(obj: Mapping[str, Any], spec: Mapping[str, Any], path: str) -> None:
        seen.add(id(obj))
        totals["(containers: the projection's own dicts)"] += sys.getsizeof(obj)
        for key, value in obj.items():
            totals["(containers: the projection's own dicts)"] += _deep(key, seen)
            sub = spec.get(key)
            if isinstance(sub, Mapping) and isinstance(value, Mapping):
                walk(value, sub, f"{path}{key}.")
            else:
                totals[f"{path}{key}"] += _deep(value, seen)

    for projection in projections:
        if isinstance(projection, Mapping):
            walk(projection, keep, "")
            continue
        # A compact record (the cache's CachedScaledObject, CachedDeployment): its slots.
        seen.add(id(projection))
        totals["(the record itself)"] += sys.getsizeof(projection)
        for slot in type(projection).__slots__:
            totals[slot] += _deep(getattr(projection, slot), seen)
    return totals.most_common()


def footprint(
    kind: str, docs: list[dict[str, Any]], keep: Mapping[str, Any], project: Callable[[Any], Any]
) -> Footprint:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": docs}).encode()
    docs.clear()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    whole = json.loads(body)["items"]
    whole_bytes = tracemalloc.get_traced_memory()[0] - base
    projections = [project(obj) for obj in whole]
    whole.clear()
    del whole
    gc.collect()
    projected = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return Footprint(kind, len(projections), len(body), whole_bytes, projected, field_sizes(projections, keep))


def footprints(n: int, workdir: Path) -> list[Footprint]:
    from agent.targets.scaledobject import CachedDeployment, CachedScaledObject

    pairs = list(objects(n))
    scaled = [so for so, _ in pairs]
    deployments = [dep for _, dep in pairs]
    pairs.clear()
    write_lists(workdir / "lists", {"scaledobjects": scaled, "deployments": deployments})
    return [
        footprint("ScaledObjects", scaled, {}, CachedScaledObject),
        footprint("Deployments", deployments, {}, CachedDeployment),
    ]


def write_lists(where: Path, docs: dict[str, list[dict[str, Any]]]) -> None:
    """Each kind's list as one answer (``<plural>-whole-0000.json``) and in pages (``<plural>-paged-NNNN.json``)."""
    where.mkdir()
    for plural, items in docs.items():
        (where / f"{plural}-whole-0000.json").write_text(json.dumps({"items": items}))
        for page, start in enumerate(range(0, len(items), PAGE)):
            (where / f"{plural}-paged-{page:04d}.json").write_text(json.dumps({"items": items[start : start + PAGE]}))


def parse_lists(where: Path, mode: str) -> None:
    """
    A bare process reads the lists as the cache does (json.loads, prune each item, drop the whole dicts) and says
    how much its RSS grew, after a collection: the cache's memory without the rest of the agent, whole or paged.
    """
    from agent.targets.scaledobject import CachedDeployment, CachedScaledObject

    keep: dict[str, Any] = {"scaledobjects": CachedScaledObject, "deployments": CachedDeployment}
    gc.collect()
    base = _rss()["VmRSS"]
    cache: list[dict[str, Any]] = []
    for path in sorted(where.glob(f"*-{mode}-*.json")):
        items = json.loads(path.read_bytes())["items"]
        cache.extend(keep[path.name.split("-")[0]](obj) for obj in items)
        del items
    gc.collect()
    after = _rss()["VmRSS"]
    _malloc_trim()
    common.announce(json.dumps({"objects": len(cache), "grew": after - base, "trimmed": _rss()["VmRSS"] - base}))


async def parse_in_child(workdir: Path, mode: str) -> dict[str, Any]:
    argv = ["--serve", "parse", "--workdir", str(workdir / "lists"), "--mode", mode]
    child = await Child.start(f"parse ({mode})", argv, log=workdir / f"parse-{mode}.log", wait=AGENT_START_TIMEOUT)
    await child.stop()
    return child.info


def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def report(
    args: argparse.Namespace,
    cluster: dict[str, Any],
    idle: AgentRun,
    full: AgentRun,
    sizes: list[Footprint],
    served: dict[str, tuple[float, int]],
    parsed: dict[str, dict[str, Any]],
) -> bool:
    n = args.objects
    delta = full.rss_gc - idle.rss_gc
    met = delta < TARGET_MIB * MIB
    print(f"\n{n:,} ScaledObjects + {n:,} Deployments in namespace {NAMESPACE}")
    for label, key, last in (
        ("ScaledObject", "scaledobject_bytes", "so_last_applied_bytes"),
        ("Deployment", "deployment_bytes", "dep_last_applied_bytes"),
    ):
        size, applied = cluster[key] / n / 1024, cluster[last] / n / 1024
        print(f"  {label}: {size:.1f} KiB of JSON on average, of which the last-applied annotation {applied:.1f} KiB")
    print()
    header = ("agent", "spawn→imported", "→listening", "→/readyz 200", "RSS ready", "after gc", "+trim", "peak")
    print(f"{header[0]:<26}" + "".join(f"{h:>15}" for h in header[1:]) + "  caches")
    for label, run in (("idle (empty namespace)", idle), (f"{n:,} + {n:,} objects", full)):
        times = (run.spawn_to_imported, run.spawn_to_listening, run.spawn_to_ready)
        rss = (run.rss_ready, run.rss_gc, run.rss_trim, run.hwm)
        row = "".join(f"{t:>14.2f}s" for t in times) + "".join(f"{m / MIB:>11.1f} MiB" for m in rss)
        print(f"{label:<26}{row}  {run.caches}")
    print()
    per_pair = delta / MIB / (n / 1000)
    print(f"RSS above the idle agent, after gc: {_mib(delta)}")
    print(f"  {per_pair:.2f} MiB per 1,000 ScaledObjects with their Deployments ({per_pair / 2:.2f} per 1,000 objects)")
    trimmed = full.rss_trim - idle.rss_trim
    print(f"  after malloc_trim(0) in both: {_mib(trimmed)}; the peak (VmHWM) above idle: {_mib(full.hwm - idle.hwm)}")
    added = full.spawn_to_ready - idle.spawn_to_ready
    print(
        f"time to ready: {full.spawn_to_ready:.2f} s (idle {idle.spawn_to_ready:.2f} s: the objects add {added:.2f} s)"
    )
    whole = {key.split()[0]: count for key, count in full.lists.items() if key.endswith(" whole")}
    print(f"  whole lists the emulator served from the agent's start to its ready: {whole}")
    for plural, (seconds, size) in served.items():
        print(f"  the emulator serves the {plural} list ({_mib(size)}) to a bare client in {seconds:.2f} s")
    print()
    columns = ("JSON of the list", "whole dicts", "projections", "saved")
    print(f"{'what the objects take (tracemalloc)':<32}" + "".join(f"{c:>17}" for c in columns))
    for fp in sizes:
        saved = 1 - fp.projected / fp.whole if fp.whole else 0.0
        cells = "".join(f"{_mib(v):>17}" for v in (fp.body_bytes, fp.whole, fp.projected))
        print(f"{f'{fp.count:,} {fp.kind}':<32}{cells}{saved:>17.0%}")
    both = "".join(f"{_mib(sum(getattr(fp, a) for fp in sizes)):>17}" for a in ("body_bytes", "whole", "projected"))
    print(f"{'both':<32}{both}")
    print("\nthe same lists read as the cache reads them, in a bare process (RSS growth after gc; after malloc_trim):")
    for mode, result in parsed.items():
        how = "each list in one answer" if mode == "whole" else f"in pages of {PAGE}"
        grew, trimmed = _mib(result["grew"]), _mib(result["trimmed"])
        print(f"  {how:<24}{grew:>12}{trimmed:>12}  ({result['objects']:,} projections kept)")
    for fp in sizes:
        print(f"\nthe {fp.kind} projections by field (sys.getsizeof, each shared object once; per 1,000 objects):")
        total = sum(size for _, size in fp.fields)
        for name, size in fp.fields[:10]:
            print(f"  {name:<48}{size / MIB * 1000 / fp.count:>8.2f} MiB{size / total:>7.0%}")
    if args.trace:
        live = full.traced - idle.traced
        print(f"\ntracemalloc in the agents: {_mib(live)} live above idle after gc; the lines that allocated most:")
        for where, size, count in full.top:
            print(f"  {size / MIB:>8.1f} MiB {count:>10,} blocks  {where}")
    verdict = "met" if met else f"MISSED by {_mib(delta - TARGET_MIB * MIB)}"
    print(f"\ntarget: RSS above idle < {TARGET_MIB:.0f} MiB: {verdict} ({_mib(delta)})")
    return met


async def bench_main(args: argparse.Namespace, workdir: Path) -> bool:
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"watch bench: {python}, {os.cpu_count()} CPUs, {args.objects:,} objects of each kind")
    cluster = await Child.start(
        "emulated API",
        ["--serve", "cluster", "--objects", str(args.objects)],
        log=workdir / "cluster.log",
        wait=CLUSTER_START_TIMEOUT,
    )
    try:
        print(f"emulated API loaded in {cluster.info['seconds']:.1f} s; starting the idle agent")
        idle = await run_agent(cluster, IDLE_NAMESPACE, workdir, args)
        print(
            f"idle agent ready in {idle.spawn_to_ready:.2f} s, {_mib(idle.rss_gc)}; starting the agent with the objects"
        )
        full = await run_agent(cluster, NAMESPACE, workdir, args)
        print(f"agent ready in {full.spawn_to_ready:.2f} s, {_mib(full.rss_gc)}")
        served = await time_lists(cluster.info["url"])
    finally:
        await cluster.stop()
    print("measuring the objects' footprint with tracemalloc ...")
    sizes = footprints(args.objects, workdir)
    print(f"parsing the lists in a bare process, whole and in pages of {PAGE} ...")
    parsed = {mode: await parse_in_child(workdir, mode) for mode in ("whole", "paged")}
    return report(args, cluster.info, idle, full, sizes, served, parsed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The watch-backed cache's memory and time to ready, with N ScaledObjects and N Deployments.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--objects", type=int, default=10000, help="ScaledObjects (and as many Deployments)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after ready before the RSS is read")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless RSS above idle < {TARGET_MIB:.0f} MiB")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the agent and the emulator to cores")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, ledgers) and print where")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the agents under tracemalloc and show what stays live (slower, and the RSS then includes its traces)",
    )
    parser.add_argument("--serve", choices=["agent", "cluster", "parse"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["whole", "paged"], help=argparse.SUPPRESS)
    parser.add_argument("--kube-url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.objects < 1 or args.objects > 100_000:
        parser.error("--objects: 1 to 100,000")
    if not 0 <= args.settle <= 600:
        parser.error("--settle: 0 to 600 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return run_child(args)
    if args.no_pin:
        os.environ["BENCH_NO_PIN"] = "1"  # for the children
    common.pin(CLUSTER_CPU, args)
    with common.workdir("watch-bench-", keep=args.keep) as workdir:
        met = asyncio.run(bench_main(args, workdir))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
