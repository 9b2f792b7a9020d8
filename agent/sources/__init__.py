"""
Sources: where events come from. One module per source (:class:`~agent.sources.base.Source`), one line in
:data:`SOURCES`.

Today: the Alertmanager webhook, the calendar, and three ways in for preemption notices and scale intents: the
events webhook, a Redis-stream consumer and an AMQP consumer. A new source is one new module here plus one entry
in :data:`SOURCES`; app.py builds whatever the registry and the config's ``sources`` section say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config import ConfigError, format_errors
from agent.configfile import Config, RuleConfig
from agent.sources.alertmanager import AlertmanagerSource
from agent.sources.amqp import AmqpSource
from agent.sources.base import FollowsDecisions, Source, SourceContext, SourceSettings
from agent.sources.calendar import CalendarSource
from agent.sources.events import EventsSource
from agent.sources.redis_stream import RedisStreamSource

SOURCES: dict[str, type[Source]] = {
    AlertmanagerSource.name: AlertmanagerSource,
    CalendarSource.name: CalendarSource,
    EventsSource.name: EventsSource,
    RedisStreamSource.name: RedisStreamSource,
    AmqpSource.name: AmqpSource,
}


def check_sources(config: Config, *, origin: str) -> dict[str, SourceSettings]:
    """
    Every source's settings, validated from ``sources.<name>`` (its defaults where the section is absent). Raises
    :class:`~agent.config.ConfigError` naming each problem's field path, and an unknown source by name.
    """
    errors: list[str] = []
    settings: dict[str, SourceSettings] = {}
    for name in config.sources:
        if name not in SOURCES:
            errors.append(f"sources.{name}: unknown source; known: {', '.join(sorted(SOURCES))}")
    for name, source in SOURCES.items():
        section: Any = config.sources.get(name) or {}
        if isinstance(section, BaseModel):  # checked already
            section = section.model_dump()
        try:
            settings[name] = source.Settings.model_validate(section)
        except ValidationError as exc:
            errors.extend(f"sources.{name}.{line}" for line in format_errors(exc))
    if errors:
        raise ConfigError(origin, errors)
    return settings


def build_sources(settings: Mapping[str, SourceSettings], *, context: SourceContext) -> list[Source]:
    """The enabled sources, built."""
    return [SOURCES[name](one, context=context) for name, one in settings.items() if one.enabled]


def source_rules(settings: Mapping[str, SourceSettings]) -> list[RuleConfig]:
    """The rules the enabled sources bring (a schedule's), to run beside the config's own."""
    return [rule for one in settings.values() if one.enabled for rule in one.rules()]


def retired_by(settings: Mapping[str, SourceSettings]) -> Callable[[str], str | None]:
    """For the reconciler: why a holder's claims must go now, asked of every source, on or off."""

    def retired(holder: str) -> str | None:
        return next((why for one in settings.values() if (why := one.retired(holder)) is not None), None)

    return retired


__all__ = [
    "SOURCES",
    "FollowsDecisions",
    "Source",
    "SourceContext",
    "SourceSettings",
    "build_sources",
    "check_sources",
    "retired_by",
    "source_rules",
]
