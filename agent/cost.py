"""
Pricing: what one more replica of a target costs per hour, and what a namespace spends now.

OpenCost measures cost and never acts; the agent acts, so it prices each change before making it. A replica's
price is its requests times its nodes' unit prices:

- **Prometheus first** (prometheus-api-client): the pods' requests from kube-state-metrics
  (``kube_pod_container_resource_requests``), each pod's node's price per vCPU-hour and per GiB-hour from
  OpenCost (``node_cpu_hourly_cost``, ``node_ram_hourly_cost``), averaged over the pods. Nodes OpenCost does not
  price: the cost recording rule's ``mcp:cost:hourly_pod_cost`` of the pods instead (the shipped one, or a cost
  model of your own under that name, on the seed's ``node_cost_hourly`` say). A workload with no pod
  running (scaled to zero) is priced from its pod template's requests at the cluster's average unit prices.
- **The table** (``cost.table``) when Prometheus is down or the series are missing: the requests last seen in
  Prometheus, else the pod template's (read from Kubernetes), at the table's prices: an instance type's
  when the template pins one, spot when it tolerates spot, per vCPU-hour and GiB-hour otherwise.
- **Unknown** when neither gives a price (the template unreadable, no requests): the decision says so, and
  ``cost.on_unknown_price`` decides whether a budget lets it through.

prometheus-api-client is synchronous and retries with backoff by default: its retries are off here, every query
has ``cost.prometheus.timeout``, and the queries run in a thread pool of the pricer's own (the default pool is the
ledger's fsync's). Prices and spends are cached for ``cost.cache``. Pricing never fails an action: any error is a
fallback, said on the decision. A change with a deadline (a preemption notice) never waits for Prometheus at
all: it takes a cached price or the table's.

Which pods are a workload's is read from their names, as kube-state-metrics has no owner label on requests: a
Deployment's are ``<name>-<template hash>-<suffix>``, a StatefulSet's ``<name>-<ordinal>``.

The replica arithmetic (:func:`replicas_delta`) is pure: a change of bounds is priced as the replica change it
implies at the current count (a floor of 5 on a workload running 3 adds 2; a ceiling of 6 on one running 8
removes 2), a pause as its count against the current one, and a ceiling raised on a workload pinned at its old
ceiling as filled (the autoscaler takes the room at once: that is why MCPAtMaximumScale fired).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes_asyncio import client

from agent.claims import MAX_REPLICAS, MIN_REPLICAS, PAUSED_REPLICAS, REPLICAS, Value
from agent.config import CostConfig, PricingTable
from agent.errors import KubernetesError, call_json
from agent.structs import PriceSource
from agent.targets.base import TargetState
from agent.targets.pods import WORKLOAD_PLURALS

log = structlog.get_logger("agent.cost")

GIB = 1024**3
KEEP_REQUESTS = 1000  # workloads whose last-seen requests are kept for the table's fallback
SPEND_STALE_SECONDS = 3600.0  # a namespace's spend last seen longer ago than this is unknown
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"

# Names go into regexes as raw (backquoted) PromQL strings: re.escape's backslashes stay as they are.
# A pod's cost per node and resource: its requests times its node's unit price. ``or`` keeps the memory side of a
# pod that also has a CPU request (they differ in ``resource``).
# pod that also has a CPU request (they differ in ``resource``); ``max`` first, so two kube-state-metrics replicas
# never count a request twice. The same expression as the PrometheusRule's mcp:cost:hourly_pod_cost, for every
# namespace (the agent does not depend on that rule being installed).
KSM_REQUESTS = "max by (namespace, pod, container, node, resource) (kube_pod_container_resource_requests{{{match}}})"
_CPU = KSM_REQUESTS.format(match='resource="cpu", unit="core"')
_MEMORY = KSM_REQUESTS.format(match='resource="memory", unit="byte"')
POD_COST = (
    f"sum by (namespace, pod) ({_CPU} * on (node) group_left () avg by (node) (node_cpu_hourly_cost)"
    f" or {_MEMORY} / 1073741824 * on (node) group_left () avg by (node) (node_ram_hourly_cost))"
)
SPEND = f"sum by (namespace) ({POD_COST})"
RECORDED_POD_COST = "mcp:cost:hourly_pod_cost"  # deploy/base/prometheusrule.yaml's, or a cost model of your own
RECORDED_SPEND = "sum by (namespace) (mcp:cost:hourly_pod_cost)"
REQUESTS = "sum by (pod, node, resource) (" + KSM_REQUESTS + ")"
NODE_PRICES = 'avg by (node, __name__) ({{__name__=~"node_cpu_hourly_cost|node_ram_hourly_cost", node=~`{nodes}`}})'
AVERAGE_PRICES = 'avg by (__name__) ({__name__=~"node_cpu_hourly_cost|node_ram_hourly_cost"})'


class PrometheusUnavailable(Exception):
    """Prometheus did not answer in time, or answered with an error."""


@dataclass(frozen=True)
class Requests:
    """One replica's requests."""

    cpu: float  # cores
    memory_gib: float

    def text(self) -> str:
        return f"{self.cpu:g} vCPU + {self.memory_gib:g} GiB"


@dataclass(frozen=True)
class ReplicaPrice:
    """One replica of a workload for an hour, where the price came from, and how it was worked out."""

    per_hour: float | None
    source: PriceSource
    note: str


@dataclass(frozen=True)
class Spend:
    """What a namespace (or every namespace the agent may touch) spends per hour now."""

    per_hour: float | None
    source: PriceSource
    note: str = ""
    read_at: float = 0.0  # when Prometheus said so (the pricer's clock): changes made since are not in it


def pod_pattern(kind: str, name: str) -> str:
    """A regex for the names of a workload's pods (kube-state-metrics' series carry no owner)."""
    if kind == "StatefulSet":
        return f"{re.escape(name)}-[0-9]+"
    return f"{re.escape(name)}-[a-z0-9]+-[a-z0-9]+"


def implied_replicas(values: Mapping[str, Value], replicas: int | None) -> int | None:
    """The replicas an object's fields make a workload run, from the count it runs now."""
    paused = values.get(PAUSED_REPLICAS)
    if isinstance(paused, int) and not isinstance(paused, bool):
        return paused
    count = values.get(REPLICAS)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    if replicas is None:
        return None
    low, high = values.get(MIN_REPLICAS), values.get(MAX_REPLICAS)
    implied = replicas
    if isinstance(low, int) and not isinstance(low, bool):
        implied = max(implied, low)
    if isinstance(high, int) and not isinstance(high, bool):
        implied = min(implied, high)
    return implied


def replicas_delta(before: Mapping[str, Value], after: Mapping[str, Value], replicas: int | None) -> int | None:
    """The replica change of writing ``after`` over ``before`` at the count ``replicas`` (module docstring)."""
    was = implied_replicas(before, replicas)
    will = implied_replicas(after, replicas)
    if was is None or will is None:
        return None
    old_max, new_max = before.get(MAX_REPLICAS), after.get(MAX_REPLICAS)
    pinned = (
        isinstance(old_max, int)
        and isinstance(new_max, int)
        and replicas is not None
        and new_max > old_max
        and replicas >= old_max
        and not isinstance(after.get(PAUSED_REPLICAS), int)
    )
    if pinned:  # the autoscaler sits at the old ceiling: it takes the new room at once
        assert isinstance(new_max, int)
        will = max(will, new_max)
    return will - was


def table_price(requests: Requests, table: PricingTable, *, spot: bool, instance_type: str | None) -> tuple[float, str]:
    """One replica's price from the table: an instance type's, split between vCPUs and memory like OpenCost does
    (in the ratio of the per-vCPU and per-GiB prices), else per vCPU-hour and GiB-hour."""
    cpu_price = (table.cpu_hour.spot if spot else None) or table.cpu_hour.on_demand
    ram_price = (table.gib_hour.spot if spot else None) or table.gib_hour.on_demand
    where = "spot" if spot else "on-demand"
    row = table.instance_types.get(instance_type or "")
    if row is not None:
        price = (row.spot if spot else None) or row.on_demand
        share = price / (row.cpus * cpu_price + row.memory_gib * ram_price)
        cpu_price, ram_price = cpu_price * share, ram_price * share
        where = f"{instance_type} {where}"
    per_hour = requests.cpu * cpu_price + requests.memory_gib * ram_price
    return per_hour, f"{requests.text()} at the table's {where} ${cpu_price:.6g}/vCPU-h, ${ram_price:.6g}/GiB-h"


def _quantity(text: Any) -> float:
    """A Kubernetes quantity (``250m``, ``512Mi``, ``1.5``, ``2G``) as a plain number."""
    value = str(text).strip()
    suffixes = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, factor in suffixes.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    if value.endswith("m"):
        return float(value[:-1]) / 1000
    return float(value)


@dataclass(frozen=True)
class Template:
    """What a workload's pod template says about its price: requests, spot, a pinned instance type."""

    requests: Requests
    spot: bool
    instance_type: str | None


def read_template(workload: Mapping[str, Any], *, spot_keys: Sequence[str]) -> Template:
    spec = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
    cpu = memory = 0.0
    for container in spec.get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        if "cpu" in requests:
            cpu += _quantity(requests["cpu"])
        if "memory" in requests:
            memory += _quantity(requests["memory"])
    tolerated = {str(t.get("key")) for t in spec.get("tolerations") or []}
    selector = spec.get("nodeSelector") or {}
    spot = bool(tolerated & set(spot_keys)) or any(key in selector for key in spot_keys)
    return Template(
        Requests(cpu=cpu, memory_gib=memory / GIB), spot=spot, instance_type=selector.get(INSTANCE_TYPE_LABEL)
    )


class Pricer:
    """Prices replicas and reads spends; see the module docstring. :meth:`close` at the end."""

    def __init__(
        self,
        config: CostConfig,
        *,
        api: client.ApiClient | None,
        namespaces: Sequence[str] = ("*",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.api = api
        self.namespaces = list(namespaces)
        self._clock = clock
        self._prices: dict[tuple[str, str, str], tuple[float, ReplicaPrice]] = {}
        self._seen: dict[tuple[str, str, str], Requests] = {}  # requests last read from Prometheus
        self._templates: dict[tuple[str, str, str], tuple[float, Template | None]] = {}
        self._spends: tuple[float, dict[str, float]] | None = None  # when read, and per namespace
        self._pool: ThreadPoolExecutor | None = None
        self._prometheus: Any = None
        if config.prometheus is not None:
            from prometheus_api_client import PrometheusConnect
            from urllib3.util.retry import Retry

            headers = None
            if config.prometheus.token is not None:
                headers = {"Authorization": f"Bearer {config.prometheus.token.read()}"}
            self._prometheus = PrometheusConnect(
                url=config.prometheus.url,
                headers=headers,
                retry=Retry(total=0, connect=0, read=0, redirect=0, status=0),  # the agent falls back instead
                timeout=config.prometheus.timeout.total_seconds(),
            )
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pricing")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._prometheus is not None:
            self._prometheus.close()

    # --- Prometheus ------------------------------------------------------------------------------------------

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """One instant query, in the pricer's own threads. Raises PrometheusUnavailable."""
        if self._prometheus is None or self._pool is None:
            raise PrometheusUnavailable("no cost.prometheus.url configured")
        loop = asyncio.get_running_loop()
        assert self.config.prometheus is not None
        try:
            # The client's own timeout bounds the request; this one bounds a pool busy with earlier queries.
            async with asyncio.timeout(self.config.prometheus.timeout.total_seconds() * 2):
                result = await loop.run_in_executor(self._pool, self._prometheus.custom_query, promql)
        except TimeoutError:
            raise PrometheusUnavailable("no answer in time") from None
        except Exception as exc:  # requests' and the client's errors alike: a fallback, never a failure
            raise PrometheusUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return list(result)

    # --- one replica's price ---------------------------------------------------------------------------------

    async def price(self, state: TargetState, *, urgent: bool = False) -> ReplicaPrice:
        """One replica of the workload ``state``'s object scales, for an hour. Never raises."""
        workload = state.workload
        if workload is None:
            return ReplicaPrice(None, PriceSource.UNKNOWN, f"{state.ref} names no workload to price")
        kind, name = workload
        key = (state.ref.namespace, kind, name)
        now = self._clock()
        cached = self._prices.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            if urgent or self._prometheus is None:
                why = "not asked, the change has a deadline" if urgent else "no cost.prometheus.url configured"
                raise PrometheusUnavailable(why)
            price = await self._from_prometheus(state.ref.namespace, kind, name)
        except PrometheusUnavailable as exc:
            price = await self._from_table(state.ref.namespace, kind, name, why=str(exc))
        if not (urgent and price.source != PriceSource.PROMETHEUS):  # an urgent guess must not hide a real price
            self._prices[key] = (now + self.config.cache.total_seconds(), price)
        return price

    async def _from_prometheus(self, namespace: str, kind: str, name: str) -> ReplicaPrice:
        match = f'namespace="{namespace}", pod=~`{pod_pattern(kind, name)}`, resource=~"cpu|memory"'
        rows = await self.query(REQUESTS.format(match=match))
        pods: dict[str, dict[str, float]] = {}
        nodes: dict[str, str] = {}
        for row in rows:
            labels = row.get("metric", {})
            pod, resource = labels.get("pod", ""), labels.get("resource", "")
            pods.setdefault(pod, {})[resource] = float(row["value"][1])
            if labels.get("node"):
                nodes[pod] = labels["node"]
        pods = {pod: requests for pod, requests in pods.items() if pod in nodes}  # a pending pod costs nothing yet
        if not pods:
            return await self._template_at_average(namespace, kind, name)
        cpu = sum(p.get("cpu", 0.0) for p in pods.values()) / len(pods)
        memory = sum(p.get("memory", 0.0) for p in pods.values()) / len(pods) / GIB
        requests = Requests(cpu=round(cpu, 6), memory_gib=round(memory, 6))
        self._remember(namespace, kind, name, requests)
        names = sorted(set(nodes.values()))
        unit: dict[str, dict[str, float]] = {}
        if names:
            pattern = "|".join(re.escape(n) for n in names)
            for row in await self.query(NODE_PRICES.format(nodes=pattern)):
                labels = row.get("metric", {})
                unit.setdefault(labels.get("node", ""), {})[labels.get("__name__", "")] = float(row["value"][1])
        priced = [pod for pod in pods if len(unit.get(nodes.get(pod, ""), {})) == 2]
        if len(priced) < len(pods):
            missing = sorted({nodes.get(p, "?") for p in pods if p not in priced})
            return await self._from_recording_rule(namespace, kind, name, pods, why=", ".join(missing))
        total = 0.0
        for pod in pods:
            prices = unit[nodes[pod]]
            total += pods[pod].get("cpu", 0.0) * prices["node_cpu_hourly_cost"]
            total += pods[pod].get("memory", 0.0) / GIB * prices["node_ram_hourly_cost"]
        per_hour = total / len(pods)
        note = f"{requests.text()} per replica ({len(pods)} pods on {', '.join(names)}), OpenCost's node prices"
        return ReplicaPrice(round(per_hour, 6), PriceSource.PROMETHEUS, note)

    async def _from_recording_rule(
        self, namespace: str, kind: str, name: str, pods: Mapping[str, Any], *, why: str
    ) -> ReplicaPrice:
        """
        No OpenCost prices for some of the pods' nodes: the cost recording rule (the shipped PrometheusRule's, or
        your own cost model under the same name, e.g. on the seed's ``node_cost_hourly``), else the table.
        """
        match = f'namespace="{namespace}", pod=~`{pod_pattern(kind, name)}`'
        rows = await self.query(f"max by (pod) ({RECORDED_POD_COST}{{{match}}})")
        costs = {row.get("metric", {}).get("pod", ""): float(row["value"][1]) for row in rows}
        if not pods or any(pod not in costs for pod in pods):
            raise PrometheusUnavailable(f"no OpenCost node prices for {why}, nor {RECORDED_POD_COST} for its pods")
        per_hour = sum(costs[pod] for pod in pods) / len(pods)
        note = f"{RECORDED_POD_COST} of its {len(pods)} pods (no OpenCost node prices for {why})"
        return ReplicaPrice(round(per_hour, 6), PriceSource.PROMETHEUS, note)

    async def _template_at_average(self, namespace: str, kind: str, name: str) -> ReplicaPrice:
        """No pod runs (scaled to zero): the template's requests at the cluster's average unit prices."""
        template = await self.template(namespace, kind, name)
        if template is None:
            raise PrometheusUnavailable(f"no pods of {kind}/{name} in Prometheus, and its template is unreadable")
        rows = await self.query(AVERAGE_PRICES)
        unit = {row.get("metric", {}).get("__name__", ""): float(row["value"][1]) for row in rows}
        if len(unit) < 2:
            raise PrometheusUnavailable("no OpenCost node prices in Prometheus")
        requests = template.requests
        per_hour = requests.cpu * unit["node_cpu_hourly_cost"] + requests.memory_gib * unit["node_ram_hourly_cost"]
        note = f"{requests.text()} from the pod template (no pod runs), at the cluster's average OpenCost prices"
        return ReplicaPrice(round(per_hour, 6), PriceSource.PROMETHEUS, note)

    async def _from_table(self, namespace: str, kind: str, name: str, *, why: str) -> ReplicaPrice:
        template = await self.template(namespace, kind, name)
        seen = self._seen.get((namespace, kind, name))
        requests = seen or (template.requests if template is not None else None)
        if requests is None:
            return ReplicaPrice(None, PriceSource.UNKNOWN, f"Prometheus: {why}; and the pod template is unreadable")
        if not requests.cpu and not requests.memory_gib:
            return ReplicaPrice(None, PriceSource.UNKNOWN, f"Prometheus: {why}; and the pods request no CPU nor memory")
        spot = template.spot if template is not None else False
        instance_type = template.instance_type if template is not None else None
        per_hour, how = table_price(requests, self.config.table, spot=spot, instance_type=instance_type)
        whence = "last seen in Prometheus" if seen is not None else "from the pod template"
        return ReplicaPrice(round(per_hour, 6), PriceSource.TABLE, f"Prometheus: {why}; requests {whence}: {how}")

    def _remember(self, namespace: str, kind: str, name: str, requests: Requests) -> None:
        if len(self._seen) >= KEEP_REQUESTS:
            self._seen.pop(next(iter(self._seen)))
        self._seen[(namespace, kind, name)] = requests

    async def template(self, namespace: str, kind: str, name: str) -> Template | None:
        """The workload's pod template, read from Kubernetes (cached like prices); None when it cannot be."""
        key = (namespace, kind, name)
        now = self._clock()
        cached = self._templates.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        plural = WORKLOAD_PLURALS.get(kind)
        template: Template | None = None
        if plural is not None and self.api is not None:
            custom = client.CustomObjectsApi(self.api)
            try:
                workload = await call_json(
                    custom.get_namespaced_custom_object("apps", "v1", namespace, plural, name, _preload_content=False)
                )
                template = read_template(workload, spot_keys=self.config.advice.spot_tolerations)
            except KubernetesError as exc:
                log.info(
                    "cannot read a pod template to price it", workload=f"{namespace}/{kind}/{name}", error=str(exc)
                )
        self._templates[key] = (now + self.config.cache.total_seconds(), template)
        return template

    def now(self) -> float:
        return self._clock()

    # --- spend -----------------------------------------------------------------------------------------------

    async def spend(self, namespace: str | None) -> Spend:
        """What ``namespace`` spends per hour now; None: every namespace the agent may touch. Never raises."""
        now = self._clock()
        note = ""
        if self._spends is None or self._spends[0] + self.config.cache.total_seconds() <= now:
            try:
                rows = await self.query(SPEND) or await self.query(RECORDED_SPEND)  # no OpenCost: the rule's
                self._spends = (now, {r.get("metric", {}).get("namespace", ""): float(r["value"][1]) for r in rows})
            except PrometheusUnavailable as exc:
                if self._spends is None or self._spends[0] + SPEND_STALE_SECONDS <= now:
                    return Spend(None, PriceSource.UNKNOWN, f"spend unknown (Prometheus: {exc})")
                note = f"spend as last seen {int(now - self._spends[0])}s ago (Prometheus: {exc})"
        assert self._spends is not None
        by_namespace = self._spends[1]
        if namespace is not None:
            return Spend(by_namespace.get(namespace, 0.0), PriceSource.PROMETHEUS, note, read_at=self._spends[0])
        everywhere = "*" in self.namespaces
        total = sum(v for ns, v in by_namespace.items() if everywhere or ns in self.namespaces)
        return Spend(total, PriceSource.PROMETHEUS, note, read_at=self._spends[0])
