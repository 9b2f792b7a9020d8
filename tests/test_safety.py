"""Bounded, reversible, crash-safe: the guard, human pauses, API faults, restarts and expiries."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.ledger import SqliteLedger
from agent.sources.alertmanager import decode
from agent.structs import Outcome, utcnow
from tests.conftest import NS, StartAgent, annotations, build_config, claims_on, patches, post, scaledobject, settle

PAUSED = "autoscaling.keda.sh/paused-replicas"
FREQUENT = {"namespace": NS, "scaledObject": "mcp-http-scaler"}


def short_pause(base_config: dict[str, Any], duration: str) -> Any:
    """The default config with one rule: MCPFrequentScaling pauses for `duration`."""
    rule = {
        "name": "short-pause",
        "alertname": "MCPFrequentScaling",
        "action": {"type": "pause", "params": {"for": duration}},
        "target": {"namespace": NS},
    }
    return build_config(base_config, rules=[rule])


def set_annotations(cluster: DevCluster, name: str, values: dict[str, Any]) -> None:
    cluster.change("scaledobjects", NS, name, {"metadata": {"annotations": values}})


async def test_dry_run_decides_and_records_but_patches_nothing(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent(dry_run=True)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    assert patches(cluster, "mcp-http-scaler") == patches(cluster, "mcp-scale-to-zero") == 0
    assert PAUSED not in annotations(cluster, "mcp-http-scaler")
    decisions = await agent.ledger.decisions()
    assert [d.outcome for d in decisions] == [Outcome.DRY_RUN, Outcome.DRY_RUN]
    assert all(d.dry_run for d in decisions)
    assert dict(decisions[0].after) == {"paused-replicas": 3}


async def test_human_pause_is_never_touched(cluster: DevCluster, start_agent: StartAgent) -> None:
    set_annotations(cluster, "mcp-http-scaler", {PAUSED: "1"})  # no agent annotation: a human did this
    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await post(agent, payload(alert("MCPScaleToZeroStuck", {"namespace": NS, "deployment": "mcp-http-server"})))
    await settle(agent)
    await agent.reconciler.reconcile_once()
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "1"
    assert patches(cluster, "mcp-http-scaler") == 0
    outcomes = [(d.action, d.outcome) for d in await agent.ledger.decisions() if d.target is not None]
    assert ("pause", Outcome.NOOP) in outcomes
    assert ("resume", Outcome.REFUSED) in outcomes
    refused = next(d for d in await agent.ledger.decisions() if d.outcome == Outcome.REFUSED)
    assert "paused by human" in refused.reason


async def test_kube_downscaler_pause_is_left_to_it(cluster: DevCluster, start_agent: StartAgent) -> None:
    set_annotations(cluster, "mcp-http-scaler", {PAUSED: "0", "downscaler/original-replicas": "3"})
    agent = await start_agent()
    await post(agent, payload(alert("MCPScaleToZeroStuck", {"namespace": NS, "deployment": "mcp-http-server"})))
    await settle(agent)
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "0"
    # mcp-http-server is scaled by two ScaledObjects; only mcp-http-scaler is paused.
    by_name = {d.target.name: d for d in await agent.ledger.decisions() if d.target is not None}
    assert by_name["mcp-http-scaler"].outcome == Outcome.REFUSED
    assert "kube-downscaler" in by_name["mcp-http-scaler"].reason
    assert by_name["mcp-http-triggers"].reason == "not paused"


async def test_api_500_on_patch_is_retried_then_recorded_failed(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    cluster.fail(method="PATCH", plural="scaledobjects", status=500, times=100)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    attempts = agent.config.kubernetes.api_attempts
    assert patches(cluster, "mcp-http-scaler") == attempts
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.FAILED
    assert "500" in (decision.error or "")
    # The agent is still alive and acting.
    cluster.faults.clear()
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    assert scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 1


async def test_transient_api_errors_are_retried_to_success(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    cluster.fail(method="PATCH", plural="scaledobjects", status=503, times=2)
    cluster.fail(method="GET", plural="scaledobjects", status=500, times=1)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.APPLIED
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "3"


async def test_conflict_reads_again_and_replans(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    cluster.fail(method="PATCH", plural="scaledobjects", status=409, times=1)
    await post(agent, payload(alert("MCPAtMaximumScale", {"namespace": NS, "deployment": "mcp-queue-processor"})))
    await settle(agent)
    assert scaledobject(cluster, "mcp-queue-scaler")["spec"]["maxReplicaCount"] == 55  # raised once, not twice


async def test_stale_resource_version_is_refused_by_the_emulator(cluster: DevCluster, api: Any) -> None:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api)
    args = ("keda.sh", "v1alpha1", NS, "scaledobjects", "mcp-http-scaler")
    obj = await custom.get_namespaced_custom_object(*args)
    stale = obj["metadata"]["resourceVersion"]
    await custom.patch_namespaced_custom_object(
        *args, {"spec": {"maxReplicaCount": 21}}, _content_type="application/merge-patch+json"
    )
    try:
        await custom.patch_namespaced_custom_object(
            *args,
            {"metadata": {"resourceVersion": stale}, "spec": {"maxReplicaCount": 22}},
            _content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        assert exc.status == 409
    else:
        raise AssertionError("a stale resourceVersion must be refused")
    assert scaledobject(cluster, "mcp-http-scaler")["spec"]["maxReplicaCount"] == 21


async def test_cooldown_refuses_a_second_move_of_a_field_but_never_a_pause_after_a_raise(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    labels = {"namespace": NS, "deployment": "mcp-server"}
    await post(agent, payload(alert("MCPAtMaximumScale", labels, starts_at=datetime(2026, 12, 6, 8, tzinfo=UTC))))
    await settle(agent)
    assert scaledobject(cluster, "mcp-keda")["spec"]["maxReplicaCount"] == 15
    # Replaying real Alertmanager traffic: the agent's own raise once refused the pause of a flapping object 2 s
    # later. A pause stops motion and holds another field: the cooldown does not judge it.
    await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-keda"})))
    await settle(agent)
    pause = (await agent.ledger.decisions())[-1]
    assert (pause.action, pause.outcome) == ("pause", Outcome.APPLIED), pause.reason
    assert PAUSED in annotations(cluster, "mcp-keda")
    # A new firing of the raise within the cooldown would move max-replicas again: refused, naming the field.
    await post(agent, payload(alert("MCPAtMaximumScale", labels, starts_at=datetime(2026, 12, 6, 9, tzinfo=UTC))))
    await settle(agent)
    last = (await agent.ledger.decisions())[-1]
    assert last.outcome == Outcome.REFUSED and last.reason.startswith("cooldown: max-replicas last changed")
    assert scaledobject(cluster, "mcp-keda")["spec"]["maxReplicaCount"] == 15


async def test_namespace_outside_the_allow_list_is_refused(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", {"namespace": "kube-system", "scaledObject": "coredns"})))
    await settle(agent)
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.REFUSED and "kube-system" in decision.reason


async def test_ceiling_and_floor_bound_every_write(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    rules = [
        {
            "name": "big-floor",
            "alertname": "A",
            "action": {"type": "set_min", "params": {"replicas": 40}},
            "target": {"namespace": NS},
        },
        {
            "name": "tiny-max",
            "alertname": "B",
            "action": {"type": "set_max", "params": {"replicas": 1}},
            "target": {"namespace": NS},
        },
    ]
    agent = await start_agent(build_config(base_config, guard={"ceiling": 30, "floor": 2}, rules=rules))
    await post(agent, payload(alert("A", {"namespace": NS, "scaledObject": "mcp-http-scaler"})))
    await post(agent, payload(alert("B", {"namespace": NS, "scaledObject": "mcp-queue-scaler"})))
    await settle(agent)
    by_rule = {d.rule: d for d in await agent.ledger.decisions()}
    # A floor past the ceiling is clamped at the effective ceiling (the object's own max of 20, below the
    # guard's 30), and says so; a cap below the floor is refused, and nothing is written for it.
    assert by_rule["big-floor"].outcome == Outcome.APPLIED
    assert "floor 40 clamped to the ceiling of 20" in by_rule["big-floor"].reason
    assert scaledobject(cluster, "mcp-http-scaler")["spec"]["minReplicaCount"] == 20
    assert (by_rule["tiny-max"].outcome, by_rule["tiny-max"].reason) == (
        Outcome.REFUSED,
        "cap 1 is below the floor of 2",
    )
    assert patches(cluster, "mcp-queue-scaler") == 0


async def test_selector_hitting_too_many_targets_acts_on_none(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    for name in ("mcp-http-scaler", "mcp-keda", "mcp-queue-scaler"):
        cluster.change("scaledobjects", NS, name, {"metadata": {"labels": {"tier": "mcp"}}})
    rules = [
        {
            "name": "wide",
            "alertname": "Wide",
            "action": {"type": "set_min", "params": {"replicas": 3}},
            "target": {"namespace": NS, "selector": {"tier": "mcp"}},
        }
    ]
    agent = await start_agent(build_config(base_config, guard={"max_targets_per_event": 2}, rules=rules))
    await post(agent, payload(alert("Wide")))
    await settle(agent)
    [decision] = await agent.ledger.decisions()
    assert decision.outcome == Outcome.REFUSED and "max_targets_per_event=2" in decision.reason
    assert all(patches(cluster, n) == 0 for n in ("mcp-http-scaler", "mcp-keda", "mcp-queue-scaler"))


async def test_expiry_is_reverted_by_the_reconciler_after_a_restart(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    config = short_pause(base_config, "1s")
    first = await start_agent(config)
    await post(first, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(first)
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "3"
    await first.stop()  # the process is gone; only the annotations remember the change

    [claim] = claims_on(cluster, "mcp-http-scaler").claims
    assert claim.until is not None
    wait = claim.until - utcnow()
    await asyncio.sleep(max(0.0, wait.total_seconds()) + 0.05)  # the expiry is one second out

    second = await start_agent(config)  # its first reconcile pass runs during start()
    await settle(second)
    marks = annotations(cluster, "mcp-http-scaler")
    assert PAUSED not in marks and "scaling-agent.cortex.io/claims" not in marks
    revert = (await second.ledger.decisions())[-1]
    assert (revert.action, revert.outcome, revert.trigger.source) == ("revert", Outcome.APPLIED, "reconciler")
    assert revert.trigger.alertname == claim.holder and claim.holder.startswith("rule:short-pause:")


async def test_drifted_value_is_left_alone_on_revert(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    # Someone edits the floor by hand while the agent owns it.
    cluster.change("scaledobjects", NS, "mcp-scale-to-zero", {"spec": {"minReplicaCount": 5}})
    await post(agent, payload(alert("MCPColdStartSlow", status="resolved")))
    await settle(agent)
    so = scaledobject(cluster, "mcp-scale-to-zero")
    assert so["spec"]["minReplicaCount"] == 5
    assert "scaling-agent.cortex.io/claims" not in so["metadata"]["annotations"]
    assert "changed by someone else" in (await agent.ledger.decisions())[-1].reason


async def test_notifications_acknowledged_before_a_crash_are_processed_at_start(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    config = build_config(base_config)
    ledger = SqliteLedger(config.ledger.url)
    await ledger.open()
    # The webhook stored a notification (200 sent); the worker unpacked it, and the process died before it
    # processed the event ...
    other = json.dumps(payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-filesystem-scaler"})))
    delivery_id = await ledger.receive(source="alertmanager", body=other.encode(), received_at=utcnow())
    [delivery] = await ledger.pending_deliveries(limit=10)
    await ledger.unpack([(delivery_id, decode(delivery))])
    # ... then it stored another notification (200 sent) and died before the worker unpacked it.
    body = json.dumps(payload(alert("MCPFrequentScaling", FREQUENT))).encode()
    await ledger.receive(source="alertmanager", body=body, received_at=utcnow())
    await ledger.close()

    agent = await start_agent(config)
    await settle(agent)
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "3"
    assert PAUSED in annotations(cluster, "mcp-filesystem-scaler")
    assert await agent.ledger.pending() == []
    assert await agent.ledger.pending_deliveries(limit=10) == []


async def test_a_stored_delivery_that_cannot_be_decoded_is_a_recorded_failure_not_a_stuck_inbox(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    config = build_config(base_config)
    ledger = SqliteLedger(config.ledger.url)
    await ledger.open()
    # Stored by a newer agent, say, and read after a downgrade.
    await ledger.receive(source="alertmanager", body=b'{"version": "5"}', received_at=utcnow())
    good = json.dumps(payload(alert("MCPFrequentScaling", FREQUENT))).encode()
    await ledger.receive(source="alertmanager", body=good, received_at=utcnow())
    await ledger.close()

    agent = await start_agent(config)
    await settle(agent)
    decisions = await agent.ledger.decisions()
    assert [(d.action, d.outcome) for d in decisions] == [("decode", Outcome.FAILED), ("pause", Outcome.APPLIED)]
    assert "delivery #1 could not be decoded" in decisions[0].reason
    assert await agent.ledger.pending_deliveries(limit=10) == []


async def test_resume_that_does_not_take_is_recorded_and_posted(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    agent = await start_agent(build_config(base_config, kubernetes={"resume_check_after": "0s"}))
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT, status="resolved")))
    await settle(agent)
    # KEDA keeps reporting Paused=True although the annotation is gone.
    cluster.put_status(
        "scaledobjects",
        NS,
        "mcp-http-scaler",
        {
            "conditions": [
                {
                    "type": "Paused",
                    "status": "True",
                    "reason": "ScaledObjectPaused",
                    "lastTransitionTime": (utcnow() - timedelta(minutes=5)).isoformat(),
                }
            ]
        },
    )
    decisions = await agent.reconciler.reconcile_once()
    await settle(agent)
    [check] = [d for d in decisions if d.action == "resume-check"]
    assert check.outcome == Outcome.FAILED and "still Paused=True" in check.reason
    assert "scaling-agent.cortex.io/resumed" not in annotations(cluster, "mcp-http-scaler")
    console = agent.sinks[0].stream  # type: ignore[attr-defined]
    assert "still Paused=True" in console.text
    # Checked once, reported once.
    assert [d for d in await agent.reconciler.reconcile_once() if d.action == "resume-check"] == []


async def test_resume_that_takes_clears_its_mark_quietly(cluster: DevCluster, start_agent: StartAgent) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT, status="resolved")))
    await settle(agent)
    cluster.put_status("scaledobjects", NS, "mcp-http-scaler", {"conditions": [{"type": "Paused", "status": "False"}]})
    assert await agent.reconciler.reconcile_once() == []
    assert "scaling-agent.cortex.io/resumed" not in annotations(cluster, "mcp-http-scaler")


async def test_dry_run_reports_an_expired_change_once(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    config = short_pause(base_config, "0s")
    first = await start_agent(config)
    await post(first, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(first)
    await first.stop()
    watcher = await start_agent(config, dry_run=True)  # its start-up pass reports the expiry
    await watcher.reconciler.reconcile_once()
    await watcher.reconciler.reconcile_once()
    reverts = [d for d in await watcher.ledger.decisions() if d.action == "revert"]
    assert [d.outcome for d in reverts] == [Outcome.DRY_RUN]
    assert annotations(cluster, "mcp-http-scaler")[PAUSED] == "3"  # dry-run patched nothing


async def test_an_object_can_opt_out_and_still_gets_the_agents_changes_back(
    cluster: DevCluster, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT)))
    await settle(agent)
    set_annotations(cluster, "mcp-http-scaler", {"scaling-agent.cortex.io/ignore": "true"})
    await post(agent, payload(alert("MCPColdStartSlow")))  # another object: unaffected
    await post(agent, payload(alert("MCPAtMaximumScale", {"namespace": NS, "deployment": "mcp-http-server"})))
    await post(agent, payload(alert("MCPFrequentScaling", FREQUENT, status="resolved")))
    await settle(agent)
    refused = [d for d in await agent.ledger.decisions() if d.outcome == Outcome.REFUSED]
    assert [d.target.name for d in refused if d.target] == ["mcp-http-scaler"]
    assert "opts out" in refused[0].reason
    assert scaledobject(cluster, "mcp-http-scaler")["spec"]["maxReplicaCount"] == 20  # not raised
    assert scaledobject(cluster, "mcp-http-triggers")["spec"]["maxReplicaCount"] == 35  # its sibling was
    assert PAUSED not in annotations(cluster, "mcp-http-scaler")  # its own pause was still given back
    assert scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 1


async def test_a_give_back_names_who_changed_the_field_behind_the_agent(
    cluster: DevCluster, start_agent: StartAgent, api: Any
) -> None:
    from kubernetes_asyncio import client

    agent = await start_agent()
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    # A person raises the floor with kubectl edit while the agent holds it: the API server records the manager.
    await client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "keda.sh", "v1alpha1", NS, "scaledobjects", "mcp-scale-to-zero", {"spec": {"minReplicaCount": 4}},
        _content_type="application/merge-patch+json", field_manager="kubectl-edit",
    )  # fmt: skip
    managers = {e["manager"] for e in scaledobject(cluster, "mcp-scale-to-zero")["metadata"]["managedFields"]}
    assert {"scaling-agent", "kubectl-edit"} <= managers
    await post(agent, payload(alert("MCPColdStartSlow", status="resolved")))
    await settle(agent)
    assert scaledobject(cluster, "mcp-scale-to-zero")["spec"]["minReplicaCount"] == 4  # left as the person set it
    reason = (await agent.ledger.decisions())[-1].reason
    assert (
        "min-replicas was changed by kubectl-edit (a person, through kubectl) since (now 4, the agent set 1)" in reason
    )


def test_the_last_manager_of_a_field_is_read_from_managed_fields() -> None:
    from agent.targets.base import describe_manager, last_manager

    managed = [
        {"manager": "scaling-agent", "time": "2026-12-06T08:00:00Z", "fieldsV1": {"f:spec": {"f:minReplicaCount": {}}}},
        {
            "manager": "argocd-controller",
            "time": "2026-12-06T08:05:00Z",
            "fieldsV1": {"f:spec": {"f:minReplicaCount": {}}},
        },
        {"manager": "kubectl-edit", "time": "2026-12-06T08:01:00Z", "fieldsV1": {"f:spec": {"f:maxReplicaCount": {}}}},
    ]
    assert last_manager(managed, ("spec", "minReplicaCount")) == "argocd-controller"
    assert last_manager(managed, ("spec", "maxReplicaCount")) == "kubectl-edit"
    assert last_manager(managed, ("metadata", "annotations", "autoscaling.keda.sh/paused-replicas")) is None
    assert describe_manager("argocd-controller") == "argocd-controller (Argo CD, syncing or self-healing the object)"
    assert describe_manager("kustomize-controller") == "kustomize-controller (Flux, reconciling the object)"
    assert describe_manager("my-operator") == "my-operator"


async def test_a_stop_leaves_no_decided_event_to_run_again(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    # A stop (SIGTERM) lets the events in hand finish and their processed marks land (lanes do not wait for
    # those), and takes no new one: not even one the unpacker queues meanwhile, which a lane once took and was
    # cancelled in, decided but never marked.
    config = build_config(base_config)
    agent = await start_agent(config, dry_run=True)
    for i in range(24):
        labels = {**FREQUENT, "instance": f"pod-{i}"}  # distinct alerts, spread over the lanes
        assert (await post(agent, payload(alert("MCPFrequentScaling", labels)))).status == 200
    await agent.stop()  # at once: some events decided, some still queued for the next start

    reader = SqliteLedger(config.ledger.url, readonly=True)
    await reader.open()
    try:
        decided = {d.trigger.event_key for d in await reader.decisions()}
        pending = {entry.event.key for entry in await reader.pending()}
    finally:
        await reader.close()
    assert decided, "nothing was decided before the stop: the test proves nothing"
    assert not decided & pending
