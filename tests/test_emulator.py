"""
The emulated API server (agent.devcluster) answers as a real one, through the real kubernetes-asyncio client: the
scale subresource of Deployments and StatefulSets, label and field selectors, Nodes and HorizontalPodAutoscalers,
watches (a list's resourceVersion, resuming from it, 410 Gone, bookmarks, dropped connections), and
PodDisruptionBudgets with the Pods' eviction subresource.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml
from kubernetes_asyncio import client, watch

from agent.devcluster import PLURALS, RESOURCES, DevCluster, Write
from tests.conftest import NS

WAIT = 5.0  # seconds: every wait on the emulator is bounded by this


def manager_of(obj: dict[str, Any], *path: str) -> set[str]:
    """The managers whose managedFields entry holds the field at ``path`` (``"spec", "replicas"``)."""
    managers = set()
    for entry in obj["metadata"].get("managedFields") or []:
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, dict) else None
        if node is not None:
            managers.add(entry["manager"])
    return managers


def statefulset(name: str = "cache", *, replicas: int | None = 2, ready: int | None = 2) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceName": name,
        "selector": {
            "matchLabels": {"app": name},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["db", "cache"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        },
        "template": {
            "metadata": {"labels": {"app": name, "tier": "cache"}},
            "spec": {"containers": [{"name": name, "image": "redis:7"}]},
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": spec,
    }
    if ready is not None:
        body["status"] = {"replicas": ready, "readyReplicas": ready}
    return body


def hpa(name: str = "web", *, namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 2,
            "maxReplicas": 10,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
        "status": {"currentReplicas": 2, "desiredReplicas": 2},
    }


def node(name: str, *, unschedulable: bool | None = None, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if unschedulable is not None:
        spec["unschedulable"] = unschedulable
    if taints is not None:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "pool": "general"}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(
    name: str,
    node_name: str | None,
    *,
    namespace: str = NS,
    app: str = "mcp-server",
    ready: bool | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "example/app:1"}]}
    if node_name is not None:
        spec["nodeName"] = node_name
    status: dict[str, Any] = {"phase": phase or ("Running" if node_name else "Pending")}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": spec,
        "status": status,
    }


# --- resources ------------------------------------------------------------------------------------------------


async def test_new_resources_are_stored_and_each_plural_finds_its_own(cluster: DevCluster) -> None:
    assert len(PLURALS) == len(RESOURCES)  # one resource a plural, so get("deployments", ...) is unambiguous
    cluster.add(statefulset("mcp-server"))  # the same name as the example Deployment, another kind
    cluster.add(hpa("mcp-server"))
    cluster.add(node("node-1"))
    assert cluster.get("deployments", NS, "mcp-server")["kind"] == "Deployment"
    assert cluster.get("statefulsets", NS, "mcp-server")["kind"] == "StatefulSet"
    assert cluster.get("horizontalpodautoscalers", NS, "mcp-server")["kind"] == "HorizontalPodAutoscaler"
    assert cluster.get("nodes", None, "node-1")["kind"] == "Node"
    cluster.put_status("horizontalpodautoscalers", NS, "mcp-server", {"currentReplicas": 4, "desiredReplicas": 5})
    assert cluster.get("horizontalpodautoscalers", NS, "mcp-server")["status"]["desiredReplicas"] == 5
    cluster.put_status("statefulsets", NS, "mcp-server", {"replicas": 1})
    assert cluster.get("statefulsets", NS, "mcp-server")["status"]["replicas"] == 1


async def test_load_takes_statefulsets_and_hpas_from_yaml(cluster: DevCluster, tmp_path: Path) -> None:
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all([statefulset("queue"), hpa("queue"), {"apiVersion": "v1", "kind": "Service"}]))
    added = cluster.load([path])
    assert [obj["kind"] for obj in added] == ["StatefulSet", "HorizontalPodAutoscaler"]
    assert cluster.get("statefulsets", NS, "queue")["metadata"]["resourceVersion"]
    assert cluster.get("horizontalpodautoscalers", NS, "queue")["spec"]["maxReplicas"] == 10


# --- the scale subresource ------------------------------------------------------------------------------------


async def test_deployment_scale_is_a_scale_object_not_the_deployment(
    cluster: DevCluster, api: client.ApiClient
) -> None:
    deployment = cluster.get("deployments", NS, "mcp-server")
    scale = await client.AppsV1Api(api).read_namespaced_deployment_scale("mcp-server", NS)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.metadata.name == "mcp-server" and scale.metadata.namespace == NS
    assert scale.metadata.uid == deployment["metadata"]["uid"]
    assert scale.metadata.resource_version == deployment["metadata"]["resourceVersion"]
    assert scale.spec.replicas == deployment["spec"]["replicas"]
    assert scale.status.replicas == deployment["status"]["replicas"]
    assert scale.status.selector == "app=mcp-server"


async def test_scale_patch_writes_only_the_parents_replicas(cluster: DevCluster, api: client.ApiClient) -> None:
    before = copy.deepcopy(cluster.get("deployments", NS, "mcp-server"))
    apps = client.AppsV1Api(api)
    scale = await apps.patch_namespaced_deployment_scale("mcp-server", NS, {"spec": {"replicas": 7}})
    after = cluster.get("deployments", NS, "mcp-server")
    assert scale.kind == "Scale" and scale.spec.replicas == 7
    assert scale.metadata.resource_version == after["metadata"]["resourceVersion"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["spec"] == {**before["spec"], "replicas": 7}  # nothing of the Scale body merged into the parent
    assert after["kind"] == "Deployment" and after["status"] == before["status"]
    assert "selector" not in after["status"]
    # kubernetes-asyncio sends a dict body as a strategic merge patch
    patches = [r for r in cluster if r.method.value == "PATCH" and r.subresource == "scale"]
    assert patches[-1].headers["Content-Type"] == "application/strategic-merge-patch+json"
    # and an explicit merge patch works the same
    await apps.patch_namespaced_deployment_scale(
        "mcp-server", NS, {"spec": {"replicas": 4}}, _content_type="application/merge-patch+json"
    )
    assert cluster.get("deployments", NS, "mcp-server")["spec"]["replicas"] == 4
    assert (await apps.read_namespaced_deployment_scale("mcp-server", NS)).spec.replicas == 4


async def test_scale_write_is_recorded_with_its_manager(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    # kubectl-edit owns spec.replicas (and more) through the Deployment itself
    await apps.patch_namespaced_deployment(
        "mcp-server", NS, {"spec": {"replicas": 3, "minReadySeconds": 5}}, field_manager="kubectl-edit"
    )
    assert manager_of(cluster.get("deployments", NS, "mcp-server"), "spec", "replicas") == {"kubectl-edit"}
    await apps.patch_namespaced_deployment_scale(
        "mcp-server", NS, {"spec": {"replicas": 6}}, field_manager="keda-operator"
    )
    deployment = cluster.get("deployments", NS, "mcp-server")
    assert manager_of(deployment, "spec", "replicas") == {"keda-operator"}  # taken from kubectl-edit
    assert manager_of(deployment, "spec", "minReadySeconds") == {"kubectl-edit"}  # the rest stays its own
    entry = next(e for e in deployment["metadata"]["managedFields"] if e["manager"] == "keda-operator")
    assert entry["subresource"] == "scale" and entry["operation"] == "Update"
    assert cluster.writes[-1] == Write("PATCH", "deployments", NS, "mcp-server", {"spec": {"replicas": 6}}, "scale")
    # without a fieldManager the User-Agent's first word manages
    await apps.patch_namespaced_deployment_scale("mcp-server", NS, {"spec": {"replicas": 2}})
    deployment = cluster.get("deployments", NS, "mcp-server")
    assert manager_of(deployment, "spec", "replicas") == {"OpenAPI-Generator"}


async def test_scale_with_a_stale_resource_version_is_a_conflict(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    scale = await apps.read_namespaced_deployment_scale("mcp-server", NS)
    stale = scale.metadata.resource_version
    await apps.patch_namespaced_deployment_scale("mcp-server", NS, {"spec": {"replicas": 5}})  # someone else
    writes = len(cluster.writes)
    with pytest.raises(client.ApiException) as refused:
        body = {"metadata": {"resourceVersion": stale}, "spec": {"replicas": 9}}
        await apps.patch_namespaced_deployment_scale("mcp-server", NS, body)
    assert refused.value.status == 409
    assert cluster.get("deployments", NS, "mcp-server")["spec"]["replicas"] == 5
    assert len(cluster.writes) == writes  # a refused write is not among the accepted ones
    # the same through a PUT of the whole Scale
    scale.spec.replicas = 9
    with pytest.raises(client.ApiException) as refused:
        await apps.replace_namespaced_deployment_scale("mcp-server", NS, scale)
    assert refused.value.status == 409
    # with the current resourceVersion it lands
    current = cluster.get("deployments", NS, "mcp-server")["metadata"]["resourceVersion"]
    body = {"metadata": {"resourceVersion": current}, "spec": {"replicas": 9}}
    scale = await apps.patch_namespaced_deployment_scale("mcp-server", NS, body)
    assert scale.spec.replicas == 9 and scale.metadata.resource_version != current


async def test_scale_of_a_missing_parent_is_not_found(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    calls = [
        apps.read_namespaced_deployment_scale("no-such-deployment", NS),
        apps.patch_namespaced_deployment_scale("no-such-deployment", NS, {"spec": {"replicas": 1}}),
        apps.read_namespaced_stateful_set_scale("no-such-statefulset", NS),
        apps.patch_namespaced_stateful_set_scale("mcp-server", NS, {"spec": {"replicas": 1}}),  # a Deployment's name
    ]
    for call in calls:
        with pytest.raises(client.ApiException) as missing:
            await call
        assert missing.value.status == 404
    assert not [w for w in cluster.writes if w.subresource == "scale"]
    assert ("apps/v1/statefulsets", NS, "no-such-deployment") not in cluster.objects


async def test_statefulset_scale_reads_patches_and_replaces(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(statefulset("cache", replicas=2, ready=1))
    apps = client.AppsV1Api(api)
    scale = await apps.read_namespaced_stateful_set_scale("cache", NS)
    assert (scale.kind, scale.spec.replicas, scale.status.replicas) == ("Scale", 2, 1)
    assert scale.status.selector == "app=cache,!canary,tier in (cache,db)"  # sorted by key, as the server prints it
    scale = await apps.patch_namespaced_stateful_set_scale("cache", NS, {"spec": {"replicas": 4}}, field_manager="hpa")
    assert scale.spec.replicas == 4 and cluster.get("statefulsets", NS, "cache")["spec"]["replicas"] == 4
    scale.spec.replicas = 1
    scale = await apps.replace_namespaced_stateful_set_scale("cache", NS, scale, field_manager="kubectl-scale")
    stored = cluster.get("statefulsets", NS, "cache")
    assert scale.spec.replicas == 1 and stored["spec"]["replicas"] == 1
    assert stored["spec"]["serviceName"] == "cache" and stored["kind"] == "StatefulSet"
    assert manager_of(stored, "spec", "replicas") == {"kubectl-scale"}
    assert [(w.method, w.plural, w.subresource) for w in cluster.writes] == [
        ("PATCH", "statefulsets", "scale"),
        ("PUT", "statefulsets", "scale"),
    ]


async def test_scale_without_status_reads_zero_and_json_patch_works(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(statefulset("fresh", replicas=None, ready=None))
    apps = client.AppsV1Api(api)
    scale = await apps.read_namespaced_stateful_set_scale("fresh", NS)
    assert scale.spec.replicas == 1 and scale.status.replicas == 0  # the server's default, and no status yet
    patch = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 3},
    ]
    scale = await apps.patch_namespaced_stateful_set_scale("fresh", NS, patch)
    assert scale.spec.replicas == 3 and cluster.get("statefulsets", NS, "fresh")["spec"]["replicas"] == 3
    with pytest.raises(client.ApiException) as failed:  # the "test" no longer holds
        await apps.patch_namespaced_stateful_set_scale("fresh", NS, patch)
    assert failed.value.status == 422
    with pytest.raises(client.ApiException) as invalid:
        await apps.patch_namespaced_stateful_set_scale("fresh", NS, {"spec": {"replicas": -1}})
    assert invalid.value.status == 422
    assert cluster.get("statefulsets", NS, "fresh")["spec"]["replicas"] == 3


async def test_faults_reach_the_scale_subresource(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    cluster.fail(method="PATCH", plural="deployments/scale", status=503)
    with pytest.raises(client.ApiException) as refused:
        await apps.patch_namespaced_deployment_scale("mcp-server", NS, {"spec": {"replicas": 8}})
    assert refused.value.status == 503 and cluster.get("deployments", NS, "mcp-server")["spec"]["replicas"] == 3
    await apps.patch_namespaced_deployment("mcp-server", NS, {"metadata": {"labels": {"x": "y"}}})  # not scale
    cluster.fail(method="PATCH", plural="deployments", status=504, landed=True)
    with pytest.raises(client.ApiException) as lost:
        await apps.patch_namespaced_deployment_scale("mcp-server", NS, {"spec": {"replicas": 8}})
    assert lost.value.status == 504 and cluster.get("deployments", NS, "mcp-server")["spec"]["replicas"] == 8


async def test_a_scale_write_is_seen_by_a_watch_on_the_parent(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    async with watch.Watch() as watcher, asyncio.timeout(WAIT):
        stream = watcher.stream(apps.list_namespaced_deployment, NS, field_selector="metadata.name=mcp-server")
        first = await anext(stream)
        assert (first["type"], first["object"].metadata.name) == ("ADDED", "mcp-server")  # the only one selected
        await apps.patch_namespaced_deployment_scale("mcp-http-server", NS, {"spec": {"replicas": 9}})
        await apps.patch_namespaced_deployment_scale("mcp-server", NS, {"spec": {"replicas": 4}})
        event = await anext(stream)
    assert (event["type"], event["object"].metadata.name, event["object"].spec.replicas) == (
        "MODIFIED",
        "mcp-server",
        4,
    )


# --- selectors ------------------------------------------------------------------------------------------------


async def test_pods_are_selected_by_node_name(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("a-1", "node-1"))
    cluster.add(pod("a-2", "node-2"))
    cluster.add(pod("a-3", None))
    cluster.add(pod("b-1", "node-1", namespace="other", app="worker"))
    core = client.CoreV1Api(api)

    async def names(selector: str, namespace: str | None = NS, **kwargs: Any) -> list[str]:
        if namespace is None:
            found = await core.list_pod_for_all_namespaces(field_selector=selector, **kwargs)
        else:
            found = await core.list_namespaced_pod(namespace, field_selector=selector, **kwargs)
        return sorted(item.metadata.name for item in found.items)

    assert await names("spec.nodeName=node-1") == ["a-1"]
    assert await names("spec.nodeName=node-1", namespace=None) == ["a-1", "b-1"]
    assert await names("spec.nodeName==node-1,metadata.namespace=other", namespace=None) == ["b-1"]
    assert await names("spec.nodeName!=node-1") == ["a-2", "a-3"]
    assert await names("spec.nodeName=") == ["a-3"]  # not scheduled yet
    assert await names("status.phase=Running,metadata.name!=a-2") == ["a-1"]
    assert await names("spec.nodeName=node-1", namespace=None, label_selector="app=worker") == ["b-1"]
    with pytest.raises(client.ApiException) as refused:
        await names("spec.containers=app")  # a field the API server does not index
    assert refused.value.status == 400


async def test_nodes_are_selected_by_name_and_schedulability(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(node("node-1"))
    cluster.add(node("node-2", unschedulable=True))
    cluster.add(node("node-3", unschedulable=False))
    core = client.CoreV1Api(api)

    async def names(**kwargs: Any) -> list[str]:
        return sorted(item.metadata.name for item in (await core.list_node(**kwargs)).items)

    assert await names() == ["node-1", "node-2", "node-3"]
    assert await names(field_selector="metadata.name=node-2") == ["node-2"]
    assert await names(field_selector="spec.unschedulable!=true") == ["node-1", "node-3"]
    assert await names(field_selector="spec.unschedulable=false,metadata.name!=node-3") == ["node-1"]
    with pytest.raises(client.ApiException) as refused:
        await names(field_selector="metadata.namespace=default")  # a Node has no namespace to select on
    assert refused.value.status == 400


async def test_label_selectors_filter_every_list(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)

    async def names(selector: str) -> list[str]:
        return sorted(
            item.metadata.name for item in (await apps.list_namespaced_deployment(NS, label_selector=selector)).items
        )

    everything = await names("")
    assert "mcp-server" in everything and len(everything) > 2
    assert await names("app=mcp-server") == ["mcp-server"]
    assert await names("app==mcp-server") == ["mcp-server"]
    assert await names("app in (mcp-server,mcp-http-server)") == ["mcp-http-server", "mcp-server"]
    assert "mcp-server" not in await names("app!=mcp-server")
    assert "mcp-server" not in await names("app notin (mcp-server)")
    assert await names("!app") == sorted(set(everything) - set(await names("app")))
    assert await names("app=mcp-server,missing") == []
    with pytest.raises(client.ApiException) as refused:
        await names("app in ()")
    assert refused.value.status == 400


# --- nodes and HPAs -------------------------------------------------------------------------------------------


async def test_nodes_read_list_and_patch(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(node("node-1", taints=[{"key": "old", "effect": "NoSchedule"}]))
    core = client.CoreV1Api(api)
    read = await core.read_node("node-1")
    assert read.metadata.name == "node-1" and read.spec.taints[0].key == "old"
    version = read.metadata.resource_version
    # kubernetes-asyncio's default for a dict body: a strategic merge patch
    patched = await core.patch_node("node-1", {"spec": {"unschedulable": True}}, field_manager="drainer")
    assert patched.spec.unschedulable is True and patched.spec.taints[0].key == "old"
    assert int(patched.metadata.resource_version) > int(version)
    assert [r.headers["Content-Type"] for r in cluster if r.method.value == "PATCH"] == [
        "application/strategic-merge-patch+json"
    ]
    # a merge patch that sets the taints replaces the list
    taints = [{"key": "new", "value": "1", "effect": "NoExecute"}]
    patched = await core.patch_node(
        "node-1", {"spec": {"taints": taints}}, _content_type="application/merge-patch+json"
    )
    assert [(t.key, t.effect) for t in patched.spec.taints] == [("new", "NoExecute")]
    stored = cluster.get("nodes", None, "node-1")
    assert manager_of(stored, "spec", "unschedulable") == {"drainer"}
    assert manager_of(stored, "spec", "taints") == {"OpenAPI-Generator"}
    assert [(w.method, w.plural, w.namespace, w.name) for w in cluster.writes] == [
        ("PATCH", "nodes", None, "node-1")
    ] * 2
    with pytest.raises(client.ApiException) as conflict:
        await core.patch_node("node-1", {"metadata": {"resourceVersion": version}, "spec": {"unschedulable": False}})
    assert conflict.value.status == 409
    assert [n.metadata.name for n in (await core.list_node()).items] == ["node-1"]
    with pytest.raises(client.ApiException) as missing:
        await core.read_node("node-9")
    assert missing.value.status == 404


async def test_hpas_read_list_and_patch_with_a_field_manager(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(hpa("web"))
    cluster.add(hpa("api", namespace="other"))
    autoscaling = client.AutoscalingV2Api(api)
    read = await autoscaling.read_namespaced_horizontal_pod_autoscaler("web", NS)
    assert read.spec.max_replicas == 10 and read.spec.scale_target_ref.name == "web"
    listed = await autoscaling.list_namespaced_horizontal_pod_autoscaler(NS)
    assert [h.metadata.name for h in listed.items] == ["web"]
    everywhere = await autoscaling.list_horizontal_pod_autoscaler_for_all_namespaces(field_selector="metadata.name=api")
    assert [(h.metadata.namespace, h.metadata.name) for h in everywhere.items] == [("other", "api")]
    patched = await autoscaling.patch_namespaced_horizontal_pod_autoscaler(
        "web", NS, {"spec": {"minReplicas": 4}}, field_manager="scaling-agent"
    )
    assert patched.spec.min_replicas == 4 and patched.spec.max_replicas == 10
    assert int(patched.metadata.resource_version) > int(read.metadata.resource_version)
    stored = cluster.get("horizontalpodautoscalers", NS, "web")
    assert manager_of(stored, "spec", "minReplicas") == {"scaling-agent"}
    assert cluster.writes[-1].plural == "horizontalpodautoscalers" and cluster.writes[-1].subresource is None
    with pytest.raises(client.ApiException) as conflict:
        body = {"metadata": {"resourceVersion": read.metadata.resource_version}, "spec": {"minReplicas": 1}}
        await autoscaling.patch_namespaced_horizontal_pod_autoscaler("web", NS, body)
    assert conflict.value.status == 409
    assert cluster.get("horizontalpodautoscalers", NS, "web")["spec"]["minReplicas"] == 4


# --- watches: resourceVersion, resume, 410, bookmarks, drops ---------------------------------------------------

KEDA = ("keda.sh", "v1alpha1")


async def next_event(stream: watch.Watch) -> dict[str, Any]:
    event: dict[str, Any] = await asyncio.wait_for(anext(stream), WAIT)
    return event


def seen(event: dict[str, Any]) -> tuple[str, str, str]:
    """An event as (type, name, resourceVersion), from the raw object (a model or a dict alike)."""
    meta = event["raw_object"]["metadata"]
    return event["type"], meta.get("name", ""), meta["resourceVersion"]


def version_of(cluster: DevCluster, plural: str, namespace: str | None, name: str) -> str:
    return str(cluster.get(plural, namespace, name)["metadata"]["resourceVersion"])


def watch_requests(cluster: DevCluster, plural: str) -> list[Any]:
    return [r for r in cluster if r.action == kmock.action.WATCH and r.resource and r.resource.plural == plural]


async def test_a_list_answers_the_collections_resource_version(cluster: DevCluster, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    listed = await custom.list_namespaced_custom_object(*KEDA, NS, "scaledobjects")
    version = listed["metadata"]["resourceVersion"]
    assert listed["kind"] == "ScaledObjectList" and version == cluster.resource_version
    assert int(version) >= max(int(item["metadata"]["resourceVersion"]) for item in listed["items"])
    patched = await custom.patch_namespaced_custom_object(
        *KEDA, NS, "scaledobjects", "mcp-keda", {"spec": {"minReplicaCount": 2}}
    )
    listed = await custom.list_namespaced_custom_object(*KEDA, NS, "scaledobjects")
    assert listed["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"] == cluster.resource_version
    assert int(listed["metadata"]["resourceVersion"]) > int(version)
    # one counter for every kind, as etcd's revision: a change of a Pod moves every collection's version
    core = client.CoreV1Api(api)
    cluster.add(node("node-1"))
    assert (await core.list_node()).metadata.resource_version == version_of(cluster, "nodes", None, "node-1")
    cluster.add(pod("p-1", "node-1"))
    pods = version_of(cluster, "pods", NS, "p-1")
    assert (await core.list_namespaced_pod(NS)).metadata.resource_version == pods
    assert (await core.list_pod_for_all_namespaces()).metadata.resource_version == pods
    assert (await core.list_node()).metadata.resource_version == pods


async def test_a_watch_from_a_version_sends_only_the_changes_after_it(
    cluster: DevCluster, api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api)
    listed = await custom.list_namespaced_custom_object(*KEDA, NS, "scaledobjects")
    since = listed["metadata"]["resourceVersion"]
    await custom.patch_namespaced_custom_object(
        *KEDA, NS, "scaledobjects", "mcp-keda", {"spec": {"minReplicaCount": 2}}
    )
    cluster.put_status("scaledobjects", NS, "mcp-http-scaler", {"conditions": [{"type": "Ready", "status": "True"}]})
    cluster.add(pod("p-1", "node-1"))  # another kind: not in this watch
    async with watch.Watch() as watcher:
        stream = watcher.stream(
            custom.list_namespaced_custom_object, *KEDA, NS, "scaledobjects", resource_version=since, timeout_seconds=30
        )
        assert [seen(await next_event(stream)) for _ in range(2)] == [
            ("MODIFIED", "mcp-keda", version_of(cluster, "scaledobjects", NS, "mcp-keda")),
            ("MODIFIED", "mcp-http-scaler", version_of(cluster, "scaledobjects", NS, "mcp-http-scaler")),
        ]
        # then the changes as they happen: a test-side change, a create through the API
        cluster.change("scaledobjects", NS, "mcp-keda", {"metadata": {"labels": {"team": "search"}}})
        changed = await next_event(stream)
        assert seen(changed) == ("MODIFIED", "mcp-keda", version_of(cluster, "scaledobjects", NS, "mcp-keda"))
        assert changed["object"]["metadata"]["labels"]["team"] == "search"
        body = copy.deepcopy(cluster.get("scaledobjects", NS, "mcp-keda"))
        body["metadata"] = {"name": "mcp-new", "namespace": NS}
        await custom.create_namespaced_custom_object(*KEDA, NS, "scaledobjects", body)
        created = await next_event(stream)
        assert seen(created) == ("ADDED", "mcp-new", version_of(cluster, "scaledobjects", NS, "mcp-new"))
        assert watcher.resource_version == cluster.resource_version  # the client's resume point follows
    assert [r.params["watch"] for r in watch_requests(cluster, "scaledobjects")] == ["True"]  # the Watch's spelling


async def test_a_watch_without_a_version_starts_with_every_object(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(node("node-2"))
    cluster.add(node("node-1"))
    core = client.CoreV1Api(api)
    async with watch.Watch() as watcher:
        stream = watcher.stream(core.list_node, timeout_seconds=30)
        initial = [seen(await next_event(stream)) for _ in range(2)]
        assert initial == [  # oldest first: the Watch resumes from the last one and misses nothing
            ("ADDED", "node-2", version_of(cluster, "nodes", None, "node-2")),
            ("ADDED", "node-1", version_of(cluster, "nodes", None, "node-1")),
        ]
        cluster.put_status("nodes", None, "node-2", {"conditions": [{"type": "Ready", "status": "False"}]})
        modified = await next_event(stream)
        assert seen(modified) == ("MODIFIED", "node-2", version_of(cluster, "nodes", None, "node-2"))
        assert modified["object"].status.conditions[0].status == "False"


async def test_deletes_arrive_as_deleted_with_a_version_of_their_own(
    cluster: DevCluster, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    before = version_of(cluster, "deployments", NS, "mcp-server")
    async with watch.Watch() as watcher:
        stream = watcher.stream(
            apps.list_namespaced_deployment, NS, resource_version=cluster.resource_version, timeout_seconds=30
        )
        await apps.delete_namespaced_deployment("mcp-server", NS)
        deleted = await next_event(stream)
        assert seen(deleted)[:2] == ("DELETED", "mcp-server")
        assert int(seen(deleted)[2]) > int(before) and seen(deleted)[2] == cluster.resource_version
        assert deleted["object"].spec.replicas == 3  # the last content
        cluster.remove("deployments", NS, "mcp-http-server")
        assert seen(await next_event(stream)) == ("DELETED", "mcp-http-server", cluster.resource_version)


async def test_an_object_leaving_a_watchs_selector_is_deleted_for_it(
    cluster: DevCluster, api: client.ApiClient
) -> None:
    cluster.add(pod("p-1", "node-1", app="web"))
    cluster.add(pod("p-2", "node-1", app="worker"))
    core = client.CoreV1Api(api)
    async with watch.Watch() as watcher:
        stream = watcher.stream(core.list_namespaced_pod, NS, label_selector="app=web", timeout_seconds=30)
        assert seen(await next_event(stream))[:2] == ("ADDED", "p-1")
        cluster.change("pods", NS, "p-2", {"status": {"phase": "Failed"}})  # never selected: nothing
        cluster.change("pods", NS, "p-1", {"metadata": {"labels": {"app": "worker"}}})
        left = await next_event(stream)
        assert seen(left) == ("DELETED", "p-1", version_of(cluster, "pods", NS, "p-1"))
        assert left["object"].metadata.labels["app"] == "web"  # its last content the selector matched
        cluster.change("pods", NS, "p-2", {"metadata": {"labels": {"app": "web"}}})
        assert seen(await next_event(stream)) == ("ADDED", "p-2", version_of(cluster, "pods", NS, "p-2"))


async def test_a_watch_older_than_the_history_is_410_gone(cluster: DevCluster, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    since = cluster.resource_version
    cluster.change("scaledobjects", NS, "mcp-keda", {"spec": {"minReplicaCount": 2}})
    cluster.compact()
    async with watch.Watch() as watcher:
        stream = watcher.stream(
            custom.list_namespaced_custom_object, *KEDA, NS, "scaledobjects", resource_version=since, timeout_seconds=30
        )
        with pytest.raises(client.ApiException) as gone:
            await next_event(stream)
    assert gone.value.status == 410 and "Expired" in str(gone.value.reason)
    # on the wire: a 200 stream of one ERROR event whose object is a Status, then its end
    url = f"{str(cluster.url).rstrip('/')}/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects"
    params = {"watch": "true", "resourceVersion": since}
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT), session.get(url, params=params) as response:
        assert response.status == 200
        lines = (await response.read()).decode().splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])
    assert error["type"] == "ERROR"
    assert {k: error["object"][k] for k in ("kind", "code", "reason", "status")} == {
        "kind": "Status",
        "code": 410,
        "reason": "Expired",
        "status": "Failure",
    }
    # a watch from the current version is not too old: it sees the next change
    async with watch.Watch() as watcher:
        stream = watcher.stream(
            custom.list_namespaced_custom_object,
            *KEDA,
            NS,
            "scaledobjects",
            resource_version=cluster.resource_version,
            timeout_seconds=30,
        )
        cluster.change("scaledobjects", NS, "mcp-keda", {"spec": {"minReplicaCount": 3}})
        assert seen(await next_event(stream))[:2] == ("MODIFIED", "mcp-keda")


async def test_the_history_is_bounded_per_resource(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.history_limit = 2
    apps = client.AppsV1Api(api)
    since = cluster.resource_version
    for replicas in (4, 5, 6):
        cluster.change("deployments", NS, "mcp-server", {"spec": {"replicas": replicas}})
    assert [c.object["spec"]["replicas"] for c in cluster.changes("deployments")] == [5, 6]
    async with watch.Watch() as watcher:  # the first change after ``since`` is gone: 410
        stream = watcher.stream(apps.list_namespaced_deployment, NS, resource_version=since, timeout_seconds=30)
        with pytest.raises(client.ApiException) as gone:
            await next_event(stream)
    assert gone.value.status == 410
    after_first = str(cluster.changes("deployments")[0].version - 1)  # nothing of this kind lost after it
    async with watch.Watch() as watcher:
        stream = watcher.stream(apps.list_namespaced_deployment, NS, resource_version=after_first, timeout_seconds=30)
        assert [(await next_event(stream))["object"].spec.replicas for _ in range(2)] == [5, 6]
    async with watch.Watch() as watcher:  # not a version at all: 400, before any stream
        stream = watcher.stream(apps.list_namespaced_deployment, NS, resource_version="abc", timeout_seconds=30)
        with pytest.raises(client.ApiException) as invalid:
            await next_event(stream)
    assert invalid.value.status == 400


async def test_bookmarks_arrive_when_allowed(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.bookmark_interval = 0.2
    core = client.CoreV1Api(api)
    since = cluster.resource_version
    async with watch.Watch() as watcher:
        stream = watcher.stream(core.list_node, resource_version=since, allow_watch_bookmarks=True, timeout_seconds=30)
        first = await next_event(stream)  # right after the (here: no) initial events
        assert first["type"] == "BOOKMARK"
        assert first["raw_object"] == {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": since}}
        cluster.add(node("node-1"))
        assert seen(await next_event(stream))[:2] == ("ADDED", "node-1")
        cluster.add(pod("p-1", "node-1"))  # another kind moves the version on: the next bookmark carries it
        bookmark = await next_event(stream)
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["raw_object"]["metadata"]["resourceVersion"] == version_of(cluster, "pods", NS, "p-1")
        assert watcher.resource_version == cluster.resource_version  # the Watch resumes from the bookmark
        assert (await next_event(stream))["type"] == "BOOKMARK"  # and again, every bookmark_interval


async def test_a_watch_ends_at_its_timeout(cluster: DevCluster, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with watch.Watch() as watcher, asyncio.timeout(WAIT):
        events = [event async for event in watcher.stream(core.list_node, timeout_seconds=1)]
    assert events == []  # no Nodes, no bookmarks asked for
    assert 0.9 <= loop.time() - started < WAIT
    assert cluster.watching == 0


async def test_dropped_watches_end_and_the_client_resumes(cluster: DevCluster, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    async with watch.Watch() as watcher:  # with a timeout, the Watch ends with the stream
        stream = watcher.stream(
            apps.list_namespaced_deployment, NS, field_selector="metadata.name=mcp-server", timeout_seconds=60
        )
        assert seen(await next_event(stream))[:2] == ("ADDED", "mcp-server")
        assert cluster.drop_watches() == 1
        with pytest.raises(StopAsyncIteration):
            await next_event(stream)
    custom = client.CustomObjectsApi(api)
    async with watch.Watch() as watcher:  # without one, the Watch reconnects from the last version it saw
        stream = watcher.stream(
            custom.list_namespaced_custom_object, *KEDA, NS, "scaledobjects", field_selector="metadata.name=mcp-keda"
        )
        first = await next_event(stream)
        assert seen(first)[:2] == ("ADDED", "mcp-keda")
        cluster.drop_watches()
        cluster.change("scaledobjects", NS, "mcp-keda", {"spec": {"minReplicaCount": 2}})  # while it is away
        assert seen(await next_event(stream)) == (
            "MODIFIED",
            "mcp-keda",
            version_of(cluster, "scaledobjects", NS, "mcp-keda"),
        )
        watches = watch_requests(cluster, "scaledobjects")
        assert len(watches) == 2 and watches[1].params["resourceVersion"] == seen(first)[2]
    async with asyncio.timeout(WAIT):  # the server side of every closed watch ends too
        while cluster.watching:  # noqa: ASYNC110 (a count, not an event: polled)
            await asyncio.sleep(0.05)


# --- PodDisruptionBudgets and the eviction subresource ----------------------------------------------------------


def budget(
    name: str,
    selector: dict[str, Any],
    *,
    min_available: int | str | None = None,
    max_unavailable: int | str | None = None,
    policy: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector}
    if min_available is not None:
        spec["minAvailable"] = min_available
    if max_unavailable is not None:
        spec["maxUnavailable"] = max_unavailable
    if policy is not None:
        spec["unhealthyPodEvictionPolicy"] = policy
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def eviction(name: str, namespace: str = NS, **delete_options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
    body["metadata"]["namespace"] = namespace
    if delete_options:
        body["deleteOptions"] = delete_options
    return body


async def evict(core: client.CoreV1Api, name: str, namespace: str = NS, **kwargs: Any) -> int:
    """Evict a Pod through the client; the HTTP status of a granted eviction (a refused one raises)."""
    body = kwargs.pop("body", None) or eviction(name, namespace)
    _, status, _ = await core.create_namespaced_pod_eviction_with_http_info(name, namespace, body, **kwargs)
    return int(status)


async def refused(core: client.CoreV1Api, name: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Evict a Pod that the server must refuse: (HTTP status, the Status body)."""
    with pytest.raises(client.ApiException) as error:
        await evict(core, name, **kwargs)
    return int(error.value.status), json.loads(error.value.body)


def counts(status: Any) -> tuple[int, int, int, int]:
    """A budget's status (a model) as (expectedPods, currentHealthy, desiredHealthy, disruptionsAllowed)."""
    return status.expected_pods, status.current_healthy, status.desired_healthy, status.disruptions_allowed


async def test_evicting_a_pod_no_budget_covers_deletes_it(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("p-1", "node-1", ready=True))
    cluster.add(pod("p-2", "node-1", ready=True))
    core = client.CoreV1Api(api)
    async with watch.Watch() as watcher:
        stream = watcher.stream(
            core.list_namespaced_pod, NS, resource_version=cluster.resource_version, timeout_seconds=30
        )
        assert await evict(core, "p-1") == 201
        marked = await next_event(stream)  # the API server's DisruptionTarget condition, then the delete
        assert seen(marked)[:2] == ("MODIFIED", "p-1")
        target = [c for c in marked["object"].status.conditions if c.type == "DisruptionTarget"]
        assert [(c.status, c.reason) for c in target] == [("True", "EvictionByEvictionAPI")]
        deleted = await next_event(stream)
        assert seen(deleted) == ("DELETED", "p-1", cluster.resource_version)
        assert int(seen(deleted)[2]) > int(seen(marked)[2])
    assert [p.metadata.name for p in (await core.list_namespaced_pod(NS)).items] == ["p-2"]
    with pytest.raises(client.ApiException) as missing:
        await core.read_namespaced_pod("p-1", NS)
    assert missing.value.status == 404
    # the answer, on the wire: a Status (the client reads it into a V1Eviction)
    url = f"{str(cluster.url).rstrip('/')}/api/v1/namespaces/{NS}/pods/p-2/eviction"
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(WAIT),
        session.post(url, json=eviction("p-2")) as response,
    ):
        assert response.status == 201
        answer = await response.json()
    assert answer == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
    assert (await core.list_namespaced_pod(NS)).items == []


async def test_a_budget_refuses_an_eviction_until_a_pod_is_spare(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("web-1", "node-1", app="web", ready=True))
    cluster.add(pod("web-2", "node-2", app="web", ready=True))
    cluster.add(pod("api-1", "node-1", app="api", ready=True))  # not covered
    policy = client.PolicyV1Api(api)
    created = await policy.create_namespaced_pod_disruption_budget(
        NS, budget("web", {"matchLabels": {"app": "web"}}, min_available=2)
    )
    assert created.metadata.name == "web"
    read = await policy.read_namespaced_pod_disruption_budget("web", NS)
    assert counts(read.status) == (2, 2, 2, 0)
    assert [(c.type, c.status, c.reason) for c in read.status.conditions] == [
        ("DisruptionAllowed", "False", "InsufficientPods")
    ]
    core = client.CoreV1Api(api)
    status, body = await refused(core, "web-1")
    assert status == 429
    assert (body["kind"], body["status"], body["code"], body["reason"]) == ("Status", "Failure", 429, "TooManyRequests")
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"] == [
        {"reason": "DisruptionBudget", "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}
    ]
    assert cluster.get("pods", NS, "web-1")["metadata"]["name"] == "web-1"  # still there
    assert not [w for w in cluster.writes if w.subresource == "eviction"]  # a refusal is no write
    assert await evict(core, "api-1") == 201  # no budget covers it
    # a third Pod, not Ready yet: expected, not healthy
    cluster.add(pod("web-3", "node-2", app="web", ready=False))
    assert counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status) == (3, 2, 2, 0)
    async with watch.Watch() as watcher:
        stream = watcher.stream(
            policy.list_namespaced_pod_disruption_budget,
            NS,
            resource_version=cluster.resource_version,
            timeout_seconds=30,
        )
        cluster.put_status(
            "pods", NS, "web-3", {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        )
        changed = await next_event(stream)  # the budget follows its Pods at once
        assert seen(changed) == ("MODIFIED", "web", version_of(cluster, "poddisruptionbudgets", NS, "web"))
        assert counts(changed["object"].status) == (3, 3, 2, 1)
        assert changed["object"].status.conditions[0].reason == "SufficientPods"
        assert await evict(core, "web-1") == 201
        evicted = await next_event(stream)
        assert counts(evicted["object"].status) == (2, 2, 2, 0)
    listed = await policy.list_namespaced_pod_disruption_budget(NS)
    assert listed.kind == "PodDisruptionBudgetList" and [b.metadata.name for b in listed.items] == ["web"]
    assert counts(listed.items[0].status) == (2, 2, 2, 0)
    status, body = await refused(core, "web-2")
    assert status == 429 and body["details"]["causes"][0]["message"].endswith(
        "needs 2 healthy pods and has 2 currently"
    )
    # the same budget through CustomObjects (group policy), as a dict
    raw = await client.CustomObjectsApi(api).get_namespaced_custom_object(
        "policy", "v1", NS, "poddisruptionbudgets", "web"
    )
    assert {
        k: raw["status"][k] for k in ("expectedPods", "currentHealthy", "desiredHealthy", "disruptionsAllowed")
    } == {
        "expectedPods": 2,
        "currentHealthy": 2,
        "desiredHealthy": 2,
        "disruptionsAllowed": 0,
    }


async def test_percentages_are_rounded_up(cluster: DevCluster, api: client.ApiClient) -> None:
    for index in range(1, 5):
        cluster.add(pod(f"web-{index}", "node-1", app="web", ready=True))
    cluster.add(
        budget(
            "web", {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}, max_unavailable="30%"
        )
    )
    policy = client.PolicyV1Api(api)

    async def status() -> tuple[int, int, int, int]:
        return counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status)

    assert await status() == (4, 4, 2, 2)  # 30% of 4 is 1.2, rounded up: 2 may be unavailable
    cluster.change("poddisruptionbudgets", NS, "web", {"spec": {"maxUnavailable": "25%"}})
    assert await status() == (4, 4, 3, 1)  # exactly 1
    cluster.change("poddisruptionbudgets", NS, "web", {"spec": {"maxUnavailable": None, "minAvailable": "60%"}})
    assert await status() == (4, 4, 3, 1)  # 60% of 4 is 2.4, rounded up: 3 must stay
    cluster.change("poddisruptionbudgets", NS, "web", {"spec": {"minAvailable": None, "maxUnavailable": "50%"}})
    assert await status() == (4, 4, 2, 2)
    core = client.CoreV1Api(api)
    assert await evict(core, "web-1") == 201
    # expectedPods counts the Pods that exist (a real controller would still expect the owner's 4 replicas)
    assert await status() == (3, 3, 1, 2)
    cluster.put_status("pods", NS, "web-2", {"conditions": [{"type": "Ready", "status": "False"}]})
    cluster.change("pods", NS, "web-3", {"metadata": {"deletionTimestamp": "2030-01-01T00:00:00Z"}})
    assert await status() == (3, 1, 1, 0)  # not Ready, terminating: neither is healthy
    status_code, body = await refused(core, "web-4")
    assert status_code == 429
    assert (
        body["details"]["causes"][0]["message"] == "The disruption budget web needs 1 healthy pods and has 1 currently"
    )
    # a count that is neither an integer nor a percentage: no disruption, and why
    cluster.change("poddisruptionbudgets", NS, "web", {"spec": {"maxUnavailable": "half"}})
    read = await policy.read_namespaced_pod_disruption_budget("web", NS)
    assert read.status.disruptions_allowed == 0
    assert (read.status.conditions[0].reason, read.status.conditions[0].status) == ("SyncFailed", "False")


async def test_a_pod_two_budgets_cover_is_a_500(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("web-1", "node-1", app="web", ready=True))
    cluster.add(pod("api-1", "node-1", app="api", ready=True))
    cluster.add(budget("web", {"matchLabels": {"app": "web"}}, max_unavailable=1))
    cluster.add(
        budget(
            "frontends",
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]},
            max_unavailable=1,
        )
    )
    core = client.CoreV1Api(api)
    status, body = await refused(core, "web-1")
    assert status == 500
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        "code": 500,
    }
    assert cluster.get("pods", NS, "web-1")["metadata"]["name"] == "web-1"
    assert await evict(core, "api-1") == 201  # only "frontends" covers it, and it allows one


async def test_a_missing_pod_or_a_wrong_body_is_refused(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("p-1", "node-1", ready=True))
    core = client.CoreV1Api(api)
    status, body = await refused(core, "no-such-pod")
    assert status == 404 and body["reason"] == "NotFound" and body["message"] == 'pods "no-such-pod" not found'
    status, body = await refused(core, "p-1", body=eviction("p-2"))
    assert status == 400 and body["message"] == "name in URL does not match name in Eviction object"
    status, body = await refused(core, "p-1", body=eviction("p-1", namespace="other"))
    assert status == 400
    status, _ = await refused(core, "p-1", body={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p-1"}})
    assert status == 400
    version = version_of(cluster, "pods", NS, "p-1")
    stale = eviction("p-1", preconditions={"resourceVersion": str(int(version) - 1)})
    status, body = await refused(core, "p-1", body=stale)
    assert status == 409 and body["reason"] == "Conflict"
    status, _ = await refused(core, "p-1", body=eviction("p-1", preconditions={"uid": "not-its-uid"}))
    assert status == 409
    assert cluster.get("pods", NS, "p-1")["metadata"]["resourceVersion"] == version  # nothing changed
    current = eviction("p-1", preconditions={"resourceVersion": version})
    assert await evict(core, "p-1", body=current) == 201


async def test_unready_pending_and_finished_pods_may_go(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("web-1", "node-1", app="web", ready=True))
    cluster.add(pod("web-2", "node-1", app="web", ready=True))
    cluster.add(pod("web-3", "node-1", app="web", ready=False))
    cluster.add(pod("web-4", None, app="web"))  # Pending: not scheduled yet
    cluster.add(pod("web-5", "node-1", app="web", ready=False, phase="Succeeded"))
    cluster.add(budget("web", {"matchLabels": {"app": "web"}}, min_available=2))
    core = client.CoreV1Api(api)
    policy = client.PolicyV1Api(api)
    assert counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status) == (5, 2, 2, 0)
    assert await evict(core, "web-4") == 201  # Pending and Succeeded: no budget is looked at
    assert await evict(core, "web-5") == 201
    # not Ready, while the budget is healthy (2 of 2): IfHealthyBudget, the default, lets it go
    assert await evict(core, "web-3") == 201
    assert counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status) == (2, 2, 2, 0)
    status, _ = await refused(core, "web-1")
    assert status == 429
    # an unhealthy budget keeps its unready Pods, unless its policy is AlwaysAllow
    cluster.add(pod("web-6", "node-1", app="web", ready=False))
    cluster.put_status("pods", NS, "web-2", {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]})
    assert counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status) == (3, 1, 2, 0)
    status, body = await refused(core, "web-6")
    assert status == 429 and body["details"]["causes"][0]["message"].endswith(
        "needs 2 healthy pods and has 1 currently"
    )
    await policy.patch_namespaced_pod_disruption_budget(
        "web", NS, {"spec": {"unhealthyPodEvictionPolicy": "AlwaysAllow"}}
    )
    assert await evict(core, "web-6") == 201
    status, _ = await refused(core, "web-1")  # a Ready one still counts against the budget
    assert status == 429
    # a Pod with a finalizer stays, terminating, and no longer counts as healthy
    cluster.add(pod("web-7", "node-1", app="web", ready=True))
    cluster.change("pods", NS, "web-7", {"metadata": {"finalizers": ["example.com/keep"]}})
    cluster.add(pod("web-8", "node-1", app="web", ready=True))
    assert counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status) == (4, 3, 2, 1)
    assert await evict(core, "web-7") == 201
    kept = await core.read_namespaced_pod("web-7", NS)
    assert kept.metadata.deletion_timestamp is not None
    assert counts((await policy.read_namespaced_pod_disruption_budget("web", NS)).status) == (4, 2, 2, 0)
    assert await evict(core, "web-7") == 201  # terminating already: no budget is looked at


async def test_evictions_are_logged_faulted_and_dry_run(cluster: DevCluster, api: client.ApiClient) -> None:
    cluster.add(pod("p-1", "node-1", ready=True))
    cluster.add(pod("p-2", "node-1", ready=True))
    core = client.CoreV1Api(api)
    assert await evict(core, "p-1", dry_run="All") == 201  # judged, not done
    assert await evict(core, "p-1", body=eviction("p-1", dryRun=["All"])) == 201
    assert cluster.get("pods", NS, "p-1")["metadata"]["name"] == "p-1" and not cluster.writes
    cluster.fail(method="POST", plural="pods/eviction", status=503)
    status, body = await refused(core, "p-1")
    assert status == 503 and body["reason"] == "InjectedFault"
    await core.read_namespaced_pod("p-1", NS)  # still there; and a fault on the subresource is not one on pods
    cluster.fail(method="POST", plural="pods/eviction", status=504, landed=True)
    status, _ = await refused(core, "p-1")
    assert status == 504  # the answer is lost, the eviction happened
    assert [p.metadata.name for p in (await core.list_namespaced_pod(NS)).items] == ["p-2"]
    assert await evict(core, "p-2") == 201
    evictions = [r for r in cluster if r.subresource == "eviction"]
    assert [
        (r.method.value, r.resource.group, r.resource.plural, r.name, r.params.get("dryRun")) for r in evictions
    ] == [
        ("POST", "", "pods", "p-1", "All"),
        ("POST", "", "pods", "p-1", None),
        ("POST", "", "pods", "p-1", None),
        ("POST", "", "pods", "p-1", None),
        ("POST", "", "pods", "p-2", None),
    ]
    assert evictions[-1].data == eviction("p-2")
    assert [(w.method, w.plural, w.namespace, w.name, w.subresource) for w in cluster.writes] == [
        ("POST", "pods", NS, "p-1", "eviction"),  # the one whose answer was lost
        ("POST", "pods", NS, "p-2", "eviction"),
    ]


async def test_nodes_keep_their_provider_id_and_refuse_a_selector_on_it(
    cluster: DevCluster, api: client.ApiClient
) -> None:
    spot = node("node-1")
    spot["spec"]["providerID"] = "aws:///us-east-1a/i-0123456789abcdef0"
    cluster.add(spot)
    cluster.add(node("node-2"))
    core = client.CoreV1Api(api)
    assert (await core.read_node("node-1")).spec.provider_id == "aws:///us-east-1a/i-0123456789abcdef0"
    with pytest.raises(client.ApiException) as refused_selector:
        await core.list_node(field_selector="spec.providerID=aws:///us-east-1a/i-0123456789abcdef0")
    assert refused_selector.value.status == 400  # not a field the API server selects Nodes on
    assert json.loads(refused_selector.value.body)["message"] == "field label not supported: spec.providerID"
    nodes = (await core.list_node()).items
    assert [n.metadata.name for n in nodes if n.spec.provider_id == "aws:///us-east-1a/i-0123456789abcdef0"] == [
        "node-1"
    ]
