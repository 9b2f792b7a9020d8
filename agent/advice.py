"""
Advice without action: where the agent sees money to save, it says so as a recorded ``notify``, never a change.

Every ``cost.advice.every`` it looks at the objects of the kinds the rules use (ScaledObjects, HPAs, workloads)
in the namespaces it may touch, and advises on two things, each at most once per ``cost.advice.repeat`` per
object (the ledger remembers what it said):

- **spot**: every pod of the workload runs on on-demand nodes (OpenCost's ``kubecost_node_is_spot`` is 0 for
  each) while its pod template tolerates a spot taint (``cost.advice.spot_tolerations``); the saving is estimated
  from the pricing table's spot discount on its requests;
- **scale to zero**: the object keeps a floor of one replica or more (``min-replicas``) and its pods served no
  MCP request (``mcp_requests_total``) for ``cost.advice.idle_for``.

Both read Prometheus; without it (or with it down) the look is skipped and said in the log. The decisions carry
no cost: they changed nothing, and the report counts only changes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence

import structlog

from agent.claims import MIN_REPLICAS
from agent.config import AdviceConfig, KubernetesConfig
from agent.cost import Pricer, PrometheusUnavailable, pod_pattern
from agent.decisions import DecisionRecorder
from agent.durations import format_duration
from agent.errors import KubernetesError
from agent.ledger import Ledger
from agent.structs import Decision, Outcome, TargetRef, Trigger, new_id, utcnow
from agent.targets.base import TargetKind, TargetState

log = structlog.get_logger("agent.advice")

ON_DEMAND_NODES = "max by (node) (kubecost_node_is_spot) == 0"
PODS_ON_NODES = "count by (namespace, pod, node) (kube_pod_container_resource_requests)"
REQUESTS_SERVED = "sum by (namespace, pod) (increase(mcp_requests_total[{window}]))"


class Advisor:
    def __init__(
        self,
        *,
        config: AdviceConfig,
        pricer: Pricer,
        targets: Mapping[str, TargetKind],
        kubernetes: KubernetesConfig,
        ledger: Ledger,
        recorder: DecisionRecorder,
    ) -> None:
        self.config = config
        self.pricer = pricer
        self.targets = targets
        self.kubernetes = kubernetes
        self.ledger = ledger
        self.recorder = recorder

    async def run(self) -> None:
        """The supervised loop: one look, then wait."""
        while True:
            try:
                advised = await self.look()
                if advised:
                    log.info("cost advice recorded", count=len(advised))
            except PrometheusUnavailable as exc:
                log.info("no cost advice this time: Prometheus cannot be read", error=str(exc))
            except KubernetesError as exc:
                log.warning("no cost advice this time: the objects cannot be read", error=str(exc))
            except Exception:  # advice is a nicety: a bug in it must not make the pod unhealthy (the supervisor)
                log.exception("cost advice failed; it tries again at the next look")
            await asyncio.sleep(self.config.every.total_seconds())

    async def look(self) -> list[Decision]:
        """One look at every object; returns the advice recorded. Raises PrometheusUnavailable."""
        window = format_duration(self.config.idle_for)
        on_demand = {row["metric"].get("node", "") for row in await self.pricer.query(ON_DEMAND_NODES)}
        pods: dict[str, list[tuple[str, str]]] = {}  # namespace → (pod, node)
        for row in await self.pricer.query(PODS_ON_NODES):
            labels = row["metric"]
            pods.setdefault(labels.get("namespace", ""), []).append((labels.get("pod", ""), labels.get("node", "")))
        served: dict[tuple[str, str], float] = {}
        for row in await self.pricer.query(REQUESTS_SERVED.format(window=window)):
            labels = row["metric"]
            served[labels.get("namespace", ""), labels.get("pod", "")] = float(row["value"][1])
        said = await self._said_lately()
        advised: list[Decision] = []
        for state in await self._states():
            if state.workload is None:
                continue
            kind, name = state.workload
            pattern = re.compile(pod_pattern(kind, name))
            mine = [(pod, node) for pod, node in pods.get(state.ref.namespace, []) if pattern.fullmatch(pod)]
            for topic, reason in (
                ("spot", await self._spot(state, mine, on_demand)),
                ("idle", self._idle(state, mine, served, window)),
            ):
                if reason and (str(state.ref), topic) not in said:
                    advised.append(await self._advise(state.ref, topic, reason))
        return advised

    async def _spot(self, state: TargetState, mine: Sequence[tuple[str, str]], on_demand: set[str]) -> str:
        if not mine or not all(node in on_demand for _, node in mine):
            return ""
        assert state.workload is not None
        template = await self.pricer.template(state.ref.namespace, *state.workload)
        if template is None or not template.spot:
            return ""
        table = self.pricer.config.table
        cpu_saved = table.cpu_hour.on_demand - (table.cpu_hour.spot or table.cpu_hour.on_demand)
        ram_saved = table.gib_hour.on_demand - (table.gib_hour.spot or table.gib_hour.on_demand)
        saving = len(mine) * (template.requests.cpu * cpu_saved + template.requests.memory_gib * ram_saved)
        nodes = ", ".join(sorted({node for _, node in mine}))
        return (
            f"runs {len(mine)} pod(s) on on-demand nodes ({nodes}) while its pods tolerate spot: on spot nodes about"
            f" ${saving:.4f}/h less (the pricing table's spot discount on {template.requests.text()} per pod)"
        )

    def _idle(
        self, state: TargetState, mine: Sequence[tuple[str, str]], served: Mapping[tuple[str, str], float], window: str
    ) -> str:
        floor = state.values.get(MIN_REPLICAS)
        counts = [served.get((state.ref.namespace, pod)) for pod, _ in mine]
        if not isinstance(floor, int) or floor < 1 or not counts or any(c is None or c > 0 for c in counts):
            return ""
        return (
            f"keeps a floor of {floor} replica(s) (min-replicas) but its {len(mine)} pod(s) served no MCP request in"
            f" {window}: a scale-to-zero candidate (min-replicas 0, as the seed's scale-to-zero example)"
        )

    async def _states(self) -> list[TargetState]:
        namespaces: list[str | None] = [None] if "*" in self.kubernetes.namespaces else [*self.kubernetes.namespaces]
        states: list[TargetState] = []
        for kind in self.targets.values():
            if not kind.namespaced:
                continue
            for namespace in namespaces:
                states.extend(await kind.list(namespace))
        return states

    async def _said_lately(self) -> set[tuple[str, str]]:
        since = utcnow() - self.config.repeat
        return {
            (str(d.target), (d.rule or "").removeprefix("advice:"))
            for d in await self.ledger.decisions(since=since, limit=100_000)
            if d.action == "notify" and (d.rule or "").startswith("advice:") and d.target is not None
        }

    async def _advise(self, ref: TargetRef, topic: str, reason: str) -> Decision:
        decision = Decision(
            id=new_id(),
            at=utcnow(),
            trigger=Trigger(source="advisor", alertname="CostAdvice", status="firing", fingerprint=f"{topic}:{ref}"),
            rule=f"advice:{topic}",
            action="notify",
            target=ref,
            before={},
            after={},
            reason=f"advice, no change: {reason}",
            dry_run=False,
            outcome=Outcome.APPLIED,
        )
        await self.recorder.record(decision)
        return decision
