"""
The evacuation engine: after a preemption notice cordoned its Node, move its pods elsewhere before the deadline.

A notice's ``evacuate`` decision (agent/actions/evacuate.py) cordons and taints the Node in the worker's urgent
lane; everything after it takes up to the deadline (30 s to 2 minutes) and must not hold a lane, so it runs
here, in a task of its own per Node, started from that decision (the worker tells every follower what became of
each event). Its steps, each recorded as a decision that ``follows`` the cordon, so the whole evacuation reads
as one (``scaling-agent decisions --follows ID``):

1. **Pre-scale.** The pods on the Node are grouped by their workload (a Deployment through its ReplicaSet's name,
   a StatefulSet directly); for each one in a namespace the agent may touch, a floor of its replicas plus its pods
   on the Node is claimed through whichever kind scales it, with the guard's bounds, for ``prescale_for``: the
   replacements start elsewhere before anything is evicted.
2. **Drain**, through the ``policy/v1`` Eviction API, every pod on the Node whatever its namespace (the Node is
   going away), but not those of a DaemonSet nor mirror pods (they go with the Node). At most ``parallel``
   evictions in flight. A 429 (a PodDisruptionBudget allows no disruption now) is tried again with backoff until
   the deadline; a 500 (the pod is under two budgets: the API server cannot judge) is not.
3. **The outcome**: what was evicted, and each pod left with the budget that held it.

A rebalance recommendation is a risk, not a notice: it is cordoned and pre-scaled, and drained only when the rule
says ``drain_rebalance``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from kubernetes_asyncio import client

from agent.actions.evacuate import EvacuateSpec
from agent.actions.set_min import SetMinParams, SetMinSpec
from agent.config import GuardConfig, KubernetesConfig
from agent.decisions import DecisionRecorder
from agent.errors import KubernetesError, call, call_json
from agent.executor import Executor
from agent.rules import Rules
from agent.structs import Decision, Event, EventKind, Outcome, Plan, new_id, utcnow

log = structlog.get_logger("agent.evacuation")

NO_DEADLINE = timedelta(minutes=2)  # a notice without one (a rebalance told to drain): AWS's warning time
BACKOFF = (0.5, 5.0)  # seconds: the first wait after a 429, and the longest
POD_TEMPLATE_HASH = "pod-template-hash"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
BUDGET_NAME = re.compile(r"disruption budget (\S+)")


@dataclass(frozen=True)
class PodOnNode:
    namespace: str
    name: str
    workload: tuple[str, str] | None  # ("Deployment", name) or ("StatefulSet", name); None for a bare pod
    daemon: bool  # a DaemonSet's or a mirror pod: it goes with the Node


@dataclass(frozen=True)
class Evicted:
    pod: PodOnNode
    ok: bool
    attempts: int
    why: str  # for one not evicted: what held it (the budget), or the error


class Evacuator:
    def __init__(
        self,
        *,
        api: client.ApiClient,
        rules: Rules,
        executor: Executor,
        recorder: DecisionRecorder,
        kubernetes: KubernetesConfig,
        guard: GuardConfig | None = None,
    ) -> None:
        self.api = api
        self.guard = guard or GuardConfig()
        self._draining: set[str] = set()  # Nodes whose evictions are under way (guard.max_nodes_draining)
        self._slot_freed = asyncio.Event()
        self.rules = rules
        self.executor = executor
        self.recorder = recorder
        self.kubernetes = kubernetes
        self._core = client.CoreV1Api(api)
        self._running: dict[str, asyncio.Task[None]] = {}  # by Node: one evacuation per Node at a time

    def decided(self, event: Event, decisions: Sequence[Decision]) -> None:
        """The worker's call after each event: start an evacuation for each Node a notice just cordoned."""
        if event.kind != EventKind.NOTICE:
            return
        for decision in decisions:
            if decision.action != "evacuate" or decision.outcome != Outcome.APPLIED or decision.target is None:
                continue
            node = decision.target.name
            if node in self._running:
                continue
            task = asyncio.create_task(self._evacuate(event, decision), name=f"evacuate {node}")
            self._running[node] = task
            task.add_done_callback(functools.partial(self._finished, node))

    async def resume(self, decisions: Sequence[Decision]) -> int:
        """
        At start: go on with the evacuations a stop cut short. A cordon (``evacuate``, applied) whose drain was not
        recorded and whose deadline has not passed is evacuated again from its step 2: its pre-scales are there
        (the same claims again are no-ops), and the drain takes the pods still on the Node. Returns how many.
        """
        finished = {d.follows for d in decisions if d.action == "drain"}
        now = utcnow()
        resumed = 0
        for cordon in decisions:
            if cordon.action != "evacuate" or cordon.outcome != Outcome.APPLIED or cordon.id in finished:
                continue
            labels = cordon.trigger.labels
            try:
                deadline = datetime.fromisoformat(labels["deadline"]) if labels.get("deadline") else None
            except ValueError:
                continue
            if deadline is None or deadline <= now or cordon.target is None:
                continue
            event = Event(
                source=cordon.trigger.source,
                key=cordon.trigger.event_key or "",
                alertname=cordon.trigger.alertname,
                status="firing",
                fingerprint=cordon.trigger.fingerprint,
                labels=labels,
                kind=EventKind.NOTICE,
                deadline=deadline,
            )
            log.info("resuming an evacuation a stop cut short", node=cordon.target.name, cordon=cordon.id)
            self.decided(event, [cordon])
            resumed += 1
        return resumed

    def _finished(self, node: str, task: asyncio.Task[None]) -> None:
        self._running.pop(node, None)

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _evacuate(self, event: Event, cordon: Decision) -> None:
        try:
            await self.evacuate(event, cordon)
        except asyncio.CancelledError:
            raise
        except Exception:  # an evacuation must never take the agent down, nor vanish unsaid
            log.exception("evacuation failed", node=cordon.target.name if cordon.target else None)

    async def evacuate(self, event: Event, cordon: Decision) -> list[Decision]:
        """Pre-scale, then drain (a preemption, or a rebalance told to), the Node ``cordon`` cordoned."""
        assert cordon.target is not None
        node = cordon.target.name
        spec = self._spec(cordon)
        deadline = event.deadline or utcnow() + NO_DEADLINE
        pods = await self._pods_on(node)
        decisions = await self._prescale(event, cordon, pods, spec)
        if event.alertname == "rebalance" and not spec.params.drain_rebalance:
            return decisions
        if not await self._drain_slot(cordon, deadline=deadline, decisions=decisions):
            reason = (
                f"drained nothing on Node {node}: the deadline {deadline:%H:%M:%S}Z came while "
                f"{len(self._draining)} other Node(s) were draining (guard.max_nodes_draining "
                f"{self.guard.max_nodes_draining})"
            )
            left = sum(1 for pod in pods if not pod.daemon)
            decisions.append(
                await self._record(cordon, (Outcome.FAILED, reason, {"evicted-pods": 0, "left-pods": left}))
            )
            return decisions
        try:
            replicas = await self._replicas_of(pods)
            results = await self._drain(
                pods, cordon=cordon, deadline=deadline, parallel=spec.params.parallel, replicas=replicas
            )
        finally:
            self._draining.discard(node)
            self._slot_freed.set()
        decisions.append(await self._record(cordon, _outcome(node, results, deadline)))
        return decisions

    async def _drain_slot(self, cordon: Decision, *, deadline: datetime, decisions: list[Decision]) -> bool:
        """
        Take one of ``guard.max_nodes_draining`` slots, waiting (until the deadline) while they are all taken; the
        wait is a decision. False when the deadline came first.
        """
        assert cordon.target is not None
        node = cordon.target.name
        said = False
        while len(self._draining) >= self.guard.max_nodes_draining:
            if not said:
                others = ", ".join(sorted(self._draining))
                reason = (
                    f"the evictions on Node {node} wait: {others} draining already "
                    f"(guard.max_nodes_draining {self.guard.max_nodes_draining}); cordoned and pre-scaled meanwhile"
                )
                decisions.append(await self._record(cordon, (Outcome.NOOP, reason, {}), action="drain-waits"))
                said = True
            left = (deadline - utcnow()).total_seconds()
            if left <= 0:
                return False
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), left)
        self._draining.add(node)
        return True

    async def _replicas_of(self, pods: list[PodOnNode]) -> dict[tuple[str, str, str], int]:
        """Each workload's replicas, for ``guard.max_evicting_percent`` (a workload that cannot be read: unknown)."""
        found: dict[tuple[str, str, str], int] = {}
        for pod in pods:
            if pod.workload is None or pod.daemon:
                continue
            key = (pod.namespace, *pod.workload)
            if key not in found:
                try:
                    found[key] = await self._replicas(pod.namespace, *pod.workload)
                except KubernetesError:
                    found[key] = 0
        return found

    def _spec(self, cordon: Decision) -> EvacuateSpec:
        rule = self.rules.named(cordon.rule)
        return (
            rule.action if rule is not None and isinstance(rule.action, EvacuateSpec) else EvacuateSpec(type="evacuate")
        )

    async def _pods_on(self, node: str) -> list[PodOnNode]:
        found = await call_json(
            self._core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}", _preload_content=False)
        )
        return [_pod(item) for item in found.get("items", [])]

    # --- 1. pre-scale ------------------------------------------------------------------------------------------

    async def _prescale(
        self, event: Event, cordon: Decision, pods: list[PodOnNode], spec: EvacuateSpec
    ) -> list[Decision]:
        counts: dict[tuple[str, str, str], int] = defaultdict(int)  # (namespace, kind, name) → its pods here
        for pod in pods:
            if pod.workload is not None and not pod.daemon and self.kubernetes.allows(pod.namespace):
                counts[(pod.namespace, *pod.workload)] += 1
        decisions = []
        for (namespace, kind, name), here in sorted(counts.items()):
            try:
                replicas = await self._replicas(namespace, kind, name)
                refs, how = await self.rules.scaler_of(namespace, kind, name)
            except KubernetesError as exc:
                log.warning("cannot pre-scale a workload", workload=f"{namespace}/{kind}/{name}", error=str(exc))
                continue
            if not refs:
                log.info("nothing to pre-scale a workload through", workload=f"{namespace}/{kind}/{name}", why=how)
                continue
            floor = replicas + here
            params = SetMinParams.model_validate(
                {"replicas": floor, "for": spec.params.prescale_for, "revert_on_resolve": False}
            )
            plan = Plan(
                event=event,
                rule=cordon.rule or "evacuate",
                action="set_min",
                spec=SetMinSpec(type="set_min", params=params),
                target=refs[0],
                reason=f"pre-scale before evicting {here} pod(s) of {kind} {name} on {cordon.target}: {how}",
                follows=cordon.id,
                # Replacements for pods the notice takes away: a budget never stops them (the decision says so).
                critical=True,
            )
            decision = await self.executor.execute(plan)  # recorded by the executor
            decisions.append(decision)
        return decisions

    async def _replicas(self, namespace: str, kind: str, name: str) -> int:
        plural = "deployments" if kind == "Deployment" else "statefulsets"
        obj = await call_json(
            client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                "apps", "v1", namespace, plural, name, _preload_content=False
            )
        )
        return int(obj.get("spec", {}).get("replicas") or 0)

    # --- 2. drain ----------------------------------------------------------------------------------------------

    async def _drain(
        self,
        pods: list[PodOnNode],
        *,
        cordon: Decision,
        deadline: datetime,
        parallel: int,
        replicas: Mapping[tuple[str, str, str], int],
    ) -> list[Evicted]:
        slots = asyncio.Semaphore(parallel)
        # A workload's pods evicted at once: guard.max_evicting_percent of its replicas (at least one).
        share = self.guard.max_evicting_percent
        per_workload = {
            key: asyncio.Semaphore(max(1, count * share // 100)) for key, count in replicas.items() if count > 0
        }

        async def one(pod: PodOnNode) -> Evicted:
            key = None if pod.workload is None else (pod.namespace, *pod.workload)
            bound = per_workload.get(key) if key is not None else None
            async with bound or contextlib.nullcontext(), slots:
                result = await self._evict(pod, deadline=deadline)
            # Each eviction is a step of its own, with its time: when the pod went, or why it could not.
            where = f"{pod.namespace}/{pod.name}"
            if result.ok:
                said = (Outcome.APPLIED, f"evicted pod {where} ({result.attempts} attempt(s))", {"pod": where})
            else:
                said = (Outcome.FAILED, f"pod {where} not evicted: {result.why}", {"pod": where})
            await self._record(cordon, said, action="evict")
            return result

        return list(await asyncio.gather(*(one(pod) for pod in pods if not pod.daemon)))

    async def _evict(self, pod: PodOnNode, *, deadline: datetime) -> Evicted:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
        }
        wait, attempts, why = BACKOFF[0], 0, ""
        while True:
            attempts += 1
            try:
                status, answer = await self._post_eviction(pod, body)
            except KubernetesError as exc:  # no answer at all: the API server may be back before the deadline
                status, answer = 0, str(exc)
            if 200 <= status <= 299:
                return Evicted(pod=pod, ok=True, attempts=attempts, why="")
            if status == 404:
                return Evicted(pod=pod, ok=True, attempts=attempts, why="gone already")
            if status == 500:  # under two budgets: the API server cannot judge, and will not on a retry
                return Evicted(pod=pod, ok=False, attempts=attempts, why=f"not evictable: {answer}")
            if status == 429:  # a budget allows no disruption now; it may once a replacement is Ready elsewhere
                found = BUDGET_NAME.search(answer)
                why = f"held by PodDisruptionBudget {found.group(1)}" if found else f"refused: {answer}"
            elif status in (0, 502, 503, 504):
                why = answer or f"API answered {status}"
            else:  # refused for good (403: no permission; 400): say so, do not hammer
                return Evicted(pod=pod, ok=False, attempts=attempts, why=f"API answered {status}: {answer}")
            left = (deadline - utcnow()).total_seconds()
            if left <= 0:
                return Evicted(pod=pod, ok=False, attempts=attempts, why=why)
            await asyncio.sleep(min(wait, left))
            wait = min(wait * 2, BACKOFF[1])

    async def _post_eviction(self, pod: PodOnNode, body: dict[str, Any]) -> tuple[int, str]:
        """The answer's status and what it says (a Status's message and causes: the budget that refused)."""
        response = await call(
            self._core.create_namespaced_pod_eviction(pod.name, pod.namespace, body, _preload_content=False)
        )
        try:
            text = (await call(response.read())).decode(errors="replace")
            return response.status, _status_text(text)
        finally:
            response.release()

    async def _record(
        self, cordon: Decision, outcome: tuple[Outcome, str, dict[str, Any]], *, action: str = "drain"
    ) -> Decision:
        result, reason, after = outcome
        decision = replace(
            cordon,
            id=new_id(),
            at=utcnow(),
            action=action,
            before={},
            after=after,
            reason=reason,
            outcome=result,
            error=None,
            follows=cordon.id,
        )
        await self.recorder.record(decision)
        return decision


def _outcome(node: str, results: list[Evicted], deadline: datetime) -> tuple[Outcome, str, dict[str, Any]]:
    evicted = [r for r in results if r.ok]
    left = [r for r in results if not r.ok]
    reason = f"drained Node {node}: {len(evicted)} of {len(results)} pod(s) evicted"
    if left:
        held = "; ".join(f"{r.pod.namespace}/{r.pod.name} ({r.why}, {r.attempts} attempts)" for r in left)
        reason += f"; left at the deadline {deadline:%H:%M:%S}Z: {held}"
    after = {"evicted-pods": len(evicted), "left-pods": len(left)}
    return (Outcome.FAILED if left else Outcome.APPLIED), reason, after


def _status_text(text: str) -> str:
    """A Status answer's message and its causes ("The disruption budget X needs 2 healthy pods …"), one line."""
    try:
        status = json.loads(text)
    except ValueError:
        return text[:200]
    if not isinstance(status, dict):
        return text[:200]
    causes = [c.get("message", "") for c in (status.get("details") or {}).get("causes") or [] if isinstance(c, dict)]
    return "; ".join(part for part in [str(status.get("message", "")), *causes] if part)


def _pod(item: Mapping[str, Any]) -> PodOnNode:
    meta = item.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    daemon = MIRROR_ANNOTATION in (meta.get("annotations") or {}) or (owner or {}).get("kind") == "DaemonSet"
    workload: tuple[str, str] | None = None
    if owner is not None and owner.get("kind") == "ReplicaSet":
        # A Deployment's ReplicaSet is named <deployment>-<pod-template-hash>.
        hash_ = (meta.get("labels") or {}).get(POD_TEMPLATE_HASH)
        name = str(owner.get("name", ""))
        if hash_ and name.endswith(f"-{hash_}"):
            workload = ("Deployment", name.removesuffix(f"-{hash_}"))
    elif owner is not None and owner.get("kind") == "StatefulSet":
        workload = ("StatefulSet", str(owner.get("name", "")))
    return PodOnNode(
        namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), workload=workload, daemon=daemon
    )
