"""
Ledgers: where events and decisions are kept (``sqlite:///…`` by default, ``redis://…`` as an option).

A new backend is one module implementing :class:`~agent.ledger.base.Ledger` plus one branch in
:func:`make_ledger`. ``readonly=True`` opens a ledger for reading only (``scaling-agent decisions``): it never
creates, recovers, prunes or writes anything.
"""

from __future__ import annotations

from agent.config import LedgerConfig
from agent.ledger.base import (
    DuplicateDecision,
    Ledger,
    LedgerLocked,
    LedgerNotFound,
    LedgerUnavailable,
    UnknownDecision,
)
from agent.ledger.redis import RedisLedger
from agent.ledger.sqlite import SqliteLedger
from agent.supervisor import Supervisor


def make_ledger(config: LedgerConfig, *, readonly: bool = False, supervisor: Supervisor | None = None) -> Ledger:
    if config.url.startswith("sqlite:///"):
        return SqliteLedger(
            config.url, inbox_retention=config.inbox_retention, readonly=readonly, supervisor=supervisor
        )
    return RedisLedger(config.url, prefix=config.key_prefix, inbox_retention=config.inbox_retention, readonly=readonly)


__all__ = [
    "DuplicateDecision",
    "Ledger",
    "LedgerLocked",
    "LedgerNotFound",
    "LedgerUnavailable",
    "RedisLedger",
    "SqliteLedger",
    "UnknownDecision",
    "make_ledger",
]
