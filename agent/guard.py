"""
The guard: every check between "a rule wants this" and "the API is called", and every refusal.

Before any object is read: the blast radius (a rule whose selector hits more
objects than ``max_targets_per_event`` acts on none). Then, per object, in
order: the namespace allow-list (cluster-scoped kinds such as Node have none),
claims the agent can read (it never writes over an unreadable claims annotation),
whether the kind can honour the claim at all (a pause on a Deployment nothing
autoscales; any change to the HPA KEDA owns), that what a give-back ends is the
agent's own (never a pause someone else set), the object's own opt-out
annotation (``scaling-agent.cortex.io/ignore: "true"``), the claim's bounds
(floor/ceiling; a raise is clipped at the ceiling), the resulting bounds (min ≤ max), the cooldown, then the
limit on changes in flight at once. Dry-run is the last word: everything is
decided and recorded, nothing is patched. A check that says no raises
:class:`Refused` with the reason; the executor records it as a ``refused``
decision, so refusals are as visible as changes.

**The cooldown, in terms of claims.** It is per object and per field: a new
claim whose resolved value would *move* a field is refused if the agent moved
that same field, for a claim (not a give-back), less than ``guard.cooldown``
ago. Which decisions count comes from the actions themselves (those that take
claims: :data:`agent.actions.FORWARD_ACTIONS`). So a raise of the ceiling
never blocks the pause of the same object two seconds later (another field),
and a pause or a cordon is never refused by a cooldown at all: they stop
motion, which is what a cooldown is for. A claim that moves nothing (a lower
floor under a higher one) is never refused either, and releases never are:
restoring what was there before must always be possible.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from agent.actions import FORWARD_ACTIONS, Hold
from agent.actions.base import Limits
from agent.claims import MAX_REPLICAS, MIN_REPLICAS, Value, Want
from agent.config import HOURS_PER_MONTH, Budget, CostConfig, GuardConfig, KubernetesConfig
from agent.cost import Pricer
from agent.ledger import Ledger
from agent.structs import Costing, EventKind, Outcome, Plan, TargetRef
from agent.targets.base import OPT_OUT_ANNOTATION, PauseOwner, TargetKind, TargetState

# A change shows in the spend Prometheus reports once its pods run and are scraped: the budget counts the agent's
# own changes made since a spend was read, and this long before it, on top of that spend.
NOT_YET_IN_SPEND_SECONDS = 180.0
RECENT_CHANGES = 10_000  # the agent's own priced changes kept for that (a storm's worth)

# Claims that stop motion: a cooldown never refuses them.
STABILISING = (Want.PAUSE, Want.HOLD)


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Guard:
    def __init__(
        self,
        config: GuardConfig,
        *,
        kubernetes: KubernetesConfig,
        ledger: Ledger,
        dry_run: bool = False,
        costs: CostConfig | None = None,
        pricer: Pricer | None = None,
    ) -> None:
        self.config = config
        self.costs = costs or CostConfig()
        self.pricer = pricer
        self._spent: deque[tuple[float, str, float]] = deque(maxlen=RECENT_CHANGES)  # (when, namespace, $/h)
        self.kubernetes = kubernetes
        self.ledger = ledger
        self.dry_run = dry_run or config.dry_run
        self.limits = Limits(floor=config.floor, ceiling=config.ceiling)
        self._in_flight = 0

    def limit_blast_radius(self, plans: Sequence[Plan]) -> list[Plan]:
        """
        A rule whose selector hits more objects than allowed acts on none of them, and says so. A schedule's
        edge has its own, larger limit (``max_targets_per_schedule``), counted over all the schedule's targets.
        """
        by_rule: dict[str, list[Plan]] = {}
        for plan in plans:
            by_rule.setdefault(plan.rule, []).append(plan)
        result: list[Plan] = []
        for rule, rule_plans in by_rule.items():
            first = rule_plans[0]
            if first.event.kind == EventKind.SCHEDULE:
                setting, limit = "max_targets_per_schedule", self.config.max_targets_per_schedule
            else:
                setting, limit = "max_targets_per_event", self.config.max_targets_per_event
            if len(rule_plans) <= limit:
                result.extend(rule_plans)
                continue
            reason = (
                f"{len(rule_plans)} targets ({first.reason}) exceed guard.{setting}={limit}; rule {rule} acted on none"
            )
            result.append(replace(first, target=None, reason=reason, verdict=Outcome.REFUSED))
        return result

    def check_namespace(self, ref: TargetRef, kind: TargetKind) -> None:
        if kind.namespaced and not self.kubernetes.allows(ref.namespace):
            allowed = ", ".join(self.kubernetes.namespaces)
            raise Refused(f"namespace {ref.namespace} is not one the agent may touch ({allowed})")

    def check_kind(self, kind: TargetKind, state: TargetState | None, want: Want) -> tuple[str, ...]:
        """The fields a claim of ``want`` holds on this object; refused when the kind cannot honour it."""
        if state is not None and state.scaled_by is not None:
            raise Refused(f"{state.ref} is set by {state.scaled_by}, which would undo the change; change that instead")
        fields = kind.fields_for(want)
        if isinstance(fields, str):
            raise Refused(f"{kind.kind}: {fields}")
        return fields

    def check_readable(self, state: TargetState) -> None:
        """The agent never writes over claims it cannot read: the values they kept would be lost."""
        if state.notes:
            raise Refused(f"{'; '.join(state.notes)}: the agent will not write over it; fix or remove it by hand")

    def check_opt_out(self, state: TargetState) -> None:
        if state.opted_out:
            raise Refused(f'the object opts out of the agent ({OPT_OUT_ANNOTATION}: "true")')

    def check_own(self, state: TargetState, ends: Want) -> None:
        """An action that only ends claims (resume) ends the agent's own: never a pause someone else set."""
        if ends == Want.PAUSE and state.pause is not None and state.pause.owner != PauseOwner.AGENT:
            raise Refused(f"paused by {state.pause.owner}, not by the agent; the agent never removes that pause")

    def check_claim(self, intent: Hold, state: TargetState, fields: Sequence[str]) -> tuple[Hold, str | None]:
        """
        A claim's own value within the guard's bounds. A floor above the ceiling is clamped later (with every
        claim on the object in view); a raise up to a limit (``raise_max``) is clipped at the ceiling (the lower
        of the guard's and the rule's), and refused when the field is there already; any other value past the
        ceiling is refused. Returns the claim as bounded, and a note when it was clipped.
        """
        value = intent.value
        if value is None:
            return intent, None
        if intent.want == Want.RAISE and intent.up_to is not None:  # raise_max: up to the ceiling, not past it
            ceiling = min(self.config.ceiling, intent.up_to)
            for name in fields:
                current = state.values.get(name)
                if isinstance(current, int) and current >= ceiling:
                    raise Refused(f"{name} {current} already at the ceiling of {ceiling}")
            if value > ceiling:
                return replace(intent, value=ceiling), f"raise to {value} clipped at the ceiling of {ceiling}"
        elif value > self.config.ceiling and intent.want != Want.FLOOR:
            raise Refused(f"{intent.want} {value} is above the ceiling of {self.config.ceiling}")
        if value < self.config.floor:
            raise Refused(f"{intent.want} {value} is below the floor of {self.config.floor}")
        return intent, None

    def check_result(self, state: TargetState, values: Mapping[str, Value]) -> None:
        """The object as it would be: min ≤ max (KEDA and the HPA controller reject the rest)."""
        new_min = values.get(MIN_REPLICAS, state.values.get(MIN_REPLICAS))
        new_max = values.get(MAX_REPLICAS, state.values.get(MAX_REPLICAS))
        if isinstance(new_min, int) and isinstance(new_max, int) and new_min > new_max:
            raise Refused(f"min-replicas {new_min} would exceed max-replicas {new_max}")

    async def check_cooldown(
        self, ref: TargetRef, *, want: Want, fields: Sequence[str], now: datetime, deciding: str | None = None
    ) -> None:
        """
        Refuse a claim that moves ``fields`` within the cooldown of the agent's last claim that moved one of them
        (applied, or still applying after a crash). ``deciding`` is the decision being made: its own ``applying``
        row (a re-plan after a 409) does not count.
        """
        cooldown = self.config.cooldown
        if not cooldown or not fields or want in STABILISING:
            return
        last = await self.ledger.last_change(ref, fields=fields, actions=FORWARD_ACTIONS)
        if last is not None and last.id != deciding and now - last.at < cooldown:
            age = int((now - last.at).total_seconds())
            moved = ", ".join(sorted(set(fields) & set(last.after)))
            raise Refused(
                f"cooldown: {moved} last changed {age}s ago (decision {last.id}); "
                f"cooldown is {int(cooldown.total_seconds())}s"
            )

    async def check_budget(self, ref: TargetRef, costing: Costing, *, critical: bool, rule: str | None) -> str:
        """
        A scale-up (priced, replicas added) that would push the projected spend of its namespace, or of every
        namespace together, past a budget is refused with the numbers; a critical rule's is applied and flagged.
        With no price (or no spend) known, ``cost.on_unknown_price`` decides. Returns what the decision should say
        ("" when nothing); raises :class:`Refused`.
        """
        budgets = self.costs.budgets
        scopes: list[tuple[str, str | None, Budget]] = []
        if ref.namespace in budgets.namespaces:
            scopes.append((f"namespace {ref.namespace}'s budget", ref.namespace, budgets.namespaces[ref.namespace]))
        if budgets.overall is not None:
            scopes.append(("overall budget", None, budgets.overall))
        if not scopes or not costing.replicas_delta or costing.replicas_delta <= 0:
            return ""
        refuse = self.costs.on_unknown_price == "refuse"
        if costing.delta_per_hour is None or self.pricer is None:
            if refuse:
                raise Refused("budget: the change has no price and cost.on_unknown_price is refuse")
            return "budget: no price, allowed (cost.on_unknown_price: allow)"
        notes = []
        for label, namespace, budget in scopes:
            spend = await self.pricer.spend(namespace)
            if spend.per_hour is None:
                if refuse:
                    raise Refused(f"budget: {label} cannot be checked ({spend.note}); cost.on_unknown_price is refuse")
                notes.append(f"{label} not checked ({spend.note}): allowed (cost.on_unknown_price: allow)")
                continue
            since = spend.read_at - NOT_YET_IN_SPEND_SECONDS
            ours = sum(d for at, ns, d in self._spent if at >= since and namespace in (None, ns))
            projected = spend.per_hour + ours + costing.delta_per_hour
            if projected <= budget.per_hour:
                continue
            seen = f"; {spend.note}" if spend.note else ""
            if ours:
                seen += f"; with {ours:+.4f}/h of the agent's own changes not yet in that spend"
            text = (
                f"{label} is {dollars(budget.per_hour)}/h (${budget.per_hour * HOURS_PER_MONTH:,.0f}/month): spend"
                f" now {dollars(spend.per_hour)}/h, {costing.delta_per_hour:+.4f}/h for {costing.replicas_delta:+d}"
                f" replicas would make it {dollars(projected)}/h{seen}"
            )
            if not critical:
                raise Refused(f"over budget: {text}")
            notes.append(f"over budget, applied because rule {rule} is critical: {text}")
        return "; ".join(notes)

    def spent(self, namespace: str, costing: Costing | None) -> None:
        """A priced change was applied: the budget counts it until the spend Prometheus reports can hold it."""
        if self.pricer is not None and costing is not None and costing.delta_per_hour:
            self._spent.append((self.pricer.now(), namespace, costing.delta_per_hour))

    @contextlib.asynccontextmanager
    async def slot(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """
        One change in flight; refuses rather than queues, so a storm of alerts cannot pile up patches. A change
        with a deadline (a preemption notice's cordon and pre-scales) is counted but never refused: the storm's
        own changes must not keep a Node that is going away schedulable (bench/README.md, preemption).
        """
        if self._in_flight >= self.config.max_concurrent_changes and not urgent:
            raise Refused(f"{self._in_flight} changes already in flight (limit {self.config.max_concurrent_changes})")
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1


def dollars(amount: float) -> str:
    """``$12.50``; cents and below with four decimals (``$0.1040``), so that a small overrun still shows."""
    return f"${amount:,.2f}" if abs(amount) >= 10 else f"${amount:.4f}"
