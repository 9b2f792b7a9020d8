"""
``scaling-agent report``: known decisions in a real sqlite ledger, and the figures worked out by hand.

The ledger (T is now, the window the last 6h, namespace ``shop``; $0.05 a replica-hour throughout):

- ``shop/api``: a set_min at T-3h (+2, +$0.10/h), its revert at T-1h (-2): L = +2 for 2h, so 4.0 replica-hours
  and $0.20 added; and a dry-run set_min at T-4h (+5), which must move nothing;
- ``shop/worker``: a cap at T-2h (-3, -$0.15/h), still in force: 6.0 replica-hours and $0.30 saved; and two
  set_max refused by the cooldown (12s and 340s, different decision ids): one group of 2;
- ``shop/search``: a set_min at T-10h (+1), before the window (the lookback), and its revert at T-5h: L = +1
  from T-6h to T-5h, 1.0 replica-hour and $0.05 added (without the lookback it would be -1 for 5h: removed);
- ``shop/mail``: a raise_max at T-4h (+1) whose price was unknown, still in force: 4.0 replica-hours, $0, and
  one unpriced change;
- ``other/api``: a set_min at T-2h (+4, +$0.20/h): 8.0 replica-hours and $0.40, only without ``--namespace``.

So in ``shop``: 8 decisions in the window (api 3, worker 3, search 1, mail 1), 5 applied, 2 refused;
replica-hours 4 + 1 + 4 = 9.0 added, 6.0 removed; cost $0.20 + $0.05 = $0.25 added, $0.30 saved.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.ledger import SqliteLedger
from agent.report import MarkerKind, build_report, reason_pattern, render_csv, render_table, write_plot
from agent.structs import Costing, Decision, Outcome, PriceSource, TargetRef, Trigger, new_id, utcnow
from tests.conftest import ROOT

PRICE = 0.05
PNG = b"\x89PNG\r\n\x1a\n"
H = timedelta(hours=1)


def decision(
    at: datetime,
    action: str,
    *,
    target: str,
    delta: int | None = None,
    price: float | None = PRICE,
    outcome: Outcome = Outcome.APPLIED,
    reason: str = "because",
) -> Decision:
    namespace, name = target.split("/")
    cost = None
    if delta is not None:
        cost = Costing(
            replicas=3,
            replicas_delta=delta,
            per_replica_hour=price,
            delta_per_hour=None if price is None else delta * price,
            source=PriceSource.TABLE if price is not None else PriceSource.UNKNOWN,
        )
    return Decision(
        id=new_id(),
        at=at,
        trigger=Trigger("alertmanager", "MCPAtMaximumScale", "firing", "f1"),
        rule="r",
        action=action,
        target=TargetRef("ScaledObject", namespace, name),
        before={},
        after={},
        reason=reason,
        dry_run=outcome == Outcome.DRY_RUN,
        outcome=outcome,
        cost=cost,
    )


def cooldown(seconds: int) -> str:
    return f"cooldown: maxReplicaCount last changed {seconds}s ago (decision {new_id()})"


def known(now: datetime) -> list[Decision]:
    return [
        decision(now - 10 * H, "set_min", target="shop/search", delta=1),  # before the window: the lookback
        decision(now - 5 * H, "revert", target="shop/search", delta=-1),
        decision(now - 4 * H, "set_min", target="shop/api", delta=5, outcome=Outcome.DRY_RUN),
        decision(now - 4 * H, "raise_max", target="shop/mail", delta=1, price=None),
        decision(now - 3 * H, "set_min", target="shop/api", delta=2),
        decision(now - 2 * H, "cap", target="shop/worker", delta=-3),
        decision(now - 2 * H, "set_min", target="other/api", delta=4),
        decision(now - 1.5 * H, "set_max", target="shop/worker", outcome=Outcome.REFUSED, reason=cooldown(12)),
        decision(now - 1 * H, "revert", target="shop/api", delta=-2),
        decision(now - 0.5 * H, "set_max", target="shop/worker", outcome=Outcome.REFUSED, reason=cooldown(340)),
    ]


async def _fill(path: Path, decisions: list[Decision]) -> None:
    ledger = SqliteLedger(f"sqlite:///{path}")
    await ledger.open()
    try:
        for d in decisions:
            await ledger.record(d)
    finally:
        await ledger.close()


@pytest.fixture()
def ledger_url(tmp_path: Path) -> str:
    path = tmp_path / "ledger.db"
    asyncio.run(asyncio.wait_for(_fill(path, known(utcnow())), timeout=10))
    return f"sqlite:///{path}"


@pytest.fixture()
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def call(*argv: str) -> tuple[int, str, str]:
        code = main(["report", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_the_figures_are_those_worked_out_by_hand() -> None:
    now = utcnow()
    report = build_report(known(now), since=now - 6 * H, until=now, namespace="shop")
    total = report.total
    assert (total.decisions, total.applied, total.refused) == (8, 5, 2)
    assert total.replica_hours_added == pytest.approx(9.0)
    assert total.replica_hours_removed == pytest.approx(6.0)
    assert total.cost_added == pytest.approx(0.25)
    assert total.cost_saved == pytest.approx(0.30)
    assert total.replicas_held == -2  # the cap's -3, the unpriced +1
    assert total.cost_held_per_hour == pytest.approx(-0.15)
    assert report.unpriced == 1
    assert {(c.action, str(c.outcome)): c.count for c in report.counts} == {
        ("cap", "applied"): 1,
        ("raise_max", "applied"): 1,
        ("revert", "applied"): 2,
        ("set_max", "refused"): 2,
        ("set_min", "applied"): 1,
        ("set_min", "dry-run"): 1,
    }
    rows = {t.target: t for t in report.targets}
    # The top first: cost added + saved (worker $0.30, api $0.20, search $0.05), then replica-hours (mail).
    assert list(rows) == [
        "ScaledObject/shop/worker",
        "ScaledObject/shop/api",
        "ScaledObject/shop/search",
        "ScaledObject/shop/mail",
    ]
    api, worker = rows["ScaledObject/shop/api"], rows["ScaledObject/shop/worker"]
    assert (api.decisions, api.applied, api.replica_hours_added) == (3, 2, 4.0)
    assert api.cost_added == pytest.approx(0.2)
    assert (worker.decisions, worker.refused, worker.replica_hours_removed) == (3, 2, 6.0)
    assert rows["ScaledObject/shop/search"].replica_hours_added == pytest.approx(1.0)
    assert rows["ScaledObject/shop/search"].replica_hours_removed == 0
    assert (rows["ScaledObject/shop/mail"].replica_hours_added, rows["ScaledObject/shop/mail"].cost_added) == (4.0, 0)

    [refusals] = report.refusals
    assert refusals.count == 2
    assert refusals.reason == "cooldown: maxReplicaCount last changed Ns ago (decision <id>)"
    assert refusals.example.startswith("cooldown: maxReplicaCount last changed 340s ago (decision ")

    # The summed levels as steps, from the lookback's +1 at the window's start to the cap and the unpriced +1.
    assert [(round((p.at - now) / H, 2), p.replicas, round(p.cost_per_hour, 6)) for p in report.series] == [
        (-6, 1, 0.05),
        (-5, 0, 0),
        (-4, 1, 0),
        (-3, 3, 0.1),
        (-2, 0, -0.05),
        (-1, -2, -0.15),
        (0, -2, -0.15),
    ]
    assert [(round((m.at - now) / H, 2), m.kind) for m in report.markers] == [
        (-5, MarkerKind.DOWN),
        (-4, MarkerKind.UP),
        (-3, MarkerKind.UP),
        (-2, MarkerKind.DOWN),
        (-1.5, MarkerKind.REFUSED),
        (-1, MarkerKind.DOWN),
        (-0.5, MarkerKind.REFUSED),
    ]


def test_every_namespace_and_no_lookback() -> None:
    now = utcnow()
    everything = build_report(known(now), since=now - 6 * H, until=now)
    assert everything.targets[0].target == "ScaledObject/other/api"  # $0.40: the top
    assert everything.total.decisions == 9
    assert everything.total.replica_hours_added == pytest.approx(17.0)
    assert everything.total.cost_added == pytest.approx(0.65)
    # Without the decisions before the window, search's revert looks like a removal of 1 replica for 5h.
    inside = [d for d in known(now) if d.at >= now - 6 * H]
    blind = build_report(inside, since=now - 6 * H, until=now, namespace="shop")
    assert blind.total.replica_hours_removed == pytest.approx(11.0)
    assert blind.total.replica_hours_added == pytest.approx(8.0)


def test_reasons_group_without_their_digits_and_ids() -> None:
    assert reason_pattern(cooldown(12)) == reason_pattern(cooldown(3600))
    assert reason_pattern("floor 2 above ceiling 1.5 (decision 20261129T091203-4f2a1c)") == (
        "floor N above ceiling N (decision <id>)"
    )


def test_an_empty_ledger_renders(tmp_path: Path) -> None:
    now = utcnow()
    report = build_report([], since=now - H, until=now)
    assert "decisions: 0" in render_table(report)
    assert render_csv(report).splitlines()[-1] == "TOTAL,0,0,0,0.0,0.0,0.0,0.0"
    write_plot(report, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG)


def test_the_table(run: Callable[..., tuple[int, str, str]], ledger_url: str) -> None:
    code, out, _ = run("--ledger", ledger_url, "--since", "6h", "--namespace", "shop")
    assert code == 0, out
    assert "UTC), namespace shop" in out
    assert "decisions: 8 (5 applied, 2 refused, 1 other)" in out
    assert "replica-hours: 9.0 added, 6.0 removed" in out
    assert "estimated cost: $0.25 added, $0.30 saved (1 change unpriced, counted as $0)" in out
    assert "      2  cooldown: maxReplicaCount last changed Ns ago (decision <id>)" in out
    assert "last changed 340s ago" in out  # the example: the newest
    lines = out.splitlines()
    top = lines.index("Top targets (by cost added + saved, then replica-hours)")
    # With --namespace the header names it; the rows leave it out.
    assert lines[top + 2].split()[:4] == ["ScaledObject/worker", "3", "1", "2"]


def test_json_and_csv(run: Callable[..., tuple[int, str, str]], ledger_url: str) -> None:
    code, out, _ = run("--ledger", ledger_url, "--since", "6h", "--namespace", "shop", "--format", "json")
    assert code == 0
    data = json.loads(out)
    # The window ends when the command runs, a moment after the data was written: approximately.
    assert data["total"]["replica_hours_added"] == pytest.approx(9.0, abs=0.05)
    assert data["total"]["replica_hours_removed"] == pytest.approx(6.0, abs=0.05)
    assert data["total"]["cost_added"] == pytest.approx(0.25, abs=0.01)
    assert data["total"]["cost_saved"] == pytest.approx(0.30, abs=0.01)
    assert (data["total"]["decisions"], data["unpriced"], data["namespace"]) == (8, 1, "shop")
    assert [r["count"] for r in data["refusals"]] == [2]
    assert {"action": "revert", "outcome": "applied", "count": 2} in data["counts"]

    code, out, _ = run("--ledger", ledger_url, "--since", "6h", "--namespace", "shop", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "target",
        "decisions",
        "applied",
        "refused",
        "replica_hours_added",
        "replica_hours_removed",
        "cost_added",
        "cost_saved",
    ]
    assert [r["target"] for r in rows] == [
        "ScaledObject/shop/worker",
        "ScaledObject/shop/api",
        "ScaledObject/shop/search",
        "ScaledObject/shop/mail",
        "TOTAL",
    ]
    total = rows[-1]
    assert (total["decisions"], total["applied"], total["refused"]) == ("8", "5", "2")
    assert float(total["replica_hours_added"]) == pytest.approx(9.0, abs=0.05)
    assert float(total["replica_hours_removed"]) == pytest.approx(6.0, abs=0.05)
    assert float(total["cost_added"]) == pytest.approx(0.25, abs=0.01)
    assert float(total["cost_saved"]) == pytest.approx(0.30, abs=0.01)


def test_the_config_names_the_ledger(
    run: Callable[..., tuple[int, str, str]], ledger_url: str, write_yaml: Callable[[Any], Path]
) -> None:
    config = write_yaml(
        {
            "webhook": {"auth": {"type": "bearer", "token": {"env": "HOOK_TOKEN"}}},
            "kubernetes": {"namespaces": ["shop"]},
            "ledger": {"url": ledger_url},
            "rules": [{"name": "a", "alertname": "MCPFrequentScaling", "action": {"type": "pause"}}],
        }
    )
    code, out, _ = run("--config", str(config), "--since", "6h", "--format", "json")
    assert code == 0
    assert json.loads(out)["total"]["decisions"] == 9  # every namespace


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_the_plot(run: Callable[..., tuple[int, str, str]], ledger_url: str, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    code, _, err = run("--ledger", ledger_url, "--since", "6h", "--plot", str(path))
    assert code == 0, err
    head = path.read_bytes()[:200]
    assert head.startswith(PNG) if suffix == ".png" else b"<svg" in head


def test_usage_errors_come_before_anything_is_read(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path}/missing.db"
    code, _, err = run("--ledger", missing, "--plot", str(tmp_path / "x.jpg"))
    assert code == 2
    assert ".png or .svg" in err
    code, _, err = run("--ledger", missing, "--since", "a week")
    assert (code, err.startswith("report: --since:")) == (2, True)
    code, _, err = run("--ledger", "http://nowhere")
    assert code == 2
    assert not (tmp_path / "missing.db").exists()


def test_a_missing_ledger_is_not_created(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    code, out, err = run("--ledger", f"sqlite:///{tmp_path}/missing.db")
    assert (code, out) == (1, "")
    assert "ledger not found" in err
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_the_plot_names_the_extra(
    run: Callable[..., tuple[int, str, str]], ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, out, err = run("--ledger", ledger_url, "--plot", str(tmp_path / "x.png"))
    assert (code, out) == (2, "")
    assert "pip install 'mcp-scaling-agent[report]'" in err
    assert not (tmp_path / "x.png").exists()


def test_matplotlib_is_the_report_extra_and_imported_only_for_a_plot() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["report"] == ["matplotlib>=3.7"]
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")]  # so never in the image
    assert "report" not in (ROOT / "Dockerfile").read_text().split("pip install")[-1]
    code = "import sys, agent.cli, agent.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
