"""
``scaling-agent``: run the agent, check a config file, run the demo, list decisions, report, show the calendar.

Exit codes: 0 success; 1 a config error (every problem printed, one per line,
as ``FILE: field.path: message``); 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from agent.config import ConfigError, LedgerConfig, format_errors
from agent.configfile import Config, check_secrets, effective_config, load_config
from agent.durations import parse_duration
from agent.structs import TargetRef, utcnow

CONFIG_ENV = "SCALING_AGENT_CONFIG"  # so `kubectl exec … scaling-agent decisions` needs no flags in the pod


def _print_config_error(exc: ConfigError) -> int:
    print(
        f"{exc.source}: invalid config ({len(exc.errors)} problem{'s' if len(exc.errors) != 1 else ''})",
        file=sys.stderr,
    )
    for line in exc.errors:
        print(f"  {line}", file=sys.stderr)
    return 1


def _load(path: str, *, secrets: bool) -> Config:
    from agent.sources import check_sources

    config = load_config(path)
    # Each source checks its own section; the checked settings (defaults filled in) replace the raw ones.
    config.sources = dict(check_sources(config, origin=path))
    if secrets:
        check_secrets(config, source=path)
    return config


async def _run(config: Config, *, dry_run: bool, kubeconfig: str | None, context: str | None) -> None:
    from agent.app import Agent
    from agent.kube import make_api_client

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = await make_api_client(kubeconfig=kubeconfig, context=context)
    async with api:
        await Agent(config, api=api, dry_run=dry_run).run_until(stop)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging

    try:
        config = _load(args.config, secrets=True)
    except ConfigError as exc:
        return _print_config_error(exc)
    setup_logging(level=config.log.level, fmt=config.log.format)
    try:
        asyncio.run(_run(config, dry_run=args.dry_run, kubeconfig=args.kubeconfig, context=args.context))
    except Exception as exc:  # no kubeconfig, a ledger it cannot open, a port in use: say so, no traceback
        structlog.get_logger("agent").error("agent could not run", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args.file, secrets=args.secrets)
    except ConfigError as exc:
        return _print_config_error(exc)
    print(f"# {args.file}: valid ({len(config.rules)} rules). Effective config, defaults filled in:")
    print(yaml.safe_dump(effective_config(config), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    result: int = asyncio.run(run_demo(examples=args.examples, pace=args.pace))
    return result


def _cluster_scoped_kinds() -> frozenset[str]:
    from agent.targets import CLUSTER_SCOPED

    return CLUSTER_SCOPED


async def _decisions(args: argparse.Namespace, ledger_config: LedgerConfig) -> int:
    from agent.ledger import LedgerUnavailable, make_ledger

    since: datetime | None = utcnow() - parse_duration(args.since) if args.since else None
    target = None
    if args.target:
        namespace, _, name = args.target.rpartition("/")  # a cluster-scoped object (a Node) has no namespace
        target = TargetRef(kind=args.kind, namespace=namespace, name=name)
    # Read-only: a reader beside the running agent must never change its ledger (nor create one).
    ledger = make_ledger(ledger_config, readonly=True)
    try:
        await ledger.open()
        decisions = await ledger.decisions(since=since, target=target, limit=args.limit)
        if args.follows:  # one whole: the decision and every step that follows it (an evacuation, a window)
            decisions = [d for d in decisions if args.follows in (d.id, d.follows)]
    except LedgerUnavailable as exc:
        print(f"decisions: {exc}", file=sys.stderr)
        return 1
    finally:
        await ledger.close()
    for decision in decisions:
        if args.json:
            print(json.dumps(decision.to_dict(), sort_keys=True))
        else:
            print(f"{decision.at:%Y-%m-%d %H:%M:%S}Z {decision.summary()}")
    if not args.json:
        print(f"({len(decisions)} decision{'s' if len(decisions) != 1 else ''})", file=sys.stderr)
    return 0


def _ledger_config(args: argparse.Namespace, command: str) -> LedgerConfig | int:
    """The ledger a reader command reads: ``--ledger URL``, else the config's; an exit code when neither works."""
    if args.ledger:
        try:
            return LedgerConfig(url=args.ledger)
        except ValidationError as exc:
            print(f"{command}: --ledger {args.ledger}: {format_errors(exc)[0].partition(': ')[2]}", file=sys.stderr)
            return 2
    if args.config:
        try:
            return load_config(args.config).ledger
        except ConfigError as exc:
            return _print_config_error(exc)
    print(f"{command}: give --config FILE or --ledger URL (or set {CONFIG_ENV})", file=sys.stderr)
    return 2


def cmd_decisions(args: argparse.Namespace) -> int:
    ledger_config = _ledger_config(args, "decisions")
    if isinstance(ledger_config, int):
        return ledger_config
    if args.target and "/" not in args.target and args.kind not in _cluster_scoped_kinds():
        print(
            "decisions: --target must be NAMESPACE/NAME (NAME alone for a cluster-scoped --kind: Node)", file=sys.stderr
        )
        return 2
    if args.since:
        try:
            parse_duration(args.since)
        except ValueError as exc:
            print(f"decisions: --since: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(_decisions(args, ledger_config))


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: the plot's suffix and matplotlib are checked first, before a config or a ledger is read."""
    from agent.ledger import LedgerUnavailable
    from agent.report import PlotUnavailable, check_plot, render_csv, render_json, render_table, report_from_ledger

    if args.plot:
        try:
            check_plot(args.plot)
        except PlotUnavailable as exc:
            print(f"report: --plot {exc}", file=sys.stderr)
            return 2
    durations = {}
    for name in ("since", "lookback"):
        try:
            durations[name] = parse_duration(getattr(args, name))
        except ValueError as exc:
            print(f"report: --{name}: {exc}", file=sys.stderr)
            return 2
    ledger_config = _ledger_config(args, "report")
    if isinstance(ledger_config, int):
        return ledger_config
    try:
        report = asyncio.run(
            report_from_ledger(
                ledger_config, since=durations["since"], namespace=args.namespace, lookback=durations["lookback"]
            )
        )
    except LedgerUnavailable as exc:  # read-only: a missing ledger is an error, never created
        print(f"report: {exc}", file=sys.stderr)
        return 1
    render = {"table": render_table, "json": render_json, "csv": render_csv}[args.format]
    print(render(report), end="")
    if args.plot:
        from agent.report import write_plot

        try:
            write_plot(report, args.plot)
        except OSError as exc:
            print(f"report: --plot {args.plot}: {exc}", file=sys.stderr)
            return 1
        print(f"report: plot written to {args.plot}", file=sys.stderr)
    return 0


def _when(text: str) -> datetime:
    """``--at``: ISO 8601 (``2026-12-07T10:00``, ``…+01:00``, ``…Z``; no offset: UTC), or ``now``."""
    if text == "now":
        return utcnow()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        message = f"{text!r} is not a time such as 2026-12-07T10:00 or 2026-12-07T10:00+01:00"
        raise argparse.ArgumentTypeError(message) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def cmd_schedule(args: argparse.Namespace) -> int:
    from agent.sources.calendar import CalendarSettings, schedule_report

    if not args.config:
        print(f"schedule: give --config FILE (or set {CONFIG_ENV})", file=sys.stderr)
        return 2
    try:
        config = _load(args.config, secrets=False)
    except ConfigError as exc:
        return _print_config_error(exc)
    settings = config.sources.get("calendar")
    assert isinstance(settings, CalendarSettings)
    at: datetime = args.at
    for line in schedule_report(settings, at=at, edges=args.next):
        print(line)
    if not settings.schedules or not args.kubeconfig:
        return 0
    try:
        return asyncio.run(_schedule_targets(config, settings, at=at, kubeconfig=args.kubeconfig, context=args.context))
    except Exception as exc:  # no cluster, no permission: the calendar above still stands
        print(f"schedule: cannot read the cluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _schedule_targets(
    config: Config, settings: Any, *, at: datetime, kubeconfig: str, context: str | None
) -> int:
    """
    Resolve each schedule's targets in the cluster and show the value each would get at ``at``: the claims it
    carries now, less the schedules' own, plus those of every schedule open then, composed as the agent does.
    """
    from agent.claims import Claim, Want, resolve
    from agent.kube import make_api_client
    from agent.rules import Rules
    from agent.targets import build_targets, kinds_in_use

    api = await make_api_client(kubeconfig=kubeconfig, context=context)
    async with api:
        rules = settings.rules()
        targets = build_targets(api, config.kubernetes, kinds_in_use(rule.target.kind for rule in rules))
        finder = Rules(rules, targets=targets)  # the caches are not started: every read goes to the API
        found: list[tuple[Any, Any, Any, str]] = []  # schedule, rule, ref, how it was found
        for schedule in settings.schedules:
            for rule in schedule.rules():
                refs, how = await finder.resolve(rule.target, {}, namespace=None)
                found.extend((schedule, rule, ref, how) for ref in refs)
                if not refs:
                    found.append((schedule, rule, None, how))
        for schedule in settings.schedules:
            window = schedule.timing.open_at(at)
            print(f"\n{schedule.name}: its targets now (window {'open' if window else 'closed'} at {at:%H:%M}Z)")
            for owner, rule, ref, how in found:
                if owner is not schedule:
                    continue
                if ref is None:
                    print(f"  {how}")
                    continue
                kind = targets[ref.kind]
                state = await kind.get(ref.namespace, ref.name)
                want = Want.FLOOR if rule.action.params.hold == "floor" else Want.CAP
                fields = kind.fields_for(want)
                if isinstance(fields, str):
                    print(f"  {ref}: {fields}")
                    continue
                claims = state.claims.release(_schedules_claim)[0]
                holding = []
                for other, other_rule, other_ref, _ in found:
                    other_window = other.timing.open_at(at)
                    if other_ref != ref or other_window is None:
                        continue
                    value = other_rule.action.params.replicas
                    other_want = Want.FLOOR if other_rule.action.params.hold == "floor" else Want.CAP
                    holding.append(f"{other.name} {other_rule.action.params.hold} {value}")
                    for name in kind.fields_for(other_want):
                        claim = Claim(
                            field=name,
                            want=other_want,
                            value=value,
                            holder=other.holder,
                            key="",
                            decision="",
                            reason="",
                            since=at,
                            until=other_window.closes,
                        )
                        claims = claims.add(claim, current=state.values.get(name))
                resolved = resolve(claims, ceiling=config.guard.ceiling, current=state.values)
                others = sorted({c.holder for c in state.claims.claims if not _schedules_claim(c)})
                for name in fields:
                    now = state.values.get(name)
                    then = resolved[name].value if name in resolved else state.claims.original(name, now)
                    why = [*holding, *(f"{holder} (now)" for holder in others)]
                    held = f" ({', '.join(why)})" if why else ""
                    print(f"  {ref} ({how}): {name} now {now}, would be {then}{held}")
    return 0


def _schedules_claim(claim: Any) -> bool:
    """A claim a schedule holds: the command puts in its place what the schedules hold at ``--at``."""
    return bool(str(claim.holder).startswith("schedule:"))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaling-agent",
        description="Reacts to Prometheus alerts with guarded, reversible, recorded changes to KEDA ScaledObjects.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        required=CONFIG_ENV not in os.environ,
        help=f"config file (YAML); default: ${CONFIG_ENV}",
    )
    run.add_argument("--dry-run", action="store_true", help="decide and record, but patch nothing")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster in a pod, else ~/.kube/config)")
    run.add_argument("--context", help="kubeconfig context")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("file")
    check.add_argument("--secrets", action="store_true", help="also read every secret it references")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="run the agent against an emulated cluster with scripted alerts")
    demo.add_argument("--examples", help="folder of example objects (default: deploy/examples)")
    demo.add_argument("--pace", type=float, default=0.3, help="seconds between scripted steps (default 0.3)")
    demo.set_defaults(func=cmd_demo)

    decisions = sub.add_parser("decisions", help="list recorded decisions from the ledger")
    decisions.add_argument(
        "--config", default=os.environ.get(CONFIG_ENV), help=f"config file whose ledger to read; default: ${CONFIG_ENV}"
    )
    decisions.add_argument("--ledger", help="ledger URL instead of a config file (sqlite:///… or redis://…)")
    decisions.add_argument("--since", help="only decisions newer than this (e.g. 1h, 30m)")
    decisions.add_argument("--target", help="only decisions about NAMESPACE/NAME (NAME for a Node)")
    decisions.add_argument(
        "--kind", default="ScaledObject", help="kind for --target: ScaledObject (default), HorizontalPodAutoscaler, …"
    )
    decisions.add_argument("--limit", type=_positive, default=1000, help="the newest N decisions (default 1000)")
    decisions.add_argument(
        "--follows", metavar="ID", help="only decision ID and the steps that follow it (an evacuation, a window)"
    )
    decisions.add_argument("--json", action="store_true", help="one JSON object per line")
    decisions.set_defaults(func=cmd_decisions)

    report = sub.add_parser(
        "report", help="what the agent changed over a window, the replica-hours and the cost, from the ledger"
    )
    report.add_argument(
        "--config", default=os.environ.get(CONFIG_ENV), help=f"config file whose ledger to read; default: ${CONFIG_ENV}"
    )
    report.add_argument("--ledger", help="ledger URL instead of a config file (sqlite:///… or redis://…)")
    report.add_argument("--since", default="7d", help="the window: the last 7d (default), 24h, 30m, …")
    report.add_argument(
        "--lookback", default="30d", help="how far before the window to read changes still held at its start (30d)"
    )
    report.add_argument("--namespace", help="only decisions about objects in this namespace")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output (default table)")
    report.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw cost and replicas over time to FILE.png or FILE.svg (needs matplotlib)",
    )
    report.set_defaults(func=cmd_report)

    schedule = sub.add_parser(
        "schedule", help="which calendar windows are open at a time, the next edges, and what they hold"
    )
    schedule.add_argument(
        "--config", default=os.environ.get(CONFIG_ENV), help=f"config file (YAML); default: ${CONFIG_ENV}"
    )
    schedule.add_argument("--at", type=_when, default=utcnow(), help="the time to look at (ISO 8601; default: now)")
    schedule.add_argument("--next", type=_positive, default=4, help="edges to show per schedule (default 4)")
    schedule.add_argument("--kubeconfig", help="also resolve the targets in this cluster and show their values")
    schedule.add_argument("--context", help="kubeconfig context")
    schedule.set_defaults(func=cmd_schedule)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
