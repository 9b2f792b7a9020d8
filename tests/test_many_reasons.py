"""
Many reasons on one object, end to end: alerts in over HTTP, claims on the emulated objects, one decision per step.

Two floors on one field in every order of arrival and release, with someone else's edit in between (the decision
names them, from managedFields); a floor meeting a cap; a pause meeting a floor; the cap on claims per object;
and objects changed by the release before claims, read and given back after an upgrade.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio import client

from agent.claims import ANNOTATION as CLAIMS
from agent.claims import MAX_CLAIMS, Want
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.structs import Decision, Outcome, TargetRef
from agent.targets.base import read_claims
from tests.conftest import NS, ROOT, StartAgent, annotations, build_config, claims_on, post, scaledobject, settle

SCALER = "mcp-http-scaler"  # min 0, max 20; its Deployment runs 3 pods
LABELS = {"namespace": NS, "scaledObject": SCALER}
PAUSED = "autoscaling.keda.sh/paused-replicas"
LEGACY = ROOT / "tests" / "fixtures" / "legacy_annotations.json"


def rule(name: str, action: str, **params: Any) -> dict[str, Any]:
    return {
        "name": name.lower(),
        "alertname": name,
        "action": {"type": action, "params": {**params, "revert_on_resolve": True}},
        "target": {"namespace": NS},
    }


RULES = [
    rule("Floor3", "set_min", replicas=3),
    rule("Floor5", "set_min", replicas=5),
    rule("Floor8", "set_min", replicas=8),
    rule("Cap5", "set_max", replicas=5),
    rule("Flapping", "pause"),
]


async def step(agent: Any, alertname: str, status: str = "firing", labels: dict[str, str] | None = None) -> Decision:
    """Send one alert (or its resolve) and return the one decision it made."""
    before = len(await agent.ledger.decisions())
    await post(agent, payload(alert(alertname, LABELS if labels is None else labels, status=status)))
    await settle(agent)
    decisions = await agent.ledger.decisions()
    assert len(decisions) == before + 1, [d.summary() for d in decisions[before:]]
    return decisions[-1]


def spec(cluster: DevCluster) -> tuple[int, int]:
    so = scaledobject(cluster, SCALER)["spec"]
    return so["minReplicaCount"], so["maxReplicaCount"]


async def edit_by_hand(api: client.ApiClient, body: dict[str, Any], *, name: str = SCALER) -> None:
    """What `kubectl edit` does: an update under its own field manager."""
    await client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "keda.sh",
        "v1alpha1",
        NS,
        "scaledobjects",
        name,
        body,
        _content_type="application/merge-patch+json",
        field_manager="kubectl-edit",
    )


@pytest.fixture()
def config(base_config: dict[str, Any]) -> Any:
    return build_config(base_config, guard={"cooldown": "0s"}, rules=RULES)


@pytest.mark.parametrize("arrival", list(itertools.permutations(["Floor3", "Floor5"])), ids="-then-".join)
@pytest.mark.parametrize("release", list(itertools.permutations(["Floor3", "Floor5"])), ids="-then-".join)
async def test_two_floors_in_every_order_of_arrival_and_release(
    cluster: DevCluster, start_agent: StartAgent, config: Any, arrival: tuple[str, str], release: tuple[str, str]
) -> None:
    agent = await start_agent(config)
    first = await step(agent, arrival[0])
    assert first.outcome == Outcome.APPLIED and spec(cluster)[0] == int(arrival[0][-1])
    second = await step(agent, arrival[1])
    assert second.outcome == Outcome.APPLIED
    assert spec(cluster)[0] == 5  # floors take the highest
    if arrival[1] == "Floor3":  # held under a higher floor: a claim all the same, and the decision says why
        assert (dict(second.before), dict(second.after)) == ({}, {})
        assert "min-replicas stays 5: other claims hold it there" in second.reason
    assert sorted(c.holder for c in claims_on(cluster, SCALER).claims) == [
        "rule:floor3:" + fp("Floor3"),
        "rule:floor5:" + fp("Floor5"),
    ]
    assert claims_on(cluster, SCALER).kept["min-replicas"].original == 0  # kept once, from before the first claim

    gone = await step(agent, release[0], "resolved")
    left = 3 if release[0] == "Floor5" else 5  # releasing one recomputes from the other
    assert gone.action == "revert" and gone.outcome == Outcome.APPLIED and spec(cluster)[0] == left
    if release[0] == "Floor5":
        assert (dict(gone.before), dict(gone.after)) == ({"min-replicas": 5}, {"min-replicas": 3})
    else:  # the lower floor ends under the higher one: nothing moves, and the decision says why
        assert (dict(gone.before), dict(gone.after)) == ({}, {})
        assert "min-replicas stays 5: other claims hold it there" in gone.reason
    last = await step(agent, release[1], "resolved")
    assert (dict(last.before), dict(last.after)) == ({"min-replicas": left}, {"min-replicas": 0})  # the original
    assert spec(cluster) == (0, 20)
    assert CLAIMS not in annotations(cluster, SCALER)  # nothing of the agent's is left on the object


def fp(alertname: str) -> str:
    return str(alert(alertname, LABELS)["fingerprint"])


@pytest.mark.parametrize("when", ["after-one-floor", "after-both-floors", "after-one-release"])
async def test_someone_elses_edit_in_between_is_left_alone_and_named(
    cluster: DevCluster, start_agent: StartAgent, api: client.ApiClient, config: Any, when: str
) -> None:
    agent = await start_agent(config)
    await step(agent, "Floor3")
    if when == "after-one-floor":
        await edit_by_hand(api, {"spec": {"minReplicaCount": 7}})
    await step(agent, "Floor5")
    if when == "after-both-floors":
        await edit_by_hand(api, {"spec": {"minReplicaCount": 7}})
    await step(agent, "Floor5", "resolved")
    if when == "after-one-release":
        await edit_by_hand(api, {"spec": {"minReplicaCount": 7}})
    await step(agent, "Floor3", "resolved")

    decisions = await agent.ledger.decisions()
    [named] = [d for d in decisions if "kubectl-edit (a person, through kubectl)" in d.reason]
    assert "min-replicas was changed by kubectl-edit (a person, through kubectl) since (now 7" in named.reason
    assert "left as is, and the agent lets go of its claims on it" in named.reason
    assert named.outcome == Outcome.APPLIED and "min-replicas" not in named.after  # the value is not written
    assert spec(cluster)[0] == 7  # the person's value stands at the end, whatever came after
    assert CLAIMS not in annotations(cluster, SCALER)
    # The agent never wrote over the edit: every write of min-replicas after it was the person's.
    edit_at = next(i for i, w in enumerate(cluster.writes) if (w.body.get("spec") or {}).get("minReplicaCount") == 7)
    assert not any((w.body.get("spec") or {}).get("minReplicaCount") is not None for w in cluster.writes[edit_at + 1 :])


async def test_a_floor_meeting_a_cap_is_clamped_and_comes_back_when_the_cap_ends(
    cluster: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    cap = await step(agent, "Cap5")
    assert spec(cluster) == (0, 5) and cap.outcome == Outcome.APPLIED
    floor = await step(agent, "Floor8")
    assert floor.outcome == Outcome.APPLIED and spec(cluster) == (5, 5)
    assert "floor 8 clamped to the ceiling of 5" in floor.reason  # KEDA rejects min > max: clamped, and said
    released = await step(agent, "Cap5", "resolved")
    assert spec(cluster) == (8, 20)  # the cap ends: the ceiling comes back, and the floor with it
    assert dict(released.after) == {"max-replicas": 20, "min-replicas": 8}
    await step(agent, "Floor8", "resolved")
    assert spec(cluster) == (0, 20)


async def test_a_pause_meeting_a_floor_holds_the_higher_count_and_never_scales_down(
    cluster: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    await step(agent, "Flapping")
    assert annotations(cluster, SCALER)[PAUSED] == "3"  # the count it runs
    floor = await step(agent, "Floor5")
    # A pre-scale on a paused object still adds capacity: the pause holds the higher of the two.
    assert annotations(cluster, SCALER)[PAUSED] == "5" and spec(cluster)[0] == 5
    assert "paused at the floor of 5, above the pause's count" in floor.reason
    await step(agent, "Floor5", "resolved")
    assert annotations(cluster, SCALER)[PAUSED] == "3" and spec(cluster)[0] == 0
    await step(agent, "Flapping", "resolved")
    assert PAUSED not in annotations(cluster, SCALER)


async def test_a_cap_below_a_pause_is_a_recorded_conflict_not_a_scale_down(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    rules = [rule("Flapping", "pause"), rule("Cap2", "set_max", replicas=2)]
    agent = await start_agent(build_config(base_config, guard={"cooldown": "0s"}, rules=rules))
    await step(agent, "Flapping")
    cap = await step(agent, "Cap2")
    assert "cap 2 (rule:cap2:" in cap.reason and "is below the paused count of 3: not applied" in cap.reason
    assert annotations(cluster, SCALER)[PAUSED] == "3"


async def test_claims_past_the_cap_are_refused_and_the_others_stand(
    cluster: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    for n in range(MAX_CLAIMS):
        decision = await step(agent, "Floor3", labels={**LABELS, "instance": f"pod-{n}"})  # 32 alerts, 32 holders
        assert decision.outcome == Outcome.APPLIED, decision.reason
    refused = await step(agent, "Floor3", labels={**LABELS, "instance": "one-too-many"})
    assert refused.outcome == Outcome.REFUSED
    held = f"the object holds {MAX_CLAIMS} claims already (at most {MAX_CLAIMS})"
    assert refused.reason == f"{held}; the new claim is refused, the others stand"
    assert len(claims_on(cluster, SCALER).claims) == MAX_CLAIMS and spec(cluster)[0] == 3
    # One ends: there is room again.
    await step(agent, "Floor3", "resolved", labels={**LABELS, "instance": "pod-0"})
    assert (await step(agent, "Floor3", labels={**LABELS, "instance": "room-again"})).outcome == Outcome.APPLIED


# --- an upgrade from the release before claims -----------------------------------------------------------------


def load_legacy(cluster: DevCluster, *, expire: str | None = None) -> dict[str, Any]:
    """
    Put on the examples' objects what the release before claims wrote (captured by running that release against
    the emulator: a pause, a warm floor, a raised maximum). ``expire`` moves one object's expiry into the past.
    """
    captured: dict[str, Any] = json.loads(LEGACY.read_text())
    for name in ("mcp-http-scaler", "mcp-scale-to-zero", "mcp-queue-scaler"):
        marks = dict(captured[name]["annotations"])
        # The captured expiries are absolute times from the day of the capture: move them to an hour from now
        # (or a minute ago, for ``expire``), so the test means the same whenever it runs.
        moved = timedelta(minutes=-1) if name == expire else timedelta(hours=1)
        for key, value in marks.items():
            if key.startswith("scaling-agent.cortex.io/"):
                owned = json.loads(value)
                owned["expiresAt"] = (datetime.now(tz=UTC) + moved).isoformat()
                marks[key] = json.dumps(owned)
        cluster.change("scaledobjects", NS, name, {"spec": captured[name]["spec"], "metadata": {"annotations": marks}})
    return captured


def legacy_keys(cluster: DevCluster, name: str) -> list[str]:
    return [k for k in annotations(cluster, name) if k.startswith("scaling-agent.cortex.io/") and k != CLAIMS]


async def test_objects_changed_by_the_release_before_claims_are_given_back_after_the_upgrade(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    captured = load_legacy(cluster)
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "3" and spec(cluster)[0] == 0
    assert legacy_keys(cluster, "mcp-http-scaler") == ["scaling-agent.cortex.io/paused-replicas"]
    agent = await start_agent(build_config(base_config, guard={"cooldown": "0s"}))
    # The old ledger is not there (a new one, say): the changes on the objects are recorded under their own ids.
    recovered = {d.id: d for d in await agent.ledger.decisions()}
    assert set(recovered) == {d["id"] for d in captured["decisions"] if d["outcome"] == "applied"}
    assert {d.action for d in recovered.values()} == {"pause", "set_min", "raise_max"}

    # Each alert's resolve gives back what that alert changed, exactly as the old release would have.
    pause_back = await step(agent, "MCPFrequentScaling", "resolved")
    assert (pause_back.action, pause_back.outcome) == ("revert", Outcome.APPLIED)
    assert PAUSED not in annotations(cluster, "mcp-http-scaler") and legacy_keys(cluster, "mcp-http-scaler") == [
        "scaling-agent.cortex.io/resumed"  # KEDA's Paused condition is checked after the resume, as before
    ]
    floor_back = await step(agent, "MCPColdStartSlow", "resolved", labels={})
    assert dict(floor_back.after) == {"min-replicas": 0}
    assert scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 0
    assert legacy_keys(cluster, "mcp-scale-to-zero") == [] and CLAIMS not in annotations(cluster, "mcp-scale-to-zero")

    # The raise stays to its expiry (not given back on resolve); a new firing raises again from the kept original.
    labels = {"namespace": NS, "deployment": "mcp-queue-processor"}
    await post(agent, payload(alert("MCPAtMaximumScale", {**labels, "again": "yes"})))
    await settle(agent)
    [raised] = [
        d
        for d in await agent.ledger.decisions()
        if d.target == TargetRef("ScaledObject", NS, "mcp-queue-scaler")
        and d.action == "raise_max"
        and d.trigger.source == "alertmanager"
    ]
    assert raised.outcome == Outcome.APPLIED and dict(raised.after) == {"max-replicas": 60}
    queue = claims_on(cluster, "mcp-queue-scaler")
    assert queue.kept["max-replicas"].original == 50  # the value from before the old release's raise
    assert legacy_keys(cluster, "mcp-queue-scaler") == []  # upgraded: one claims annotation now


async def test_an_expiry_written_by_the_release_before_claims_is_given_back(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    load_legacy(cluster, expire="mcp-queue-scaler")
    assert scaledobject(cluster, "mcp-queue-scaler")["spec"]["maxReplicaCount"] == 55
    agent = await start_agent(build_config(base_config))  # the first reconcile pass runs during start()
    await settle(agent)
    assert scaledobject(cluster, "mcp-queue-scaler")["spec"]["maxReplicaCount"] == 50
    assert legacy_keys(cluster, "mcp-queue-scaler") == [] and CLAIMS not in annotations(cluster, "mcp-queue-scaler")
    revert = next(d for d in await agent.ledger.decisions() if d.action == "revert")
    assert revert.target == TargetRef("ScaledObject", NS, "mcp-queue-scaler") and revert.outcome == Outcome.APPLIED
    # The others' claims were not touched: they have not expired.
    claims, legacy, _ = read_claims(annotations(cluster, "mcp-http-scaler"))
    assert {c.want for c in claims.claims} == {Want.PAUSE} and legacy == ("scaling-agent.cortex.io/paused-replicas",)


async def test_an_edit_of_another_field_is_never_written_over_by_a_step_on_this_one(
    cluster: DevCluster, start_agent: StartAgent, api: client.ApiClient, config: Any
) -> None:
    agent = await start_agent(config)
    await step(agent, "Cap5")
    assert spec(cluster) == (0, 5)
    await edit_by_hand(api, {"spec": {"maxReplicaCount": 30}})
    floor = await step(agent, "Floor3")  # about min-replicas; the agent also holds max-replicas, now edited
    assert spec(cluster) == (3, 30)  # the person's maximum stands
    assert dict(floor.after) == {"min-replicas": 3}
    assert "max-replicas was changed by kubectl-edit (a person, through kubectl) since (now 30" in floor.reason
    assert [c.field for c in claims_on(cluster, SCALER).claims] == ["min-replicas"]  # the cap is let go
    await step(agent, "Cap5", "resolved")  # nothing of its own left to give back
    assert spec(cluster) == (3, 30)


async def test_an_unreadable_claims_annotation_is_never_written_over(
    cluster: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    cluster.change("scaledobjects", NS, SCALER, {"metadata": {"annotations": {CLAIMS: '{"version": 99, "kept": {}}'}}})
    agent = await start_agent(config)
    refused = await step(agent, "Floor3")
    assert refused.outcome == Outcome.REFUSED
    assert refused.reason.startswith(f"unreadable annotation {CLAIMS} (claims annotation version 99")
    assert "the agent will not write over it; fix or remove it by hand" in refused.reason
    assert annotations(cluster, SCALER)[CLAIMS] == '{"version": 99, "kept": {}}' and spec(cluster) == (0, 20)


async def test_the_cooldown_judges_only_a_claim_that_moves_its_own_field_again(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    agent = await start_agent(build_config(base_config, guard={"cooldown": "5m"}, rules=RULES))
    assert (await step(agent, "Flapping")).outcome == Outcome.APPLIED
    # The floor lifts the paused count as well: that is the floor's doing, judged on min-replicas alone.
    lifted = await step(agent, "Floor5")
    assert lifted.outcome == Outcome.APPLIED and dict(lifted.after) == {"min-replicas": 5, "paused-replicas": 5}
    assert (await step(agent, "Floor3")).outcome == Outcome.APPLIED  # moves nothing: never refused
    again = await step(agent, "Floor8")  # would move min-replicas again within 5 minutes
    assert again.outcome == Outcome.REFUSED
    assert re.match(rf"cooldown: min-replicas last changed \d+s ago \(decision {lifted.id}\)", again.reason)
    assert spec(cluster)[0] == 5
    assert (await step(agent, "Floor5", "resolved")).outcome == Outcome.APPLIED  # a give-back: never refused
    assert spec(cluster)[0] == 3
