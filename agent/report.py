"""
``scaling-agent report``: what the agent did over a window, and what it cost or saved, from the ledger alone.

No cluster is needed: every figure comes from the decisions the ledger holds, and the costs from the
:class:`~agent.structs.Costing` each change carried when it was made (priced then, so a later price change does
not rewrite history). The report is one pure computation, :func:`build_report`, over a list of decisions; the
table, JSON, CSV and the plot are renderers of its result, so they can never disagree.

The model. Per target, the agent's *level* ``L(t)`` is the running sum of ``replicas_delta`` over the target's
decisions that are ``applied``, not dry-run, and carry a costing; a give-back (``revert``) carries the opposite of
what its claim added, so a change and its give-back sum to zero. The cost level ``C(t)`` is the same running sum
of ``cost_delta_per_hour``; a change whose price was unknown counts $0 there, and the report says how many there
were. Over the window ``[since, until]``:

- replica-hours added = ∫ max(L, 0) dt, removed = ∫ max(-L, 0) dt (in hours);
- cost added = ∫ max(C, 0) dt, saved = ∫ max(-C, 0) dt (in $).

A level at the window's start comes from changes made before it (a floor set yesterday and still held), so the
caller passes decisions from a lookback before ``since`` too: they set the starting levels, and only the
decisions inside the window are counted, grouped or marked. The totals are the sums over targets, so a floor on
one target and a cap on another are an addition and a removal, not a net zero. A namespace keeps the decisions
whose target is in it (a decision without a target, or about a Node, is in none).

Refusals are grouped by their reason with the digits and decision ids taken out
(``cooldown: maxReplicaCount last changed 12s ago (decision 01J…)`` and its siblings are one line), with a count
and the newest one as the example.

matplotlib draws the plot (:func:`write_plot`). It is the ``report`` extra, not a dependency: the agent's image
never needs it, so it is imported only when a plot is asked for.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import LedgerConfig
from agent.ledger import make_ledger
from agent.structs import Decision, Outcome, utcnow

PLOT_SUFFIXES = (".png", ".svg")
INSTALL_HINT = "pip install 'mcp-scaling-agent[report]'"
DEFAULT_LOOKBACK = timedelta(days=30)
READ_LIMIT = 1_000_000  # decisions read per report: a ledger of a busy year, far past any real window
TOP_TARGETS = 10  # targets the table shows; JSON and CSV list them all
CSV_HEADER = (
    "target",
    "decisions",
    "applied",
    "refused",
    "replica_hours_added",
    "replica_hours_removed",
    "cost_added",
    "cost_saved",
)
TOTAL = "TOTAL"

# A decision id: a ULID (26 Crockford characters), or the older time-and-hex form (20261129T091203-4f2a1c).
_IDS = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b|\b\d{8}T\d{6}-[0-9a-f]{6}\b")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


class PlotUnavailable(Exception):
    """``--plot`` cannot be honoured: a suffix matplotlib is not asked to write, or matplotlib is not installed."""


class MarkerKind(enum.StrEnum):
    UP = "up"  # an applied change that added replicas (or cost)
    DOWN = "down"  # one that removed them
    REFUSED = "refused"


@dataclass(frozen=True)
class ActionCount:
    action: str
    outcome: Outcome
    count: int


@dataclass(frozen=True)
class TargetFigures:
    """One target's row (or the TOTAL row): its decisions in the window, and the integrals of its levels."""

    target: str
    decisions: int
    applied: int
    refused: int
    replica_hours_added: float
    replica_hours_removed: float
    cost_added: float
    cost_saved: float
    replicas_held: int  # L at the window's end: what the agent's changes still hold (+ added, - removed)
    cost_held_per_hour: float  # C at the window's end

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "decisions": self.decisions,
            "applied": self.applied,
            "refused": self.refused,
            "replica_hours_added": _num(self.replica_hours_added),
            "replica_hours_removed": _num(self.replica_hours_removed),
            "cost_added": _num(self.cost_added),
            "cost_saved": _num(self.cost_saved),
            "replicas_held": self.replicas_held,
            "cost_held_per_hour": _num(self.cost_held_per_hour),
        }


@dataclass(frozen=True)
class RefusalGroup:
    reason: str  # the pattern: digits as N, decision ids as <id>
    count: int
    example: str  # the newest refusal's reason, as written
    example_decision: str
    last_at: datetime


@dataclass(frozen=True)
class Point:
    """The agent's levels summed over targets, from ``at`` on (a step, until the next point)."""

    at: datetime
    replicas: int
    cost_per_hour: float


@dataclass(frozen=True)
class Marker:
    """A decision drawn on the plot, at the summed levels just after it."""

    at: datetime
    kind: MarkerKind
    replicas: int
    cost_per_hour: float
    action: str
    target: str
    decision: str


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    namespace: str | None
    counts: tuple[ActionCount, ...]  # by action, then outcome
    targets: tuple[TargetFigures, ...]  # the top first: cost added + saved, then replica-hours
    total: TargetFigures  # every decision in the window (those without a target too), the sums of the targets
    unpriced: int  # applied changes in the window whose price was unknown (counted as $0)
    refusals: tuple[RefusalGroup, ...]  # the most frequent first
    series: tuple[Point, ...]  # from since to until
    markers: tuple[Marker, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "namespace": self.namespace,
            "total": self.total.to_dict(),
            "unpriced": self.unpriced,
            "counts": [{"action": c.action, "outcome": str(c.outcome), "count": c.count} for c in self.counts],
            "targets": [t.to_dict() for t in self.targets],
            "refusals": [
                {
                    "reason": r.reason,
                    "count": r.count,
                    "example": r.example,
                    "example_decision": r.example_decision,
                    "last_at": _iso(r.last_at),
                }
                for r in self.refusals
            ],
            "series": [
                {"at": _iso(p.at), "replicas": p.replicas, "cost_per_hour": _num(p.cost_per_hour)} for p in self.series
            ],
            "markers": [
                {
                    "at": _iso(m.at),
                    "kind": str(m.kind),
                    "replicas": m.replicas,
                    "cost_per_hour": _num(m.cost_per_hour),
                    "action": m.action,
                    "target": m.target,
                    "decision": m.decision,
                }
                for m in self.markers
            ],
        }


def reason_pattern(reason: str) -> str:
    """A refusal's reason with its decision ids and digits taken out, so that siblings group together."""
    return _NUMBERS.sub("N", _IDS.sub("<id>", reason))


def _moves(decision: Decision) -> tuple[int, float, bool] | None:
    """
    What a change adds to its target's levels: (replicas, $/h, unpriced), or None when it adds nothing. Only an
    applied change counts: an ``applying`` row is one a crash cut short (settled by a later row), a dry run
    changed nothing, and a change without a costing (a pause, a cordon) moves no replica bound the agent priced.
    """
    if decision.outcome != Outcome.APPLIED or decision.dry_run or decision.cost is None or decision.target is None:
        return None
    replicas = decision.cost.replicas_delta or 0
    per_hour = decision.cost.delta_per_hour
    return replicas, per_hour or 0.0, per_hour is None and replicas != 0


class _Level:
    """One target's running levels and their integrals, walked forward in time."""

    def __init__(self, since: datetime) -> None:
        self.at = since
        self.replicas = 0
        self.cost = 0.0
        self.replica_hours = [0.0, 0.0]  # added, removed
        self.money = [0.0, 0.0]  # added, saved

    def advance(self, to: datetime) -> None:
        hours = max((to - self.at).total_seconds(), 0.0) / 3600
        if hours:
            self.replica_hours[0] += max(self.replicas, 0) * hours
            self.replica_hours[1] += max(-self.replicas, 0) * hours
            self.money[0] += max(self.cost, 0.0) * hours
            self.money[1] += max(-self.cost, 0.0) * hours
        self.at = max(self.at, to)

    def move(self, replicas: int, cost: float) -> None:
        self.replicas += replicas
        self.cost = round(self.cost + cost, 9)  # so that +0.1 then -0.1 is 0, not a residue integrated for days


def build_report(
    decisions: Iterable[Decision], *, since: datetime, until: datetime, namespace: str | None = None
) -> Report:
    """
    The report over ``[since, until]`` from ``decisions`` (any order). Decisions before ``since`` only set the
    starting levels; those after ``until`` are ignored; ``namespace`` keeps the decisions whose target is in it.
    """
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    kept = sorted(
        (
            d
            for d in decisions
            if d.at <= until and (namespace is None or (d.target is not None and d.target.namespace == namespace))
        ),
        key=lambda d: (d.at, d.id),
    )
    levels: dict[str, _Level] = {}
    rows: dict[str, Counter[str]] = defaultdict(Counter)  # target -> decisions, applied, refused
    counts: Counter[tuple[str, Outcome]] = Counter()
    refused: dict[str, list[Decision]] = defaultdict(list)
    unpriced = 0
    replicas_total, cost_total = 0, 0.0
    series: list[Point] = []
    markers: list[Marker] = []
    for decision in kept:
        inside = decision.at >= since
        if inside and not series:  # the levels the lookback left, at the window's start
            series.append(Point(at=since, replicas=replicas_total, cost_per_hour=cost_total))
        target = str(decision.target) if decision.target is not None else ""
        moves = _moves(decision)
        if moves is not None:
            replicas, cost, unknown_price = moves
            level = levels.setdefault(target, _Level(since))
            level.advance(decision.at)
            level.move(replicas, cost)
            replicas_total += replicas
            cost_total = round(cost_total + cost, 9)
            if inside:
                unpriced += unknown_price
                series.append(Point(at=decision.at.astimezone(UTC), replicas=replicas_total, cost_per_hour=cost_total))
                if replicas or cost:
                    up = replicas > 0 or (replicas == 0 and cost > 0)
                    markers.append(
                        _marker(
                            decision, MarkerKind.UP if up else MarkerKind.DOWN, replicas=replicas_total, cost=cost_total
                        )
                    )
        if not inside:
            continue
        counts[decision.action, decision.outcome] += 1
        if target:
            rows[target]["decisions"] += 1
            rows[target]["applied"] += decision.outcome == Outcome.APPLIED
            rows[target]["refused"] += decision.outcome == Outcome.REFUSED
        if decision.outcome == Outcome.REFUSED:
            refused[reason_pattern(decision.reason)].append(decision)
            markers.append(_marker(decision, MarkerKind.REFUSED, replicas=replicas_total, cost=cost_total))
    if not series:
        series.append(Point(at=since, replicas=replicas_total, cost_per_hour=cost_total))
    series.append(Point(at=until, replicas=replicas_total, cost_per_hour=cost_total))

    figures = []
    for target in sorted(set(levels) | set(rows)):
        level = levels.get(target) or _Level(since)
        level.advance(until)
        row = rows[target]
        figures.append(
            TargetFigures(
                target=target,
                decisions=row["decisions"],
                applied=row["applied"],
                refused=row["refused"],
                replica_hours_added=level.replica_hours[0],
                replica_hours_removed=level.replica_hours[1],
                cost_added=level.money[0],
                cost_saved=level.money[1],
                replicas_held=level.replicas,
                cost_held_per_hour=level.cost,
            )
        )
    # A target whose lookback changes were all given back before the window did nothing in it: not a row.
    figures = [f for f in figures if f.decisions or f.replicas_held or f.cost_held_per_hour or f.replica_hours_added]
    figures.sort(
        key=lambda f: (-(f.cost_added + f.cost_saved), -(f.replica_hours_added + f.replica_hours_removed), f.target)
    )
    inside_decisions = sum(counts.values())
    total = TargetFigures(
        target=TOTAL,
        decisions=inside_decisions,
        applied=sum(n for (_, outcome), n in counts.items() if outcome == Outcome.APPLIED),
        refused=sum(n for (_, outcome), n in counts.items() if outcome == Outcome.REFUSED),
        replica_hours_added=sum(f.replica_hours_added for f in figures),
        replica_hours_removed=sum(f.replica_hours_removed for f in figures),
        cost_added=sum(f.cost_added for f in figures),
        cost_saved=sum(f.cost_saved for f in figures),
        replicas_held=sum(f.replicas_held for f in figures),
        cost_held_per_hour=round(sum(f.cost_held_per_hour for f in figures), 9),
    )
    groups = [
        RefusalGroup(
            reason=pattern,
            count=len(group),
            example=group[-1].reason,
            example_decision=group[-1].id,
            last_at=group[-1].at.astimezone(UTC),
        )
        for pattern, group in refused.items()
    ]
    groups.sort(key=lambda g: (-g.count, g.reason))
    outcome_order = list(Outcome)
    return Report(
        since=since,
        until=until,
        namespace=namespace,
        counts=tuple(
            ActionCount(action=action, outcome=outcome, count=n)
            for (action, outcome), n in sorted(counts.items(), key=lambda i: (i[0][0], outcome_order.index(i[0][1])))
        ),
        targets=tuple(figures),
        total=total,
        unpriced=unpriced,
        refusals=tuple(groups),
        series=tuple(series),
        markers=tuple(markers),
    )


def _marker(decision: Decision, kind: MarkerKind, *, replicas: int, cost: float) -> Marker:
    return Marker(
        at=decision.at.astimezone(UTC),
        kind=kind,
        replicas=replicas,
        cost_per_hour=cost,
        action=decision.action,
        target=str(decision.target) if decision.target is not None else "-",
        decision=decision.id,
    )


async def report_from_ledger(
    ledger_config: LedgerConfig,
    *,
    since: timedelta,
    namespace: str | None = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
    until: datetime | None = None,
) -> Report:
    """
    The report over the last ``since`` (up to ``until``, default now), read from the ledger read-only: it never
    creates, changes or locks it, so it is safe beside the running agent. Decisions from ``lookback`` before the
    window set the levels at its start. Raises :class:`~agent.ledger.LedgerUnavailable` (a missing ledger too).
    """
    end = until or utcnow()
    start = end - since
    ledger = make_ledger(ledger_config, readonly=True)
    try:
        await ledger.open()
        decisions = await ledger.decisions(since=start - lookback, limit=READ_LIMIT)
    finally:
        await ledger.close()
    return build_report(decisions, since=start, until=end, namespace=namespace)


# --- renderers ---------------------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _num(value: float) -> float:
    # Six decimals: a micro-dollar, a few milliseconds of a replica; the float residue of the sums goes.
    return round(value, 6) + 0.0  # + 0.0: never -0.0


def _when(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M}Z"


def _money(value: float) -> str:
    return f"{'-' if value < -0.005 else ''}${abs(value):,.2f}"


def _rate(value: float) -> str:
    return f"{'-' if value < 0 else '+'}${abs(value):.4f}/h"


def _held(figures: TargetFigures) -> str:
    """What the agent's changes still hold at the window's end: ``-3 (-$0.1500/h)``, ``+1`` unpriced, ``-`` none."""
    replicas, cost = figures.replicas_held, figures.cost_held_per_hour
    if not replicas and not cost:
        return "-"
    return f"{replicas:+d} ({_rate(cost)})" if cost else f"{replicas:+d}"


def _aligned(rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    """Rows as columns: the first ``left`` columns flush left (names), the rest flush right (figures)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(cell.ljust(widths[i]) if i < left else cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]


def _shown(target: str, namespace: str | None) -> str:
    """A target as the table shows it: without the namespace when the report is about one (its header says it)."""
    if namespace is None:
        return target
    kind, _, rest = target.partition("/")
    return f"{kind}/{rest.removeprefix(namespace + '/')}"


def render_table(report: Report) -> str:
    """The report for a person: totals, the decisions by action and outcome, the top targets, the refusals."""
    total = report.total
    scope = f", namespace {report.namespace}" if report.namespace else ""
    others = total.decisions - total.applied - total.refused
    lines = [
        f"Report {_when(report.since)} → {_when(report.until)} (UTC){scope}",
        f"  decisions: {total.decisions} ({total.applied} applied, {total.refused} refused, {others} other)",
        f"  replica-hours: {total.replica_hours_added:.1f} added, {total.replica_hours_removed:.1f} removed",
        f"  estimated cost: {_money(total.cost_added)} added, {_money(total.cost_saved)} saved"
        + (
            f" ({report.unpriced} change{'s' if report.unpriced != 1 else ''} unpriced, counted as $0)"
            if report.unpriced
            else ""
        ),
        f"  held at the end: {total.replicas_held:+d} replicas, {_rate(total.cost_held_per_hour)}",
    ]
    if report.counts:
        outcomes = [o for o in Outcome if any(c.outcome == o for c in report.counts)]
        actions = sorted({c.action for c in report.counts})
        table = {(c.action, c.outcome): c.count for c in report.counts}
        rows = [["action", *map(str, outcomes), "total"]]
        for action in actions:
            cells = [table.get((action, o), 0) for o in outcomes]
            rows.append([action, *(str(n) if n else "-" for n in cells), str(sum(cells))])
        sums = [sum(table.get((a, o), 0) for a in actions) for o in outcomes]
        rows.append(["total", *map(str, sums), str(sum(sums))])
        lines += ["", "Decisions by action and outcome", *_aligned(rows)]
    if report.targets:
        rows = [
            [
                "target",
                "decisions",
                "applied",
                "refused",
                "replica-h added",
                "removed",
                "cost added",
                "saved",
                "held at end",
            ]
        ]
        for f in report.targets[:TOP_TARGETS]:
            rows.append(
                [
                    _shown(f.target, report.namespace),
                    str(f.decisions),
                    str(f.applied),
                    str(f.refused),
                    f"{f.replica_hours_added:.1f}",
                    f"{f.replica_hours_removed:.1f}",
                    _money(f.cost_added),
                    _money(f.cost_saved),
                    _held(f),
                ]
            )
        lines += ["", "Top targets (by cost added + saved, then replica-hours)", *_aligned(rows)]
        if len(report.targets) > TOP_TARGETS:
            lines.append(f"  … and {len(report.targets) - TOP_TARGETS} more (--format csv lists every target)")
    if report.refusals:
        width = max(len("count"), *(len(str(r.count)) for r in report.refusals))
        lines += ["", "Refusals by reason (digits as N, decision ids as <id>)", f"  {'count':>{width}}  reason"]
        for r in report.refusals:
            lines.append(f"  {r.count:>{width}}  {r.reason}")
            lines.append(f"  {'':>{width}}    e.g. {_when(r.last_at)} {r.example_decision}: {r.example}")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_csv(report: Report) -> str:
    """One row per target, the top first, then a TOTAL row (whose decisions include those without a target)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for figures in (*report.targets, report.total):
        row = figures.to_dict()
        writer.writerow([row[name] for name in CSV_HEADER])
    return out.getvalue()


def check_plot(path: str | Path) -> None:
    """Before anything is read: a suffix the plot can be written as, and matplotlib installed (PlotUnavailable)."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise PlotUnavailable(f"{path}: the plot is written as .png or .svg, not {suffix or 'a file without a suffix'}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"the plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def write_plot(report: Report, path: str | Path) -> None:
    """
    Cost ($/h) above and replicas below, over the window: the agent's levels summed over targets as steps, with
    its decisions marked (▲ added, ▼ removed, x refused). A Figure with its own canvas, never pyplot: no GUI
    backend is ever touched, nor any state global to the process.
    """
    check_plot(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = [p.at for p in report.series]
    figure = Figure(figsize=(10, 6), layout="constrained")
    FigureCanvasAgg(figure)
    cost_axes, replica_axes = figure.subplots(2, 1, sharex=True)
    cost_axes.step(times, [p.cost_per_hour for p in report.series], where="post", color="tab:orange")
    replica_axes.step(times, [p.replicas for p in report.series], where="post", color="tab:blue")
    styles = {
        MarkerKind.UP: ("^", "tab:red", "added"),
        MarkerKind.DOWN: ("v", "tab:green", "removed"),
        MarkerKind.REFUSED: ("x", "tab:gray", "refused"),
    }
    for kind, (marker, color, label) in styles.items():
        chosen = [m for m in report.markers if m.kind == kind]
        if not chosen:
            continue
        at = [m.at for m in chosen]
        cost_axes.scatter(at, [m.cost_per_hour for m in chosen], marker=marker, color=color, label=label, zorder=3)
        replica_axes.scatter(at, [m.replicas for m in chosen], marker=marker, color=color, label=label, zorder=3)
    scope = f", namespace {report.namespace}" if report.namespace else ""
    cost_axes.set_title(f"The agent's changes, {_when(report.since)} → {_when(report.until)} (UTC){scope}")
    cost_axes.set_ylabel("cost ($/h)")
    replica_axes.set_ylabel("replicas")
    replica_axes.set_xlabel("time (UTC)")
    for axes in (cost_axes, replica_axes):
        axes.axhline(0, color="black", linewidth=0.5)
        axes.grid(True, alpha=0.3)
    if report.markers:
        replica_axes.legend(loc="best", fontsize="small")
    figure.autofmt_xdate()
    figure.savefig(path, format=Path(path).suffix.lower().lstrip("."))
