"""
Each target kind, through the real client against the emulated API: a plain HPA, KEDA's own HPA (refused),
Deployments and StatefulSets nothing autoscales (through `scale`), Nodes (cordon and taint); and a workload found
through whichever kind scales it (`kind: auto`). Each kind reads from its watch-backed cache: a change made behind
the agent reaches the next decision through the watch, not a GET.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

from agent.claims import ANNOTATION as CLAIMS
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.structs import Decision, Outcome, TargetRef
from agent.targets.node import TAINT_KEY
from tests.conftest import NS, StartAgent, build_config, claims_on, post, settle

HPA_SERVER = "mcp-search-server"  # a plain HPA scales it
PLAIN = "mcp-docs-server"  # nothing autoscales it
STATEFUL = "mcp-vector-store"  # a StatefulSet nothing autoscales
NODE = "spot-node-1"
SOMEONES_TAINT = {"key": "dedicated", "value": "mcp", "effect": "NoSchedule"}


def deployment(name: str, replicas: int, kind: str = "Deployment") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
        "status": {"replicas": replicas},
    }


def hpa(
    name: str, target: str, *, owner: str | None = None, min_replicas: int = 2, replicas: int = 4
) -> dict[str, Any]:
    """A plain HPA scaling the Deployment ``target`` (``owner``: the ScaledObject of KEDA's own HPA)."""
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "name": owner}]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min_replicas,
            "maxReplicas": 10,
        },
        "status": {"currentReplicas": replicas, "desiredReplicas": replicas},
    }


@pytest.fixture()
def objects(cluster: DevCluster) -> DevCluster:
    cluster.add(deployment(HPA_SERVER, 4))
    cluster.add(hpa("mcp-search", HPA_SERVER))
    cluster.add(deployment(PLAIN, 2))
    cluster.add(deployment(STATEFUL, 3, kind="StatefulSet"))
    # KEDA's HPA for mcp-keda (which scales mcp-server), as KEDA makes it.
    cluster.add(hpa("keda-hpa-mcp-keda", "mcp-server", owner="mcp-keda"))
    cluster.add(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"node.kubernetes.io/lifecycle": "spot"}},
            "spec": {"taints": [SOMEONES_TAINT]},
        }
    )
    return cluster


def rule(alertname: str, action: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"name": alertname.lower(), "alertname": alertname, "action": action, "target": {"kind": kind}}


RULES = [
    rule("Floor6", {"type": "set_min", "params": {"replicas": 6}}, "auto"),
    rule("Flapping", {"type": "pause"}, "auto"),
    rule("Cap1", {"type": "set_max", "params": {"replicas": 1, "revert_on_resolve": True}}, "auto"),
    rule("Raise", {"type": "raise_max", "params": {"step": 2}}, "auto"),
    rule("HpaDirect", {"type": "set_min", "params": {"replicas": 3}}, "HorizontalPodAutoscaler"),
    rule("ReplicasDirect", {"type": "set_min", "params": {"replicas": 5}}, "Deployment"),
    rule("NodeFailing", {"type": "cordon"}, "Node"),
]


@pytest.fixture()
def config(base_config: dict[str, Any]) -> Any:
    return build_config(base_config, guard={"cooldown": "0s"}, rules=RULES)


async def step(agent: Any, alertname: str, labels: dict[str, str], status: str = "firing") -> Decision:
    before = len(await agent.ledger.decisions())
    await post(agent, payload(alert(alertname, labels, status=status)))
    await settle(agent)
    decisions = await agent.ledger.decisions()
    assert len(decisions) == before + 1, [d.summary() for d in decisions[before:]]
    return decisions[-1]


def ref(kind: str, name: str) -> TargetRef:
    return TargetRef(kind, "" if kind == "Node" else NS, name)


WITHIN = 20.0


async def until(check: Callable[[], Any], what: str) -> None:
    """Wait (bounded) until ``check()`` (a coroutine function) answers true."""

    async def wait() -> None:
        while not await check():  # noqa: ASYNC110 -- polling the cache, bounded by wait_for
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(wait(), WITHIN)
    except TimeoutError:
        raise AssertionError(f"not within {WITHIN}s: {what}") from None


async def ready(agent: Any) -> None:
    """Every kind's caches have listed once: from here on decisions read them."""

    async def listed() -> bool:
        return all(kind.ready for kind in agent.targets.values())

    await until(listed, "the caches to list")


def gets(cluster: DevCluster, name: str) -> list[Any]:
    """The GETs of one object (reads by name; not lists, not watches) the emulator answered so far."""
    return [r for r in cluster if r.method.value == "GET" and r.name == name and r.params.get("watch") is None]


# --- a workload is found through whichever kind scales it ----------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "found", "how"),
    [
        (
            {"deployment": "mcp-server"},
            ref("ScaledObject", "mcp-keda"),
            "the ScaledObject scaling Deployment mcp-server",
        ),
        (
            {"deployment": HPA_SERVER},
            ref("HorizontalPodAutoscaler", "mcp-search"),
            f"the HorizontalPodAutoscaler scaling Deployment {HPA_SERVER}",
        ),
        ({"deployment": PLAIN}, ref("Deployment", PLAIN), f"Deployment {PLAIN} itself: nothing autoscales it"),
        ({"statefulset": STATEFUL}, ref("StatefulSet", STATEFUL), f"StatefulSet {STATEFUL} itself"),
    ],
    ids=["scaledobject", "hpa", "deployment", "statefulset"],
)
async def test_a_workload_is_changed_through_whichever_kind_scales_it(
    objects: DevCluster, start_agent: StartAgent, config: Any, labels: dict[str, str], found: TargetRef, how: str
) -> None:
    agent = await start_agent(config)
    decision = await step(agent, "Floor6", {"namespace": NS, **labels})
    assert decision.target == found and decision.outcome == Outcome.APPLIED, decision.summary()
    refs, reason = await agent.rules.resolve(agent.config.rules[0].target, {"namespace": NS, **labels})
    assert refs == [found] and how in reason
    assert claims_on(objects, found.name, plural=found.kind.lower() + "s").claims[0].value == 6


async def test_keda_owns_its_hpa_and_a_replica_count_an_hpa_sets_is_the_hpas(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    keda = await step(agent, "HpaDirect", {"namespace": NS, "horizontalpodautoscaler": "keda-hpa-mcp-keda"})
    assert keda.outcome == Outcome.REFUSED
    assert "is set by ScaledObject/cortex-mcp/mcp-keda (KEDA owns this HPA)" in keda.reason
    direct = await step(agent, "ReplicasDirect", {"namespace": NS, "deployment": HPA_SERVER})
    assert direct.outcome == Outcome.REFUSED
    assert "is set by HorizontalPodAutoscaler/cortex-mcp/mcp-search, which would undo the change" in direct.reason
    assert objects.get("horizontalpodautoscalers", NS, "keda-hpa-mcp-keda")["spec"]["minReplicas"] == 2
    assert objects.get("deployments", NS, HPA_SERVER)["spec"]["replicas"] == 4


# --- each kind ---------------------------------------------------------------------------------------------------


async def test_a_plain_hpa_takes_a_floor_and_a_pause_holds_min_equal_to_max(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    labels = {"namespace": NS, "deployment": HPA_SERVER}

    def bounds() -> tuple[int, int]:
        spec = objects.get("horizontalpodautoscalers", NS, "mcp-search")["spec"]
        return spec["minReplicas"], spec["maxReplicas"]

    await step(agent, "Floor6", labels)
    assert bounds() == (6, 10)
    pause = await step(agent, "Flapping", labels)  # it runs 4; the floor of 6 is higher: held at 6
    assert pause.outcome == Outcome.APPLIED and bounds() == (6, 6)
    assert dict(pause.after) == {"max-replicas": 6}
    await step(agent, "Floor6", labels, "resolved")
    assert bounds() == (4, 4)  # the pause alone: at the count it ran
    resumed = await step(agent, "Flapping", labels, "resolved")
    assert resumed.outcome == Outcome.APPLIED and bounds() == (2, 10)
    assert CLAIMS not in (
        objects.get("horizontalpodautoscalers", NS, "mcp-search")["metadata"].get("annotations") or {}
    )


async def test_a_deployment_nothing_autoscales_is_scaled_through_its_scale_subresource(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    labels = {"namespace": NS, "deployment": PLAIN}
    floor = await step(agent, "Floor6", labels)
    assert (dict(floor.before), dict(floor.after)) == ({"replicas": 2}, {"replicas": 6})
    assert objects.get("deployments", NS, PLAIN)["spec"]["replicas"] == 6
    writes = [(w.method, w.plural, w.subresource) for w in objects.writes if w.name == PLAIN]
    assert ("PATCH", "deployments", "scale") in writes  # the count only ever through `scale`
    assert not any("replicas" in (w.body.get("spec") or {}) for w in objects.writes if w.subresource is None)

    pause = await step(agent, "Flapping", labels)
    assert pause.outcome == Outcome.REFUSED
    assert "nothing autoscales it, so there is nothing to pause" in pause.reason
    raised = await step(agent, "Raise", labels)
    assert raised.outcome == Outcome.REFUSED and "no ceiling to raise" in raised.reason

    await step(agent, "Floor6", labels, "resolved")
    assert objects.get("deployments", NS, PLAIN)["spec"]["replicas"] == 2
    assert CLAIMS not in (objects.get("deployments", NS, PLAIN)["metadata"].get("annotations") or {})


async def test_a_statefulset_takes_a_cap_through_its_scale_subresource(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    labels = {"namespace": NS, "statefulset": STATEFUL}
    cap = await step(agent, "Cap1", labels)
    assert cap.target == ref("StatefulSet", STATEFUL) and dict(cap.after) == {"replicas": 1}
    assert objects.get("statefulsets", NS, STATEFUL)["spec"]["replicas"] == 1
    await step(agent, "Cap1", labels, "resolved")
    assert objects.get("statefulsets", NS, STATEFUL)["spec"]["replicas"] == 3


async def test_a_node_is_cordoned_and_tainted_and_given_back_leaving_other_taints(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    cordon = await step(agent, "NodeFailing", {"node": NODE})
    assert cordon.target == ref("Node", NODE) and cordon.outcome == Outcome.APPLIED
    assert dict(cordon.after) == {"taint": True, "unschedulable": True}
    node = objects.get("nodes", None, NODE)
    assert node["spec"]["unschedulable"] is True
    assert node["spec"]["taints"] == [SOMEONES_TAINT, {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert str(cordon.target) == f"Node/{NODE}"
    # Its Event goes to `default`, where `kubectl describe node` looks.
    events = [w for w in objects.writes if w.plural == "events"]
    assert events and all(w.namespace == "default" for w in events)

    back = await step(agent, "NodeFailing", {"node": NODE}, "resolved")
    assert back.outcome == Outcome.APPLIED
    node = objects.get("nodes", None, NODE)
    assert not node["spec"].get("unschedulable") and node["spec"]["taints"] == [SOMEONES_TAINT]

    # `scaling-agent decisions` finds a Node's decisions by its name alone (it has no namespace).
    cli = "import sys; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
    ledger = agent.config.ledger.url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        cli,
        "decisions",
        "--ledger",
        ledger,
        "--kind",
        "Node",
        "--target",
        NODE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().count(f"Node/{NODE}") == 2 and b"(2 decisions)" in err


async def test_a_node_someone_else_cordoned_stays_cordoned(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    objects.change("nodes", None, NODE, {"spec": {"unschedulable": True}})
    agent = await start_agent(config)
    cordon = await step(agent, "NodeFailing", {"node": NODE})
    assert dict(cordon.after) == {"taint": True}  # the cordon was there already: only the taint is the agent's
    await step(agent, "NodeFailing", {"node": NODE}, "resolved")
    node = objects.get("nodes", None, NODE)
    assert node["spec"]["unschedulable"] is True and node["spec"]["taints"] == [SOMEONES_TAINT]


async def test_a_replica_claim_on_a_node_is_refused_by_the_guard(
    objects: DevCluster, start_agent: StartAgent, base_config: dict[str, Any]
) -> None:
    rules = [rule("NodeFloor", {"type": "set_min", "params": {"replicas": 2}}, "Node")]
    agent = await start_agent(build_config(base_config, rules=rules))
    decision = await step(agent, "NodeFloor", {"node": NODE})
    assert decision.outcome == Outcome.REFUSED and decision.reason.startswith("Node: a Node has no replica count")


async def test_an_unknown_node_is_a_recorded_failure_naming_it_and_api_faults_come_out_typed(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    unknown = await step(agent, "NodeFailing", {"node": "no-such-node"})
    assert (unknown.outcome, unknown.reason) == (Outcome.FAILED, "Node/no-such-node not found")
    assert unknown.target == ref("Node", "no-such-node")
    # A Node is read as plain JSON; a server error is retried like any other read, then recorded. Reads come from
    # the cache: a 409 makes the next read go to the API, which then fails.
    await ready(agent)
    objects.fail(method="PATCH", plural="nodes", status=409, times=1)
    objects.fail(method="GET", plural="nodes", status=503, times=10)
    unavailable = await step(agent, "NodeFailing", {"node": NODE})
    assert (unavailable.outcome, unavailable.reason) == (Outcome.FAILED, "Kubernetes API unreachable")
    assert "503" in (unavailable.error or "")


# --- each kind reads its cache -------------------------------------------------------------------------------


async def test_an_hpa_changed_behind_the_agent_is_read_from_the_cache(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    await ready(agent)
    kind = agent.targets["HorizontalPodAutoscaler"]
    objects.change("horizontalpodautoscalers", NS, "mcp-search", {"spec": {"maxReplicas": 15}})

    async def seen() -> bool:
        return (await kind.get(NS, "mcp-search")).values["max-replicas"] == 15

    read = len(gets(objects, "mcp-search"))
    await until(seen, "the change to reach the cache")
    raised = await step(agent, "Raise", {"namespace": NS, "deployment": HPA_SERVER})
    assert raised.target == ref("HorizontalPodAutoscaler", "mcp-search")
    assert (dict(raised.before), dict(raised.after)) == ({"max-replicas": 15}, {"max-replicas": 17})
    assert len(gets(objects, "mcp-search")) == read  # found and read through the cache: no GET


async def test_a_workload_changed_behind_the_agent_is_read_from_the_cache(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    await ready(agent)
    kind = agent.targets["Deployment"]
    objects.change("deployments", NS, PLAIN, {"spec": {"replicas": 3}})

    async def seen() -> bool:
        return (await kind.get(NS, PLAIN)).values["replicas"] == 3

    await until(seen, "the change to reach the cache")
    before = len(list(objects))
    floor = await step(agent, "Floor6", {"namespace": NS, "deployment": PLAIN})
    assert (dict(floor.before), dict(floor.after)) == ({"replicas": 3}, {"replicas": 6})
    # The decision read the cache. Two GETs: the pricer's read of the pod template (its requests price the change,
    # once per cost.cache), and the write's own, after `scale`, for the count it left.
    during = list(objects)[before:]
    read = [i for i, r in enumerate(during) if r in gets(objects, PLAIN)]
    scaled = [i for i, r in enumerate(during) if r.method.value == "PATCH" and r.subresource == "scale"]
    assert len(read) == 2 and len(scaled) == 1 and read[0] < scaled[0] < read[1]
    assert floor.cost is not None and floor.cost.replicas_delta == 3
    # What the write answered is in the cache: the next decision reads the new count without a GET.
    assert (await kind.get(NS, PLAIN)).values["replicas"] == 6
    assert len(gets(objects, PLAIN)) == len(read) + len(gets(list(objects)[:before], PLAIN))


async def test_an_hpa_made_for_a_workload_behind_the_agent_is_seen_from_the_cache(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    await ready(agent)
    kind = agent.targets["Deployment"]
    objects.add(hpa("mcp-docs", PLAIN))  # now an HPA scales the Deployment nothing autoscaled

    async def seen() -> bool:
        return (await kind.get(NS, PLAIN)).scaled_by is not None

    await until(seen, "the new HPA to reach the workload's cache")
    before = len(list(objects))
    refused = await step(agent, "ReplicasDirect", {"namespace": NS, "deployment": PLAIN})
    assert refused.outcome == Outcome.REFUSED
    assert f"is set by HorizontalPodAutoscaler/{NS}/mcp-docs, which would undo the change" in refused.reason
    # Neither the workload nor the HPAs were read from the API: no GET, no list.
    assert [r for r in list(objects)[before:] if r.method.value == "GET" and r.params.get("watch") is None] == []


async def test_a_node_changed_behind_the_agent_is_read_from_the_cache(
    objects: DevCluster, start_agent: StartAgent, config: Any
) -> None:
    agent = await start_agent(config)
    await ready(agent)
    kind = agent.targets["Node"]
    objects.change("nodes", None, NODE, {"spec": {"unschedulable": True}})  # someone cordons it

    async def seen() -> bool:
        return (await kind.get("", NODE)).values["unschedulable"] is True

    read = len(gets(objects, NODE))
    await until(seen, "the change to reach the cache")
    cordon = await step(agent, "NodeFailing", {"node": NODE})
    assert dict(cordon.after) == {"taint": True}  # the cordon was someone else's: only the taint is the agent's
    assert len(gets(objects, NODE)) == read
    back = await step(agent, "NodeFailing", {"node": NODE}, "resolved")  # the patch's answer was cached
    assert dict(back.after) == {"taint": False} and len(gets(objects, NODE)) == read
    assert objects.get("nodes", None, NODE)["spec"]["taints"] == [SOMEONES_TAINT]
