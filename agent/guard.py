"""
The guard: every check between "a rule wants this" and "the API is called".

Before any object is read: the blast radius (a rule whose selector hits more
objects than ``max_targets_per_event`` acts on none). Then, per object, in
order: namespace allow-list, the object's own opt-out annotation
(``scaling-agent.cortex.io/ignore: "true"``), bounds (floor/ceiling, and min ≤ max), the
per-target cooldown, then the limit on changes in flight at once. Dry-run is
the last word: everything is decided and recorded, nothing is patched. A
check that says no returns the reason; the executor records it as a
``refused`` decision, so refusals are as visible as changes.

Give-backs (reverts, resumes) skip the cooldown and the bounds: restoring
what was there before must always be possible.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime

from agent.actions import Apply
from agent.actions.base import Limits
from agent.config import GuardConfig, KubernetesConfig
from agent.ledger import Ledger
from agent.structs import Outcome, Plan, TargetRef
from agent.targets.base import MAX_REPLICAS, MIN_REPLICAS, OPT_OUT_ANNOTATION, TargetState


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Guard:
    def __init__(
        self, config: GuardConfig, *, kubernetes: KubernetesConfig, ledger: Ledger, dry_run: bool = False
    ) -> None:
        self.config = config
        self.kubernetes = kubernetes
        self.ledger = ledger
        self.dry_run = dry_run or config.dry_run
        self.limits = Limits(floor=config.floor, ceiling=config.ceiling)
        self._in_flight = 0

    def limit_blast_radius(self, plans: Sequence[Plan]) -> list[Plan]:
        """A rule whose selector hits more objects than allowed acts on none of them, and says so."""
        limit = self.config.max_targets_per_event
        by_rule: dict[str, list[Plan]] = {}
        for plan in plans:
            by_rule.setdefault(plan.rule, []).append(plan)
        result: list[Plan] = []
        for rule, rule_plans in by_rule.items():
            if len(rule_plans) <= limit:
                result.extend(rule_plans)
                continue
            first = rule_plans[0]
            reason = (
                f"{len(rule_plans)} targets ({first.reason}) exceed guard.max_targets_per_event={limit}; "
                f"rule {rule} acted on none"
            )
            result.append(replace(first, target=None, reason=reason, verdict=Outcome.REFUSED))
        return result

    def check_namespace(self, ref: TargetRef) -> None:
        if not self.kubernetes.allows(ref.namespace):
            allowed = ", ".join(self.kubernetes.namespaces)
            raise Refused(f"namespace {ref.namespace} is not one the agent may touch ({allowed})")

    def check_opt_out(self, state: TargetState) -> None:
        if state.opted_out:
            raise Refused(f'the object opts out of the agent ({OPT_OUT_ANNOTATION}: "true")')

    def check_bounds(self, state: TargetState, intent: Apply) -> None:
        for name, value in intent.values.items():
            if value > self.config.ceiling:
                raise Refused(f"{name} {value} is above the ceiling of {self.config.ceiling}")
            if value < self.config.floor:
                raise Refused(f"{name} {value} is below the floor of {self.config.floor}")
        new_min = intent.values.get(MIN_REPLICAS, state.values.get(MIN_REPLICAS))
        new_max = intent.values.get(MAX_REPLICAS, state.values.get(MAX_REPLICAS))
        if new_min is not None and new_max is not None and new_min > new_max:
            raise Refused(f"min-replicas {new_min} would exceed max-replicas {new_max}")

    async def check_cooldown(self, ref: TargetRef, *, now: datetime, deciding: str | None = None) -> None:
        """Refuse a change within the cooldown of the last one (applied, or still applying after a crash).
        ``deciding`` is the decision being made: its own ``applying`` row (a re-plan after a 409) does not count."""
        cooldown = self.config.cooldown
        if not cooldown:
            return
        last = await self.ledger.last_change(ref)
        if last is not None and last.id != deciding and now - last.at < cooldown:
            age = int((now - last.at).total_seconds())
            raise Refused(
                f"cooldown: last change {age}s ago (decision {last.id}); cooldown is {int(cooldown.total_seconds())}s"
            )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One change in flight; refuses rather than queues, so a storm of alerts cannot pile up patches."""
        if self._in_flight >= self.config.max_concurrent_changes:
            raise Refused(f"{self._in_flight} changes already in flight (limit {self.config.max_concurrent_changes})")
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
