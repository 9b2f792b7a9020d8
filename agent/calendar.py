"""
When a schedule's windows open and close: a pure function of the schedule and an instant.

The agent computes every window edge itself, in the schedule's IANA zone, instead of handing cron expressions to
a scheduler: APScheduler's CronTrigger alone fires a 02:30 job at 03:30 on a spring-forward day, twice on a
fall-back day, and skips a fire missed by more than a second. So the daylight-saving rules are the agent's own,
and tested:

- A window's nominal start is a wall-clock time (``08:00`` on the days it runs, or a cron expression's match,
  read as wall-clock time). Cron fields are matched on the wall clock with APScheduler's own field logic, in UTC
  where no clock jumps, and only then placed in the zone.
- A start in the skipped hour of a spring-forward day opens at the first valid instant (03:00, not 03:30); a
  start in the repeated hour of a fall-back day opens once, at its first occurrence.
- The window's end is wall-clock (``18:00``, the next day when it is not after the start) or, with a cron
  expression, elapsed time (``duration``) from the start.
- ``lead`` opens the window that much earlier than its nominal start, so capacity is Ready by then.
- A day to skip (a public holiday, a listed date, an iCalendar event) skips the windows that start on it.

Everything here is synchronous and takes the time as an argument: the calendar source (agent/sources/calendar.py)
asks "which window is open at t" and "when is the next edge after t", and APScheduler only wakes it then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dateutil.rrule
import holidays
import icalendar
from apscheduler.triggers.cron import CronTrigger

MAX_WINDOW = timedelta(days=7)  # a window longer than this is a config error: its end is too far to look back for
MAX_STEPS = 10_000  # nominal starts looked at per question, at most (a cron every minute looks at many)


@dataclass(frozen=True)
class Window:
    """One occurrence of a schedule's window."""

    nominal: datetime  # the nominal start on the wall clock (naive, in the schedule's zone): the key of the window
    starts: datetime  # the nominal start as an instant (UTC)
    opens: datetime  # when the agent opens it: ``starts`` less the lead (UTC)
    closes: datetime  # UTC

    @property
    def key(self) -> str:
        return self.nominal.strftime("%Y-%m-%dT%H:%M")

    def is_open(self, at: datetime) -> bool:
        return self.opens <= at < self.closes


@dataclass(frozen=True)
class Edge:
    at: datetime  # UTC
    opening: bool
    window: Window


@dataclass(frozen=True)
class Timing:
    """
    A schedule's timing. Either ``start`` and ``end`` (times of day, on ``days``: 0 is Monday) or ``cron`` and
    ``duration``. ``skip`` says whether a local date is a day off.
    """

    zone: ZoneInfo
    start: time | None = None
    end: time | None = None
    days: frozenset[int] = frozenset(range(7))
    cron: str | None = None
    duration: timedelta | None = None
    lead: timedelta = timedelta(0)
    skip: Callable[[date], bool] = field(default=lambda day: False, compare=False)

    def __post_init__(self) -> None:
        if (self.start is None) == (self.cron is None):
            raise ValueError("give start and end (times of day), or cron and duration")
        if self.start is not None and self.end is None:
            raise ValueError("a window with a start needs an end")
        if self.cron is not None and (self.duration is None or self.duration <= timedelta(0)):
            raise ValueError("a cron window needs a positive duration")
        if self.duration is not None and self.duration > MAX_WINDOW:
            raise ValueError(f"a window may last at most {MAX_WINDOW.days} days")
        if self.lead < timedelta(0) or self.lead > MAX_WINDOW:
            raise ValueError(f"lead must be between 0 and {MAX_WINDOW.days} days")
        if self.start is not None and self.start == self.end:
            raise ValueError("start and end are the same time: the window would never close (or never open)")
        self._trigger()  # a bad cron expression fails here, at config time

    def _trigger(self) -> CronTrigger:
        # Matched on the wall clock: UTC has no clock jumps, so every wall time is matched exactly once.
        if self.cron is not None:
            return CronTrigger.from_crontab(self.cron, timezone=UTC)
        assert self.start is not None
        days = ",".join(str(d) for d in sorted(self.days))
        return CronTrigger(
            hour=self.start.hour, minute=self.start.minute, second=self.start.second, day_of_week=days, timezone=UTC
        )

    @property
    def longest(self) -> timedelta:
        """The longest a window can last, daylight saving included."""
        return (self.duration or timedelta(days=1)) + timedelta(hours=2)

    def nominal_starts(self, after: datetime) -> Iterator[datetime]:
        """Nominal starts on the wall clock (naive), from ``after`` (naive wall time, included), days off left out."""
        trigger = self._trigger()
        at: datetime | None = trigger.get_next_fire_time(None, after.replace(tzinfo=UTC))
        for _ in range(MAX_STEPS):
            if at is None:
                return
            wall = at.replace(tzinfo=None)
            if not self.skip(wall.date()):
                yield wall
            at = trigger.get_next_fire_time(at, at + timedelta(seconds=1))

    def window(self, nominal: datetime) -> Window:
        starts = instant(nominal, self.zone)
        if self.cron is not None:
            assert self.duration is not None
            closes = starts + self.duration
        else:
            assert self.start is not None and self.end is not None
            end_day = nominal.date() + timedelta(days=1 if self.end <= self.start else 0)
            closes = instant(datetime.combine(end_day, self.end), self.zone)
        return Window(nominal=nominal, starts=starts, opens=starts - self.lead, closes=closes)

    def windows(self, *, after: datetime, before: datetime) -> Iterator[Window]:
        """The windows that are open at some instant in [after, before), in order of their start."""
        wall = after.astimezone(self.zone).replace(tzinfo=None) - self.longest - self.lead - timedelta(days=1)
        last = before.astimezone(self.zone).replace(tzinfo=None) + self.lead + timedelta(days=1)
        for nominal in self.nominal_starts(wall):
            if nominal > last:
                return
            window = self.window(nominal)
            if window.closes > after and window.opens < before:
                yield window

    def open_at(self, at: datetime) -> Window | None:
        """The window open at ``at`` (the latest opened, if two overlap), or None."""
        found = None
        for window in self.windows(after=at, before=at + timedelta(microseconds=1)):
            if window.is_open(at):
                found = window
        return found

    def next_edge(self, after: datetime, *, horizon: timedelta = timedelta(days=400)) -> Edge | None:
        """The first opening or closing strictly after ``after``, looking ``horizon`` ahead (None past it)."""
        best: Edge | None = None
        step = timedelta(days=7)
        start = after
        while start < after + horizon:
            for window in self.windows(after=start, before=start + step):
                for edge in (Edge(window.opens, True, window), Edge(window.closes, False, window)):
                    if edge.at > after and (best is None or edge.at < best.at):
                        best = edge
            if best is not None:
                return best
            start += step
        return None


def instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """
    A naive wall-clock time in ``zone`` as an instant (UTC). In a repeated hour, its first occurrence; in a skipped
    hour (it never happens), the first instant after the skip: the moment the clock jumped.
    """
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first.astimezone(UTC)
    # In the gap: fold=1 reads it with the offset after the jump (an instant before it), fold=0 with the offset
    # before (an instant after it). The jump lies between; find it to the second.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first.astimezone(UTC)
    if low > high:
        low, high = high, low
    after_jump = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == after_jump:
            high = middle
        else:
            low = middle
    return _whole_second(high, zone, after_jump)


def _whole_second(at: datetime, zone: ZoneInfo, offset: timedelta | None) -> datetime:
    """The first whole second at or after ``at`` with ``offset``: zones jump on whole seconds."""
    floor = at.replace(microsecond=0)
    return floor if floor.astimezone(zone).utcoffset() == offset else floor + timedelta(seconds=1)


class DaysOff:
    """
    The local dates on which a schedule's windows do not open: a country's (or region's) public holidays through
    the ``holidays`` package, listed dates, and the dates of an iCalendar file's events. Callable with a date;
    :meth:`why` names the day off, for the decision and the ``schedule`` command.
    """

    def __init__(
        self,
        *,
        country: str | None = None,
        subdivision: str | None = None,
        language: str = "en_US",
        dates: Iterable[date] = (),
        ical: Path | None = None,
    ) -> None:
        self._named: dict[date, str] = {day: "listed day off" for day in dates}
        self._holidays: holidays.HolidayBase | None = None
        if country is not None:
            try:
                # The language is explicit: left to the package, the names followed the process's locale (German in
                # a pod with no LANG, English in a shell with LANG=C.UTF-8), and so did every decision naming them.
                self._holidays = holidays.country_holidays(country, subdiv=subdivision, language=language)
            except NotImplementedError as exc:  # unknown country or subdivision: the package says which
                raise ValueError(str(exc)) from None
        if ical is not None:
            for day, summary in ical_days(ical):
                self._named.setdefault(day, summary)

    def why(self, day: date) -> str | None:
        if day in self._named:
            return self._named[day]
        if self._holidays is not None and day in self._holidays:
            return str(self._holidays.get(day))
        return None

    def __call__(self, day: date) -> bool:
        return self.why(day) is not None


ICAL_YEARS = 5  # a repeating iCalendar event is expanded this many years ahead of today


def ical_days(path: Path) -> list[tuple[date, str]]:
    """
    The dates an iCalendar file's events cover, with their summaries. An all-day event covers its dates up to its
    end (exclusive); a timed one the dates it touches; a repeating one (RRULE) each occurrence up to
    :data:`ICAL_YEARS` ahead. Raises ValueError naming what it cannot read.
    """
    try:
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not an iCalendar file: {exc}") from None
    until = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=366 * ICAL_YEARS)
    found: list[tuple[date, str]] = []
    for event in calendar.walk("VEVENT"):
        summary = str(event.get("SUMMARY") or "iCalendar day off")
        start = event.decoded("DTSTART", None)
        if start is None:
            continue
        end = event.decoded("DTEND", None)
        if end is None:
            duration = event.decoded("DURATION", None)
            end = start + duration if duration is not None else None
        length = _days_spanned(start, end)
        firsts: list[date] = [_day(start)]
        if event.get("RRULE") is not None:
            naive = datetime.combine(_day(start), time()) if not isinstance(start, datetime) else start
            naive = naive.replace(tzinfo=None)
            text = event["RRULE"].to_ical()
            text = text.decode() if isinstance(text, bytes) else str(text)
            rule = dateutil.rrule.rrulestr(text, dtstart=naive)
            firsts = [occurrence.date() for occurrence in rule.between(naive, until, inc=True)]
        for first in firsts:
            found.extend((first + timedelta(days=i), summary) for i in range(length))
    return found


def _day(value: date) -> date:
    return value.date() if isinstance(value, datetime) else value


def _days_spanned(start: date, end: date | None) -> int:
    if end is None:
        return 1
    if isinstance(start, datetime) or isinstance(end, datetime):
        return max(1, (_day(end) - _day(start)).days + 1)  # a timed event touches its end's date too
    return max(1, (end - start).days)  # an all-day event's end is exclusive
