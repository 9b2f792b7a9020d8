"""
Every change in the cluster has its row: a decision is recorded `applying` before its patch, and what a crash
cut short (an `applying` row, an ownership annotation the ledger lacks) is settled into a recorded decision at
the next start.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.ledger import LedgerUnavailable, SqliteLedger
from agent.structs import Decision, Outcome, Ownership, TargetRef, Trigger, utcnow
from tests.conftest import NS, StartAgent, annotations, build_config, claims_on, patches, post, settle

PAUSED = "autoscaling.keda.sh/paused-replicas"
OWNED_MIN = "scaling-agent.cortex.io/min-replicas"  # the release before claims: one annotation per field
FREQUENT = {"namespace": NS, "scaledObject": "mcp-http-scaler"}
HTTP_SCALER = TargetRef("ScaledObject", NS, "mcp-http-scaler")
# Two floors on one field, for different reasons: the second moves the field again, so the cooldown judges it.
FLOORS = [
    {"name": f"floor-{n}", "alertname": f"Floor{n}", "action": {"type": "set_min", "params": {"replicas": n}}}
    for n in (2, 4)
]


async def test_the_row_exists_before_the_patch_is_sent(
    cluster: DevCluster, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await start_agent()
    kind = agent.targets["ScaledObject"]
    real_patch = kind.patch
    seen: list[list[tuple[str, str]]] = []

    async def patch(state: Any, **kwargs: Any) -> Any:
        seen.append([(d.action, d.outcome) for d in await agent.ledger.decisions()])
        return await real_patch(state, **kwargs)

    monkeypatch.setattr(kind, "patch", patch)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    assert seen == [[("pause", Outcome.APPLYING)]]
    [done] = await agent.ledger.decisions()
    assert (done.action, done.outcome) == ("pause", Outcome.APPLIED)
    [claim] = claims_on(cluster, "mcp-http-scaler").claims
    assert claim.decision == done.id


async def test_no_patch_when_the_change_cannot_be_recorded_first(
    cluster: DevCluster, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await start_agent()
    real_record = agent.ledger.record

    async def record(decision: Decision) -> None:
        if decision.outcome == Outcome.APPLYING:
            raise LedgerUnavailable("disk full")
        await real_record(decision)

    monkeypatch.setattr(agent.ledger, "record", record)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    assert patches(cluster, "mcp-http-scaler") == 0
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.FAILED and "cannot record the change before" in decision.reason


async def test_a_change_whose_outcome_was_never_recorded_is_settled_at_the_next_start(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_config(base_config, rules=FLOORS)
    first = await start_agent(config)

    async def dies_before_completing(decision: Decision) -> None:
        raise LedgerUnavailable("the process is being killed")

    monkeypatch.setattr(first.ledger, "complete", dies_before_completing)
    await post(first, payload(alert("Floor2", FREQUENT)))
    await settle(first)
    assert spec_min(cluster) == 2  # the patch landed ...
    [row] = await first.ledger.unfinished()  # ... and its row says only `applying`
    await post(first, payload(alert("Floor4", FREQUENT)))
    await settle(first)
    refusal = [d for d in await first.ledger.decisions() if d.target == HTTP_SCALER][-1]
    assert refusal.outcome == Outcome.REFUSED and f"decision {row.id}" in refusal.reason  # the cooldown saw it
    await first.stop()

    second = await start_agent(config)
    assert await second.ledger.unfinished() == []
    settled = next(d for d in await second.ledger.decisions() if d.id == row.id)
    assert settled.outcome == Outcome.APPLIED and "settled at start: the object carries this change" in settled.reason
    # The resolve gives the floor back, as for any change.
    await post(second, payload(alert("Floor2", FREQUENT, status="resolved")))
    await settle(second)
    assert spec_min(cluster) == 0


def spec_min(cluster: DevCluster) -> int:
    value: int = cluster.get("scaledobjects", NS, "mcp-http-scaler")["spec"]["minReplicaCount"]
    return value


async def test_a_change_that_never_reached_the_object_is_settled_as_failed(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    config = build_config(base_config)
    ledger = SqliteLedger(config.ledger.url)
    await ledger.open()
    row = Decision(
        id="01KDEAD0000000000000000000",
        at=utcnow(),
        trigger=Trigger("alertmanager", "MCPFrequentScaling", "firing", "f1"),
        rule="pause-frequent-scaling",
        action="pause",
        target=HTTP_SCALER,
        before={"paused-replicas": None},
        after={"paused-replicas": 3},
        reason="MCPFrequentScaling: pause at 3 replicas for 2h",
        dry_run=False,
        outcome=Outcome.APPLYING,
    )
    await ledger.record(row)  # killed here, before the patch
    await ledger.close()

    agent = await start_agent(config)
    [settled] = await agent.ledger.decisions()
    assert settled.id == row.id and settled.outcome == Outcome.FAILED
    assert "not applied" in settled.reason
    assert PAUSED not in annotations(cluster, "mcp-http-scaler")
    # A failed change does not hold the cooldown: the alert, redelivered, pauses now.
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "3"


async def test_a_change_on_an_object_that_the_ledger_lacks_is_recorded_under_its_own_id(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    # Written by an agent from before decisions were recorded first (the release before claims, with its
    # per-field ownership annotation), or with a ledger since replaced.
    ownership = Ownership(
        field="min-replicas",
        before=0,
        after=2,
        decision="20261201T080000-abc123",
        rule="floor-2",
        alertname="Floor2",
        fingerprint="f-old",
        reason="Floor2: warm floor of 2 for 1h",
        applied_at=utcnow(),
        expires_at=None,
        revert_on_resolve=True,
        action="set_min",
    )
    cluster.change(
        "scaledobjects",
        NS,
        "mcp-http-scaler",
        {"spec": {"minReplicaCount": 2}, "metadata": {"annotations": {OWNED_MIN: ownership.to_json()}}},
    )
    agent = await start_agent(build_config(base_config, rules=FLOORS))
    [recovered] = await agent.ledger.decisions()
    assert (recovered.id, recovered.action, recovered.outcome) == (ownership.decision, "set_min", Outcome.APPLIED)
    assert recovered.target == HTTP_SCALER and dict(recovered.after) == {"min-replicas": 2}
    assert "recovered" in recovered.reason
    assert await agent.reconciler.reconcile_once() == []  # recorded once
    # The cooldown sees that change (the second floor would move the same field), naming a decision the ledger has.
    await post(agent, payload(alert("Floor4", FREQUENT)))
    await settle(agent)
    refusal = [d for d in await agent.ledger.decisions() if d.target == HTTP_SCALER][-1]
    assert refusal.outcome == Outcome.REFUSED and ownership.decision in refusal.reason


async def test_a_patch_whose_answer_was_lost_is_recorded_as_applied_once(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    # The API server applies the patch, and the agent hears a 504: it retries, meets a 409, and reads again.
    cluster.fail(method="PATCH", plural="scaledobjects", status=504, times=1, landed=True)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    [decision] = await agent.ledger.decisions()
    assert (decision.action, decision.outcome) == ("pause", Outcome.APPLIED)
    assert "answer was lost" in decision.reason and dict(decision.after) == {"paused-replicas": 3}
    assert claims_on(cluster, "mcp-http-scaler").claims[0].decision == decision.id
    assert [w.name for w in cluster.writes if w.plural == "scaledobjects"] == ["mcp-http-scaler"]  # one change
