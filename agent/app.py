"""
The running agent: wires the stages together and owns their lifecycles.

``scaling-agent run``, the demo and the tests all start the agent through
:class:`Agent`, so they exercise one code path. Start order follows the data:
ledger, sinks, executor and worker, the reconciler's first pass (which first
settles what a crash cut short), re-queued events from before a restart, and
only then the HTTP server — the agent says it listens only when it can take
events. Stop runs the other way round. Every background task runs under one
:class:`~agent.supervisor.Supervisor`, whose verdict ``/healthz`` reports.
"""

from __future__ import annotations

import asyncio
import gc
from datetime import timedelta

import structlog
from aiohttp import web
from kubernetes_asyncio import client

from agent.advice import Advisor
from agent.capping import Capper
from agent.configfile import Config
from agent.cost import Pricer
from agent.decisions import DecisionRecorder
from agent.evacuation import Evacuator
from agent.executor import Executor
from agent.guard import Guard
from agent.intents import IntentScheduler
from agent.ledger import Ledger, make_ledger
from agent.metrics import Metrics
from agent.reconciler import Reconciler
from agent.rules import Rules
from agent.server import build_app
from agent.sinks import Sink, build_sinks
from agent.sinks.slack import Console
from agent.sources import FollowsDecisions, SourceContext, build_sources, check_sources, retired_by, source_rules
from agent.structs import utcnow
from agent.supervisor import Supervisor
from agent.targets import AUTO, build_targets, kinds_in_use
from agent.worker import Intake, Worker

log = structlog.get_logger("agent")
CACHE_WAIT_SECONDS = 60.0
RESUME_WITHIN = timedelta(days=7)  # a scale intent announced longer ago than this is not looked for at start


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        api: client.ApiClient,
        dry_run: bool = False,
        console: Console | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.metrics = Metrics()
        self.supervisor = Supervisor(metrics=self.metrics)
        self.ledger = ledger or make_ledger(config.ledger, supervisor=self.supervisor)
        settings = check_sources(config, origin="config")
        # The config's rules and those the sources bring (each schedule's), one list for the worker.
        self.all_rules = [*config.rules, *source_rules(settings)]
        kinds = [rule.target.kind for rule in self.all_rules]
        # An evacuation pre-scales the workloads on its Node through whichever kind scales each one.
        kinds += [AUTO for rule in self.all_rules if rule.action.type == "evacuate"]
        self.targets = build_targets(api, config.kubernetes, kinds_in_use(kinds))
        self.sinks: list[Sink] = build_sinks(
            slack=config.slack, kubernetes=config.kubernetes, api=api, metrics=self.metrics, console=console
        )
        self.recorder = DecisionRecorder(ledger=self.ledger, sinks=self.sinks, metrics=self.metrics)
        self.pricer = Pricer(config.cost, api=api, namespaces=config.kubernetes.namespaces)
        self.guard = Guard(
            config.guard,
            kubernetes=config.kubernetes,
            ledger=self.ledger,
            dry_run=dry_run,
            costs=config.cost,
            pricer=self.pricer,
        )
        self.executor = Executor(
            targets=self.targets,
            guard=self.guard,
            recorder=self.recorder,
            metrics=self.metrics,
            kubernetes=config.kubernetes,
            pricer=self.pricer,
        )
        self.rules = Rules(self.all_rules, targets=self.targets, pricer=self.pricer)
        self.worker = Worker(
            ledger=self.ledger,
            rules=self.rules,
            executor=self.executor,
            recorder=self.recorder,
            metrics=self.metrics,
            lanes=config.workers,
        )
        self.intake = Intake(ledger=self.ledger, worker=self.worker, metrics=self.metrics)
        context = SourceContext(
            intake=self.intake, metrics=self.metrics, webhook=config.webhook, api=api, recorder=self.recorder
        )
        self.sources = build_sources(settings, context=context)
        self.worker.decoders = {source.name: source.decode for source in self.sources}
        self.evacuator = Evacuator(
            api=api,
            rules=self.rules,
            executor=self.executor,
            recorder=self.recorder,
            kubernetes=config.kubernetes,
            guard=config.guard,
        )
        self.intents = IntentScheduler(intake=self.intake)
        self.capper = Capper(rules=self.rules, executor=self.executor)
        self.worker.followers = [
            *(s.decided for s in self.sources if isinstance(s, FollowsDecisions)),
            self.evacuator.decided,
            self.intents.decided,
            self.capper.decided,
        ]
        self.worker.heralds = [self.capper.arriving]
        self.reconciler = Reconciler(
            targets=self.targets,
            executor=self.executor,
            recorder=self.recorder,
            metrics=self.metrics,
            kubernetes=config.kubernetes,
            retired=retired_by(settings),
        )
        self.advisor = Advisor(
            config=config.cost.advice,
            pricer=self.pricer,
            targets=self.targets,
            kubernetes=config.kubernetes,
            ledger=self.ledger,
            recorder=self.recorder,
        )
        self._advising: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "the agent is not started"
        host = self.config.webhook.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self.ledger.open()
        for kind in self.targets.values():
            kind.start(self.supervisor)  # its cache lists and watches meanwhile; reads fall back to the API
        for sink in self.sinks:
            sink.start(self.supervisor)
        self.worker.start(self.supervisor)
        await self._caches_listed()
        try:
            await self.reconciler.reconcile_once()
        except Exception as exc:  # the loop retries; a slow API at start must not stop the agent
            log.warning("first reconcile pass failed", error=str(exc))
        self.reconciler.start(self.supervisor)
        await self.worker.resume_pending()
        await self._resume_evacuations()
        self._housekeeping = self.supervisor.spawn("ledger-housekeeping", self._prune_inbox_hourly)
        if self.config.cost.advice.enabled and self.config.cost.prometheus is not None:
            self._advising = self.supervisor.spawn("cost-advice", self.advisor.run)
        for source in self.sources:
            source.start(self.supervisor)
        # Put what start-up made (modules, config, clients: ~120,000 objects) out of the cyclic collector's
        # reach. Left in, each full collection walked them all and stalled the event loop for 70-110 ms,
        # under load: the webhook's p99 went from ~10 ms to ~50 ms in those rounds (bench/README.md).
        gc.collect()
        gc.freeze()
        app = build_app(
            routes=[route for source in self.sources for route in source.routes()],
            ledger=self.ledger,
            ping_kubernetes=self._ping_kubernetes,
            dead_tasks=lambda: self.supervisor.dead,
            metrics=self.metrics,
            max_body_bytes=self.config.webhook.max_body_bytes,
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.webhook.host, self.config.webhook.port)
        await site.start()
        self.port = self.config.webhook.port
        sockets = getattr(site._server, "sockets", None)  # asyncio's or uvloop's server
        if sockets:  # port 0: the one the OS picked
            self.port = int(sockets[0].getsockname()[1])
        log.info(
            "agent started",
            url=self.url,
            dry_run=self.guard.dry_run,
            rules=len(self.config.rules),
            namespaces=self.config.kubernetes.namespaces,
        )

    async def _resume_evacuations(self) -> None:
        """
        What a stop cut short: evacuations (their cordons recorded, their drains not) still in time, the timers
        of scale intents scheduled for later, and the cappings of cost alerts still firing. One read of the ledger
        serves them all (an evacuation's own deadline, minutes at most, says whether it is still in time).
        """
        try:
            recent = await self.ledger.decisions(since=utcnow() - RESUME_WITHIN)
            resumed = await self.evacuator.resume(recent)
            resumed += await self.intents.resume(recent)
            resumed += await self.capper.resume(recent)
        except Exception as exc:  # the start goes on: a Node left cordoned is safe, only not drained by us
            log.warning("could not look for evacuations to resume", error=str(exc))
            return
        if resumed:
            log.info("resumed evacuations and scheduled intents a stop cut short", count=resumed)

    async def _caches_listed(self) -> None:
        """
        Wait (at most CACHE_WAIT_SECONDS) for the kinds' caches to list once, so that the first reconcile pass
        reads them instead of listing everything from the API a second time. Past that, it reads the API: a
        slow API at start must not keep the agent from starting.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CACHE_WAIT_SECONDS
        while not all(kind.ready for kind in self.targets.values()):
            if loop.time() >= deadline:
                log.warning("the caches have not listed yet; the first pass reads the API", waited=CACHE_WAIT_SECONDS)
                return
            await asyncio.sleep(0.02)

    async def _prune_inbox_hourly(self) -> None:
        while True:
            try:
                pruned = await self.ledger.prune_inbox()
                if pruned:
                    log.info("pruned processed events past the inbox retention", count=pruned)
            except Exception as exc:
                log.warning("inbox pruning failed; will try again", error=str(exc))
            await asyncio.sleep(3600)

    async def _ping_kubernetes(self) -> None:
        namespaces = self.config.kubernetes.namespaces
        namespace = None if "*" in namespaces else namespaces[0]
        for kind in self.targets.values():
            await kind.ping(namespace)
            if not kind.ready:
                raise RuntimeError(f"the {kind.kind} cache has not listed everything yet")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # no new events
            self._runner = None
        for source in self.sources:
            await source.stop()
        await self.supervisor.cancel(self._housekeeping)
        self._housekeeping = None
        await self.supervisor.cancel(self._advising)
        self._advising = None
        await self.reconciler.stop()
        await self.evacuator.stop()  # an evacuation cut short: its Node stays cordoned; the notice is in the ledger
        await self.intents.stop()  # a scheduled intent's timer: set again at the next start
        await self.capper.stop()  # a capping's timer: started again at the next start, while its alert fires
        await self.worker.stop()  # unprocessed events stay in the ledger for the next start
        for kind in self.targets.values():
            await kind.stop()
        for sink in self.sinks:
            await sink.stop()
        await self.ledger.close()
        self.pricer.close()
        log.info("agent stopped")

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
