"""
Rules: from an event to plans — which action, on which target, and why that target.

Every rule whose kind, ``alertname`` and matchers fit the event yields plans. The
target is resolved from the cluster, in order (docs/rules.md, "Finding the
target"): the alert's own labels (an object's name, or a workload name
mapped through the kind's ``scaleTargetRef``), then a name written in the rule,
then a label selector written in the rule. With ``kind: auto`` the workload is
changed through whichever kind scales it: its ScaledObject (KEDA owns the HPA
behind it), else its plain HPA, else its own replicas. When nothing resolves,
the plan carries no target and becomes a recorded ``no-op: no target``, never
a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from agent.actions import ACTIONS
from agent.configfile import RuleConfig, TargetSpec
from agent.errors import KubernetesError
from agent.structs import Event, Outcome, Plan, TargetRef
from agent.targets import AUTO, AUTO_KINDS
from agent.targets.base import TargetKind

# Which kind of workload an alert label names (kube-state-metrics labels).
WORKLOAD_OF_LABEL = {"deployment": "Deployment", "statefulset": "StatefulSet"}

log = structlog.get_logger("agent.rules")


def matches(rule: RuleConfig, event: Event) -> bool:
    """The rule's kind, its name (when it gives one) and every matcher on the event's labels."""
    if rule.kind != event.kind or (rule.alertname is not None and rule.alertname != event.alertname):
        return False
    return all(matcher.matches(event.labels) for matcher in rule.matchers)


def _machine(labels: Mapping[str, str]) -> str:
    """A notice's machine, as its labels name it."""
    for label in ("node", "provider_id", "instance_id", "instance_name", "vm_name"):
        if labels.get(label):
            return f"{labels.get('cloud')} {label} {labels[label]}"
    if labels.get("vmss"):
        return f"azure scale set {labels['vmss']} instance {labels.get('vmss_instance')}"
    return "the machine the notice names"


class TargetLookupFailed(Exception):
    pass


class Rules:
    def __init__(self, rules: Sequence[RuleConfig], *, targets: Mapping[str, TargetKind]) -> None:
        self._rules = list(rules)
        self._targets = targets

    def named(self, name: str | None) -> RuleConfig | None:
        """The rule of that name (a decision names the rule it came from), if there is one."""
        return next((rule for rule in self._rules if rule.name == name), None)

    def matching(self, event: Event) -> list[RuleConfig]:
        return [rule for rule in self._rules if matches(rule, event)]

    async def plan(self, event: Event) -> list[Plan]:
        plans: list[Plan] = []
        for rule in self.matching(event):
            action = ACTIONS[rule.action.type]
            verdict: Outcome | None
            try:
                refs, reason = await self.resolve(rule.target, event.labels, namespace=event.namespace)
            except TargetLookupFailed as exc:
                refs, reason, verdict = [], str(exc), Outcome.FAILED
            else:
                verdict = None
            targets: list[TargetRef | None] = list(refs) or [None]  # no target is a plan too: a recorded no-op
            plans.extend(
                Plan(
                    event=event,
                    rule=rule.name,
                    action=action.name,
                    spec=rule.action,
                    target=target,
                    reason=reason,
                    verdict=verdict,
                )
                for target in targets
            )
        return plans

    async def resolve(
        self, spec: TargetSpec, labels: Mapping[str, str], *, namespace: str | None = None
    ) -> tuple[list[TargetRef], str]:
        """The targets of one event: ``namespace`` is the event's own, when it has one (a label wins)."""
        auto = spec.kind == AUTO
        kind = None if auto else self._targets[spec.kind]
        cluster_scoped = kind is not None and not kind.namespaced
        namespace = "" if cluster_scoped else labels.get("namespace") or namespace or spec.namespace
        try:
            name_labels = spec.name_labels if spec.name_labels is not None else (kind.name_labels if kind else ())
            for label in name_labels:
                if labels.get(label):
                    if namespace is None:
                        return (
                            [],
                            f"no target: label {label}={labels[label]} but no namespace label or rule namespace",
                        )
                    ref = TargetRef(kind=spec.kind, namespace=namespace, name=labels[label])
                    return [ref], f"from label {label}"
            for label in [] if cluster_scoped else spec.workload_labels:
                if labels.get(label):
                    if namespace is None:
                        return (
                            [],
                            f"no target: label {label}={labels[label]} but no namespace label or rule namespace",
                        )
                    workload = WORKLOAD_OF_LABEL.get(label.lower(), "Deployment")
                    if kind is None:
                        return await self.scaler_of(namespace, workload, labels[label])
                    refs = await kind.find_by_workload(namespace, workload, labels[label])
                    if refs:
                        return refs, f"{spec.kind} scaling {label} {labels[label]}"
                    return [], f"no target: no {spec.kind} in {namespace} scales {label} {labels[label]}"
            if kind is not None and labels.get("cloud"):  # a notice about a machine: which Node is it?
                refs = await kind.find_by_machine(labels)
                if refs:
                    return refs, f"the {spec.kind} of {_machine(labels)}"
                if not kind.namespaced and spec.name is None and not spec.selector:
                    return [], f"no target: no {spec.kind} is {_machine(labels)} (its providerID)"
            if spec.name is not None:
                if namespace is None:
                    return [], "no target: the rule names an object but no namespace"
                return [TargetRef(kind=spec.kind, namespace=namespace, name=spec.name)], "named in the rule"
            if spec.selector and kind is not None:
                refs = await kind.find_by_labels(None if cluster_scoped else namespace, spec.selector)
                shown = ",".join(f"{k}={v}" for k, v in sorted(spec.selector.items()))
                if refs:
                    return refs, f"selected by {shown}"
                return [], f"no target: no {spec.kind} matches {shown}"
        except KubernetesError as exc:
            log.warning("target lookup failed", error=str(exc))
            raise TargetLookupFailed(f"target lookup failed: {exc}") from exc
        return [], "no target: the alert carries no target labels and the rule names none"

    async def scaler_of(self, namespace: str, workload: str, name: str) -> tuple[list[TargetRef], str]:
        """The object to change for a workload: whichever kind scales it, in the order of :data:`AUTO_KINDS`."""
        for kind_name in AUTO_KINDS:
            kind = self._targets.get(kind_name)
            if kind is None:
                continue
            refs = await kind.find_by_workload(namespace, workload, name)
            if refs:
                if kind_name in (workload,):
                    return refs, f"{workload} {name} itself: nothing autoscales it"
                return refs, f"the {kind_name} scaling {workload} {name}"
        return [], f"no target: no {workload} {name} in {namespace}"
