"""
The agent's config file: one YAML file, read and checked whole.

Every error is reported with its field path and the file it came from
(``rules[2].action.params.replicas: must be ≥ 0``), all of them at once, so a
platform engineer fixes a file in one pass. The rules name actions and target
kinds, which are plug-ins (:mod:`agent.actions`, :mod:`agent.targets`); so
this module sits above them, and :mod:`agent.config` (the sections every layer
uses) below. Each source checks its own ``sources`` section
(:func:`agent.sources.check_sources`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_serializer, model_validator

from agent.actions import ActionSpec
from agent.config import (
    BasicAuth,
    BearerAuth,
    ConfigError,
    CostConfig,
    GuardConfig,
    KubernetesConfig,
    LedgerConfig,
    LogConfig,
    Model,
    SecretRef,
    SlackConfig,
    WebhookConfig,
    format_errors,
)
from agent.targets import AUTO, KINDS

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
        if kind not in KINDS and kind != AUTO:
            raise ValueError(f"unknown target kind {kind!r}; known: {', '.join(sorted([*KINDS, AUTO]))}")
        return kind

    @model_validator(mode="after")
    def _auto_finds_by_workload(self) -> TargetSpec:
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
    # A critical rule's scale-ups go past a cost budget (the decision says so); the others are refused there.
    critical: bool = False

    @model_validator(mode="after")
    def _matches_something(self) -> RuleConfig:
        if self.alertname is None and not self.matchers:
            raise ValueError("give alertname, matchers, or both: a rule matching every event is a mistake")
        if self.action.type == "cap" and self.target.kind not in ("ScaledObject", "HorizontalPodAutoscaler"):
            raise ValueError(
                "the cap action lowers max-replicas: target.kind must be ScaledObject or HorizontalPodAutoscaler"
            )
        if self.action.type == "window" and self.kind != "schedule":
            raise ValueError("the window action answers a schedule's edges: write a schedule (sources.calendar)")
        return self


class Config(Model):
    webhook: WebhookConfig
    kubernetes: KubernetesConfig
    slack: SlackConfig | None = None
    ledger: LedgerConfig = LedgerConfig()
    guard: GuardConfig = GuardConfig()
    cost: CostConfig = CostConfig()
    log: LogConfig = LogConfig()
    # Each lane waits on the ledger for every decision; 8 keep up with 1,000 alerts/s (bench/README.md).
    workers: int = Field(default=8, ge=1, le=64)
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
    if config.cost.prometheus is not None:
        refs.append(("cost.prometheus.token", config.cost.prometheus.token))
    if config.slack is not None:
        refs.append(("slack.token", config.slack.token))
        refs.append(("slack.webhook_url", config.slack.webhook_url))
    for name, section in config.sources.items():  # each source's own (checked by then: its settings model)
        if isinstance(section, BaseModel):
            refs.extend((f"sources.{name}.{key}", value) for key, value in section if isinstance(value, SecretRef))
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
