"""
The promises under `kill -9`: a real `scaling-agent run` subprocess, killed with SIGKILL at random moments and
started again, while firing and resolving alerts arrive the way Alertmanager sends them (retried until answered
2xx, sometimes sent twice) and `scaling-agent decisions` reads the ledger beside it.

At the end, from the ledger (opened read-only) and from the writes the emulated API server accepted:
- every acknowledged notification has its events decided in the ledger;
- every change that landed in the cluster has its decision, applied, in the ledger (orphans = 0), and none is left
  `applying`;
- every resolved alert's change has been given back;
- no change was applied twice (one landed change per firing, however often it was delivered or re-processed).

`--kills N` sets the kills per ledger (CI: 20 per ledger; the closing note's run: 100).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent.claims import ANNOTATION as CLAIMS
from agent.claims import ANNOTATION_PREFIX, Claim, Claims
from agent.configfile import parse_config
from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster, kubeconfig_for
from agent.ledger import make_ledger
from agent.sources.alertmanager import parse_payload, to_events
from agent.structs import Decision, Outcome
from tests.conftest import NS, TOKEN, free_port, kill_test_seconds, scaledobject

TARGETS = ("mcp-cpu-memory-scaler", "mcp-cron-scaling", "mcp-custom-metrics-scaler", "mcp-http-triggers")
ALERTS = ("KillTestFlapping", "KillTestColdStart")  # a pause and a floor (kill_test_config): two fields per object
# Firing → resolved cycles per (alert, target): one per 6 kills, at least 3, so that the kills land under load.
KILLS_PER_CYCLE = 6
READY_SECONDS = 30.0
DRAIN_SECONDS = 90.0


def kill_test_config(base: dict[str, Any], *, port: int, ledger: dict[str, Any]) -> dict[str, Any]:
    rules = [
        {
            "name": "kill-test-pause",
            "alertname": "KillTestFlapping",
            "action": {"type": "pause", "params": {"replicas": 2, "for": "1h"}},
            "target": {"namespace": NS},
        },
        {
            "name": "kill-test-floor",
            "alertname": "KillTestColdStart",
            "action": {"type": "set_min", "params": {"replicas": 7, "for": "1h"}},
            "target": {"namespace": NS},
        },
    ]
    return {
        **base,
        "webhook": {**base["webhook"], "port": port},
        "ledger": ledger,
        "guard": {**base["guard"], "cooldown": "0s"},
        "log": {"level": "info", "format": "json"},
        "rules": rules,
    }


@dataclass
class Run:
    kills: int = 0
    starts: int = 0
    sent: int = 0
    acked_keys: set[str] = field(default_factory=set)
    acked: int = 0
    reads: int = 0
    reader_failures: list[str] = field(default_factory=list)


class Agents:
    """Starts `scaling-agent run` as a subprocess, as often as it is killed."""

    def __init__(self, config_path: Path, kubeconfig: Path, url: str, logs: Path) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            str(config_path),
            "--kubeconfig",
            str(kubeconfig),
        ]
        self.url = url
        self.logs = logs
        self.env = {**os.environ, "SCALING_AGENT_DEMO_TOKEN": TOKEN}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.logs.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            log.close()

    async def ready(self, session: aiohttp.ClientSession, *, within: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"the agent exited with {self.process.returncode}; see {self.logs}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the agent did not become ready within {within:.0f} s; see {self.logs}")

    async def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


async def deliver(session: aiohttp.ClientSession, url: str, body: bytes, *, run: Run, deadline: float) -> None:
    """As Alertmanager does: retry a failed notification until it is answered 2xx (never retry a 4xx)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    while time.monotonic() < deadline:
        run.sent += 1
        try:
            async with session.post(
                f"{url}/webhooks/alertmanager", data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                if response.status == 200:
                    run.acked += 1
                    run.acked_keys.update(e.key for e in to_events(parse_payload(body), received_at=datetime.now(UTC)))
                    return
                assert response.status >= 500, f"the agent refused a good notification: {await response.text()}"
        except (aiohttp.ClientError, TimeoutError):
            pass  # killed mid-request, or not up yet
        await asyncio.sleep(0.05)
    raise AssertionError("a notification could not be delivered before the deadline")


async def send_alerts(
    session: aiohttp.ClientSession, url: str, *, cycles: int, run: Run, deadline: float, rng: random.Random
) -> None:
    """Every (alert, target) fires and resolves ``cycles`` times, in order, each firing with its own startsAt."""

    async def one(alertname: str, target: str) -> None:
        start = datetime(2026, 12, 1, 8, tzinfo=UTC)
        for cycle in range(cycles):
            labels = {"namespace": NS, "scaledObject": target}
            starts_at = start + timedelta(hours=cycle)
            firing = alert(alertname, labels, starts_at=starts_at)
            firing["fingerprint"] = f"{alertname}-{target}"
            body = json.dumps(payload(firing)).encode()
            await deliver(session, url, body, run=run, deadline=deadline)
            if rng.random() < 0.3:  # HA peers, or a repeat_interval: the same firing notified again
                await deliver(session, url, body, run=run, deadline=deadline)
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            resolved = {**firing, "status": "resolved", "endsAt": (starts_at + timedelta(minutes=5)).isoformat()}
            await deliver(session, url, json.dumps(payload(resolved)).encode(), run=run, deadline=deadline)
            await asyncio.sleep(rng.uniform(0.1, 0.6))

    await asyncio.gather(*(one(a, t) for a in ALERTS for t in TARGETS))


async def read_beside(config_path: Path, *, run: Run, stop: asyncio.Event) -> None:
    """`scaling-agent decisions` in a loop beside the writer: it must answer, and change nothing."""
    while not stop.is_set():
        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "decisions", "--config", str(config_path), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, err = await asyncio.wait_for(reader.communicate(), 60)
        run.reads += 1
        if reader.returncode != 0:
            run.reader_failures.append(err.decode(errors="replace").strip())
        else:
            [json.loads(line) for line in out.decode().splitlines()]  # whole lines of JSON, always
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def drained(config: Any, keys: set[str]) -> tuple[list[Decision], list[Decision]]:
    """The ledger once every acknowledged event is decided and nothing is left applying (bounded)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        ledger = make_ledger(config.ledger, readonly=True)
        await ledger.open()
        try:
            decisions = await ledger.decisions(limit=1_000_000)
            unfinished = await ledger.unfinished()
        finally:
            await ledger.close()
        decided = {d.trigger.event_key for d in decisions}
        if keys <= decided and not unfinished:
            return decisions, unfinished
        if time.monotonic() > deadline:
            return decisions, unfinished
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_nothing_acknowledged_is_lost_and_nothing_applied_goes_unrecorded_under_kill_9(
    backend: str,
    cluster: DevCluster,
    base_config: dict[str, Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    kills_wanted: int = request.config.getoption("--kills")
    seed = int(os.environ.get("KILL_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    if backend == "sqlite":
        ledger = {"url": f"sqlite:///{tmp_path}/ledger.db"}
    else:
        ledger = {"url": request.getfixturevalue("redis_url"), "key_prefix": f"kill-{uuid.uuid4().hex[:8]}"}
    port = free_port()
    data = kill_test_config(base_config, port=port, ledger=ledger)
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = parse_config(data, source=str(config_path))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(str(cluster.url).rstrip("/"))))
    url = f"http://127.0.0.1:{port}"
    agents = Agents(config_path, kubeconfig, url, tmp_path / "agent.log")
    run = Run()
    # Every loop below stops at `deadline`; pytest-timeout's limit for this test (conftest) is the outer bound.
    deadline = time.monotonic() + kill_test_seconds(kills_wanted)

    async with aiohttp.ClientSession() as session:
        await agents.start()
        run.starts += 1
        await agents.ready(session)  # the ledger exists from here on, for the reader
        stop_reading = asyncio.Event()
        reader = asyncio.create_task(read_beside(config_path, run=run, stop=stop_reading))
        cycles = max(3, kills_wanted // KILLS_PER_CYCLE)
        sender = asyncio.create_task(send_alerts(session, url, cycles=cycles, run=run, deadline=deadline, rng=rng))
        try:
            while (run.kills < kills_wanted or not sender.done()) and time.monotonic() < deadline:
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.uniform(0.05, 1.2))  # awkward moments: during start-up and settling
                else:
                    with contextlib.suppress(AssertionError):
                        await agents.ready(session, within=READY_SECONDS)
                    await asyncio.sleep(rng.uniform(0.0, 0.5))  # under load
                await agents.kill()
                run.kills += 1
                await agents.start()
                run.starts += 1
            await asyncio.wait_for(sender, max(1.0, deadline - time.monotonic()))
        finally:
            stop_reading.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 60)
            if not sender.done():
                sender.cancel()
        # The last start is never killed: it finishes what is left.
        await agents.ready(session)
        decisions, unfinished = await drained(config, run.acked_keys)
        assert await agents.stop() == 0

    writes = [w for w in cluster.writes if w.plural == "scaledobjects" and w.method == "PATCH"]
    forward: list[tuple[str, str, Claim]] = []  # (object, field, claim) of each claim a landed write took
    give_backs = 0
    for write in writes:
        marks = ((write.body or {}).get("metadata") or {}).get("annotations") or {}
        if CLAIMS not in marks:
            continue
        if marks[CLAIMS] is None:  # the last claim ended: the annotation goes with it
            give_backs += 1
            continue
        written = Claims.from_json(marks[CLAIMS])
        writer = written.recent[-1]
        taken = [c for c in written.claims if c.decision == writer]
        forward.extend((str(write.name), c.field, c) for c in taken)
        give_backs += not taken
    by_id = {d.id: d for d in decisions}
    orphans = [c.decision for _, _, c in forward if by_id.get(c.decision) is None]
    not_applied = [
        c.decision for _, _, c in forward if c.decision in by_id and by_id[c.decision].outcome != Outcome.APPLIED
    ]
    twice = [k for k, n in Counter((obj, f, c.key) for obj, f, c in forward).items() if n > 1]
    applied = [d for d in decisions if d.outcome == Outcome.APPLIED]
    applied_twice = [
        k
        for k, n in Counter(
            (d.trigger.event_key, str(d.target)) for d in applied if d.action in ("pause", "set_min")
        ).items()
        if n > 1
    ]
    undecided = run.acked_keys - {d.trigger.event_key for d in decisions}
    left_on_objects = {
        name: sorted(
            k
            for k in (scaledobject(cluster, name)["metadata"].get("annotations") or {})
            if k.startswith(ANNOTATION_PREFIX) and not k.endswith("/resumed")
        )
        for name in TARGETS
    }
    print(
        f"\nkill test ({backend}, seed {seed}): kills={run.kills} starts={run.starts} notifications sent={run.sent}"
        f" acknowledged={run.acked} events={len(run.acked_keys)} decisions={len(decisions)}"
        f" applied={len(applied)} changes landed={len(forward)} given back={give_backs}"
        f" orphans={len(orphans)} applying left={len(unfinished)} reads beside={run.reads}"
    )
    assert run.kills >= kills_wanted
    assert run.reader_failures == []
    assert undecided == set(), "acknowledged events without a decision"
    assert unfinished == [], "decisions left applying"
    assert orphans == [], "changes in the cluster with no decision in the ledger"
    assert not_applied == [], "changes in the cluster whose decision does not say applied"
    assert twice == [] and applied_twice == [], "a change applied twice"
    assert all(marks == [] for marks in left_on_objects.values()), f"changes not given back: {left_on_objects}"
    for name in TARGETS:
        assert "autoscaling.keda.sh/paused-replicas" not in (
            scaledobject(cluster, name)["metadata"].get("annotations") or {}
        )
    assert len(forward) >= len(ALERTS) * len(TARGETS)  # the run did change things: at least one per pair
