"""The guard's limit on changes in flight: a storm of alerts cannot pile up patches."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import GuardConfig, KubernetesConfig
from agent.guard import Guard, Refused
from agent.ledger import SqliteLedger


async def test_changes_in_flight_are_capped(tmp_path: Path) -> None:
    ledger = SqliteLedger(f"sqlite:///{tmp_path}/l.db")
    guard = Guard(
        GuardConfig(max_concurrent_changes=2),
        kubernetes=KubernetesConfig(namespaces=["cortex-mcp"]),
        ledger=ledger,
    )
    async with guard.slot(), guard.slot():
        with pytest.raises(Refused, match="2 changes already in flight"):
            async with guard.slot():
                pass
    async with guard.slot():  # released again
        pass
