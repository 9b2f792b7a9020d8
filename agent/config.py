"""
The agent's configuration: pydantic models, loaded from one YAML file.

Every error is reported with its field path and the file it came from
(``rules[2].action.params.replicas: must be ≥ 0``), all of them at once, so a
platform engineer fixes a file in one pass. Secrets are never values in the
file: they are references to an environment variable or a mounted file, read
when the agent starts and never printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from agent.actions import ActionSpec
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

    @field_validator("reconcile_interval")
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

    @field_validator("cooldown")
    @classmethod
    def _cooldown_not_negative(cls, value: timedelta) -> timedelta:
        return _not_negative(value)  # 0 turns the cooldown off

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> GuardConfig:
        if self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must be ≤ ceiling ({self.ceiling})")
        return self


MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')


class Matcher(Model):
    """An Alertmanager-style label matcher: ``name="value"``, ``!=``, ``=~`` (full-match regex), ``!~``."""

    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return cls.split(value) if isinstance(value, str) else value

    @staticmethod
    def split(text: str) -> dict[str, str]:
        match = MATCHER.match(text)
        if match is None:
            raise ValueError(f'{text!r} is not a matcher such as severity="warning" or namespace=~"cortex-.*"')
        label, op, quoted, bare = match.groups()
        value = quoted.replace('\\"', '"') if quoted is not None else bare
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{text!r}: bad regex: {exc}") from None
        return {"label": label, "op": op, "value": value}

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace('"', '\\"')  # the one escape split() undoes
        return f'{self.label}{self.op}"{escaped}"'

    @model_serializer
    def _as_text(self) -> str:  # the effective config shows matchers the way they are written
        return str(self)


class TargetSpec(Model):
    """
    How a rule finds the object to change. In order: the alert's labels (``name_labels``, else
    ``workload_labels`` mapped to whichever object of ``kind`` scales that workload), then ``name``, then
    ``selector``. ``namespace`` is used when the alert carries no ``namespace`` label (aggregates keep none).
    ``kind: auto`` finds the object from the workload alone: the ScaledObject that scales it, else its plain
    HPA, else the Deployment or StatefulSet itself.
    """

    kind: str = "ScaledObject"
    namespace: str | None = None
    name: str | None = None
    selector: dict[str, str] | None = None
    name_labels: list[str] | None = Field(
        default=None, description="alert labels naming the object; default: the kind's own (scaledObject, node, …)"
    )
    workload_labels: list[str] = ["deployment", "statefulset"]

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        from agent.targets import AUTO, KINDS

        if kind not in KINDS and kind != AUTO:
            raise ValueError(f"unknown target kind {kind!r}; known: {', '.join(sorted([*KINDS, AUTO]))}")
        return kind

    @model_validator(mode="after")
    def _auto_finds_by_workload(self) -> TargetSpec:
        from agent.targets import AUTO

        if self.kind == AUTO and (self.name is not None or self.selector or self.name_labels):
            raise ValueError(
                "kind auto finds the target from the workload an alert names (workload_labels);"
                " name, selector and name_labels need a kind"
            )
        return self


EventKindName = Literal["alert", "schedule", "notice", "intent"]


class RuleConfig(Model):
    """
    A rule matches an event of its ``kind`` (alert by default) whose name is ``alertname`` (when given) and whose
    labels fit every matcher; a rule needs at least one of the two.
    """

    name: str = Field(min_length=1)
    kind: EventKindName = "alert"
    alertname: str | None = Field(default=None, min_length=1)
    matchers: list[Matcher] = []
    action: ActionSpec
    target: TargetSpec = TargetSpec()

    @model_validator(mode="after")
    def _matches_something(self) -> RuleConfig:
        if self.alertname is None and not self.matchers:
            raise ValueError("give alertname, matchers, or both: a rule matching every event is a mistake")
        return self


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class Config(Model):
    webhook: WebhookConfig
    kubernetes: KubernetesConfig
    slack: SlackConfig | None = None
    ledger: LedgerConfig = LedgerConfig()
    guard: GuardConfig = GuardConfig()
    log: LogConfig = LogConfig()
    workers: int = Field(default=4, ge=1, le=64)
    # Each source's own section, checked by the source itself (agent.sources.check_sources), so that this module
    # never imports the sources: `alertmanager` is on by default.
    sources: dict[str, Any] = {}
    rules: list[RuleConfig] = []

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Config:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


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


def _rule_namespace_errors(data: dict[str, Any]) -> list[str]:
    """
    A rule's ``target.namespace`` must be one the agent may touch: otherwise the guard refuses every decision
    the rule makes there. Checked on the raw data, so it is reported with its field path alongside any other
    problem in the file; a malformed ``namespaces`` list or rule is left to the models to report.
    """
    kubernetes = data.get("kubernetes")
    namespaces = kubernetes.get("namespaces") if isinstance(kubernetes, dict) else None
    if not isinstance(namespaces, list) or not namespaces or not all(isinstance(n, str) for n in namespaces):
        return []
    if "*" in namespaces:
        return []
    rules = data.get("rules")
    errors = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        target = rule.get("target") if isinstance(rule, dict) else None
        namespace = target.get("namespace") if isinstance(target, dict) else None
        if isinstance(namespace, str) and namespace not in namespaces:
            allowed = ", ".join(namespaces)
            errors.append(f"rules[{index}].target.namespace: {namespace} is not in kubernetes.namespaces ({allowed})")
    return errors


def parse_config(data: Any, *, source: str) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of settings"])
    errors: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = format_errors(exc)
    errors += _rule_namespace_errors(data)  # checks across sections, reported in the same pass
    if errors:
        raise ConfigError(source, errors)
    assert config is not None
    return config


def load_config(path: str | Path) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"(file): not valid YAML: {where}{problem}"]) from None
    return parse_config(data, source=source)


def check_secrets(config: Config, *, source: str) -> None:
    """Read every secret once, so a missing one stops the agent at start with the field named."""
    errors = []
    refs: list[tuple[str, SecretRef | None]] = []
    auth = config.webhook.auth
    if isinstance(auth, BearerAuth):
        refs.append(("webhook.auth.token", auth.token))
    elif isinstance(auth, BasicAuth):
        refs.append(("webhook.auth.password", auth.password))
    if config.slack is not None:
        refs.append(("slack.token", config.slack.token))
        refs.append(("slack.webhook_url", config.slack.webhook_url))
    for path, ref in refs:
        if ref is None:
            continue
        try:
            ref.read()
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
    if errors:
        raise ConfigError(source, errors)


def effective_config(config: Config) -> dict[str, Any]:
    """The config with every default filled in, as YAML-ready data; secrets appear only as references."""
    return config.model_dump(mode="json", by_alias=True, exclude_none=True)
