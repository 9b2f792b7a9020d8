"""
Process control shared by the bench scripts (``bench/webhook.py``, ``bench/watch.py``, ``bench/preemption.py``,
``bench/pricing.py``), and the small helpers they all use: a loopback port, a quantile.

Each script starts copies of itself with ``--serve …`` as child processes: a child prints ``READY <what>`` on
stdout once it is up, is pinned to a core of its own or to the shared one, and is stopped with SIGTERM (then
killed). The scripts import this as ``common``: run as ``python bench/<script>.py``, Python puts ``bench/`` first
on ``sys.path``, in the parent and in the children alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

READY = "READY "
STOP_TIMEOUT = 10.0  # seconds for a child to exit after SIGTERM before it is killed


def announce(text: str) -> None:
    """The child's one line to the parent that it is up (and what it has to say); flushed, as stdout is a pipe."""
    sys.stdout.write(f"{READY}{text}\n")
    sys.stdout.flush()


def pin(cpu: int, args: argparse.Namespace) -> None:
    """
    Give the process under test a core of its own, as its pod would have, and everything else the other one:
    without it the emulated API and the load generator take its CPU. ``--no-pin`` reaches the children as
    ``BENCH_NO_PIN``; a machine with one core is left alone.
    """
    if args.no_pin or os.environ.get("BENCH_NO_PIN"):
        return
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def tail(log: Path) -> str:
    """The end of a child's stderr log, for an error message: why it did not start or ended early."""
    return log.read_text(errors="replace")[-2000:]


async def start_child(
    script: Path,
    argv: list[str],
    *,
    name: str,
    log: Path,
    env: dict[str, str],
    wait: float,
    stdin: int = asyncio.subprocess.DEVNULL,
) -> tuple[asyncio.subprocess.Process, str]:
    """
    Start ``script`` with ``argv`` and return it with what it announced, once it has: a child that says nothing
    else within ``wait`` seconds is killed and the error carries its log. ``stdin=PIPE`` for a child that takes
    commands; its stdout is then the answers, so the reader's line limit is large (1 MiB) for long ones.
    """
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
            limit=1 << 20,
        )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), wait)
    except TimeoutError:
        line = b""
    text = line.decode().strip()
    if not text.startswith(READY):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise RuntimeError(f"{name} did not start (got {text!r}); its log ends with:\n{tail(log)}")
    return proc, text.removeprefix(READY)


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    """
    End a child, whichever way it waits: a closed stdin ends one that reads commands, SIGTERM one that waits
    for it; one that does not exit in ``STOP_TIMEOUT`` is killed, so a measurement never hangs on its server.
    """
    if proc.returncode is None:
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.contextmanager
def workdir(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A temp dir for the children's logs and ledgers: removed at the end, or kept for a look with ``--keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"\nkept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- the machine's CPU, from /proc: what every bench prints beside its figures, and waits on before measuring ---


TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds spent by all processes on the machine (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def process_cpu(pid: int) -> float:
    """CPU seconds of one process, all its threads (utime + stime)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


QUIET_CORES = 0.15  # a machine busier than this (cores) is not quiet enough to start a measurement on


async def settle(limit: float, threshold: float = QUIET_CORES) -> float:
    """
    Wait (at most ``limit`` seconds) until the machine is quiet: under ``threshold`` cores busy over half a
    second. Other sessions may share the machine; this keeps their bursts out of a measurement when it can.
    Returns the cores busy in the last half second.
    """
    deadline = time.monotonic() + limit
    while True:
        before, start = machine_busy(), time.monotonic()
        await asyncio.sleep(0.5)
        busy = (machine_busy() - before) / (time.monotonic() - start)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0 < q < 1) by linear interpolation between the nearest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
