"""The six default rules, end to end: an alert over real HTTP → a change on the emulated API → a decision."""

from __future__ import annotations

from agent.claims import Kept, Want
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.structs import Outcome
from tests.conftest import NS, StartAgent, annotations, claims_on, patches, post, scaledobject, settle

PAUSED = "autoscaling.keda.sh/paused-replicas"


async def test_frequent_scaling_pauses_at_current_count_with_ownership(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    response = await post(
        agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"}))
    )
    assert response.status == 200
    await settle(agent)

    marks = annotations(cluster, "mcp-http-scaler")
    assert marks[PAUSED] == "3"  # mcp-http-server runs 3 pods in the examples
    held = claims_on(cluster, "mcp-http-scaler")
    [claim] = held.claims
    assert (claim.field, claim.want, claim.value) == ("paused-replicas", Want.PAUSE, 3)
    assert claim.holder.startswith("rule:pause-frequent-scaling:") and claim.until is not None
    assert held.kept["paused-replicas"] == Kept(original=None, written=3)
    [decision] = await agent.ledger.decisions()
    assert (decision.action, decision.outcome) == ("pause", Outcome.APPLIED)
    assert claim.decision == decision.id
    assert dict(decision.before) == {"paused-replicas": None} and dict(decision.after) == {"paused-replicas": 3}


async def test_frequent_scaling_resolved_resumes_and_restores(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    labels = {"namespace": NS, "scaledObject": "mcp-http-scaler"}
    await post(agent, payload(alert("MCPFrequentScaling", labels)))
    await settle(agent)
    await post(agent, payload(alert("MCPFrequentScaling", labels, status="resolved")))
    await settle(agent)

    marks = annotations(cluster, "mcp-http-scaler")
    assert PAUSED not in marks
    assert "scaling-agent.cortex.io/claims" not in marks  # the last claim ended: the object carries no mark
    assert marks["autoscaling.keda.sh/paused"] == "false"  # the seed's own annotation is untouched
    decisions = await agent.ledger.decisions()
    assert [(d.action, d.outcome) for d in decisions] == [("pause", Outcome.APPLIED), ("revert", Outcome.APPLIED)]
    assert dict(decisions[1].after) == {"paused-replicas": None}


async def test_at_maximum_scale_raises_max_within_ceiling(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    # kube-state-metrics labels the workload `deployment`; two ScaledObjects scale mcp-queue-processor.
    await post(agent, payload(alert("MCPAtMaximumScale", {"namespace": NS, "deployment": "mcp-queue-processor"})))
    await settle(agent)

    assert scaledobject(cluster, "mcp-queue-scaler")["spec"]["maxReplicaCount"] == 55
    assert scaledobject(cluster, "mcp-queue-triggers")["spec"]["maxReplicaCount"] == 100  # at the ceiling
    outcomes = {d.target.name: d for d in await agent.ledger.decisions() if d.target}
    assert outcomes["mcp-queue-scaler"].outcome == Outcome.APPLIED
    assert outcomes["mcp-queue-triggers"].outcome == Outcome.REFUSED
    assert "ceiling of 100" in outcomes["mcp-queue-triggers"].reason
    kept = claims_on(cluster, "mcp-queue-scaler").kept["max-replicas"]
    assert (kept.original, kept.written) == (50, 55)


async def test_scale_to_zero_stuck_resumes_only_an_agent_pause(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    labels = {"namespace": NS, "scaledObject": "mcp-filesystem-scaler"}
    await post(agent, payload(alert("MCPFrequentScaling", labels)))
    await settle(agent)
    assert PAUSED in annotations(cluster, "mcp-filesystem-scaler")

    await post(agent, payload(alert("MCPScaleToZeroStuck", {"namespace": NS, "deployment": "mcp-filesystem-server"})))
    await settle(agent)
    marks = annotations(cluster, "mcp-filesystem-scaler")
    assert PAUSED not in marks
    assert "scaling-agent.cortex.io/resumed" in marks  # the reconciler checks KEDA's Paused condition later
    last = (await agent.ledger.decisions())[-1]
    assert (last.action, last.outcome) == ("resume", Outcome.APPLIED)


async def test_cold_start_slow_sets_a_warm_floor_via_selector(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPColdStartSlow")))  # avg() keeps no labels at all
    await settle(agent)
    assert scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 1
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.APPLIED and "warm floor of 1" in decision.reason

    await post(agent, payload(alert("MCPColdStartSlow", status="resolved")))
    await settle(agent)
    assert scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 0


async def test_high_latency_only_notifies(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(
        agent,
        payload(
            alert("MCPHighLatencyDespiteScaling", {"server": "filesystem"}, annotations={"summary": "latency high"})
        ),
    )
    await settle(agent)
    decisions = await agent.ledger.decisions()
    assert [(d.action, d.outcome, d.trigger.alertname) for d in decisions] == [
        ("notify", Outcome.APPLIED, "MCPHighLatencyDespiteScaling"),
    ]
    assert sum(patches(cluster, name) for name in ("mcp-http-scaler", "mcp-filesystem-scaler")) == 0
    console = agent.sinks[0].stream  # type: ignore[attr-defined]
    assert "latency high" in console.text


async def test_high_cost_caps_the_three_most_expensive_and_gives_them_back(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    labels = {"namespace": NS}
    await post(
        agent, payload(alert("HighMCPCost", labels, annotations={"summary": "MCP server costs exceeding budget"}))
    )
    await settle(agent)
    caps = await agent.ledger.decisions()
    assert [(d.action, d.outcome) for d in caps] == [("cap", Outcome.APPLIED)] * 3
    assert all(c.reason.startswith("HighMCPCost: cap max-replicas at ") for c in caps)
    for cap in caps:
        assert cap.target is not None
        [(field, was)] = cap.before.items()
        assert (field, cap.after[field]) == ("max-replicas", was - 1)  # one step of 1
        assert scaledobject(cluster, cap.target.name)["spec"]["maxReplicaCount"] == was - 1
        assert cap.cost is not None and cap.cost.source == "table"  # no Prometheus here: the table's price
    await post(agent, payload(alert("HighMCPCost", labels, status="resolved")))
    await settle(agent)
    given_back = (await agent.ledger.decisions())[3:]
    assert sorted((d.action, d.outcome, d.target) for d in given_back) == sorted(
        ("revert", Outcome.APPLIED, c.target) for c in caps
    )
    for cap in caps:
        assert cap.target is not None
        assert scaledobject(cluster, cap.target.name)["spec"]["maxReplicaCount"] == cap.before["max-replicas"]


async def test_alert_without_a_resolvable_target_is_a_recorded_noop(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", {"scaler": "prometheus"})))
    await post(agent, payload(alert("MCPAtMaximumScale", {"namespace": NS, "deployment": "no-such-deployment"})))
    await post(agent, payload(alert("SomethingElse", {"namespace": NS})))
    await settle(agent)
    decisions = {d.trigger.alertname: d for d in await agent.ledger.decisions()}  # different alerts: any order
    assert [d.outcome for d in decisions.values()] == [Outcome.NOOP] * 3
    assert decisions["MCPFrequentScaling"].reason.startswith("no target")
    assert "no ScaledObject in cortex-mcp scales deployment no-such-deployment" in decisions["MCPAtMaximumScale"].reason
    assert decisions["SomethingElse"].reason == "no rule matches SomethingElse"


async def test_a_new_firing_raises_max_again_but_a_replay_does_not(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict
) -> None:
    import json
    from datetime import UTC, datetime

    from agent.sources.alertmanager import parse_payload, to_events
    from agent.structs import InboxEntry, utcnow
    from tests.conftest import build_config

    agent = await start_agent(build_config(base_config, guard={"cooldown": "0s"}))
    labels = {"namespace": NS, "deployment": "mcp-queue-processor"}
    first = payload(alert("MCPAtMaximumScale", labels, starts_at=datetime(2026, 11, 29, 8, tzinfo=UTC)))
    await post(agent, first)
    await settle(agent)
    second = payload(alert("MCPAtMaximumScale", labels, starts_at=datetime(2026, 11, 29, 9, tzinfo=UTC)))
    await post(agent, second)
    await settle(agent)
    assert scaledobject(cluster, "mcp-queue-scaler")["spec"]["maxReplicaCount"] == 60
    assert claims_on(cluster, "mcp-queue-scaler").kept["max-replicas"].original == 50  # the value to go back to

    # A crash between the patch and "processed" replays the same event: the object says it is done.
    [event] = to_events(parse_payload(json.dumps(second).encode()), received_at=utcnow())
    await agent.worker.process(InboxEntry(id=999, event=event))
    assert scaledobject(cluster, "mcp-queue-scaler")["spec"]["maxReplicaCount"] == 60
