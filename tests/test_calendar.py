"""Window edges, computed by the agent itself in each schedule's zone: daylight saving, midnight, days off."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.calendar import DaysOff, Timing, instant

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = frozenset(range(5))


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


def opens_on(timing: Timing, day: date) -> list[datetime]:
    zone = timing.zone
    start = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    return [
        w.opens.astimezone(zone)
        for w in timing.windows(after=start, before=start + timedelta(days=1))
        if w.opens >= start
    ]


@pytest.mark.parametrize(
    ("zone", "day"),
    [(BERLIN, date(2026, 3, 29)), (NEW_YORK, date(2026, 3, 8))],
)
def test_a_window_starting_in_the_skipped_hour_opens_when_the_clock_jumps(zone: ZoneInfo, day: date) -> None:
    timing = Timing(zone=zone, start=time(2, 30), end=time(6, 0))
    [opened] = opens_on(timing, day)
    assert (opened.hour, opened.minute) == (3, 0)  # the first valid instant, not 03:30
    assert opened.replace(tzinfo=None) == datetime.combine(day, time(3, 0))
    # The instant itself: the moment of the jump (01:00 UTC in Berlin, 07:00 UTC in New York).
    assert instant(datetime.combine(day, time(2, 30)), zone) == instant(datetime.combine(day, time(3, 0)), zone)


@pytest.mark.parametrize(
    ("zone", "day", "first_utc"),
    [
        (BERLIN, date(2026, 10, 25), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        (NEW_YORK, date(2026, 11, 1), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
    ],
)
def test_a_window_starting_in_the_repeated_hour_opens_once(zone: ZoneInfo, day: date, first_utc: datetime) -> None:
    timing = Timing(zone=zone, start=time(1, 30) if zone is NEW_YORK else time(2, 30), end=time(5, 0))
    windows = list(timing.windows(after=first_utc - timedelta(hours=3), before=first_utc + timedelta(hours=6)))
    assert [w.opens for w in windows] == [first_utc]  # the first of the two 02:30s (01:30s), and only once
    # An hour later the clock shows the same time again: still the one window, open.
    assert timing.open_at(first_utc + timedelta(hours=1)) == windows[0]


def test_a_window_crossing_midnight_closes_the_next_day_on_the_wall_clock() -> None:
    timing = Timing(zone=BERLIN, start=time(22, 0), end=time(6, 0))
    window = timing.open_at(local(BERLIN, 2026, 12, 7, 3, 0).astimezone(UTC))
    assert window is not None and window.key == "2026-12-06T22:00"
    assert window.closes == local(BERLIN, 2026, 12, 7, 6, 0).astimezone(UTC)
    # Over the fall-back night the same wall-clock window lasts nine hours, not eight.
    night = timing.open_at(local(BERLIN, 2026, 10, 25, 4, 0).astimezone(UTC))
    assert night is not None and night.closes - night.starts == timedelta(hours=9)


def test_a_cron_window_lasts_its_duration_in_elapsed_time() -> None:
    timing = Timing(zone=NEW_YORK, cron="0 1 * * *", duration=timedelta(hours=3))
    night = timing.open_at(datetime(2026, 11, 1, 6, 30, tzinfo=UTC))  # 01:30 EST, the second 01:30 of the night
    assert night is not None and night.key == "2026-11-01T01:00"
    assert night.starts == datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # the first 01:00 (EDT)
    assert night.closes == night.starts + timedelta(hours=3)


def test_weekdays_lead_and_the_next_edges() -> None:
    # The seed's business hours: weekdays 08:00-18:00, opened 10 minutes early.
    timing = Timing(zone=BERLIN, start=time(8), end=time(18), days=WEEKDAYS, lead=timedelta(minutes=10))
    saturday = local(BERLIN, 2026, 12, 5, 10, 0).astimezone(UTC)
    assert timing.open_at(saturday) is None
    edge = timing.next_edge(saturday)
    assert edge is not None and edge.opening
    assert edge.at == local(BERLIN, 2026, 12, 7, 7, 50).astimezone(UTC)  # Monday, 10 minutes before 08:00
    assert edge.window.starts == local(BERLIN, 2026, 12, 7, 8, 0).astimezone(UTC)
    closing = timing.next_edge(edge.at)
    assert closing is not None and not closing.opening
    assert closing.at == local(BERLIN, 2026, 12, 7, 18, 0).astimezone(UTC)
    # Inside the window at 10:00: open, the one that started at 08:00.
    window = timing.open_at(local(BERLIN, 2026, 12, 7, 10, 0).astimezone(UTC))
    assert window is not None and window.key == "2026-12-07T08:00"
    assert timing.open_at(local(BERLIN, 2026, 12, 7, 18, 0).astimezone(UTC)) is None  # closed at 18:00 sharp


def test_public_holidays_and_listed_dates_are_days_off() -> None:
    off = DaysOff(country="DE", subdivision="BE", dates=[date(2026, 12, 24)])
    timing = Timing(zone=BERLIN, start=time(8), end=time(18), days=WEEKDAYS, skip=off)
    assert off.why(date(2026, 12, 25)) == "Christmas Day"  # in English whatever the locale (a pod has no LANG)
    assert DaysOff(country="DE", language="de").why(date(2026, 12, 25)) == "Erster Weihnachtstag"
    assert off.why(date(2026, 12, 24)) == "listed day off"
    assert off.why(date(2026, 12, 23)) is None
    assert timing.open_at(local(BERLIN, 2026, 12, 25, 10, 0).astimezone(UTC)) is None  # a Friday, and a holiday
    assert timing.open_at(local(BERLIN, 2026, 12, 24, 10, 0).astimezone(UTC)) is None
    assert timing.open_at(local(BERLIN, 2026, 12, 23, 10, 0).astimezone(UTC)) is not None
    # The next window after Wednesday's skips Thursday and Friday (and the weekend, and the 28th is a Monday).
    edge = timing.next_edge(local(BERLIN, 2026, 12, 23, 18, 30).astimezone(UTC))
    assert edge is not None and edge.window.key == "2026-12-28T08:00"


ICAL = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//cortex//closures//EN
BEGIN:VEVENT
UID:1@cortex
DTSTART;VALUE=DATE:20261228
DTEND;VALUE=DATE:20261230
SUMMARY:Company shutdown
END:VEVENT
BEGIN:VEVENT
UID:2@cortex
DTSTART;VALUE=DATE:20270115
DTEND;VALUE=DATE:20270116
RRULE:FREQ=YEARLY
SUMMARY:Founders' day
END:VEVENT
END:VCALENDAR
"""


def test_an_icalendar_files_events_are_days_off(tmp_path: Path) -> None:
    path = tmp_path / "closures.ics"
    path.write_text(ICAL)
    off = DaysOff(ical=path)
    assert off.why(date(2026, 12, 28)) == off.why(date(2026, 12, 29)) == "Company shutdown"
    assert off.why(date(2026, 12, 30)) is None  # an all-day event's end is exclusive
    assert off.why(date(2028, 1, 15)) == "Founders' day"  # repeats every year
    timing = Timing(zone=BERLIN, start=time(8), end=time(18), days=WEEKDAYS, skip=off)
    edge = timing.next_edge(local(BERLIN, 2026, 12, 27, 12, 0).astimezone(UTC))
    assert edge is not None and edge.window.key == "2026-12-30T08:00"


def test_unreadable_days_off_and_bad_timings_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        DaysOff(ical=tmp_path / "missing.ics")
    (tmp_path / "bad.ics").write_text("not a calendar")
    with pytest.raises(ValueError, match="not an iCalendar file"):
        DaysOff(ical=tmp_path / "bad.ics")
    with pytest.raises(ValueError, match="Country"):
        DaysOff(country="XX")
    with pytest.raises(ValueError, match="start and end"):
        Timing(zone=BERLIN)
    with pytest.raises(ValueError, match="positive duration"):
        Timing(zone=BERLIN, cron="0 8 * * *")
    with pytest.raises(ValueError):
        Timing(zone=BERLIN, cron="0 8 * *", duration=timedelta(hours=1))  # four fields
    with pytest.raises(ValueError, match="never close"):
        Timing(zone=BERLIN, start=time(8), end=time(8))
