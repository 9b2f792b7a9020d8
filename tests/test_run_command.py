"""`scaling-agent run` as a platform engineer starts it: a subprocess, a kubeconfig, a config file, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from agent.demo.alerts import alert, payload
from agent.devcluster import DevCluster, kubeconfig_for
from tests.conftest import NS, TOKEN, annotations, free_port


async def start_run(cluster: DevCluster, config: dict[str, Any], folder: Path) -> asyncio.subprocess.Process:
    """`scaling-agent run` as a platform engineer starts it: a config file, a kubeconfig, its token in the env."""
    (folder / "agent.yaml").write_text(yaml.safe_dump(config))
    (folder / "kubeconfig").write_text(yaml.safe_dump(kubeconfig_for(str(cluster.url).rstrip("/"))))
    env = {**os.environ, "SCALING_AGENT_DEMO_TOKEN": TOKEN}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run",
        "--config", str(folder / "agent.yaml"), "--kubeconfig", str(folder / "kubeconfig"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_run_acts_on_an_alert_and_stops_cleanly_on_sigterm(
    cluster: DevCluster, base_config: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    config = {**base_config, "webhook": {**base_config["webhook"], "port": port}, "log": {"format": "json"}}
    process = await start_run(cluster, config, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # bounded: up to ~20 s for the process to start listening
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/readyz") as ready:
                        if ready.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the agent did not become ready")
            body = payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"}))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.post(f"{url}/webhooks/alertmanager", json=body, headers=headers) as response:
                assert response.status == 200
            for _ in range(200):
                if "autoscaling.keda.sh/paused-replicas" in annotations(cluster, "mcp-http-scaler"):
                    break
                await asyncio.sleep(0.05)
        assert annotations(cluster, "mcp-http-scaler")["autoscaling.keda.sh/paused-replicas"] == "3"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "agent started" in events and "agent stopped" in events
    [decision] = [line for line in lines if line.get("action") == "pause"]
    assert decision["outcome"] == "applied" and decision["target"] == "ScaledObject/cortex-mcp/mcp-http-scaler"
    assert TOKEN not in stderr.decode()  # the secret never reaches the log


def test_run_without_a_cluster_says_why_and_exits_1(base_config: dict[str, Any], tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(base_config))
    env = {**os.environ, "SCALING_AGENT_DEMO_TOKEN": TOKEN, "KUBERNETES_SERVICE_HOST": ""}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "agent.yaml"),
         "--kubeconfig", str(tmp_path / "missing-kubeconfig")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "agent could not run" in result.stderr and "missing-kubeconfig" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_second_agent_on_the_same_ledger_stops_at_start_with_a_clear_message(
    cluster: DevCluster, start_agent: Any, base_config: dict[str, Any], tmp_path: Path
) -> None:
    from tests.conftest import build_config

    await start_agent(build_config(base_config))  # the first agent holds the ledger
    second = {**base_config, "webhook": {**base_config["webhook"], "port": free_port()}}
    process = await start_run(cluster, second, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert f"is in use by another agent (pid {os.getpid()})" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_decisions_in_a_loop_beside_a_busy_agent_changes_nothing_and_loses_nothing(
    cluster: DevCluster, start_agent: Any, base_config: dict[str, Any], tmp_path: Path
) -> None:
    from agent.structs import Outcome
    from tests.conftest import build_config, post, settle

    agent = await start_agent(build_config(base_config, guard={"cooldown": "0s"}))
    url = agent.config.ledger.url
    stop, some_reads = asyncio.Event(), asyncio.Event()
    reads: list[int] = []

    async def read_in_a_loop() -> None:
        while not stop.is_set() and len(reads) < 50:  # bounded
            reader = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "decisions", "--ledger", url, "--json",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(reader.communicate(), 60)
            assert reader.returncode == 0, err.decode()
            reads.append(reader.returncode)
            if len(reads) >= 4:
                some_reads.set()

    readers = [asyncio.create_task(read_in_a_loop()) for _ in range(2)]
    try:
        # Under load: 40 notifications of 5 alerts each while the readers open and close the ledger.
        for batch in range(40):
            alerts = [alert("Unrouted", {"namespace": NS, "scaledObject": f"so-{batch}-{i}"}) for i in range(5)]
            assert (await post(agent, payload(*alerts))).status == 200
            await asyncio.sleep(0.02)
        await settle(agent)
        await asyncio.wait_for(some_reads.wait(), 60)  # a few whole reads happened beside the writer
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*readers), 120)
    # What `decisions` used to do here: delete the journal segment being appended to. Then every later
    # notification was acknowledged into a deleted file and never acted on.
    body = payload(alert("MCPFrequentScaling", {"namespace": NS, "scaledObject": "mcp-http-scaler"}))
    assert (await post(agent, body)).status == 200
    await settle(agent)
    decisions = await agent.ledger.decisions(limit=10_000)
    assert len([d for d in decisions if d.trigger.alertname == "Unrouted"]) == 200  # nothing lost
    assert [d.outcome for d in decisions if d.trigger.alertname == "MCPFrequentScaling"] == [Outcome.APPLIED]
    assert len(reads) >= 4
