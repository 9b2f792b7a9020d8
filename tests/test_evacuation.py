"""
A preemption notice, end to end against the emulated API: the Node cordoned and tainted at once, its workloads
pre-scaled elsewhere, then drained through the Eviction API before the deadline, around PodDisruptionBudgets;
every step a decision that follows the cordon.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes_asyncio import client

from agent.app import Agent
from agent.devcluster import DevCluster
from agent.structs import Decision, Outcome
from agent.targets.node import TAINT_KEY
from tests.conftest import NS, StartAgent, build_config, scaledobject, settle
from tests.test_events import send
from tests.test_notices import AWS_REBALANCE

NODE = "spot-node-1"
PROVIDER_ID = "aws:///us-east-1a/i-0b1c2d3e4f5a6b7c8"
EVACUATE = {
    "name": "evacuate-on-preemption",
    "kind": "notice",
    "matchers": ['kind=~"preemption|rebalance"'],  # the notice's kind: a preemption, or a rebalance hint
    "action": {"type": "evacuate", "params": {"prescale_for": "10m"}},
    "target": {"kind": "Node"},
}


def pod(name: str, *, namespace: str = NS, owner: tuple[str, str] | None = None, app: str = "x") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": app}}
    if owner is not None:
        kind, owner_name = owner
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "controller": True}]
        if kind == "ReplicaSet":
            meta["labels"]["pod-template-hash"] = owner_name.rsplit("-", 1)[1]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": NODE},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def spot_node(cluster: DevCluster) -> None:
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {"providerID": PROVIDER_ID}})
    # Two pods of mcp-filesystem-server (its ScaledObject mcp-filesystem-scaler: min 0; the Deployment runs 3).
    for i in range(2):
        cluster.add(pod(f"fs-{i}", owner=("ReplicaSet", "mcp-filesystem-server-7d9f8"), app="mcp-filesystem-server"))
    # One of mcp-critical-server, which a budget keeps: it may not lose its only Ready pod.
    cluster.add(pod("critical-0", owner=("ReplicaSet", "mcp-critical-server-5c6b7"), app="mcp-critical-server"))
    cluster.add(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "critical-pdb", "namespace": NS},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "mcp-critical-server"}}},
        }
    )
    cluster.add(pod("node-exporter-abc", owner=("DaemonSet", "node-exporter"), app="node-exporter"))  # stays
    cluster.add(pod("scratch", namespace="default"))  # not a namespace the agent touches: evicted, not pre-scaled


async def drained(agent: Agent) -> Decision:
    async with asyncio.timeout(20):
        while True:
            found = [d for d in await agent.ledger.decisions() if d.action == "drain"]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


async def test_a_notice_cordons_prescales_and_drains_its_node_around_a_budget_before_the_deadline(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], api: client.ApiClient
) -> None:
    spot_node(cluster)
    config = build_config(base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE])
    agent = await start_agent(config)
    notice = {"type": "preemption", "id": "spot-1", "providerID": PROVIDER_ID, "in": "3s", "reason": "spot"}
    assert (await send(agent, notice))[0] == 200
    drain = await drained(agent)
    await settle(agent)

    decisions = await agent.ledger.decisions()
    [cordon] = [d for d in decisions if d.action == "evacuate"]
    assert cordon.outcome == Outcome.APPLIED and str(cordon.target) == f"Node/{NODE}"
    assert "preemption notice: cordon and taint, pre-scale elsewhere, drain before" in cordon.reason
    node = cluster.get("nodes", None, NODE)
    assert node["spec"]["unschedulable"] is True and any(t["key"] == TAINT_KEY for t in node["spec"]["taints"])

    # Pre-scaled before anything was evicted: each workload's floor is its replicas plus its pods on the Node.
    prescaled = {str(d.target): d for d in decisions if d.action == "set_min"}
    assert prescaled[f"ScaledObject/{NS}/mcp-filesystem-scaler"].outcome == Outcome.APPLIED
    assert scaledobject(cluster, "mcp-filesystem-scaler")["spec"]["minReplicaCount"] == 3 + 2
    assert scaledobject(cluster, "mcp-warm-standby")["spec"]["minReplicaCount"] == 3 + 1
    assert all(d.follows == cordon.id for d in prescaled.values())
    assert max(d.at for d in prescaled.values()) <= drain.at

    # Drained: all but the DaemonSet's pod and the one its budget holds, which the decision names.
    core = client.CoreV1Api(api)
    answer = await core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}", _preload_content=False)
    on_node = json.loads(await answer.read())["items"]
    left = sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in on_node)
    assert left == [(NS, "critical-0"), (NS, "node-exporter-abc")]
    assert drain.follows == cordon.id and drain.outcome == Outcome.FAILED
    assert dict(drain.after) == {"evicted-pods": 3, "left-pods": 1}
    assert f"{NS}/critical-0 (held by PodDisruptionBudget critical-pdb" in drain.reason
    # Each eviction is a step of its own, with its time.
    evictions = sorted((d.outcome, d.after["pod"]) for d in decisions if d.action == "evict")
    assert all(d.follows == cordon.id for d in decisions if d.action == "evict")
    assert evictions == [
        (Outcome.APPLIED, f"{NS}/fs-0"),
        (Outcome.APPLIED, f"{NS}/fs-1"),
        (Outcome.APPLIED, "default/scratch"),
        (Outcome.FAILED, f"{NS}/critical-0"),
    ]


async def test_a_redelivered_notice_evacuates_once_and_a_rebalance_hint_is_not_drained(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    spot_node(cluster)
    config = build_config(base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE])
    agent = await start_agent(config)
    assert (await send(agent, AWS_REBALANCE))[0] == 200
    await settle(agent)
    await asyncio.sleep(0.5)  # an evacuation task would have started by now
    decisions = await agent.ledger.decisions()
    [cordon] = [d for d in decisions if d.action == "evacuate"]
    assert cordon.outcome == Outcome.APPLIED and cordon.reason.startswith("rebalance recommendation: cordon and taint")
    assert [d.action for d in decisions if d.follows == cordon.id] == ["set_min", "set_min"]  # pre-scaled
    assert not [d for d in decisions if d.action == "drain"]  # and not drained

    notice = {"type": "preemption", "id": "spot-2", "providerID": PROVIDER_ID, "in": "1s", "reason": "spot"}
    for _ in range(2):  # delivered twice
        assert (await send(agent, notice))[0] == 200
        await settle(agent)
    await drained(agent)
    await asyncio.sleep(0.5)
    drains = [d for d in await agent.ledger.decisions() if d.action == "drain"]
    assert len(drains) == 1


async def test_the_decisions_command_shows_one_evacuation_whole(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], capsys: Any
) -> None:
    from agent.cli import main

    spot_node(cluster)
    config = build_config(base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE])
    agent = await start_agent(config)
    notice = {"type": "preemption", "id": "spot-3", "providerID": PROVIDER_ID, "in": "1s", "reason": "spot"}
    assert (await send(agent, notice))[0] == 200
    await drained(agent)
    [cordon] = [d for d in await agent.ledger.decisions() if d.action == "evacuate"]
    capsys.readouterr()
    argv = ["decisions", "--ledger", config.ledger.url, "--follows", cordon.id]
    assert await asyncio.to_thread(main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines] == ["evacuate", "set_min", "set_min", *["evict"] * 4, "drain"]


async def test_past_the_limit_of_nodes_draining_a_node_is_cordoned_and_prescaled_and_its_evictions_wait(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], api: client.ApiClient
) -> None:
    spot_node(cluster)  # spot-node-1: its critical pod is held by a budget until the notice's deadline
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "spot-node-2"}, "spec": {}})
    second = pod("fs-9", owner=("ReplicaSet", "mcp-filesystem-server-7d9f8"), app="mcp-filesystem-server")
    second["spec"]["nodeName"] = "spot-node-2"
    cluster.add(second)
    config = build_config(
        base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE], guard={"max_nodes_draining": 1}
    )
    agent = await start_agent(config)
    first = {"type": "preemption", "id": "a", "node": NODE, "in": "2s", "reason": "spot"}
    then = {"type": "preemption", "id": "b", "node": "spot-node-2", "in": "6s", "reason": "spot"}
    for notice in (first, then):
        assert (await send(agent, notice))[0] == 200
    async with asyncio.timeout(20):
        while len([d for d in await agent.ledger.decisions() if d.action == "drain"]) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    decisions = await agent.ledger.decisions()
    cordons = {str(d.target): d for d in decisions if d.action == "evacuate"}
    assert all(d.outcome == Outcome.APPLIED for d in cordons.values()) and len(cordons) == 2  # both cordoned at once
    [waits] = [d for d in decisions if d.action == "drain-waits"]
    # Whichever Node reached its drain first drained; the other's evictions waited for it, and the decision says so.
    waiter = next(node for node, cordon in cordons.items() if cordon.id == waits.follows).removeprefix("Node/")
    other = NODE if waiter == "spot-node-2" else "spot-node-2"
    assert f"the evictions on Node {waiter} wait: {other} draining already (guard.max_nodes_draining 1)" in waits.reason
    drains = {str(d.target): d for d in decisions if d.action == "drain"}
    assert drains[f"Node/{NODE}"].outcome == Outcome.FAILED  # the budget held its pod to the deadline
    assert drains["Node/spot-node-2"].outcome == Outcome.APPLIED
    assert drains[f"Node/{waiter}"].at >= drains[f"Node/{other}"].at  # one after the other, never both at once


async def test_a_restart_mid_drain_resumes_without_a_second_cordon_or_a_lost_pod(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], api: client.ApiClient
) -> None:
    spot_node(cluster)
    config = build_config(base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE])
    first = await start_agent(config)
    notice = {"type": "preemption", "id": "spot-4", "node": NODE, "in": "8s", "reason": "spot"}
    assert (await send(first, notice))[0] == 200
    async with asyncio.timeout(10):  # cordoned and pre-scaled; the budget keeps the drain going
        while len([d for d in await first.ledger.decisions() if d.action == "set_min"]) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await first.stop()  # mid-drain: the critical pod still held by its budget
    cluster.remove("poddisruptionbudgets", NS, "critical-pdb")  # meanwhile its budget goes

    second = await start_agent(config)
    drain = await drained(second)
    decisions = await second.ledger.decisions()
    assert [d.action for d in decisions].count("evacuate") == 1  # not cordoned twice
    assert drain.outcome == Outcome.APPLIED and drain.follows == next(d.id for d in decisions if d.action == "evacuate")
    core = client.CoreV1Api(api)
    answer = await core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}", _preload_content=False)
    assert [p["metadata"]["name"] for p in json.loads(await answer.read())["items"]] == ["node-exporter-abc"]


async def test_a_notice_is_never_refused_for_the_changes_a_storm_has_in_flight(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    from agent.demo.alerts import alert, payload
    from tests.conftest import post

    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    pause = {
        "name": "pause",
        "alertname": "MCPFrequentScaling",
        "action": {"type": "pause"},
        "target": {"namespace": NS},
    }
    config = build_config(base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE, pause])
    agent = await start_agent(config)
    notice = {"type": "preemption", "id": "spot-5", "node": NODE, "in": "2s", "reason": "spot"}
    agent.guard._in_flight = agent.guard.config.max_concurrent_changes  # a storm's changes hold every slot
    try:
        await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"})))
        assert (await send(agent, notice))[0] == 200
        await settle(agent)
        decisions = {d.action: d for d in await agent.ledger.decisions()}
    finally:
        agent.guard._in_flight = 0
    # An alert's change is refused (it would only pile up behind the storm) ...
    assert decisions["pause"].outcome == Outcome.REFUSED and "changes already in flight" in decisions["pause"].reason
    # ... a notice's cordon is not: a Node that is going away must not stay schedulable.
    assert decisions["evacuate"].outcome == Outcome.APPLIED
    assert cluster.get("nodes", None, NODE)["spec"]["unschedulable"] is True


async def test_a_workloads_pods_are_evicted_a_share_at_a_time(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], monkeypatch: Any
) -> None:
    from agent.evacuation import Evacuator

    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    for i in range(6):  # mcp-filesystem-server runs 3 replicas: 25 % of them is less than one, so one at a time
        cluster.add(pod(f"fs-{i}", owner=("ReplicaSet", "mcp-filesystem-server-7d9f8"), app="mcp-filesystem-server"))
    for i in range(4):  # mcp-queue-processor runs 50: 12 at a time, so these four go together
        cluster.add(pod(f"queue-{i}", owner=("ReplicaSet", "mcp-queue-processor-5b4c3"), app="mcp-queue-processor"))
    in_flight: dict[str, int] = {"fs": 0, "queue": 0}
    most: dict[str, int] = {"fs": 0, "queue": 0}
    real = Evacuator._post_eviction

    async def slow_eviction(self: Evacuator, target: Any, body: dict[str, Any]) -> tuple[int, str]:
        # The real call, held open a moment: how many of each workload's pods are in eviction at once?
        which = target.name.split("-")[0]
        in_flight[which] += 1
        most[which] = max(most[which], in_flight[which])
        try:
            await asyncio.sleep(0.05)
            return await real(self, target, body)
        finally:
            in_flight[which] -= 1

    monkeypatch.setattr(Evacuator, "_post_eviction", slow_eviction)
    config = build_config(base_config, sources={"events": {"enabled": True}}, rules=[EVACUATE])
    agent = await start_agent(config)
    notice = {"type": "preemption", "id": "spot-6", "node": NODE, "in": "20s", "reason": "spot"}
    assert (await send(agent, notice))[0] == 200
    drain = await drained(agent)
    assert drain.outcome == Outcome.APPLIED and dict(drain.after) == {"evicted-pods": 10, "left-pods": 0}
    assert most == {"fs": 1, "queue": 4}
