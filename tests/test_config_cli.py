"""The config file and the command line, as an operator meets them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main
from agent.config import ConfigError
from agent.configfile import load_config
from agent.demo import demo_config
from agent.rules import matches
from agent.sources import check_sources
from agent.structs import Event, EventKind
from tests.conftest import ROOT, SEED_ALERTS, free_port

GOOD: dict[str, Any] = {
    "webhook": {"auth": {"type": "bearer", "token": {"env": "HOOK_TOKEN"}}},
    "kubernetes": {"namespaces": ["cortex-mcp"]},
    "rules": [
        {"name": "a", "alertname": "MCPFrequentScaling", "action": {"type": "pause"}},
        {"name": "b", "alertname": "MCPColdStartSlow", "action": {"type": "set_min", "params": {"replicas": 2}}},
        {
            "name": "c",
            "alertname": "MCPColdStartSlow",
            "matchers": ['severity=~"warn.*"'],
            "action": {"type": "set_min", "params": {"replicas": 1}},
        },
    ],
}


def test_shipped_config_is_valid_and_has_the_demo_rules() -> None:
    config = load_config(ROOT / "config" / "agent.yaml")
    demo = load_config_data(demo_config(Path("/tmp/x.db")))
    assert [r.model_dump() for r in config.rules] == [r.model_dump() for r in demo.rules]
    alertnames = {r.alertname for r in config.rules}
    assert alertnames == set(SEED_ALERTS)


def load_config_data(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    from agent.configfile import parse_config

    return parse_config(data, source="<demo>")


def test_every_error_is_listed_with_its_field_path(write_yaml: Callable[..., Path]) -> None:
    bad = yaml.safe_load(yaml.safe_dump(GOOD))
    bad["rules"][2]["action"]["params"]["replicas"] = -1
    bad["rules"][0]["action"]["params"] = {"for": "soon"}
    bad["rules"][1]["matchers"] = ["severity=~'(unclosed'"]
    bad["guard"] = {"floor": 10, "ceiling": 5, "cooldwn": "5m"}
    bad["rules"].append({"name": "d", "alertname": "X", "action": {"type": "explode"}})
    path = write_yaml(bad)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert "rules[2].action.params.replicas: must be ≥ 0" in errors
    assert any(e.startswith("rules[0].action.params.for: 'soon' is not a duration") for e in errors)
    assert any(e.startswith("rules[1].matchers[0]:") for e in errors)
    assert "guard.cooldwn: is not a known field" in errors
    assert any(e.startswith("rules[3].action:") and "explode" in e for e in errors)
    assert info.value.source == str(path)


def test_check_config_cli_exit_codes(write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    good = write_yaml(GOOD, "good.yaml")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "valid (3 rules)" in out
    assert "cooldown: 5m" in out and "env: HOOK_TOKEN" in out  # defaults filled in; secrets only as references

    bad = yaml.safe_load(yaml.safe_dump(GOOD))
    bad["rules"][2]["action"]["params"]["replicas"] = -1
    del bad["kubernetes"]
    assert main(["check-config", str(write_yaml(bad, "bad.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: invalid config (2 problems)" in err
    assert "rules[2].action.params.replicas: must be ≥ 0" in err
    assert "kubernetes: is required" in err

    assert main(["check-config", str(write_yaml("webhook: [1, 2\n", "broken.yaml"))]) == 1
    assert "not valid YAML: line 2" in capsys.readouterr().err
    assert main(["check-config", "/nonexistent/agent.yaml"]) == 1


def test_durations_that_cannot_work_are_refused_with_their_field_paths(
    write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = yaml.safe_load(yaml.safe_dump(GOOD))
    bad["kubernetes"]["reconcile_interval"] = "0s"  # the reconciler would spin
    bad["ledger"] = {"inbox_retention": "500ms"}  # Redis cannot expire a key that soon
    bad["guard"] = {"cooldown": -60}
    assert main(["check-config", str(write_yaml(bad, "bad.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: invalid config (3 problems)" in err  # every one of them, in one pass
    assert "kubernetes.reconcile_interval: must be at least 1s (0s would be a busy loop)" in err
    assert "ledger.inbox_retention: must be at least 1s" in err
    assert "guard.cooldown: must not be negative" in err

    bad["kubernetes"]["reconcile_interval"] = float("inf")  # YAML's .inf: a config error too, not a traceback
    bad["ledger"] = {"inbox_retention": "100000d"}
    assert main(["check-config", str(write_yaml(bad, "bad.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "kubernetes.reconcile_interval: inf is not a duration" in err
    assert "ledger.inbox_retention: '100000d' is longer than ten years" in err

    good = yaml.safe_load(yaml.safe_dump(GOOD))
    good["kubernetes"].update({"reconcile_interval": "1s", "resume_check_after": "0s", "api_backoff": 0})
    good["guard"] = {"cooldown": "0s"}  # 0 turns the cooldown off
    assert main(["check-config", str(write_yaml(good, "good.yaml"))]) == 0
    assert "reconcile_interval: 1s" in capsys.readouterr().out


def test_rule_target_namespace_must_be_one_the_agent_may_touch(
    write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = yaml.safe_load(yaml.safe_dump(GOOD))
    bad["rules"][2]["target"] = {"namespace": "cortex-other"}
    bad["rules"][1]["action"]["params"]["replicas"] = -1  # reported alongside it
    assert main(["check-config", str(write_yaml(bad, "bad.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: invalid config (2 problems)" in err
    assert "rules[2].target.namespace: cortex-other is not in kubernetes.namespaces (cortex-mcp)" in err
    assert "rules[1].action.params.replicas: must be ≥ 0" in err

    bad["rules"][1]["action"]["params"]["replicas"] = 2
    bad["kubernetes"]["namespaces"] = ["cortex-mcp", "cortex-staging"]
    assert main(["check-config", str(write_yaml(bad, "bad.yaml"))]) == 1
    assert "cortex-other is not in kubernetes.namespaces (cortex-mcp, cortex-staging)" in capsys.readouterr().err

    for namespaces in (["cortex-mcp", "cortex-other"], ["*"]):
        bad["kubernetes"]["namespaces"] = namespaces
        assert main(["check-config", str(write_yaml(bad, "ok.yaml"))]) == 0, capsys.readouterr().err
        assert "valid (3 rules)" in capsys.readouterr().out


def test_missing_secret_is_named_not_shown(
    write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    path = write_yaml(GOOD)
    assert main(["check-config", str(path), "--secrets"]) == 1
    assert "webhook.auth.token: environment variable HOOK_TOKEN is not set" in capsys.readouterr().err
    monkeypatch.setenv("HOOK_TOKEN", "very-secret-value")
    assert main(["check-config", str(path), "--secrets"]) == 0
    assert "very-secret-value" not in capsys.readouterr().out


def test_run_refuses_a_bad_config_before_touching_anything(
    write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    assert main(["run", "--config", str(write_yaml(GOOD))]) == 1
    assert "HOOK_TOKEN is not set" in capsys.readouterr().err


async def test_decisions_command_lists_from_the_ledger(
    cluster,
    start_agent,
    base_config,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    from agent.cli import _decisions, build_parser
    from agent.config import LedgerConfig
    from agent.demo.alerts import alert, payload
    from tests.conftest import NS, post, settle

    agent = await start_agent()
    await post(agent, payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"})))
    await post(agent, payload(alert("MCPColdStartSlow")))
    await settle(agent)
    url = base_config["ledger"]["url"]
    args = build_parser().parse_args(
        ["decisions", "--ledger", url, "--since", "1h", "--target", f"{NS}/mcp-http-scaler"]
    )
    assert await _decisions(args, LedgerConfig(url=url)) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "[applied] pause ScaledObject/cortex-mcp/mcp-http-scaler" in out[0]
    args = build_parser().parse_args(["decisions", "--ledger", url, "--json"])
    assert await _decisions(args, LedgerConfig(url=url)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_decisions_command_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decisions"]) == 2
    assert main(["decisions", "--ledger", "postgres://x"]) == 2
    assert main(["decisions", "--ledger", "sqlite:///x.db", "--target", "no-slash"]) == 2
    assert main(["decisions", "--ledger", "sqlite:///x.db", "--since", "yesterday"]) == 2
    for limit in ("-1", "0", "ten"):
        with pytest.raises(SystemExit) as exit_:
            main(["decisions", "--ledger", "sqlite:///x.db", "--limit", limit])
        assert exit_.value.code == 2
    assert "argument --limit" in capsys.readouterr().err


def test_decisions_says_in_one_line_what_is_wrong_with_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "ledger.db"
    assert main(["decisions", "--ledger", f"sqlite:///{missing}"]) == 1
    assert capsys.readouterr().err == f"decisions: ledger not found: {missing} (is this the path the agent writes?)\n"
    assert not (tmp_path / "nowhere").exists()  # a reader never creates a ledger

    port = free_port()  # nothing listens there: a Redis that is down
    assert main(["decisions", "--ledger", f"redis://127.0.0.1:{port}/0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"decisions: redis unreachable at redis://127.0.0.1:{port}/0") and err.count("\n") == 1

    assert main(["decisions", "--ledger", "postgres://db/ledger"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must start with sqlite:///, redis://, rediss:// or unix://" in err


def test_demo_runs_the_real_agent_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--pace", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[applied] pause ScaledObject/cortex-mcp/mcp-http-scaler paused-replicas: None → 3" in out
    assert "[no-op] redelivery" in out
    assert "[refused] resume ScaledObject/cortex-mcp/mcp-cost-optimized" in out
    assert "[applied] revert ScaledObject/cortex-mcp/mcp-keda min-replicas: 4 → 2" in out  # expired while "down"
    assert "slack │" in out
    # The calendar: a window opens (by its lead), its new pods are warmed over MCP, and it closes.
    assert "[applied] window ScaledObject/cortex-mcp/mcp-cron-scaling min-replicas: 0 → 10" in out
    assert "[applied] warm-up ScaledObject/cortex-mcp/mcp-cron-scaling ready-pods: 10, warmed-pods: 7" in out
    assert "warmed 7 of 7 new pods" in out
    assert "[applied] revert ScaledObject/cortex-mcp/mcp-cron-scaling min-replicas: 10 → 0" in out
    assert "Final state of the ScaledObjects the agent touched" in out


def test_config_path_can_come_from_the_environment(
    write_yaml: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_yaml({**GOOD, "ledger": {"url": f"sqlite:///{tmp_path}/l.db"}})
    monkeypatch.setenv("SCALING_AGENT_CONFIG", str(path))
    # The ledger named in $SCALING_AGENT_CONFIG is the one looked for (it does not exist yet: a clear error).
    assert main(["decisions", "--since", "1h"]) == 1
    assert f"ledger not found: {tmp_path}/l.db" in capsys.readouterr().err


def test_effective_config_reads_back_as_the_same_config(
    write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["rules"][0]["matchers"] = ['severity="warning"', r'namespace=~"cortex-\w+"', 'team!="a \\"b\\""']
    first = load_config(write_yaml(data, "first.yaml"))
    assert main(["check-config", str(write_yaml(data, "first.yaml"))]) == 0
    printed = capsys.readouterr().out
    again = load_config(write_yaml(printed, "again.yaml"))
    for config in (first, again):  # as `check-config` and `run` read a file: each source checks its section
        config.sources = dict(check_sources(config, origin="test"))
    assert again == first
    assert printed.count("alertmanager:") == 1 and "enabled: true" in printed  # the source's defaults, shown
    assert matches(first.rules[0], event({"severity": "warning", "namespace": "cortex-mcp", "team": "x"}))
    assert not matches(first.rules[0], event({"severity": "warning", "namespace": "cortex-mcp", "team": 'a "b"'}))


def event(labels: dict[str, str], kind: EventKind = EventKind.ALERT) -> Event:
    return Event(
        source="test",
        key="k",
        alertname="MCPFrequentScaling",
        status="firing",
        fingerprint="f",
        labels=labels,
        kind=kind,
    )


def test_a_rule_matches_on_kind_and_labels_and_needs_a_name_or_a_matcher(write_yaml: Callable[..., Path]) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["rules"] = [
        {"name": "by-labels", "kind": "notice", "matchers": ['node=~"spot-.*"'], "action": {"type": "notify"}},
        {"name": "everything", "action": {"type": "notify"}},
    ]
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(data, "bad.yaml"))
    assert info.value.errors == [
        "rules[1]: give alertname, matchers, or both: a rule matching every event is a mistake"
    ]
    data["rules"].pop()
    [rule] = load_config(write_yaml(data, "good.yaml")).rules
    assert matches(rule, event({"node": "spot-node-1"}, EventKind.NOTICE))
    assert not matches(rule, event({"node": "spot-node-1"}))  # an alert with the same labels is another kind
    assert not matches(rule, event({"node": "on-demand-1"}, EventKind.NOTICE))
