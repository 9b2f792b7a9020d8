"""
The agent's settings, section by section: pydantic models every layer may use.

This module is at the bottom of the layers: it imports no action, target kind
or source, so each of those can take its own section from here. The whole file
(its rules, whose actions and target kinds are the plug-ins') is read and
checked in :mod:`agent.configfile`, above them. Errors keep their field path
(:func:`format_errors`). Secrets are never values in the file: they are
references to an environment variable or a mounted file, read when the agent
starts and never printed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.durations import Duration

ONE_SECOND = timedelta(seconds=1)


def _not_negative(value: timedelta) -> timedelta:
    # A file cannot spell a negative duration (the parser refuses it); this holds for code building a config too.
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


class ConfigError(Exception):
    """A config file that cannot be used; ``errors`` lists every problem as ``field.path: message``."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretRef(Model):
    """A secret's location: an environment variable or a file (e.g. a mounted Kubernetes Secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"

    def read(self) -> str:
        """The secret's value; raises ValueError naming where it looked, never the value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {self.file}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{self.file} is empty")
        return value


class BearerAuth(Model):
    type: Literal["bearer"]
    token: SecretRef


class BasicAuth(Model):
    type: Literal["basic"]
    username: str
    password: SecretRef


class NoAuth(Model):
    """Explicitly no credentials: only sensible behind a NetworkPolicy, or on loopback."""

    type: Literal["none"]


class WebhookConfig(Model):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    auth: BearerAuth | BasicAuth | NoAuth = Field(discriminator="type")


# What Slack (or the console standing in for it) gets by default: everything but no-ops.
PostedOutcome = Literal["applied", "no-op", "refused", "failed", "dry-run"]
POSTED_OUTCOMES: tuple[PostedOutcome, ...] = ("applied", "refused", "failed", "dry-run")


class SlackConfig(Model):
    """Bot token + channel (chat.postMessage), or an incoming-webhook URL. Absent: decisions go to the console."""

    token: SecretRef | None = None
    channel: str | None = None
    webhook_url: SecretRef | None = None
    base_url: str = "https://slack.com/api/"
    post_outcomes: list[PostedOutcome] = list(POSTED_OUTCOMES)
    queue_size: int = Field(default=1000, ge=1)
    attempts: int = Field(default=5, ge=1, le=20)

    @model_validator(mode="after")
    def _one_way(self) -> SlackConfig:
        if self.token is not None and self.webhook_url is not None:
            raise ValueError("give either token (+ channel) or webhook_url, not both")
        if self.token is None and self.webhook_url is None:
            raise ValueError("give token (+ channel) or webhook_url; leave slack out to print to the console")
        if self.token is not None and not self.channel:
            raise ValueError("channel is required with token")
        return self


class LedgerConfig(Model):
    url: str = "sqlite:////var/lib/scaling-agent/ledger.db"  # four slashes: an absolute path
    key_prefix: str = "scaling-agent"
    # Processed events are kept this long so redeliveries are still recognised, then dropped;
    # decisions are the audit record and are kept.
    inbox_retention: Duration = timedelta(days=7)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not (url.startswith("sqlite:///") or url.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError("must start with sqlite:///, redis://, rediss:// or unix://")
        return url

    @field_validator("inbox_retention")
    @classmethod
    def _retention_at_least_a_second(cls, value: timedelta) -> timedelta:
        # Redis refuses a key expiry under 1s (every intake would fail), and sqlite would forget redeliveries at once.
        if value < ONE_SECOND:
            raise ValueError("must be at least 1s (shorter breaks the Redis ledger and forgets redeliveries at once)")
        return value


class KubernetesConfig(Model):
    namespaces: list[str] = Field(min_length=1, description='namespaces the agent may touch; ["*"] for all')
    reconcile_interval: Duration = timedelta(seconds=30)
    resume_check_after: Duration = timedelta(minutes=2)
    api_attempts: int = Field(default=4, ge=1, le=10)
    api_backoff: Duration = timedelta(milliseconds=200)
    post_events: bool = True
    # Read every target kind's objects from a watch-backed cache (list + watch), not GETs per decision.
    watch: bool = True
    resync: Duration = timedelta(minutes=10)  # how often the cache lists everything again, to correct any drift

    @field_validator("reconcile_interval", "resync")
    @classmethod
    def _interval_at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < ONE_SECOND:
            raise ValueError("must be at least 1s (0s would be a busy loop)")
        return value

    @field_validator("resume_check_after", "api_backoff")
    @classmethod
    def _durations_not_negative(cls, value: timedelta) -> timedelta:
        return _not_negative(value)

    def allows(self, namespace: str) -> bool:
        return "*" in self.namespaces or namespace in self.namespaces


class GuardConfig(Model):
    dry_run: bool = False
    cooldown: Duration = timedelta(minutes=5)
    floor: int = Field(default=0, ge=0, description="lowest replica value the agent may write")
    ceiling: int = Field(default=50, ge=1, description="highest replica value the agent may write")
    max_concurrent_changes: int = Field(default=5, ge=1)
    max_targets_per_event: int = Field(default=5, ge=1)
    # A schedule over a selector plans its edges: twenty objects is normal there, not an alert gone wide.
    max_targets_per_schedule: int = Field(default=200, ge=1)
    # Evacuations (preemption notices): Nodes draining at once, and a workload's pods evicted at once (a share of
    # its replicas, at least one). A Node past the first is still cordoned and pre-scaled; only its evictions wait.
    max_nodes_draining: int = Field(default=2, ge=1)
    max_evicting_percent: int = Field(default=25, ge=1, le=100)

    @field_validator("cooldown")
    @classmethod
    def _cooldown_not_negative(cls, value: timedelta) -> timedelta:
        return _not_negative(value)  # 0 turns the cooldown off

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> GuardConfig:
        if self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must be ≤ ceiling ({self.ceiling})")
        return self


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


_MESSAGES = {
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "too_short": "must have at least {min_length} item(s)",
    "union_tag_invalid": "unknown {discriminator} {tag}; known: {expected_tags}",
}


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        # A discriminated union puts the tag ("pause") in the path; it says nothing the file does not.
        if previous in ("action", "auth") and isinstance(item, str) and item not in ("params", "type"):
            previous = item
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
        previous = item
    return "".join(parts) or "(top level)"


def format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        template = _MESSAGES.get(error["type"])
        if template is not None:
            message = template.format(**error.get("ctx", {}))
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_path(error['loc'])}: {message}")
    return lines
