"""
The calendar: schedules that hold capacity up through a window of the day, and give it back after.

A schedule names its targets, a window (times of day, or a cron expression and a duration), a time zone, the floor
(and optionally the ceiling) to hold while it is open, days to skip and a lead time. It writes no rules: each
schedule becomes rules of the ``window`` action (agent/actions/window.py) on events of kind ``schedule``, so a
window's floor is a claim held by ``schedule:<name>`` and goes through the same rules, guard, executor and ledger
as an alert's.

It is level-triggered. At every wake-up the source asks the pure function (agent/calendar.py) which window of
each schedule is open *now*, and hands the worker an event for each change it has not handed yet: a window
opened (key ``<schedule>|<nominal local start>|open``), a window closed (``…|<local close>|close``). So a start at
10:00 inside an 08:00-18:00 window opens it at once; a wake-up missed or late, or a clock that jumped, converges on
the next one; and a wake-up racing a restart hands the same key twice, which the inbox records as a redelivery
(a no-op), never a second change. (An opening's key also carries a digest of what the schedule holds, so a
schedule changed inside its window is applied at the next start.) What a window holds lasts until its close
(the claim's expiry), so when the agent was down at the close the reconciler gives it back at the next start,
and a schedule removed from the config has its claims given back by the reconciler too
(:meth:`CalendarSettings.retired`).

APScheduler (3.x) only wakes the source at the next edge, and a check every minute catches a wake-up that never
came; the work itself runs in the source's supervised task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from agent.actions.window import CLOSES, WINDOW, WindowParams, WindowSpec
from agent.calendar import DaysOff, Edge, Timing, Window
from agent.config import Model
from agent.configfile import RuleConfig, TargetSpec
from agent.durations import Duration, format_duration
from agent.errors import KubernetesError
from agent.ledger import LedgerUnavailable
from agent.sources.base import SourceContext, SourceSettings
from agent.structs import Decision, Delivery, Event, EventKind, Outcome, TargetRef, new_id, utcnow
from agent.supervisor import Supervisor
from agent.targets import KINDS
from agent.targets.pods import pods_of
from agent.warmup import Pod, WarmupReport, WarmupSpec, warm

log = structlog.get_logger("agent.sources.calendar")

SOURCE = "calendar"
HOLDER_PREFIX = "schedule:"
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RETRY_SECONDS = 5.0  # the ledger refused the events: try again this soon
COUNT_FIELDS = ("min-replicas", "replicas")  # what a window's floor moved, on each kind: the pods to expect
NEW_POD_SLACK = timedelta(seconds=5)  # a pod created this long before the window's decision still counts as new


class HolidaysConfig(Model):
    """
    A country's public holidays (ISO 3166 code, e.g. ``DE``), or a region's (``subdivision``: ``BE``), named in
    ``language`` (the package's code, e.g. ``de``; a language it lacks for the country gives its own names).
    """

    country: str
    subdivision: str | None = None
    language: str = "en_US"


class SkipConfig(Model):
    holidays: HolidaysConfig | None = None
    dates: list[date] = []
    ical: Path | None = Field(default=None, description="an iCalendar file: its events' dates are days off")


class ScheduleTarget(Model):
    """One object (``namespace`` and ``name``) or those a label selector picks, of any kind that has replicas."""

    kind: str = "ScaledObject"
    namespace: str | None = None
    name: str | None = None
    selector: dict[str, str] | None = None

    @field_validator("kind")
    @classmethod
    def _has_replicas(cls, kind: str) -> str:
        known = sorted(k for k in KINDS if k != "Node")
        if kind not in known:
            raise ValueError(f"a schedule holds replicas: kind must be one of {', '.join(known)}")
        return kind

    @model_validator(mode="after")
    def _one_way_to_find(self) -> ScheduleTarget:
        if (self.name is None) == (not self.selector):
            raise ValueError("give a name (with its namespace) or a selector, not both")
        if self.name is not None and self.namespace is None:
            raise ValueError(f"{self.kind} {self.name}: give its namespace")
        return self


class ScheduleConfig(Model):
    """
    One schedule. The window is ``start`` and ``end`` (times of day on the wall clock, on ``days``; the end may be
    past midnight) or ``cron`` and ``duration`` (elapsed time). The floor (and ``ceiling``, if given) is held from
    ``lead`` before the nominal start until the end, on every target.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    timezone: str
    start: time | None = None
    end: time | None = None
    days: list[Weekday] = list(WEEKDAYS)
    cron: str | None = None
    duration: Duration | None = None
    lead: Duration = timedelta(0)
    floor: int | None = Field(default=None, ge=0)
    ceiling: int | None = Field(default=None, ge=1)
    skip: SkipConfig = SkipConfig()
    targets: list[ScheduleTarget] = Field(min_length=1)
    warmup: WarmupSpec | None = None
    ready_within: Duration = Field(
        default=timedelta(minutes=15), description="how long after a window opens its pods may take to be Ready"
    )
    _timing: Timing | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError("letters, digits, '.', '_' and '-' only, starting with a letter or digit")
        return name

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted_time(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 18:00 as 18 * 60
            raise ValueError('put a time of day in quotes ("18:00"): unquoted, YAML reads it as a number')
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (an IANA name, e.g. Europe/Berlin)") from None
        return zone

    @model_validator(mode="after")
    def _a_window_that_works(self) -> ScheduleConfig:
        if self.floor is None and self.ceiling is None:
            raise ValueError("give a floor, a ceiling, or both: a window holding nothing does nothing")
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must be ≤ ceiling ({self.ceiling})")
        holidays = self.skip.holidays
        # Both raise ValueError with a message that names the problem (an unknown country, an unreadable file,
        # a cron expression with a bad field, a window that never closes): pydantic reports it at this schedule.
        off = DaysOff(
            country=holidays.country if holidays else None,
            subdivision=holidays.subdivision if holidays else None,
            language=holidays.language if holidays else "en_US",
            dates=self.skip.dates,
            ical=self.skip.ical,
        )
        self._timing = Timing(
            zone=ZoneInfo(self.timezone),
            start=self.start,
            end=self.end,
            days=frozenset(WEEKDAYS.index(day) for day in self.days),
            cron=self.cron,
            duration=self.duration,
            lead=self.lead,
            skip=off,
        )
        return self

    @property
    def timing(self) -> Timing:
        assert self._timing is not None
        return self._timing

    @property
    def holder(self) -> str:
        return f"{HOLDER_PREFIX}{self.name}"

    def rules(self) -> list[RuleConfig]:
        """The rules that carry out this schedule: a ``window`` floor (and ceiling) on each target."""
        holds: list[tuple[Literal["floor", "ceiling"], int | None]] = [("floor", self.floor), ("ceiling", self.ceiling)]
        return [
            RuleConfig(
                name=self.holder,
                kind="schedule",
                alertname=self.name,
                action=WindowSpec(type="window", params=WindowParams(hold=hold, replicas=value)),
                target=TargetSpec(
                    kind=target.kind,
                    namespace=target.namespace,
                    name=target.name,
                    selector=target.selector,
                    name_labels=[],
                    workload_labels=[],
                ),
            )
            for target in self.targets
            for hold, value in holds
            if value is not None
        ]

    def digest(self) -> str:
        """A short digest of what the schedule holds, and where."""
        held = {"floor": self.floor, "ceiling": self.ceiling, "targets": [t.model_dump() for t in self.targets]}
        return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()[:8]

    def describe(self) -> str:
        zone = self.timezone
        if self.cron is not None:
            assert self.duration is not None
            return f"cron {self.cron!r} for {format_duration(self.duration)} ({zone})"
        assert self.start is not None and self.end is not None
        days = "every day" if len(self.days) == 7 else ",".join(self.days)
        return f"{self.start:%H:%M}-{self.end:%H:%M} {days} ({zone})"


class CalendarSettings(SourceSettings):
    """``sources.calendar``: on by default (with no schedules it does nothing but give back retired claims)."""

    enabled: bool = True
    schedules: list[ScheduleConfig] = []
    check_every: Duration = Field(default=timedelta(minutes=1), description="a wake-up that never came is this late")
    follow_every: Duration = Field(default=timedelta(seconds=5), description="how often a follow-up looks at pods")

    @model_validator(mode="after")
    def _unique_names(self) -> CalendarSettings:
        seen: set[str] = set()
        for schedule in self.schedules:
            if schedule.name in seen:
                raise ValueError(f"schedule name {schedule.name!r} is used twice")
            seen.add(schedule.name)
        return self

    def rules(self) -> list[RuleConfig]:
        return [rule for schedule in self.schedules for rule in schedule.rules()] if self.enabled else []

    def retired(self, holder: str) -> str | None:
        """Why a ``schedule:`` holder's claims must go now (its schedule is gone, or the calendar is off)."""
        if not holder.startswith(HOLDER_PREFIX):
            return None
        name = holder.removeprefix(HOLDER_PREFIX)
        if not self.enabled:
            return f"the calendar is turned off (sources.calendar.enabled), so schedule {name} holds nothing"
        if all(schedule.name != name for schedule in self.schedules):
            return f"schedule {name} is no longer in the config"
        return None


def schedule_report(settings: CalendarSettings, *, at: datetime, edges: int) -> list[str]:
    """What ``scaling-agent schedule`` prints: each schedule, whether a window is open at ``at``, the next edges."""
    if not settings.schedules:
        return ["no schedules (sources.calendar.schedules is empty)"]
    lines = [f"at {at:%Y-%m-%d %H:%M}Z" + ("" if settings.enabled else " (the calendar is turned off)")]
    for schedule in settings.schedules:
        timing, zone = schedule.timing, schedule.timing.zone
        holds = ", ".join(
            f"{what} {value}" for what, value in (("floor", schedule.floor), ("ceiling", schedule.ceiling)) if value
        )
        lines.append(f"\n{schedule.name}: {schedule.describe()}, {holds} on {len(schedule.targets)} target(s)")
        window = timing.open_at(at)
        if window is not None:
            lines.append(
                f"  open: window {window.key} ({schedule.holder} holds {holds} until "
                f"{window.closes.astimezone(zone):%Y-%m-%d %H:%M %Z})"
            )
        else:
            lines.append("  closed")
        when = at
        for _ in range(edges):
            edge = timing.next_edge(when)
            if edge is None:
                break
            local = edge.at.astimezone(zone)
            what = "opens " if edge.opening else "closes"
            lead = " (lead)" if edge.opening and edge.at != edge.window.starts else ""
            lines.append(f"  {what} {local:%a %Y-%m-%d %H:%M %Z}{lead}  = {edge.at:%Y-%m-%d %H:%M}Z")
            when = edge.at
        skipped = _days_off_ahead(schedule, at)
        if skipped:
            lines.append(f"  days off ahead: {skipped}")
    return lines


def _days_off_ahead(schedule: ScheduleConfig, at: datetime, days: int = 60) -> str:
    off = schedule.timing.skip
    if not isinstance(off, DaysOff):
        return ""
    today = at.astimezone(schedule.timing.zone).date()
    found = [(day, off.why(day)) for day in (today + timedelta(days=i) for i in range(days)) if off(day)]
    shown = ", ".join(f"{day:%Y-%m-%d} ({why})" for day, why in found[:5])
    return shown + (f" and {len(found) - 5} more in the next {days} days" if len(found) > 5 else "")


def window_event(schedule: ScheduleConfig, window: Window, *, opening: bool, now: datetime) -> Event:
    """A window's edge as an event. Its key is the schedule and the edge's local time: the same edge, the same key."""
    zone = schedule.timing.zone
    if opening:
        # With what it holds: a schedule changed inside its window (a new floor) is applied at the next start,
        # instead of being taken for a redelivery of the opening it already made.
        key = f"{schedule.name}|{window.key}|open|{schedule.digest()}"
    else:
        key = f"{schedule.name}|{window.closes.astimezone(zone):%Y-%m-%dT%H:%M}|close"
    return Event(
        source=SOURCE,
        key=key,
        alertname=schedule.name,
        status="firing" if opening else "resolved",
        fingerprint=schedule.name,  # one lane per schedule: its edges in order
        labels={"schedule": schedule.name},
        annotations={
            WINDOW: f"{window.key} ({schedule.timezone})",
            CLOSES: window.closes.isoformat(),
            "starts": window.starts.isoformat(),
        },
        starts_at=window.starts,
        received_at=now,
        kind=EventKind.SCHEDULE,
    )


class CalendarSource:
    name: ClassVar[str] = SOURCE
    Settings: ClassVar[type[SourceSettings]] = CalendarSettings

    def __init__(self, settings: CalendarSettings, *, context: SourceContext) -> None:
        self.settings = settings
        self.intake = context.intake
        self.api = context.api
        self.recorder = context.recorder
        self._following: set[asyncio.Task[None]] = set()  # follow-ups under way (a window's pods getting Ready)
        self._open: dict[str, Window | None] = {}  # per schedule: the window handed as open (None: handed closed)
        self._wake = asyncio.Event()
        self._scheduler: AsyncIOScheduler | None = None
        self._supervisor: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self.looks = 0  # looks at the clock done so far: a test that moved the clock waits for the next one

    def routes(self) -> list[web.RouteDef]:
        return []

    def start(self, supervisor: Supervisor) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.start()
        self._supervisor = supervisor
        self._task = supervisor.spawn("calendar", self._run)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel(self._task)
        self._task = None
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        for task in list(self._following):  # a follow-up cut short is only a report not written
            task.cancel()
        await asyncio.gather(*self._following, return_exceptions=True)

    def decode(self, delivery: Delivery) -> list[Event]:
        raise LookupError("the calendar stores its events itself; it has no deliveries to decode")

    async def wake(self) -> None:
        """Look at the clock now (APScheduler's job at each edge; tests, after moving the clock)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            now = utcnow()
            try:
                await self.converge(now)
            except LedgerUnavailable as exc:
                log.error("the calendar's events were not recorded; trying again", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.looks += 1
            self._arm(self.next_edge(now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.check_every.total_seconds())
            self._wake.clear()

    def next_edge(self, now: datetime) -> Edge | None:
        edges = [edge for s in self.settings.schedules if (edge := s.timing.next_edge(now)) is not None]
        return min(edges, key=lambda edge: edge.at, default=None)

    def _arm(self, edge: Edge | None) -> None:
        if self._scheduler is None or edge is None:
            return
        # Late is fine (a wake-up is a look at the clock): run it however late, once.
        self._scheduler.add_job(
            self.wake,
            trigger=DateTrigger(run_date=edge.at),
            id="next-edge",
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    async def converge(self, now: datetime) -> list[Event]:
        """Hand the worker an event for every window that opened or closed since the last look; returns them."""
        events: list[Event] = []
        seen: dict[str, Window | None] = {}
        for schedule in self.settings.schedules:
            window = schedule.timing.open_at(now)
            seen[schedule.name] = window
            handed = self._open.get(schedule.name, _NOTHING)
            if window is not None and (handed is _NOTHING or handed is None or handed.key != window.key):
                events.append(window_event(schedule, window, opening=True, now=now))
            elif window is None and isinstance(handed, Window):
                events.append(window_event(schedule, handed, opening=False, now=now))
        if events:
            await self.intake.accept(events)  # raises LedgerUnavailable: nothing handed, the next look tries again
            for event in events:
                log.info("window edge", schedule=event.alertname, edge=event.key, status=event.status)
        self._open = seen
        return events

    # --- after a window opened: its pods Ready, then warmed, then a follow-up decision -----------------------------

    def decided(self, event: Event, decisions: Sequence[Decision]) -> None:
        """The worker's call: for each floor a window's opening applied, follow its pods up (in its own task)."""
        if event.status != "firing" or event.source != SOURCE:
            return
        schedule = next((s for s in self.settings.schedules if s.name == event.alertname), None)
        if schedule is None:
            return
        for decision in decisions:
            counts = [v for k, v in decision.after.items() if k in COUNT_FIELDS and isinstance(v, int)]
            if decision.outcome != Outcome.APPLIED or decision.target is None or not counts:
                continue
            job = FollowUp(
                schedule=schedule,
                decision=decision,
                target=decision.target,
                wanted=max(counts),
                starts=datetime.fromisoformat(event.annotations["starts"]),
                closes=datetime.fromisoformat(event.annotations[CLOSES]),
            )
            task = asyncio.create_task(self._follow(job), name=f"follow-up {decision.id}")
            self._following.add(task)
            task.add_done_callback(self._following.discard)

    async def _follow(self, job: FollowUp) -> None:
        try:
            decision = await self._follow_up(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # a follow-up is a report: it must never take the agent down, nor vanish unsaid
            log.exception("a window's follow-up failed", decision=job.decision.id, target=str(job.target))
            return
        await self.recorder.record(decision)

    async def _follow_up(self, job: FollowUp) -> Decision:
        """Wait (at most ``ready_within``) for the target's pods to be Ready, warm the new ones, and say how it went."""
        # Past the window's close its floor is given back: counting its pods then would say nothing.
        deadline = min(job.decision.at + job.schedule.ready_within, job.closes)
        every = self.settings.follow_every.total_seconds()
        workload, ready, error = "", [], None
        while True:
            try:
                workload, pods = await pods_of(self.api, job.target)
                ready = [p for p in pods if p.ready and p.ip and not p.terminating]
                error = None
            except KubernetesError as exc:  # the next look tries again, until the deadline
                error = str(exc)
            if len(ready) >= job.wanted or utcnow() >= deadline:
                break
            await asyncio.sleep(every)
        ready_at = utcnow()
        if len(ready) < job.wanted:
            why = f"; the last look failed: {error}" if error else ""
            reason = (
                f"{len(ready)} of {job.wanted} pods of {workload or job.target} Ready "
                f"{_took(job.decision.at, ready_at)} after decision {job.decision.id}, and no more "
                + (
                    "before the window closed"
                    if ready_at >= job.closes
                    else f"within {format_duration(job.schedule.ready_within)}"
                )
                + f": {_by_start(ready_at, job.starts, job.schedule)}{why}"
            )
            return self._report(job, Outcome.FAILED, reason, ready=len(ready), warmed=0)
        parts = [
            f"{len(ready)} pods of {workload} Ready {_took(job.decision.at, ready_at)} after decision {job.decision.id}"
        ]
        report: WarmupReport | None = None
        new = [p for p in ready if p.created is None or p.created >= job.decision.at - NEW_POD_SLACK]
        if job.schedule.warmup is not None and new:
            report = await warm([Pod(name=p.name, ip=p.ip or "") for p in new], job.schedule.warmup)
            done = utcnow()
            failed = report.failed
            parts.append(
                f"warmed {len(new) - len(failed)} of {len(new)} new pods, done {_took(job.decision.at, done)} after it"
                + (": " + "; ".join(f"{r.name}: {r.error}" for r in failed) if failed else "")
            )
            ready_at = done
        elif job.schedule.warmup is not None:
            parts.append("no new pod to warm")
        parts.append(f"capacity {_by_start(ready_at, job.starts, job.schedule)}")
        outcome = Outcome.FAILED if report is not None and not report.ok else Outcome.APPLIED
        warmed = 0 if report is None else len(report.results) - len(report.failed)
        return self._report(job, outcome, "; ".join(parts), ready=len(ready), warmed=warmed)

    def _report(self, job: FollowUp, outcome: Outcome, reason: str, *, ready: int, warmed: int) -> Decision:
        first = job.decision
        return Decision(
            id=new_id(),
            at=utcnow(),
            trigger=first.trigger,
            rule=first.rule,
            action="warm-up" if job.schedule.warmup is not None else "ready",
            target=first.target,
            before={},
            after={"ready-pods": ready, "warmed-pods": warmed},
            reason=reason,
            dry_run=first.dry_run,
            outcome=outcome,
            follows=first.id,
        )


@dataclass(frozen=True)
class FollowUp:
    schedule: ScheduleConfig
    decision: Decision  # the window's opening, applied
    target: TargetRef
    wanted: int  # pods to expect Ready: the floor the opening wrote
    starts: datetime  # the window's nominal start: was the capacity there by then?
    closes: datetime  # the window's close: a follow-up ends with it


def _took(since: datetime, until: datetime) -> str:
    return _span(until - since)


def _span(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _by_start(at: datetime, starts: datetime, schedule: ScheduleConfig) -> str:
    local = starts.astimezone(schedule.timing.zone)
    nominal = f"the nominal start {local:%H:%M} ({schedule.timezone})"
    if at <= starts:
        return f"Ready {_span(starts - at)} before {nominal}"
    return f"missed {nominal} by {_span(at - starts)}"


_NOTHING: Any = object()  # no look yet since the start: a closed window then hands nothing (the reconciler's)
