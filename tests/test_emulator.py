"""
The emulated API server (agent.devcluster) answers as a real one, through the real kubernetes-asyncio client: the
scale subresource of Deployments and StatefulSets, label and field selectors, Nodes and HorizontalPodAutoscalers.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

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


def pod(name: str, node_name: str | None, *, namespace: str = NS, app: str = "mcp-server") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "example/app:1"}]}
    if node_name is not None:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": spec,
        "status": {"phase": "Running" if node_name else "Pending"},
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
