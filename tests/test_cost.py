"""
Cost, against a real Prometheus: prices worked out by hand from synthetic OpenCost and kube-state-metrics series,
the table's fallback when Prometheus stops, the budget guard (refusal, critical override, unknown prices), and the
``cap`` action on its own timer, meeting a calendar floor.

Prometheus (Debian's ``prometheus``) scrapes a small exporter on loopback every second; the exporter serves the
series the pricer reads, with the label names their exporters use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import time_machine
import yaml

from agent.app import Agent
from agent.config import CostConfig
from agent.cost import Pricer
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.structs import Decision, Outcome, PriceSource, TargetRef
from agent.targets.base import TargetState
from tests.conftest import NS, StartAgent, _require_binary, build_config, free_port, post, scaledobject, settle
from tests.test_e2e_prometheus import Exporter, process, until
from tests.test_schedules import business_hours, clock, started, with_schedules

__all__ = ["clock"]  # the fixture, used by name

GIB = 1073741824
WORKLOAD = "mcp-filesystem-server"  # scaled by mcp-filesystem-scaler: 3 replicas, min 0, max 10 in the examples
TARGET = "mcp-filesystem-scaler"

# Two nodes at OpenCost's prices; two pods of the workload, one on each; a pod of another workload, and one in
# another namespace (in the spend of every namespace, not the agent's).
NODES = {"node-a": (0.04, 0.005), "node-b": (0.01, 0.002)}  # $/vCPU-h, $/GiB-h
PODS = [  # namespace, pod, node, cpu cores, memory bytes
    (NS, f"{WORKLOAD}-7d9f8c-aaaaa", "node-a", 0.5, GIB),  # 0.5 x 0.04 + 1 x 0.005 = 0.025
    (NS, f"{WORKLOAD}-7d9f8c-bbbbb", "node-b", 0.5, GIB),  # 0.5 x 0.01 + 1 x 0.002 = 0.007
    (NS, "mcp-http-server-5c6d7e-ccccc", "node-a", 1.0, None),  # CPU only: 1 x 0.04 = 0.04
    ("other", "batch-job-6f7a8b-ddddd", "node-b", 2.0, 2 * GIB),  # 2 x 0.01 + 2 x 0.002 = 0.024
]
PER_REPLICA = 0.016  # (0.025 + 0.007) / 2
SPEND = 0.072  # cortex-mcp: 0.025 + 0.007 + 0.04
# The table's default on-demand prices (OpenCost's), for the requests last seen: 0.5 vCPU + 1 GiB.
TABLE_PER_REPLICA = 0.5 * 0.031611 + 1 * 0.004237


@dataclass
class Prom:
    url: str
    exporter: Exporter
    process: asyncio.subprocess.Process

    async def stop(self) -> None:
        self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 20)


def serve_prices(exporter: Exporter) -> None:
    for node, (cpu, ram) in NODES.items():
        labels = {"node": node, "instance_type": "m5.large", "region": "eu-central-1"}
        exporter.set("node_cpu_hourly_cost", labels, cpu)
        exporter.set("node_ram_hourly_cost", labels, ram)
        exporter.set("kubecost_node_is_spot", labels, 1 if node == "node-b" else 0)
    for namespace, pod, node, cpu, memory in PODS:
        labels = {"namespace": namespace, "pod": pod, "container": "mcp-server", "node": node}
        exporter.set("kube_pod_container_resource_requests", {**labels, "resource": "cpu", "unit": "core"}, cpu)
        if memory is not None:
            exporter.set(
                "kube_pod_container_resource_requests", {**labels, "resource": "memory", "unit": "byte"}, memory
            )


@pytest_asyncio.fixture()
async def prometheus(tmp_path: Path) -> AsyncIterator[Prom]:
    binary = _require_binary("prometheus")
    port = free_port()
    async with Exporter() as exporter:
        serve_prices(exporter)
        (tmp_path / "prometheus.yaml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "opencost-and-kube-state-metrics",
                            "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                        }
                    ],
                }
            )
        )
        argv = [binary, f"--config.file={tmp_path / 'prometheus.yaml'}", f"--storage.tsdb.path={tmp_path / 'prom'}",
                f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        async with process(argv, ready_url=f"{url}/-/ready", log=tmp_path / "prometheus.log") as proc:
            pricer = Pricer(CostConfig.model_validate({"prometheus": {"url": url}, "cache": "0s"}), api=None)
            try:

                async def scraped() -> bool:
                    with contextlib.suppress(Exception):
                        return len(await pricer.query("node_ram_hourly_cost")) == len(NODES)
                    return False

                await until(scraped, "Prometheus to scrape the exporter")
            finally:
                pricer.close()
            yield Prom(url=url, exporter=exporter, process=proc)


def state(*, workload: str = WORKLOAD, replicas: int = 3) -> TargetState:
    return TargetState(
        ref=TargetRef("ScaledObject", NS, TARGET),
        resource_version="1",
        values={"min-replicas": 0, "max-replicas": 10, "paused-replicas": None},
        replicas=replicas,
        workload=("Deployment", workload),
    )


async def test_prices_a_replica_and_a_spend_from_opencost_and_kube_state_metrics(prometheus: Prom) -> None:
    config = CostConfig.model_validate({"prometheus": {"url": prometheus.url}})
    pricer = Pricer(config, api=None, namespaces=[NS])
    try:
        price = await pricer.price(state())
        assert price.source == PriceSource.PROMETHEUS
        assert price.per_hour == pytest.approx(PER_REPLICA)
        assert "0.5 vCPU + 1 GiB per replica (2 pods on node-a, node-b)" in price.note
        assert (await pricer.spend(NS)).per_hour == pytest.approx(SPEND)
        assert (await pricer.spend("other")).per_hour == pytest.approx(0.024)
        assert (await pricer.spend(None)).per_hour == pytest.approx(SPEND)  # only the namespaces the agent touches
        everywhere = Pricer(config, api=None, namespaces=["*"])
        try:
            assert (await everywhere.spend(None)).per_hour == pytest.approx(SPEND + 0.024)
        finally:
            everywhere.close()
        # A node without OpenCost's prices: its pods cannot be priced from Prometheus; the table says so.
        prometheus.exporter.set("kube_pod_container_resource_requests", {
            "namespace": NS, "pod": "mcp-queue-processor-1a2b3c-eeeee", "container": "c", "node": "node-z",
            "resource": "cpu", "unit": "core"}, 1.0)  # fmt: skip

        async def unpriced() -> bool:
            fresh = Pricer(config, api=None)
            try:
                return (await fresh.price(state(workload="mcp-queue-processor"))).source == PriceSource.TABLE
            finally:
                fresh.close()

        await until(unpriced, "a pod on a node OpenCost does not price to fall back to the table")
        # The cost recording rule (a cost model of one's own, under the shipped rule's name) prices it instead.
        prometheus.exporter.set(
            "mcp:cost:hourly_pod_cost", {"namespace": NS, "pod": "mcp-queue-processor-1a2b3c-eeeee"}, 0.05
        )

        async def recorded() -> bool:
            fresh = Pricer(config, api=None)
            try:
                price = await fresh.price(state(workload="mcp-queue-processor"))
            finally:
                fresh.close()
            return price.source == PriceSource.PROMETHEUS and price.per_hour == pytest.approx(0.05)

        await until(recorded, "the recording rule's price of the pod on the node OpenCost does not price")
    finally:
        pricer.close()


def cost_config(prom: Prom | None, **changes: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"cache": "0s"}
    if prom is not None:
        section["prometheus"] = {"url": prom.url, "timeout": "1s"}
    section.update(changes)
    return section


FLOOR_RULES = [
    {"name": "floor5", "alertname": "Floor5", "action": {"type": "set_min", "params": {"replicas": 5}}},
    {"name": "floor7", "alertname": "Floor7", "action": {"type": "set_min", "params": {"replicas": 7}}},
    {
        "name": "floor5-critical",
        "alertname": "Floor5Critical",
        "critical": True,
        "action": {"type": "set_min", "params": {"replicas": 5}},
    },
]
LABELS = {"namespace": NS, "scaledObject": TARGET}


async def decide(agent: Agent, alertname: str) -> Decision:
    before = len(await agent.ledger.decisions())
    await post(agent, payload(alert(alertname, LABELS)))
    await settle(agent)
    [decision] = (await agent.ledger.decisions())[before:]
    return decision


async def test_a_floor_is_priced_and_falls_back_to_the_table_when_prometheus_stops(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], prometheus: Prom
) -> None:
    config = build_config(base_config, cost=cost_config(prometheus), rules=FLOOR_RULES, guard={"cooldown": "0s"})
    agent = await start_agent(config)
    floor = await decide(agent, "Floor5")
    assert floor.outcome == Outcome.APPLIED and dict(floor.after) == {"min-replicas": 5}
    assert floor.cost is not None
    # A floor of 5 on a workload running 3 adds 2 replicas, at 0.016 each.
    assert (floor.cost.replicas, floor.cost.replicas_delta) == (3, 2)
    assert floor.cost.per_replica_hour == pytest.approx(PER_REPLICA)
    assert floor.cost.delta_per_hour == pytest.approx(2 * PER_REPLICA)
    assert floor.cost.source == PriceSource.PROMETHEUS
    console = agent.sinks[0].stream  # type: ignore[attr-defined]
    assert "cost: +2 replicas, +$0.0320/h (prometheus)" in console.text
    row = (await agent.ledger.decisions())[-1].to_dict()  # the ledger keeps it, for the report
    assert (row["cost_delta_per_hour"], row["price_source"], row["replicas"]) == (pytest.approx(0.032), "prometheus", 3)

    await prometheus.stop()
    higher = await decide(agent, "Floor7")
    assert higher.outcome == Outcome.APPLIED, higher.reason  # pricing never fails an action
    assert higher.cost is not None and higher.cost.source == PriceSource.TABLE
    assert higher.cost.replicas_delta == 2  # 5 (the floor) → 7
    assert higher.cost.per_replica_hour == pytest.approx(TABLE_PER_REPLICA, abs=1e-6)
    assert "Prometheus:" in higher.cost.note and "requests last seen in Prometheus" in higher.cost.note
    assert scaledobject(cluster, TARGET)["spec"]["minReplicaCount"] == 7


async def test_the_budget_refuses_a_scale_up_past_it_and_a_critical_rule_goes_past(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], prometheus: Prom
) -> None:
    # Spend now 0.072/h; a floor of 5 adds 0.032/h: 0.104/h, past a budget of 0.10/h (73/month).
    budgets = {"namespaces": {NS: {"hourly": 0.10}}, "overall": {"monthly": 1000}}
    config = build_config(
        base_config, cost=cost_config(prometheus, budgets=budgets), rules=FLOOR_RULES, guard={"cooldown": "0s"}
    )
    agent = await start_agent(config)
    refused = await decide(agent, "Floor5")
    assert refused.outcome == Outcome.REFUSED
    assert refused.reason == (
        f"over budget: namespace {NS}'s budget is $0.1000/h ($73/month): spend now $0.0720/h,"
        " +0.0320/h for +2 replicas would make it $0.1040/h"
    )
    assert refused.cost is not None and refused.cost.delta_per_hour == pytest.approx(0.032)
    assert scaledobject(cluster, TARGET)["spec"]["minReplicaCount"] == 0

    critical = await decide(agent, "Floor5Critical")
    assert critical.outcome == Outcome.APPLIED
    assert critical.cost is not None
    assert critical.cost.budget.startswith("over budget, applied because rule floor5-critical is critical:")
    assert critical.cost.budget in critical.reason
    assert scaledobject(cluster, TARGET)["spec"]["minReplicaCount"] == 5


async def test_an_unknown_price_under_a_budget_is_refused_or_allowed_as_configured(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], tmp_path: Path
) -> None:
    # No Prometheus answers, and the pods request nothing: no price at all.
    cluster.change("deployments", NS, WORKLOAD, {"spec": {"template": {"spec": {"containers": [
        {"name": "mcp-server", "image": "cortex/mcp-server:latest"}]}}}})  # fmt: skip
    nobody = {"prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeout": "1s"}}
    budgets = {"namespaces": {NS: {"hourly": 100}}}
    refuse = cost_config(None, budgets=budgets, on_unknown_price="refuse", **nobody)
    agent = await start_agent(build_config(base_config, cost=refuse, rules=FLOOR_RULES))
    refused = await decide(agent, "Floor5")
    assert refused.outcome == Outcome.REFUSED
    assert refused.reason == "budget: the change has no price and cost.on_unknown_price is refuse"
    assert refused.cost is not None and refused.cost.source == PriceSource.UNKNOWN
    assert "request no CPU nor memory" in refused.cost.note
    await agent.stop()

    base_config["ledger"]["url"] = f"sqlite:///{tmp_path / 'second.db'}"
    allow = cost_config(None, budgets=budgets, **nobody)
    agent = await start_agent(build_config(base_config, cost=allow, rules=FLOOR_RULES))
    allowed = await decide(agent, "Floor5")
    assert allowed.outcome == Outcome.APPLIED
    assert (
        allowed.cost is not None and allowed.cost.budget == "budget: no price, allowed (cost.on_unknown_price: allow)"
    )


CRON = "mcp-cron-scaling"  # the seed's cron example: min 0, max 20, 3 replicas


async def test_a_cap_steps_down_on_its_own_timer_stops_at_a_calendar_floor_and_is_given_back(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    clock: time_machine.Coordinates,
) -> None:
    cap = {
        "name": "cap-high-cost",
        "alertname": "HighMCPCost",
        "action": {"type": "cap", "params": {"step": 8, "every": "1s", "targets": 1, "minimum": 1}},
        "target": {"selector": {"app.kubernetes.io/name": CRON}},
    }
    cluster.change("scaledobjects", NS, CRON, {"metadata": {"labels": {"app.kubernetes.io/name": CRON}}})
    window = business_hours(floor=6, targets=[{"namespace": NS, "name": CRON}])  # open now: Monday 10:00
    agent = await started(start_agent, with_schedules(base_config, window, rules=[cap]))
    assert scaledobject(cluster, CRON)["spec"]["minReplicaCount"] == 6

    labels = {"namespace": NS}
    await post(agent, payload(alert("HighMCPCost", labels)))
    await settle(agent)

    async def caps() -> list[Decision]:
        return [d for d in await agent.ledger.decisions() if d.action == "cap"]

    async def stopped_at_the_floor() -> bool:
        return any(d.outcome == Outcome.NOOP for d in await caps())

    await until(stopped_at_the_floor, "the cap to step down to the calendar's floor, on its own timer")
    first, second, held = await caps()
    assert (first.outcome, dict(first.before), dict(first.after)) == (
        Outcome.APPLIED, {"max-replicas": 20}, {"max-replicas": 12})  # fmt: skip
    # The next step is the agent's own (the alert was sent once), and never below the window's floor of 6.
    assert (second.outcome, dict(second.after), second.follows) == (Outcome.APPLIED, {"max-replicas": 6}, first.id)
    assert held.follows == first.id
    assert held.reason == (
        "no target: no ScaledObject in cortex-mcp has a ceiling above its floor to cap (mcp-cron-scaling:"
        " max-replicas 6 at its floor, held by schedule:business-hours: a cap never goes below a floor)"
    )
    assert scaledobject(cluster, CRON)["spec"]["maxReplicaCount"] == 6
    await asyncio.sleep(1.5)  # the timer stopped: no step after the one that lowered nothing
    assert len(await caps()) == 3

    await post(agent, payload(alert("HighMCPCost", labels, status="resolved")))
    await settle(agent)
    assert scaledobject(cluster, CRON)["spec"]["maxReplicaCount"] == 20  # given back
    assert scaledobject(cluster, CRON)["spec"]["minReplicaCount"] == 6  # the window's floor stays


async def test_advice_is_recorded_once_and_changes_nothing(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], prometheus: Prom
) -> None:
    # mcp-http-server's one pod runs on node-a, an on-demand node, while its template tolerates spot; the two pods
    # of mcp-filesystem-server served no MCP request in the last minute while their ScaledObject keeps a floor of 2.
    toleration = {"key": "node.kubernetes.io/spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    cluster.change(
        "deployments", NS, "mcp-http-server", {"spec": {"template": {"spec": {"tolerations": [toleration]}}}}
    )
    cluster.change("scaledobjects", NS, TARGET, {"spec": {"minReplicaCount": 2}})
    for _, pod, *_ in PODS[:2]:
        prometheus.exporter.set("mcp_requests_total", {"namespace": NS, "pod": pod}, 120, kind="counter")
    advice = {"enabled": False, "idle_for": "1m"}  # looked at by hand here, not on the timer
    agent = await start_agent(build_config(base_config, cost=cost_config(prometheus, advice=advice)))
    patched = sum(1 for request in cluster if request.method.value == "PATCH")

    async def advised() -> list[Decision]:
        return [d for d in await agent.ledger.decisions() if (d.rule or "").startswith("advice:")]

    async def idle_advised() -> bool:
        await agent.advisor.look()
        return any(d.rule == "advice:idle" for d in await advised())

    await until(idle_advised, "Prometheus to hold a minute of samples, and the advice")
    spot = [d for d in await advised() if d.rule == "advice:spot"]
    [idle] = [d for d in await advised() if d.rule == "advice:idle"]
    # Two ScaledObjects scale mcp-http-server (the seed's two HTTP examples): both are told.
    assert sorted(str(d.target) for d in spot) == [
        f"ScaledObject/{NS}/mcp-http-scaler",
        f"ScaledObject/{NS}/mcp-http-triggers",
    ]
    assert all((d.action, d.outcome) == ("notify", Outcome.APPLIED) for d in [*spot, idle])
    assert "on on-demand nodes (node-a) while its pods tolerate spot" in spot[0].reason
    assert str(idle.target) == f"ScaledObject/{NS}/{TARGET}"
    assert "keeps a floor of 2 replica(s) (min-replicas) but its 2 pod(s) served no MCP request in 1m" in idle.reason
    assert all(d.cost is None for d in [*spot, idle])  # no change, nothing for the report to count
    assert await agent.advisor.look() == []  # said once per cost.advice.repeat
    assert sum(1 for request in cluster if request.method.value == "PATCH") == patched  # advice changes nothing


# --- the arithmetic, and bad config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "replicas", "delta"),
    [
        ({"min-replicas": 0, "max-replicas": 10}, {"min-replicas": 5}, 3, 2),  # a floor of 5 on 3 adds 2
        ({"min-replicas": 5, "max-replicas": 10}, {"min-replicas": 2}, 5, 0),  # a lower floor moves nothing now
        ({"min-replicas": 0, "max-replicas": 10}, {"max-replicas": 6}, 8, -2),  # a ceiling of 6 on 8 removes 2
        ({"min-replicas": 0, "max-replicas": 10}, {"max-replicas": 15}, 10, 5),  # pinned at the old ceiling: filled
        ({"min-replicas": 0, "max-replicas": 10}, {"max-replicas": 15}, 4, 0),  # not pinned: room, unused now
        ({"paused-replicas": None, "min-replicas": 0, "max-replicas": 10}, {"paused-replicas": 2}, 5, -3),
        ({"replicas": 3}, {"replicas": 6}, 3, 3),  # a workload nothing autoscales
        ({"min-replicas": 0, "max-replicas": 10}, {"min-replicas": 5}, None, None),  # count unknown
    ],
)
def test_the_replicas_a_change_implies_at_the_current_count(
    before: dict[str, int | None], after: dict[str, int | None], replicas: int | None, delta: int | None
) -> None:
    from agent.cost import replicas_delta

    assert replicas_delta(before, {**before, **after}, replicas) == delta


def test_the_table_prices_an_instance_type_split_like_opencost() -> None:
    from agent.cost import Requests, table_price

    table = CostConfig.model_validate(
        {"table": {"instance_types": {"m5.large": {"on_demand": 0.096, "spot": 0.035, "cpus": 2, "memory_gib": 8}}}}
    ).table
    # m5.large on demand: 0.096 over 2 x 0.031611 + 8 x 0.004237 = 0.099118, so each unit price x 0.968539.
    per_hour, how = table_price(Requests(cpu=0.5, memory_gib=1.0), table, spot=False, instance_type="m5.large")
    share = 0.096 / (2 * 0.031611 + 8 * 0.004237)
    assert per_hour == pytest.approx(0.5 * 0.031611 * share + 1.0 * 0.004237 * share)
    assert "m5.large on-demand" in how
    spot, _ = table_price(Requests(cpu=0.5, memory_gib=1.0), table, spot=True, instance_type=None)
    assert spot == pytest.approx(0.5 * 0.006655 + 1.0 * 0.000892)  # OpenCost's default spot prices


def test_bad_cost_config_names_the_field(base_config: dict[str, Any]) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        build_config(
            base_config,
            cost={"budgets": {"namespaces": {NS: {}}}, "prometheus": {"url": "prometheus:9090"}},
            rules=[
                {"name": "c", "alertname": "HighMCPCost", "action": {"type": "cap"}, "target": {"kind": "Deployment"}}
            ],
        )
    errors = "\n".join(caught.value.errors)
    assert f"cost.budgets.namespaces.{NS}: give hourly, monthly, or both" in errors
    assert "cost.prometheus.url: must start with http:// or https://" in errors
    assert "rules[0]: the cap action lowers max-replicas: target.kind must be ScaledObject or" in errors


async def test_a_resolve_stops_the_steps_and_gives_every_cap_back(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    cap = {
        "name": "cap-high-cost",
        "alertname": "HighMCPCost",
        "action": {"type": "cap", "params": {"step": 1, "every": "1s", "targets": 2}},
    }
    agent = await start_agent(build_config(base_config, rules=[cap]))
    labels = {"namespace": NS}
    await post(agent, payload(alert("HighMCPCost", labels)))
    await settle(agent)

    async def steps() -> list[Decision]:
        return [d for d in await agent.ledger.decisions() if d.action == "cap"]

    async def stepped_twice() -> bool:
        return len(await steps()) >= 4  # two targets, two steps each

    await until(stepped_twice, "two steps of the cap on its own timer")
    first = (await steps())[:2]
    assert [d.follows for d in first] == [None, None]
    targets = {d.target for d in first}
    assert len(targets) == 2
    original = {d.target: d.before["max-replicas"] for d in first}
    await post(agent, payload(alert("HighMCPCost", labels, status="resolved")))
    await settle(agent)
    await asyncio.sleep(2.5)  # two more ticks, had the timer not stopped
    decisions = await agent.ledger.decisions()
    reverts = [i for i, d in enumerate(decisions) if d.action == "revert"]
    assert len(reverts) == 2 and {decisions[i].target for i in reverts} == targets
    assert all(d.action != "cap" for d in decisions[reverts[-1] :])  # no step after the give-back
    for target, maximum in original.items():
        assert target is not None
        assert scaledobject(cluster, target.name)["spec"]["maxReplicaCount"] == maximum
        assert "scaling-agent.cortex.io/claims" not in (
            cluster.get("scaledobjects", NS, target.name)["metadata"].get("annotations") or {}
        )


async def test_a_step_due_while_the_resolve_gives_back_takes_nothing_again(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    # The give-back is slow (its patch fails twice; the retries wait 0.6 s, then 1.2 s) while a step is due every
    # second. Stopped only after the resolve was decided, the timer's step waits for the object's lock and then
    # starts capping it again: a cap applied after the give-back, or (cut short by the late stop) a change left
    # `applying` for the reconciler. Stopped when the resolve arrives, no step follows the give-back.
    cap = {
        "name": "cap-high-cost",
        "alertname": "HighMCPCost",
        "action": {"type": "cap", "params": {"step": 1, "every": "1s", "targets": 1}},
    }
    config = build_config(base_config, rules=[cap], kubernetes={"api_backoff": "600ms"})
    agent = await start_agent(config)
    labels = {"namespace": NS}
    await post(agent, payload(alert("HighMCPCost", labels)))
    await settle(agent)
    [first] = [d for d in await agent.ledger.decisions() if d.action == "cap"]
    assert first.target is not None
    original = first.before["max-replicas"]
    cluster.fail(method="PATCH", plural="scaledobjects", status=500, times=2)
    await post(agent, payload(alert("HighMCPCost", labels, status="resolved")))
    await settle(agent)
    await asyncio.sleep(1.5)  # a step the timer had begun would have landed by now
    assert scaledobject(cluster, first.target.name)["spec"]["maxReplicaCount"] == original
    assert "scaling-agent.cortex.io/claims" not in (
        cluster.get("scaledobjects", NS, first.target.name)["metadata"].get("annotations") or {}
    )
    decisions = await agent.ledger.decisions()
    [revert] = [d for d in decisions if d.action == "revert"]
    assert revert.outcome == Outcome.APPLIED
    assert [d for d in decisions if d.action == "cap" and d.at > revert.at] == []


async def test_a_resolve_arriving_mid_step_lets_the_step_finish_and_gives_it_back_too(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    # The timer's second step meets a 500 and waits 0.6 s to retry, holding the object, when the resolve arrives.
    # The step is let finish (recorded applied, not cut short and left `applying`), and the give-back, which waits
    # for the object, ends both caps and is priced as undoing both.
    cap = {
        "name": "cap-high-cost",
        "alertname": "HighMCPCost",
        "action": {"type": "cap", "params": {"step": 1, "every": "1s", "targets": 1}},
    }
    agent = await start_agent(build_config(base_config, rules=[cap], kubernetes={"api_backoff": "600ms"}))
    labels = {"namespace": NS}
    await post(agent, payload(alert("HighMCPCost", labels)))
    await settle(agent)
    [first] = [d for d in await agent.ledger.decisions() if d.action == "cap"]
    assert first.target is not None and first.cost is not None and first.cost.replicas_delta == -1
    fault = cluster.fail(method="PATCH", plural="scaledobjects", status=500, times=1)
    await until(lambda: fault.times == 0, "the next step's patch to meet the fault")
    await post(agent, payload(alert("HighMCPCost", labels, status="resolved")))
    await settle(agent)
    decisions = await agent.ledger.decisions()
    caps = [d for d in decisions if d.action == "cap"]
    assert [(d.outcome, dict(d.after)) for d in caps] == [
        (Outcome.APPLIED, {"max-replicas": first.before["max-replicas"] - 1}),
        (Outcome.APPLIED, {"max-replicas": first.before["max-replicas"] - 2}),
    ]
    [given_back] = [d for d in decisions if d.action == "revert"]
    assert given_back.at > caps[-1].at and given_back.outcome == Outcome.APPLIED
    assert given_back.cost is not None and given_back.cost.replicas_delta == 2
    assert scaledobject(cluster, first.target.name)["spec"]["maxReplicaCount"] == first.before["max-replicas"]


async def test_a_workload_with_no_pod_is_priced_from_its_template_at_the_average_prices(
    api: Any, prometheus: Prom
) -> None:
    # mcp-cost-optimized-server has no pod in kube-state-metrics' series; its template asks 250m and 256Mi.
    # The cluster's average OpenCost prices: (0.04 + 0.01) / 2 = 0.025 per vCPU-h, (0.005 + 0.002) / 2 = 0.0035.
    pricer = Pricer(CostConfig.model_validate({"prometheus": {"url": prometheus.url}}), api=api)
    try:
        price = await pricer.price(state(workload="mcp-cost-optimized-server", replicas=0))
    finally:
        pricer.close()
    assert price.source == PriceSource.PROMETHEUS
    assert price.per_hour == pytest.approx(0.25 * 0.025 + 0.25 * 0.0035)
    assert "from the pod template (no pod runs), at the cluster's average OpenCost prices" in price.note


def test_a_cap_every_below_a_second_is_a_config_error(base_config: dict[str, Any]) -> None:
    from agent.config import ConfigError

    rule = {"name": "c", "alertname": "HighMCPCost", "action": {"type": "cap", "params": {"every": "100ms"}}}
    with pytest.raises(ConfigError) as caught:
        build_config(base_config, rules=[rule])
    assert caught.value.errors == ["rules[0].action.params.every: must be at least 1s"]


async def test_the_budget_counts_the_agents_own_changes_not_yet_in_the_spend(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], prometheus: Prom
) -> None:
    # Spend 0.072/h (the exporter's pods do not change). A floor of 5 adds 0.032/h: 0.104, within 0.12. A floor of 7
    # adds 0.032/h more, which Prometheus cannot show yet: 0.072 + 0.032 + 0.032 = 0.136, past 0.12.
    budgets = {"namespaces": {NS: {"hourly": 0.12}}}
    config = build_config(
        base_config, cost=cost_config(prometheus, budgets=budgets), rules=FLOOR_RULES, guard={"cooldown": "0s"}
    )
    agent = await start_agent(config)
    assert (await decide(agent, "Floor5")).outcome == Outcome.APPLIED
    refused = await decide(agent, "Floor7")
    assert refused.outcome == Outcome.REFUSED
    assert refused.reason == (
        f"over budget: namespace {NS}'s budget is $0.1200/h ($88/month): spend now $0.0720/h, +0.0320/h for +2"
        " replicas would make it $0.1360/h; with +0.0320/h of the agent's own changes not yet in that spend"
    )


async def test_a_restart_resumes_the_capping_of_an_alert_still_firing(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    cap = {
        "name": "cap-high-cost",
        "alertname": "HighMCPCost",
        "action": {"type": "cap", "params": {"step": 1, "every": "2s", "targets": 1}},
    }
    config = build_config(base_config, rules=[cap])
    agent = await start_agent(config)
    await post(agent, payload(alert("HighMCPCost", {"namespace": NS})))
    await settle(agent)
    [first] = [d for d in await agent.ledger.decisions() if d.action == "cap"]
    assert first.outcome == Outcome.APPLIED and first.target is not None
    await agent.stop()  # before the next step: the alert still fires, and nothing will send it again

    again = await start_agent(config)

    async def stepped() -> bool:
        return any(d.follows == first.id for d in await again.ledger.decisions() if d.action == "cap")

    await until(stepped, "the restarted agent to take the next step on its own timer")
    [step] = [d for d in await again.ledger.decisions() if d.follows == first.id]
    assert step.outcome == Outcome.APPLIED
    assert step.after["max-replicas"] == first.after["max-replicas"] - 1


async def test_a_give_back_is_priced_as_the_opposite_of_what_its_claim_added(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    # A floor of 5 on 3 replicas adds 2. The autoscaler then runs 5 (the floor holds them): at that count, lowering
    # the floor again moves nothing, yet the give-back ends the 2 replicas the floor added, and is priced so.
    agent = await start_agent(build_config(base_config, rules=FLOOR_RULES))
    floor = await decide(agent, "Floor5")
    assert floor.cost is not None and floor.cost.replicas_delta == 2
    cluster.change("deployments", NS, WORKLOAD, {"spec": {"replicas": 5}, "status": {"replicas": 5}})
    kind = agent.targets["ScaledObject"]

    async def runs_five() -> bool:
        return (await kind.get(NS, TARGET)).replicas == 5

    await until(runs_five, "the cache to see the workload at 5 replicas")
    before = len(await agent.ledger.decisions())
    await post(agent, payload(alert("Floor5", LABELS, status="resolved")))
    await settle(agent)
    [given_back] = (await agent.ledger.decisions())[before:]
    assert (given_back.action, given_back.outcome) == ("revert", Outcome.APPLIED)
    assert given_back.cost is not None
    assert (given_back.cost.replicas, given_back.cost.replicas_delta) == (5, -2)
    assert given_back.cost.delta_per_hour == pytest.approx(-(floor.cost.delta_per_hour or 0))
