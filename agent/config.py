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


def positive_duration(value: timedelta) -> timedelta:
    """A timeout or an interval: zero would never wait at all."""
    if value <= timedelta(0):
        raise ValueError("must be more than 0s")
    return value


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


class UnitPrices(Model):
    """One resource's price for an hour, on-demand and spot."""

    on_demand: float = Field(ge=0)
    spot: float | None = Field(default=None, ge=0, description="default: the on-demand price")


class InstancePrice(Model):
    """An instance type's price for an hour, and its size (to split the price between vCPUs and memory)."""

    on_demand: float = Field(ge=0)
    spot: float | None = Field(default=None, ge=0)
    cpus: float = Field(gt=0)
    memory_gib: float = Field(gt=0)


class PricingTable(Model):
    """
    The prices used when Prometheus cannot give them (down, or no OpenCost series). The defaults are OpenCost's
    own default prices for a cluster without a cloud price list (per vCPU-hour and per GiB-hour).
    """

    cpu_hour: UnitPrices = UnitPrices(on_demand=0.031611, spot=0.006655)
    gib_hour: UnitPrices = UnitPrices(on_demand=0.004237, spot=0.000892)
    instance_types: dict[str, InstancePrice] = {}


class PrometheusPricing(Model):
    """Where OpenCost's node prices and kube-state-metrics' requests are read (prometheus-api-client)."""

    url: str
    timeout: Duration = timedelta(seconds=2)
    token: SecretRef | None = None  # sent as a bearer token, when Prometheus sits behind an auth proxy

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @field_validator("timeout")
    @classmethod
    def _timeout_positive(cls, value: timedelta) -> timedelta:
        return positive_duration(value)


HOURS_PER_MONTH = 730


class Budget(Model):
    """A spending limit; monthly is hourly x 730 (OpenCost's convention). Give one or both: the lower holds."""

    hourly: float | None = Field(default=None, gt=0)
    monthly: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_given(self) -> Budget:
        if self.hourly is None and self.monthly is None:
            raise ValueError("give hourly, monthly, or both")
        return self

    @property
    def per_hour(self) -> float:
        limits = [v for v in (self.hourly, None if self.monthly is None else self.monthly / HOURS_PER_MONTH) if v]
        return min(limits)


class Budgets(Model):
    overall: Budget | None = None  # every namespace the agent may touch, together
    namespaces: dict[str, Budget] = {}


class AdviceConfig(Model):
    """Advice without action: recorded ``notify`` decisions, never a change."""

    enabled: bool = True
    every: Duration = timedelta(hours=6)
    repeat: Duration = timedelta(days=7)  # the same advice about the same target at most this often
    idle_for: Duration = timedelta(days=3)  # no MCP request for this long: a scale-to-zero candidate
    spot_tolerations: list[str] = [
        "node.kubernetes.io/spot",
        "cloud.google.com/gke-spot",
        "kubernetes.azure.com/scalesetpriority",
        "karpenter.sh/capacity-type",
        "eks.amazonaws.com/capacityType",
    ]

    @field_validator("every", "repeat", "idle_for")
    @classmethod
    def _at_least_a_minute(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("must be at least 1m")
        return value


class CostConfig(Model):
    """Pricing, budgets and advice (agent/cost.py). Without a ``prometheus`` URL, every price is the table's."""

    prometheus: PrometheusPricing | None = None
    cache: Duration = timedelta(minutes=5)  # how long a price (and a namespace's spend) is reused
    table: PricingTable = PricingTable()
    budgets: Budgets = Budgets()
    on_unknown_price: Literal["allow", "refuse"] = "allow"  # a scale-up with no price, under a budget
    advice: AdviceConfig = AdviceConfig()

    @field_validator("cache")
    @classmethod
    def _cache_not_negative(cls, value: timedelta) -> timedelta:
        return _not_negative(value)


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
