"""
The monitoring that feeds the agent: the PrometheusRule (``promtool check rules`` and the unit tests in
tests/promtool/), the Alertmanager receiver and route (``amtool``), the runbooks, and that the labels each alert
carries lead the agent's default rules to the right ScaledObject of deploy/examples/ (HighMCPCost: to a rule,
which picks its ScaledObjects at run time).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from agent.configfile import Config, load_config
from agent.devcluster import DevCluster
from agent.rules import Rules
from agent.sources.alertmanager import PATH as WEBHOOK_PATH
from agent.structs import Event
from agent.targets import build_targets, kinds_in_use
from tests.conftest import NS, ROOT, SEED_ALERTS, _require_binary

RULE_FILE = ROOT / "deploy" / "base" / "prometheusrule.yaml"
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
ALERTMANAGER = ROOT / "deploy" / "alertmanager"
RUNBOOKS = ROOT / "runbooks"
CONFIGS = [ROOT / "config" / "agent.yaml", ROOT / "deploy" / "base" / "agent.yaml"]

AGENT_ALERTS = ("ScalingAgentDown", "ScalingAgentPauseTooLong", "ScalingAgentBacklog")
RUNBOOK_URL = "https://github.com/cortex/mcp-scaling-agent/blob/main/runbooks/{}.md"

# The seed's recording rules (sections 10.1 and 9.4), which the PrometheusRule keeps unchanged. Not
# mcp:scaling:events_rate: the seed's read `keda_scaler_activity`, which KEDA does not export; nor
# mcp:cost:hourly_pod_cost: the seed's read `node_cost_hourly`, which nothing exports, and added cores to bytes
# (deploy/README.md). mcp:cost:waste_potential is kept as the seed wrote it, unit mix and all.
SEED_RECORDS = {
    "mcp:requests:rate1m": 'sum(rate(mcp_requests_total{namespace="cortex-mcp"}[1m])) by (server, method)',
    "mcp:request_duration:p95": (
        "histogram_quantile(0.95, "
        'sum(rate(mcp_request_duration_seconds_bucket{namespace="cortex-mcp"}[5m])) by (le, server) )'
    ),
    "mcp:cost:total_hourly": "sum(mcp:cost:hourly_pod_cost)",
    "mcp:cost:waste_potential": (
        'sum( kube_pod_container_resource_requests{namespace="cortex-mcp"} - '
        'kube_pod_container_resource_limits{namespace="cortex-mcp"} )'
    ),
}
SEED_RECORD_NAMES = {
    "mcp:requests:rate1m",
    "mcp:request_duration:p50",
    "mcp:request_duration:p95",
    "mcp:request_duration:p99",
    "mcp:connections:active",
    "mcp:errors:rate1m",
    "mcp:cpu:utilization",
    "mcp:memory:utilization",
    "mcp:queue:depth",
    "mcp:scaling:events_rate",
    "mcp:cost:hourly_pod_cost",
    "mcp:cost:total_hourly",
    "mcp:cost:waste_potential",
}
# Series the seed named that no exporter produces: no rule may read them.
NOT_EXPORTED = ("keda_scaler_activity", "node_cost_hourly")
# How the scaling-step rules find the ScaledObject: from the name of the HPA KEDA made for it (keda-hpa-<name>).
HPA_DESIRED = (
    "kube_horizontalpodautoscaler_status_desired_replicas{ "
    'namespace="cortex-mcp", horizontalpodautoscaler=~"keda-hpa-.+" }'
)
SCALED_OBJECT_FROM_HPA = '"scaledObject", "$1", "horizontalpodautoscaler", "keda-hpa-(.+)"'
# The cost rules, rebuilt on OpenCost's node prices (per vCPU-hour, per GiB-hour) and kube-state-metrics'
# requests. The agent's own code queries these names and labels.
POD_COST = (
    "sum by (namespace, pod) ( ( max by (namespace, pod, container, node, resource) ( "
    'kube_pod_container_resource_requests{namespace="cortex-mcp", resource="cpu", unit="core"} ) '
    "* on (node) group_left () avg by (node) (node_cpu_hourly_cost) ) or ( "
    "max by (namespace, pod, container, node, resource) ( "
    'kube_pod_container_resource_requests{namespace="cortex-mcp", resource="memory", unit="byte"} ) / 1073741824 '
    "* on (node) group_left () avg by (node) (node_ram_hourly_cost) ) )"
)
NAMESPACE_COST = "sum by (namespace) (mcp:cost:hourly_pod_cost)"

# What the agent's default rules should resolve from the labels each alert carries in tests/promtool/
# (deploy/examples/: mcp-http-server is scaled by mcp-http-scaler and mcp-http-triggers, mcp-queue-processor by
# mcp-queue-scaler and mcp-queue-triggers, mcp-ephemeral-server by mcp-scale-to-zero).
EXPECTED_TARGETS = {
    "MCPHighLatencyDespiteScaling": {"mcp-http-scaler", "mcp-http-triggers"},
    "MCPAtMaximumScale": {"mcp-queue-scaler", "mcp-queue-triggers"},
    "MCPFrequentScaling": {"mcp-http-scaler"},
    "MCPScaleToZeroStuck": {"mcp-scale-to-zero"},
    "MCPColdStartSlow": {"mcp-scale-to-zero"},
}
# Alerts whose labels name a scope but no object: the default rule picks the objects at run time. HighMCPCost
# carries `namespace`; its rule chooses the most expensive ScaledObjects of that namespace from the cost series.
SCOPE_ONLY = {"HighMCPCost"}


def _squash(text: str) -> str:
    return " ".join(text.split())


def prometheus_rule() -> dict[str, Any]:
    data = yaml.safe_load(RULE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def rules_by_kind() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    alerts: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, Any]] = {}
    for group in prometheus_rule()["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                alerts[rule["alert"]] = rule
            else:
                records[rule["record"]] = rule
    return alerts, records


def promtool_test_files() -> list[Path]:
    return sorted(PROMTOOL_TESTS.glob("*.test.yaml"))


def expected_alerts() -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Every alert_rule_test of tests/promtool/: (file name, alertname, expected alerts)."""
    found = []
    for path in promtool_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                found.append((path.name, case["alertname"], case.get("exp_alerts") or []))
    return found


def write_rules(folder: Path) -> Path:
    """The PrometheusRule's spec.groups as a plain Prometheus rules file, as the operator hands it to Prometheus."""
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": prometheus_rule()["spec"]["groups"]}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return _require_binary("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return _require_binary("amtool")


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, cwd=cwd)


# --- The PrometheusRule ---------------------------------------------------------------------------------------


def test_prometheusrule_is_an_operator_resource_the_default_selector_finds() -> None:
    rule = prometheus_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "scaling-agent"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    groups = [group["name"] for group in rule["spec"]["groups"]]
    assert {"mcp_scaling_metrics", "mcp_cost_optimization", "mcp_scaling_alerts"} <= set(groups)
    assert len(groups) == len(set(groups))


def test_has_the_seeds_six_alerts_the_agents_own_and_the_seeds_recording_rules() -> None:
    alerts, records = rules_by_kind()
    assert set(alerts) == set(SEED_ALERTS) | set(AGENT_ALERTS)
    assert set(records) >= SEED_RECORD_NAMES
    for name, expr in SEED_RECORDS.items():
        assert _squash(records[name]["expr"]) == _squash(expr), f"{name} differs from the seed"
    # Rebuilt per namespace (deploy/README.md): the seed's `mcp:cost:total_hourly > 100` carried no labels.
    assert _squash(alerts["HighMCPCost"]["expr"]) == "mcp:cost:namespace_hourly > 100"
    seed_for = {
        "MCPHighLatencyDespiteScaling": "5m",
        "MCPAtMaximumScale": "10m",
        "MCPFrequentScaling": "30m",
        "MCPScaleToZeroStuck": "30m",
        "MCPColdStartSlow": "5m",
        "HighMCPCost": "1h",
    }
    seed_severity = {
        "MCPHighLatencyDespiteScaling": "warning",
        "MCPAtMaximumScale": "critical",
        "MCPFrequentScaling": "warning",
        "MCPScaleToZeroStuck": "info",
        "MCPColdStartSlow": "warning",
        "HighMCPCost": "warning",
    }
    for name in SEED_ALERTS:
        assert alerts[name]["for"] == seed_for[name], name
        assert alerts[name]["labels"] == {"severity": seed_severity[name]}, name


@pytest.mark.parametrize("name", SEED_ALERTS + AGENT_ALERTS)
def test_every_alert_links_its_runbook(name: str) -> None:
    alerts, _ = rules_by_kind()
    annotations = alerts[name]["annotations"]
    assert annotations["runbook_url"] == RUNBOOK_URL.format(name)
    assert annotations["summary"]
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"{runbook} is missing"
    assert runbook.read_text().startswith(f"# {name}\n")


def test_alert_expressions_keep_the_labels_that_name_a_target() -> None:
    # A cheap static check beside the promtool tests: each changed expression aggregates or joins on
    # namespace + deployment, so it cannot drop them again unnoticed.
    alerts, _ = rules_by_kind()
    for name in ("MCPAtMaximumScale", "MCPScaleToZeroStuck", "MCPColdStartSlow", "MCPHighLatencyDespiteScaling"):
        expr = _squash(alerts[name]["expr"])
        assert "on (namespace, deployment)" in expr or "by (namespace, deployment)" in expr, name
        assert not re.search(r"\bavg\(", expr), name


def test_scaling_steps_are_counted_on_series_that_exist() -> None:
    # MCPFrequentScaling and mcp:scaling:events_rate count the changes of the desired replica count of KEDA's HPA
    # (kube-state-metrics), per (namespace, scaledObject); the seed's keda_scaler_activity is gone everywhere.
    alerts, records = rules_by_kind()
    for rule in [*alerts.values(), *records.values()]:
        assert not any(name in rule["expr"] for name in NOT_EXPORTED), rule.get("alert") or rule["record"]
    frequent = _squash(alerts["MCPFrequentScaling"]["expr"])
    assert f"changes( {HPA_DESIRED}[15m] )" in frequent
    assert frequent.startswith("max by (namespace, scaledObject) (") and frequent.endswith(") > 6")
    assert SCALED_OBJECT_FROM_HPA in frequent
    events = _squash(records["mcp:scaling:events_rate"]["expr"])
    assert f"changes( {HPA_DESIRED}[5m] )" in events
    assert events.startswith("max by (namespace, scaledObject) (") and events.endswith(") / 300")
    assert SCALED_OBJECT_FROM_HPA in events


def test_cost_rules_price_requests_with_opencost_per_namespace() -> None:
    # Per pod: CPU cores x price per vCPU-hour, plus memory GiB x price per GiB-hour, each price averaged per node
    # (two scrapes of OpenCost are no many-to-many join); per namespace, the sum, which HighMCPCost compares.
    [group] = [group for group in prometheus_rule()["spec"]["groups"] if group["name"] == "mcp_cost_optimization"]
    assert group["interval"] == "60s"
    rules = {rule.get("record") or rule["alert"]: rule for rule in group["rules"]}
    assert set(rules) == {
        "mcp:cost:hourly_pod_cost",
        "mcp:cost:namespace_hourly",
        "mcp:cost:total_hourly",
        "mcp:cost:waste_potential",
        "HighMCPCost",
    }
    assert _squash(rules["mcp:cost:hourly_pod_cost"]["expr"]) == POD_COST
    assert _squash(rules["mcp:cost:namespace_hourly"]["expr"]) == NAMESPACE_COST
    high = rules["HighMCPCost"]
    assert high["annotations"]["summary"] == "MCP server costs exceeding budget"
    assert "{{ $labels.namespace }}" in high["annotations"]["description"]
    assert "{{ $value" in high["annotations"]["description"]


def test_promtool_check_rules(promtool: str, tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    result = run(promtool, "check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts, records = rules_by_kind()
    assert f"SUCCESS: {len(alerts) + len(records)} rules found" in result.stdout


def test_promtool_unit_tests(promtool: str, tmp_path: Path) -> None:
    write_rules(tmp_path)
    files = promtool_test_files()
    assert files, f"no *.test.yaml in {PROMTOOL_TESTS}"
    for path in files:
        shutil.copy(path, tmp_path / path.name)
        assert yaml.safe_load(path.read_text())["rule_files"] == ["rules.yaml"], path.name
    result = run(promtool, "test", "rules", *[path.name for path in files], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    alerts, _ = rules_by_kind()
    fired = {name for _, name, expected in expected_alerts() if expected}
    quiet = {name for _, name, expected in expected_alerts() if not expected}
    assert fired == set(alerts), f"no firing case for {set(alerts) - fired}"
    assert quiet == set(alerts), f"no pending, resolved or quiet case for {set(alerts) - quiet}"
    for file, name, expected in expected_alerts():
        for alert in expected:
            assert alert["exp_annotations"]["runbook_url"] == RUNBOOK_URL.format(name), file


@pytest.mark.parametrize("name", SEED_ALERTS)
def test_firing_alerts_carry_the_labels_the_default_rules_resolve(name: str) -> None:
    labels = [
        alert["exp_labels"] for _, alertname, expected in expected_alerts() if alertname == name for alert in expected
    ]
    assert labels
    for found in labels:
        if name == "MCPFrequentScaling":
            assert set(found) == {"severity", "namespace", "scaledObject"}
            assert found["namespace"] == NS and found["scaledObject"]
        elif name == "HighMCPCost":
            assert set(found) == {"severity", "namespace"}  # its scope, and no object
            assert found["namespace"] == NS
        else:
            assert found["namespace"] == NS and found["deployment"], name


@pytest.fixture(params=CONFIGS, ids=lambda path: str(path.relative_to(ROOT)))
def default_config(request: pytest.FixtureRequest) -> Config:
    """The example config and the one deploy/base/ ships: both carry the six default rules."""
    path: Path = request.param
    if not path.exists():
        pytest.skip(f"{path} is not there")
    return load_config(path)


async def test_alert_labels_lead_the_default_rules_to_their_scaledobjects(
    default_config: Config, cluster: DevCluster, api: client.ApiClient
) -> None:
    """The labels each alert carries in the promtool tests, through the agent's own rule code, to objects."""
    kinds = kinds_in_use(rule.target.kind for rule in default_config.rules)
    rules = Rules(default_config.rules, targets=build_targets(api, default_config.kubernetes, kinds))
    seen = set()
    for file, name, expected in expected_alerts():
        if name not in SEED_ALERTS:
            continue
        for alert in expected:
            labels = {"alertname": name, **alert["exp_labels"]}
            event = Event(
                source="alertmanager",
                key=f"{file}:{name}",
                alertname=name,
                status="firing",
                fingerprint="0123456789abcdef",
                labels=labels,
            )
            if name in SCOPE_ONLY:
                # No object from labels alone: the rule picks its targets at run time (for HighMCPCost, from the
                # cost series, which this test has no Prometheus for). Only check that a default rule takes it.
                assert rules.matching(event), f"no default rule for {name}"
                seen.add(name)
                continue
            plans = await rules.plan(event)
            assert plans, f"no default rule for {name}"
            targets = {plan.target.name for plan in plans if plan.target is not None}
            assert targets == EXPECTED_TARGETS[name], (name, [plan.reason for plan in plans])
            assert all(plan.verdict is None for plan in plans), name
            seen.add(name)
    assert seen == set(SEED_ALERTS)


# --- Alertmanager ---------------------------------------------------------------------------------------------


def snippet() -> dict[str, Any]:
    data = yaml.safe_load((ALERTMANAGER / "receiver.yaml").read_text())
    assert isinstance(data, dict) and set(data) == {"receivers", "routes"}
    return data


def test_receiver_posts_every_alert_and_its_resolve_to_the_agents_webhook() -> None:
    [receiver] = snippet()["receivers"]
    assert receiver["name"] == "scaling-agent"
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == f"http://scaling-agent.scaling-agent.svc:8080{WEBHOOK_PATH}"
    assert webhook["send_resolved"] is True
    assert webhook["max_alerts"] == 0
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/alertmanager/secrets/scaling-agent/webhook-token",
    }
    # The port is the agent's (config/agent.yaml webhook.port) and the Service's.
    assert load_config(ROOT / "config" / "agent.yaml").webhook.port == 8080


def test_route_sends_the_six_alerts_and_not_the_agents_own() -> None:
    [route] = snippet()["routes"]
    assert route["receiver"] == "scaling-agent"
    assert route["continue"] is True
    assert route["group_by"] == ["alertname", "namespace", "deployment", "scaledObject"]
    [matcher] = route["matchers"]
    label, pattern = re.fullmatch(r'(\w+)=~"(.*)"', matcher).groups()  # type: ignore[union-attr]
    assert label == "alertname"
    for name in SEED_ALERTS:
        assert re.fullmatch(pattern, name), name  # Alertmanager anchors its regexes
    for name in AGENT_ALERTS:
        assert not re.fullmatch(pattern, name), name


def test_example_config_includes_the_snippet_unchanged() -> None:
    example = yaml.safe_load((ALERTMANAGER / "alertmanager.yaml").read_text())
    parts = snippet()
    assert parts["routes"][0] in example["route"]["routes"]
    assert example["route"]["routes"][0] == parts["routes"][0]  # first, before any route that could stop them
    assert parts["receivers"][0] in example["receivers"]


def test_amtool_accepts_the_example_config(amtool: str) -> None:
    result = run(amtool, "check-config", ALERTMANAGER / "alertmanager.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_accepts_a_config_built_from_the_snippet(amtool: str, tmp_path: Path) -> None:
    parts = snippet()
    config = {
        "route": {
            "receiver": "people",
            "group_by": ["alertname"],
            "routes": [*parts["routes"], {"receiver": "people", "matchers": ['severity=~"critical|warning"']}],
        },
        "receivers": [{"name": "people"}, *parts["receivers"]],
    }
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run(amtool, "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alertname", "receivers"),
    [(name, ["scaling-agent", "default"]) for name in SEED_ALERTS]
    + [(name, ["default"]) for name in AGENT_ALERTS]
    + [("Watchdog", ["default"])],
)
def test_example_config_routes(amtool: str, alertname: str, receivers: list[str]) -> None:
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER / 'alertmanager.yaml'}",
        f"alertname={alertname}",
        f"namespace={NS}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().split(",") == receivers


# --- Runbooks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEED_ALERTS)
def test_runbooks_name_the_default_rule_and_how_to_see_and_undo_it(name: str) -> None:
    text = (RUNBOOKS / f"{name}.md").read_text()
    config = load_config(ROOT / "config" / "agent.yaml")
    [rule] = [rule for rule in config.rules if rule.alertname == name]
    assert f"`{rule.name}`" in text
    assert f"`{rule.action.type}`" in text
    assert "scaling-agent decisions" in text
    if rule.action.type != "notify":
        assert re.search(r"kubectl (-n \S+ )?describe scaledobject", text)
    assert "guard.dry_run" in text
    assert "kubernetes.namespaces" in text
