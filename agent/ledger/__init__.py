"""
Ledgers: where events and decisions are kept (``sqlite:///…`` by default, ``redis://…`` as an option).

A new backend is one module implementing :class:`~agent.ledger.base.Ledger` plus one branch in
:func:`open_ledger`.
"""

from __future__ import annotations

from agent.config import LedgerConfig
from agent.ledger.base import Ledger, LedgerUnavailable
from agent.ledger.redis import RedisLedger
from agent.ledger.sqlite import SqliteLedger


def make_ledger(config: LedgerConfig) -> Ledger:
    if config.url.startswith("sqlite:///"):
        return SqliteLedger(config.url, inbox_retention=config.inbox_retention)
    return RedisLedger(config.url, prefix=config.key_prefix, inbox_retention=config.inbox_retention)


__all__ = ["Ledger", "LedgerUnavailable", "RedisLedger", "SqliteLedger", "make_ledger"]
