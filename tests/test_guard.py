"""The guard: the limit on changes in flight, and the bounds every forward write must stay within."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.actions import Hold
from agent.claims import Want
from agent.config import GuardConfig, KubernetesConfig
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.guard import Guard, Refused
from agent.ledger import SqliteLedger
from agent.structs import Outcome, TargetRef
from agent.targets.base import MAX_REPLICAS, MIN_REPLICAS, TargetState
from tests.conftest import NS, StartAgent, annotations, build_config, patches, post, scaledobject, settle


async def test_changes_in_flight_are_capped(tmp_path: Path) -> None:
    ledger = SqliteLedger(f"sqlite:///{tmp_path}/l.db")
    guard = Guard(
        GuardConfig(max_concurrent_changes=2),
        kubernetes=KubernetesConfig(namespaces=["cortex-mcp"]),
        ledger=ledger,
    )
    async with guard.slot(), guard.slot():
        with pytest.raises(Refused, match="2 changes already in flight"):
            async with guard.slot():
                pass
    async with guard.slot():  # released again
        pass


# --- bounds, end to end: an alert in, a decision recorded, the object patched or left alone ----------------


def rule(name: str, action: str, replicas: int) -> dict[str, Any]:
    """A rule answering the alert called `name` with set_min / set_max to `replicas`, in the test namespace."""
    return {
        "name": name,
        "alertname": name,
        "action": {"type": action, "params": {"replicas": replicas}},
        "target": {"namespace": NS},
    }


async def fire(agent: Any, alertname: str, scaled_object: str) -> None:
    await post(agent, payload(alert(alertname, {"namespace": NS, "scaledObject": scaled_object})))


def spec(cluster: DevCluster, name: str) -> tuple[int, int]:
    so = scaledobject(cluster, name)["spec"]
    return so["minReplicaCount"], so["maxReplicaCount"]


async def test_a_floor_over_max_is_clamped_and_a_cap_under_min_is_refused_naming_both(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    # The examples: mcp-keda is min 2 / max 10, mcp-warm-standby min 3 / max 30. The ceiling (100) allows both writes.
    rules = [rule("FloorOverMax", "set_min", 12), rule("MaxUnderFloor", "set_max", 2)]
    agent = await start_agent(build_config(base_config, rules=rules))
    await fire(agent, "FloorOverMax", "mcp-keda")
    await fire(agent, "MaxUnderFloor", "mcp-warm-standby")
    await settle(agent)

    by_target = {d.target.name: d for d in await agent.ledger.decisions() if d.target is not None}
    # KEDA rejects min > max: a floor is clamped at the object's own maximum, and the decision says so.
    assert by_target["mcp-keda"].outcome == Outcome.APPLIED
    assert "floor 12 clamped to the ceiling of 10" in by_target["mcp-keda"].reason
    assert spec(cluster, "mcp-keda") == (10, 10)
    # A cap below an unclaimed floor cannot be clamped the same way: refused, naming both.
    assert by_target["mcp-warm-standby"].outcome == Outcome.REFUSED
    assert by_target["mcp-warm-standby"].reason == "min-replicas 3 would exceed max-replicas 2"
    # Nothing was written for the refusal: no patch, the spec as it was, no claim to give back later.
    assert patches(cluster, "mcp-warm-standby") == 0
    assert spec(cluster, "mcp-warm-standby") == (3, 30)
    assert not any(k.startswith("scaling-agent.cortex.io/") for k in annotations(cluster, "mcp-warm-standby"))
    # The refusal is posted, as visible as a change.
    console = agent.sinks[0].stream  # type: ignore[attr-defined]
    assert "min-replicas 3 would exceed max-replicas 2" in console.text


async def test_writes_exactly_at_the_ceiling_and_the_floor_are_applied(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    rules = [
        rule("MaxAtCeiling", "set_max", 30),  # mcp-keda: max 10 → 30
        rule("MinAtCeiling", "set_min", 30),  # mcp-warm-standby: min 3 → 30, equal to its max of 30
        rule("MinAtFloor", "set_min", 2),  # mcp-http-scaler: min 0 → 2
        rule("MaxAtFloor", "set_max", 2),  # mcp-scale-to-zero: max 10 → 2, its min is 0
    ]
    agent = await start_agent(build_config(base_config, guard={"ceiling": 30, "floor": 2}, rules=rules))
    await fire(agent, "MaxAtCeiling", "mcp-keda")
    await fire(agent, "MinAtCeiling", "mcp-warm-standby")
    await fire(agent, "MinAtFloor", "mcp-http-scaler")
    await fire(agent, "MaxAtFloor", "mcp-scale-to-zero")
    await settle(agent)

    outcomes = {d.target.name: (d.outcome, d.reason) for d in await agent.ledger.decisions() if d.target is not None}
    assert {name: outcome for name, (outcome, _) in outcomes.items()} == {
        "mcp-keda": Outcome.APPLIED,
        "mcp-warm-standby": Outcome.APPLIED,
        "mcp-http-scaler": Outcome.APPLIED,
        "mcp-scale-to-zero": Outcome.APPLIED,
    }, outcomes
    assert spec(cluster, "mcp-keda") == (2, 30)
    assert spec(cluster, "mcp-warm-standby") == (30, 30)
    assert spec(cluster, "mcp-http-scaler") == (2, 20)
    assert spec(cluster, "mcp-scale-to-zero") == (0, 2)


# --- bounds, directly: Guard.check_claim on a claim, Guard.check_result on the object as it would be ----------


def bounds_guard(tmp_path: Path, *, floor: int, ceiling: int) -> Guard:
    return Guard(
        GuardConfig(floor=floor, ceiling=ceiling),
        kubernetes=KubernetesConfig(namespaces=[NS]),
        ledger=SqliteLedger(f"sqlite:///{tmp_path}/l.db"),
    )


def state(min_replicas: int | None, max_replicas: int | None) -> TargetState:
    return TargetState(
        ref=TargetRef(kind="ScaledObject", namespace=NS, name="x"),
        resource_version="1",
        values={MIN_REPLICAS: min_replicas, MAX_REPLICAS: max_replicas},
        replicas=1,
    )


def hold(want: Want, value: int) -> Hold:
    return Hold(want=want, value=value, reason="test", until=None, ends_on_resolve=False)


@pytest.mark.parametrize(
    ("current", "values", "reason"),
    [
        ((2, 10), {MIN_REPLICAS: 11}, "min-replicas 11 would exceed max-replicas 10"),
        ((3, 30), {MAX_REPLICAS: 2}, "min-replicas 3 would exceed max-replicas 2"),
    ],
    ids=["min-above-max", "max-below-min"],
)
def test_check_result_refuses_min_above_max(
    tmp_path: Path, current: tuple[int, int], values: dict[str, int], reason: str
) -> None:
    guard = bounds_guard(tmp_path, floor=0, ceiling=50)
    with pytest.raises(Refused) as info:
        guard.check_result(state(*current), values)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("current", "values"),
    [
        ((3, 30), {MIN_REPLICAS: 30}),  # min == max
        ((None, 10), {MIN_REPLICAS: 10}),  # an object without a minimum: only its max applies
    ],
    ids=["min-equal-to-max", "no-minimum"],
)
def test_check_result_allows_min_equal_to_max(
    tmp_path: Path, current: tuple[int | None, int], values: dict[str, int]
) -> None:
    bounds_guard(tmp_path, floor=2, ceiling=30).check_result(state(*current), values)


@pytest.mark.parametrize(
    "intent",
    [hold(Want.RAISE, 30), hold(Want.FLOOR, 2), hold(Want.CAP, 2), hold(Want.PAUSE, 30), hold(Want.FLOOR, 40)],
    ids=["raise-at-ceiling", "floor-at-floor", "cap-at-floor", "pause-at-ceiling", "floor-above-ceiling-is-clamped"],
)
def test_check_claim_allows_the_ceiling_and_the_floor_themselves(tmp_path: Path, intent: Hold) -> None:
    assert bounds_guard(tmp_path, floor=2, ceiling=30).check_claim(intent, state(0, 10), ("max-replicas",)) == (
        intent,
        None,
    )


@pytest.mark.parametrize(
    ("intent", "reason"),
    [
        (hold(Want.RAISE, 31), "raise 31 is above the ceiling of 30"),
        (hold(Want.PAUSE, 31), "pause 31 is above the ceiling of 30"),
        (hold(Want.FLOOR, 1), "floor 1 is below the floor of 2"),
        (hold(Want.CAP, 1), "cap 1 is below the floor of 2"),
    ],
    ids=["raise-above-ceiling", "pause-above-ceiling", "floor-below-floor", "cap-below-floor"],
)
def test_check_claim_refuses_one_past_the_ceiling_or_the_floor(tmp_path: Path, intent: Hold, reason: str) -> None:
    with pytest.raises(Refused) as info:
        bounds_guard(tmp_path, floor=2, ceiling=30).check_claim(intent, state(0, 10), ("max-replicas",))
    assert info.value.reason == reason


def test_a_raise_up_to_a_limit_is_clipped_at_the_ceiling_and_refused_once_there(tmp_path: Path) -> None:
    guard = bounds_guard(tmp_path, floor=2, ceiling=30)
    raise_to_35 = Hold(want=Want.RAISE, value=35, reason="test", until=None, ends_on_resolve=False, up_to=40)
    clipped, note = guard.check_claim(raise_to_35, state(0, 28), ("max-replicas",))
    assert (clipped.value, note) == (30, "raise to 35 clipped at the ceiling of 30")
    rule_ceiling = Hold(want=Want.RAISE, value=35, reason="test", until=None, ends_on_resolve=False, up_to=29)
    assert guard.check_claim(rule_ceiling, state(0, 28), ("max-replicas",))[0].value == 29  # the rule's, lower
    with pytest.raises(Refused, match="max-replicas 30 already at the ceiling of 30"):
        guard.check_claim(raise_to_35, state(0, 30), ("max-replicas",))
