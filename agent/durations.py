"""
Durations as people write them in config ("90s", "30m", "2h", "1d", or plain seconds).

A pydantic type, so a bad value becomes a config error naming its field.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


MAX_SECONDS = 10 * 365 * 86400  # ten years: longer is a typo (or .inf), and timedelta overflows past ~2.7e6 years


def parse_duration(value: Any) -> timedelta:
    parsed = _parse(value)
    if parsed.total_seconds() > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than ten years")
    return parsed


def _parse(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 90s, 30m or 2h")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a duration such as 90s, 30m or 2h")
        if value < 0:
            raise ValueError("must not be negative")
        if value > MAX_SECONDS:
            raise ValueError(f"{value!r} is longer than ten years")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return timedelta(seconds=min(int(text), MAX_SECONDS + 1))
        pos, total = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return timedelta(seconds=min(total, MAX_SECONDS + 1))
    raise ValueError(f"{value!r} is not a duration such as 90s, 30m, 2h or 1h30m")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{value.total_seconds():g}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
