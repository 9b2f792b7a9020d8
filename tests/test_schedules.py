"""
The calendar end to end: schedules open and close windows on each kind that has replicas, through the real client
against the emulated API, composing with alert claims and other people's edits as the claims rules say; restarts,
missed wake-ups and removed schedules converge. The wall clock is moved (time-machine) and the calendar woken after
each move, never slept through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
import yaml

from agent.app import Agent
from agent.cli import main
from agent.config import ConfigError
from agent.configfile import Config
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster, kubeconfig_for
from agent.sources import check_sources
from agent.sources.calendar import CalendarSource
from agent.structs import Decision, Outcome
from tests.conftest import NS, StartAgent, build_config, claims_on, post, scaledobject, settle
from tests.test_warmup import MCP_IPS, UNAVAILABLE_IP
from tests.test_warmup import Cluster as PodServers

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
TARGET = "mcp-cron-scaling"  # the seed's cron example: minReplicaCount 0, maxReplicaCount 20


def at(*args: int) -> datetime:
    """A Berlin wall-clock time, as an instant."""
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)  # type: ignore[misc]


MONDAY_10 = at(2026, 12, 7, 10, 0)


def business_hours(**changes: Any) -> dict[str, Any]:
    """The seed's mcp-cron-scaling example as a schedule: 10 replicas through weekday business hours."""
    schedule = {
        "name": "business-hours",
        "timezone": "Europe/Berlin",
        "start": "08:00",
        "end": "18:00",
        "days": WEEKDAYS,
        "floor": 10,
        "targets": [{"namespace": NS, "name": TARGET}],
    }
    schedule.update(changes)
    return schedule


def with_schedules(base_config: dict[str, Any], *schedules: dict[str, Any], **sections: Any) -> Config:
    calendar = {"schedules": list(schedules), "check_every": "1h"}
    return build_config(base_config, sources={"calendar": calendar}, **sections)


@pytest.fixture()
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(MONDAY_10, tick=True) as traveller:
        yield traveller


def calendar(agent: Agent) -> CalendarSource:
    return next(s for s in agent.sources if isinstance(s, CalendarSource))


async def look(agent: Agent) -> None:
    """Wake the calendar (as APScheduler does at an edge), wait for its look at the clock, then for the work."""
    source = calendar(agent)
    before = source.looks
    await source.wake()
    async with asyncio.timeout(10):
        while source.looks == before:  # noqa: ASYNC110 -- polling a counter, bounded by the timeout
            await asyncio.sleep(0.01)
    await settle(agent)


async def started(start_agent: StartAgent, config: Config) -> Agent:
    agent = await start_agent(config)
    await look(agent)  # the look at start has happened, and its work is done
    return agent


def floor_of(cluster: DevCluster, name: str = TARGET) -> int:
    return int(scaledobject(cluster, name)["spec"]["minReplicaCount"])


async def calendar_decisions(agent: Agent) -> list[Decision]:
    """The calendar's steps and the reconciler's, without the windows' follow-ups (their own tests have those)."""
    decisions = await agent.ledger.decisions()
    return [d for d in decisions if d.trigger.source in ("calendar", "reconciler") and d.follows is None]


# --- each kind -------------------------------------------------------------------------------------------------


def plain_hpa(cluster: DevCluster) -> None:
    cluster.add(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "mcp-search-server", "namespace": NS},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "mcp-search-server"}}},
        }
    )
    cluster.add(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "mcp-search", "namespace": NS},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mcp-search-server"},
                "minReplicas": 2,
                "maxReplicas": 12,
            },
        }
    )


def plain_deployment(cluster: DevCluster) -> None:
    cluster.add(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "mcp-docs-server", "namespace": NS},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "mcp-docs-server"}}},
        }
    )


def plain_statefulset(cluster: DevCluster) -> None:
    cluster.add(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "mcp-vector-store", "namespace": NS},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "mcp-vector-store"}}},
        }
    )


KINDS = [
    # kind, name, how to make it, where its floor is, its value before
    ("ScaledObject", TARGET, None, ("scaledobjects", ("spec", "minReplicaCount")), 0),
    ("HorizontalPodAutoscaler", "mcp-search", plain_hpa, ("horizontalpodautoscalers", ("spec", "minReplicas")), 2),
    ("Deployment", "mcp-docs-server", plain_deployment, ("deployments", ("spec", "replicas")), 2),
    ("StatefulSet", "mcp-vector-store", plain_statefulset, ("statefulsets", ("spec", "replicas")), 3),
]


@pytest.mark.parametrize(("kind", "name", "make", "where", "before"), KINDS, ids=[k[0] for k in KINDS])
async def test_a_window_opens_and_closes_on_each_kind(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    clock: time_machine.Coordinates,
    kind: str,
    name: str,
    make: Any,
    where: tuple[str, tuple[str, str]],
    before: int,
) -> None:
    if make is not None:
        make(cluster)
    plural, (section, key) = where

    def value() -> int:
        return int(cluster.get(plural, NS, name)[section][key])

    schedule = business_hours(targets=[{"kind": kind, "namespace": NS, "name": name}])
    # Started at 10:00 inside the 08:00-18:00 window: it opens at once.
    agent = await started(start_agent, with_schedules(base_config, schedule))
    assert value() == 10
    [opened] = await calendar_decisions(agent)
    assert opened.outcome == Outcome.APPLIED and opened.action == "window"
    assert opened.rule == "schedule:business-hours"
    assert "window 2026-12-07T08:00 (Europe/Berlin) open until 2026-12-07 17:00Z, floor of 10" in opened.reason
    [claim] = claims_on(cluster, name, plural).claims
    assert claim.holder == "schedule:business-hours" and claim.until == at(2026, 12, 7, 18, 0)

    clock.move_to(at(2026, 12, 7, 18, 0, 1))
    await look(agent)
    assert value() == before  # given back at the close
    closed = (await calendar_decisions(agent))[-1]
    assert closed.outcome == Outcome.APPLIED and closed.action == "revert"
    assert closed.trigger.event_key == "business-hours|2026-12-07T18:00|close"
    assert "window 2026-12-07T08:00 (Europe/Berlin) closed" in closed.reason


# --- restarts, missed wake-ups, races ----------------------------------------------------------------------------


async def test_a_restart_inside_the_window_changes_nothing_and_one_after_it_gives_back(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    config = with_schedules(base_config, business_hours())
    first = await started(start_agent, config)
    assert floor_of(cluster) == 10
    await first.stop()

    clock.move_to(at(2026, 12, 7, 11, 0))
    second = await started(start_agent, config)
    assert floor_of(cluster) == 10
    again = (await calendar_decisions(second))[-1]
    assert again.outcome == Outcome.NOOP and "redelivery" in again.reason  # the same edge: never applied twice
    await second.stop()

    # Changed inside the window (a floor of 12 now) and restarted: the new floor is applied, not taken for a repeat.
    clock.move_to(at(2026, 12, 7, 12, 0))
    changed = await started(start_agent, with_schedules(base_config, business_hours(floor=12)))
    assert floor_of(cluster) == 12
    await changed.stop()

    # Down through the close; started at 19:00: what the closed window still held is given back at start.
    clock.move_to(at(2026, 12, 7, 19, 0))
    third = await started(start_agent, config)
    assert floor_of(cluster) == 0
    given_back = (await calendar_decisions(third))[-1]
    assert given_back.action == "revert" and given_back.outcome == Outcome.APPLIED
    assert "held by schedule:business-hours until 2026-12-07 17:00:00Z" in given_back.reason
    assert not claims_on(cluster, TARGET).claims


async def test_a_missed_wake_up_is_caught_by_the_next_check(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    calendar_section = {"schedules": [business_hours()], "check_every": 0.1}
    await started(start_agent, build_config(base_config, sources={"calendar": calendar_section}))
    assert floor_of(cluster) == 10
    clock.move_to(at(2026, 12, 7, 18, 30))  # the wake-up at 18:00 never came (a clock jump, a lost timer)
    async with asyncio.timeout(10):
        while floor_of(cluster) != 0:  # noqa: ASYNC110 -- the calendar's own check, bounded by the timeout
            await asyncio.sleep(0.02)


async def test_a_wake_up_racing_another_look_applies_the_edge_once(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    clock.move_to(at(2026, 12, 7, 7, 0))  # before the window
    agent = await started(start_agent, with_schedules(base_config, business_hours()))
    clock.move_to(at(2026, 12, 7, 8, 0, 1))
    source = calendar(agent)
    now = datetime.now(UTC)
    await asyncio.gather(source.converge(now), source.converge(now))  # both see the window newly open
    await settle(agent)
    decisions = await calendar_decisions(agent)
    assert [d.outcome for d in decisions] == [Outcome.APPLIED, Outcome.NOOP]
    assert floor_of(cluster) == 10


async def test_a_schedule_removed_while_its_window_is_open_is_given_back_at_start(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    first = await started(start_agent, with_schedules(base_config, business_hours()))
    assert floor_of(cluster) == 10
    await first.stop()
    second = await started(start_agent, with_schedules(base_config))  # the schedule is gone from the config
    assert floor_of(cluster) == 0
    given_back = (await calendar_decisions(second))[-1]
    assert given_back.action == "revert" and given_back.outcome == Outcome.APPLIED
    assert "schedule:business-hours: schedule business-hours is no longer in the config" in given_back.reason


# --- composing with other claims -------------------------------------------------------------------------------


async def test_two_overlapping_windows_on_one_target(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    lunch = business_hours(name="lunch-peak", start="12:00", end="14:00", floor=15)
    clock.move_to(at(2026, 12, 7, 13, 0))
    agent = await started(start_agent, with_schedules(base_config, business_hours(), lunch))
    assert floor_of(cluster) == 15  # floors: the highest wins
    clock.move_to(at(2026, 12, 7, 14, 0, 1))
    await look(agent)
    assert floor_of(cluster) == 10  # the lunch window closed; business hours still hold 10
    clock.move_to(at(2026, 12, 7, 18, 0, 1))
    await look(agent)
    assert floor_of(cluster) == 0
    assert not claims_on(cluster, TARGET).claims


COLD = {"namespace": NS, "scaledObject": TARGET}


def alert_floor(replicas: int) -> dict[str, Any]:
    return {
        "name": "warm-on-cold-start",
        "alertname": "MCPColdStartSlow",
        "action": {"type": "set_min", "params": {"replicas": replicas, "for": "1h"}},
        "target": {"namespace": NS},
    }


async def test_an_alert_floor_above_the_window_rises_and_falls_back_to_the_window(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    config = with_schedules(base_config, business_hours(), rules=[alert_floor(15)])
    agent = await started(start_agent, config)
    assert floor_of(cluster) == 10
    await post(agent, payload(alert("MCPColdStartSlow", COLD)))
    await settle(agent)
    assert floor_of(cluster) == 15
    await post(agent, payload(alert("MCPColdStartSlow", COLD, status="resolved")))
    await settle(agent)
    assert floor_of(cluster) == 10  # the window still holds its floor
    assert [c.holder for c in claims_on(cluster, TARGET).claims] == ["schedule:business-hours"]


async def test_a_cooldown_never_refuses_a_window_edge(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    clock.move_to(at(2026, 12, 7, 7, 58))
    config = with_schedules(base_config, business_hours(), rules=[alert_floor(5)], guard={"cooldown": "5m"})
    agent = await started(start_agent, config)
    await post(agent, payload(alert("MCPColdStartSlow", COLD)))
    await settle(agent)
    assert floor_of(cluster) == 5
    clock.move_to(at(2026, 12, 7, 8, 0, 1))  # two minutes later: well inside the cooldown
    await look(agent)
    assert floor_of(cluster) == 10


async def test_someone_elses_edit_inside_the_window_is_left_as_it_is(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    agent = await started(start_agent, with_schedules(base_config, business_hours()))
    cluster.change("scaledobjects", NS, TARGET, {"spec": {"minReplicaCount": 12}})  # a person raised it further
    kind = agent.targets["ScaledObject"]
    async with asyncio.timeout(10):  # the watch brings the edit to the cache
        while (await kind.get(NS, TARGET)).values["min-replicas"] != 12:  # noqa: ASYNC110 -- bounded
            await asyncio.sleep(0.02)
    clock.move_to(at(2026, 12, 7, 18, 0, 1))
    await look(agent)
    assert floor_of(cluster) == 12  # not put back to 0 over the person's edit
    closed = (await calendar_decisions(agent))[-1]
    assert "changed by someone else" in closed.reason or "was changed by" in closed.reason


async def test_a_selector_schedule_over_twenty_objects_is_normal(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    for i in range(21):
        cluster.add(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": f"batch-{i}", "namespace": NS, "labels": {"tier": "batch"}},
                "spec": {"scaleTargetRef": {"name": f"batch-{i}"}, "minReplicaCount": 0, "maxReplicaCount": 5},
            }
        )
    schedule = business_hours(name="batch-window", floor=2, targets=[{"namespace": NS, "selector": {"tier": "batch"}}])
    agent = await started(start_agent, with_schedules(base_config, schedule))  # max_targets_per_event stays 5
    assert all(floor_of(cluster, f"batch-{i}") == 2 for i in range(21))
    assert len([d for d in await calendar_decisions(agent) if d.outcome == Outcome.APPLIED]) == 21


# --- config --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"timezone": "Europe/Berlinn"}, "sources.calendar.schedules[0].timezone: unknown time zone 'Europe/Berlinn'"),
        ({"start": None}, "give start and end (times of day), or cron and duration"),
        ({"floor": 12, "ceiling": 5}, "floor (12) must be ≤ ceiling (5)"),
        ({"floor": None}, "give a floor, a ceiling, or both"),
        ({"skip": {"holidays": {"country": "XX"}}}, "Country"),
        ({"skip": {"ical": "/nonexistent/closures.ics"}}, "cannot read /nonexistent/closures.ics"),
        ({"cron": "0 8 * * 1-5", "duration": "10h"}, "give start and end (times of day), or cron and duration"),
        ({"targets": [{"namespace": NS, "name": "x", "selector": {"a": "b"}}]}, "a name (with its namespace) or"),
        ({"targets": [{"kind": "Node", "name": "n"}]}, "a schedule holds replicas"),
        ({"days": ["monday"]}, "schedules[0].days[0]"),
        ({"end": 1080}, 'schedules[0].end: put a time of day in quotes ("18:00")'),  # YAML's reading of 18:00
    ],
)
def test_a_bad_schedule_is_a_config_error_naming_its_field(
    base_config: dict[str, Any], changes: dict[str, Any], message: str
) -> None:
    config = with_schedules(base_config, business_hours(**changes))
    with pytest.raises(ConfigError) as caught:
        check_sources(config, origin="agent.yaml")
    assert "sources.calendar." in str(caught.value)
    assert message in str(caught.value)


# --- readiness and warm-up, recorded as a follow-up --------------------------------------------------------------


@pytest.fixture()
def pod_servers() -> Iterator[PodServers]:
    """Real servers on loopback standing in for the pods: an MCP server (the SDK's) and one answering 503."""
    servers = PodServers()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def pod(name: str, ip: str, created: datetime) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": "mcp-batch-processor"},
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def follow_up(agent: Agent) -> Decision:
    async with asyncio.timeout(20):
        while True:
            found = [d for d in await agent.ledger.decisions() if d.follows is not None]
            if found:
                return found[0]
            await asyncio.sleep(0.02)


async def test_a_window_follows_its_pods_until_ready_then_warms_the_new_ones_over_mcp(
    cluster: DevCluster,
    start_agent: StartAgent,
    base_config: dict[str, Any],
    clock: time_machine.Coordinates,
    pod_servers: PodServers,
) -> None:
    for i in range(3):  # running since the morning: not new, not warmed
        cluster.add(pod(f"old-{i}", MCP_IPS[i % 2], at(2026, 12, 7, 6, 0)))
    warmup = {"port": pod_servers.port, "mcp": {"calls": [{"tool": "ping"}]}, "timeout": "5s", "backoff": "10ms"}
    schedule = business_hours(lead="10m", warmup=warmup)
    calendar_section = {"schedules": [schedule], "check_every": "1h", "follow_every": 0.05}
    clock.move_to(at(2026, 12, 7, 7, 0))
    agent = await started(start_agent, build_config(base_config, sources={"calendar": calendar_section}))
    clock.move_to(at(2026, 12, 7, 7, 50, 1))  # the lead: ten minutes before 08:00
    await look(agent)
    [opened] = [d for d in await calendar_decisions(agent) if d.action == "window"]
    assert opened.outcome == Outcome.APPLIED and floor_of(cluster) == 10
    # The scale-up's pods come up Ready (nothing runs pods in the emulator: the test adds them), one of them
    # on an address that answers 503.
    created = datetime.now(UTC)
    for i in range(6):
        cluster.add(pod(f"new-{i}", MCP_IPS[i % 2], created))
    cluster.add(pod("new-broken", UNAVAILABLE_IP, created))

    followed = await follow_up(agent)
    assert followed.follows == opened.id and followed.action == "warm-up"
    assert followed.target == opened.target and followed.rule == "schedule:business-hours"
    assert followed.outcome == Outcome.FAILED  # one pod could not be warmed: recorded, not fatal
    assert dict(followed.after) == {"ready-pods": 10, "warmed-pods": 6}
    assert "10 pods of Deployment/mcp-batch-processor Ready" in followed.reason
    assert f"after decision {opened.id}" in followed.reason
    assert "warmed 6 of 7 new pods" in followed.reason
    assert "new-broken: initialize failed: HTTP 503 on POST /mcp" in followed.reason
    assert (
        "capacity Ready 9m" in followed.reason and "before the nominal start 08:00 (Europe/Berlin)" in followed.reason
    )
    # Each new pod had its own MCP session: initialize, tools/list, the configured call.
    assert pod_servers.seen.pings == 6
    for ip in MCP_IPS:
        assert pod_servers.seen.mcp_methods(ip).count("initialize") == 3
        assert pod_servers.seen.mcp_methods(ip).count("tools/list") == 3


async def test_pods_not_ready_in_time_are_a_recorded_failure_that_says_it_missed_the_start(
    cluster: DevCluster, start_agent: StartAgent, base_config: dict[str, Any], clock: time_machine.Coordinates
) -> None:
    schedule = business_hours(ready_within="1s")  # no warm-up: readiness alone is followed up
    calendar_section = {"schedules": [schedule], "check_every": "1h", "follow_every": 0.05}
    agent = await started(start_agent, build_config(base_config, sources={"calendar": calendar_section}))
    followed = await follow_up(agent)  # opened at 10:00, two hours after the nominal start; no pods come up
    assert followed.action == "ready" and followed.outcome == Outcome.FAILED
    assert dict(followed.after) == {"ready-pods": 0, "warmed-pods": 0}
    assert "0 of 10 pods of Deployment/mcp-batch-processor Ready" in followed.reason
    assert (
        "missed the nominal start 08:00 (Europe/Berlin) by 2h" in followed.reason
        or "missed the nominal" in followed.reason
    )


# --- the schedule command --------------------------------------------------------------------------------------


async def test_the_schedule_command_shows_windows_edges_and_what_each_target_would_get(
    cluster: DevCluster, base_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lunch = business_hours(name="lunch-peak", start="12:00", end="14:00", floor=15, skip={"dates": ["2026-12-08"]})
    data = {**base_config, "sources": {"calendar": {"schedules": [business_hours(lead="10m"), lunch]}}}
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(data))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(str(cluster.url).rstrip("/"))))
    argv = ["schedule", "--config", str(config), "--at", "2026-12-07T12:30+01:00", "--next", "3"]
    assert await asyncio.to_thread(main, [*argv, "--kubeconfig", str(kubeconfig)]) == 0
    out = capsys.readouterr().out
    assert "business-hours: 08:00-18:00 mon,tue,wed,thu,fri (Europe/Berlin), floor 10 on 1 target(s)" in out
    assert "  open: window 2026-12-07T08:00 (schedule:business-hours holds floor 10 until 2026-12-07 18:00 CET)" in out
    assert "  closes Mon 2026-12-07 18:00 CET  = 2026-12-07 17:00Z" in out
    assert "  opens  Tue 2026-12-08 07:50 CET (lead)  = 2026-12-08 06:50Z" in out
    # The lunch window skips the 8th, a listed day off.
    assert "  opens  Wed 2026-12-09 12:00 CET  = 2026-12-09 11:00Z" in out
    assert "days off ahead: 2026-12-08 (listed day off)" in out
    # With the cluster: each target, its value now and what it would get with every claim composed.
    composed = "min-replicas now 0, would be 15 (business-hours floor 10, lunch-peak floor 15)"
    assert f"ScaledObject/{NS}/{TARGET} (named in the rule): {composed}" in out  # under each of the two
    # Bad input: a clear error, not a traceback.
    assert main(["schedule", "--config", str(tmp_path / "missing.yaml")]) == 1
    with pytest.raises(SystemExit):
        main(["schedule", "--config", str(config), "--at", "tomorrow"])
    assert "is not a time such as" in capsys.readouterr().err


def test_the_window_action_in_an_alert_rule_is_a_config_error(base_config: dict[str, Any]) -> None:
    rule = {"name": "w", "alertname": "MCPColdStartSlow", "action": {"type": "window", "params": {"replicas": 3}}}
    with pytest.raises(ConfigError, match="the window action answers a schedule's edges"):
        build_config(base_config, rules=[rule])
