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

A ``cap`` rule (HighMCPCost) picks its targets by price instead: the most
expensive objects of its kind in the alert's namespace whose ceiling can still
go lower, and at the resolve every object the alert holds a cap on
(:meth:`Rules.most_expensive`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from agent.actions import ACTIONS, holder_of
from agent.actions.cap import CapSpec, cap_limit
from agent.claims import MAX_REPLICAS, MIN_REPLICAS
from agent.configfile import RuleConfig, TargetSpec
from agent.cost import Pricer
from agent.errors import KubernetesError
from agent.structs import Event, Outcome, Plan, TargetRef
from agent.targets import AUTO, AUTO_KINDS
from agent.targets.base import TargetKind, TargetState, labels_hold

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
    def __init__(
        self, rules: Sequence[RuleConfig], *, targets: Mapping[str, TargetKind], pricer: Pricer | None = None
    ) -> None:
        self._rules = list(rules)
        self._targets = targets
        self.pricer = pricer

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
                if isinstance(rule.action, CapSpec):
                    refs, reason = await self.most_expensive(rule, rule.action, event)
                else:
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
                    critical=rule.critical,
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

    async def most_expensive(self, rule: RuleConfig, spec: CapSpec, event: Event) -> tuple[list[TargetRef], str]:
        """
        A cap's targets: while the alert fires, the ``targets`` objects of the rule's kind in the alert's namespace
        that cost the most now (one replica's price times the replicas they run) among those whose ceiling can still
        go lower; at its resolve, every object holding a cap of this alert's, wherever the prices stand.
        """
        namespace = event.labels.get("namespace") or event.namespace or rule.target.namespace
        if not namespace:
            return [], "no target: the alert carries no namespace label and the rule names none"
        kind = self._targets[rule.target.kind]
        holder = holder_of(rule.name, event)
        try:
            listed = await kind.list(namespace)
            selector = rule.target.selector or {}
            states = [await kind.get(namespace, s.ref.name) for s in listed if labels_hold(s.labels, selector)]
        except KubernetesError as exc:
            log.warning("target lookup failed", error=str(exc))
            raise TargetLookupFailed(f"target lookup failed: {exc}") from exc
        if event.status == "resolved":
            held = [s.ref for s in states if any(c.holder == holder for c in s.claims.claims)]
            if held:
                return held, f"the {rule.target.kind}s this alert capped in {namespace}"
            return [], f"no target: nothing in {namespace} holds a cap of this alert's"
        priced: list[tuple[float, int, TargetState, str]] = []
        stopped: list[str] = []  # the objects this alert capped that cannot go lower: why not
        for state in states:
            current = state.values.get(MAX_REPLICAS)
            if not isinstance(current, int) or current <= cap_limit(state, spec):
                if isinstance(current, int) and any(c.holder == holder for c in state.claims.claims):
                    floors = sorted({c.holder for c in state.claims.on(MIN_REPLICAS)})
                    by = f", held by {', '.join(floors)}" if floors else ""
                    stopped.append(f"{state.ref.name}: max-replicas {current} at its floor{by}")
                continue
            replicas = state.replicas or 0
            price = await self.pricer.price(state) if self.pricer is not None else None
            if price is not None and price.per_hour is not None:
                cost = price.per_hour * replicas
                shown = f"{state.ref.name} ${cost:.2f}/h ({replicas} x ${price.per_hour:.4f}, {price.source})"
            else:
                cost, shown = 0.0, f"{state.ref.name} unpriced ({replicas} replicas)"
            priced.append((cost, replicas, state, shown))
        if not priced:
            why = f" ({'; '.join(stopped)}: a cap never goes below a floor)" if stopped else ""
            return [], f"no target: no {rule.target.kind} in {namespace} has a ceiling above its floor to cap{why}"
        priced.sort(key=lambda p: (-p[0], -p[1], p[2].ref.name))
        chosen = priced[: spec.params.targets]
        shown = ", ".join(p[3] for p in chosen)
        return [p[2].ref for p in chosen], f"the most expensive in {namespace}: {shown}"

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
