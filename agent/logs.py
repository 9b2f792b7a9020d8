"""
Logging through structlog: one JSON object per line in a pod, readable lines on a terminal.
"""

from __future__ import annotations

import logging
import sys

import structlog


def setup_logging(*, level: str = "info", fmt: str = "json") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    # Libraries that log every request at INFO (the MCP SDK and its HTTP client, during a warm-up; APScheduler at
    # each wake-up): plain-text lines in a JSON log, and noise. Their warnings still come through.
    for noisy in ("httpx2", "httpcore2", "mcp", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
