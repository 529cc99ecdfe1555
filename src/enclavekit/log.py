"""The log level of every enclavekit process: ``ENCLAVEKIT_LOG_LEVEL`` (debug, info, warning, error), else info.

Lines about single messages (one notification queued, one batch delivered) are debug: at a thousand messages a
second, writing them costs a busy pipeline more than some of its real work. Operators count messages with the
metrics, and turn debug on to follow one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from enclavekit.errors import ConfigurationError

__all__ = ["ENV", "configure_logging", "log_level"]

ENV = "ENCLAVEKIT_LOG_LEVEL"
_NAMES = ("debug", "info", "warning", "error")


def log_level(default: int = logging.INFO) -> int:
    """The level ``ENCLAVEKIT_LOG_LEVEL`` asks for, or ``default`` when it is unset or empty."""
    name = os.environ.get(ENV, "").strip().lower()
    if not name:
        return default
    if name not in _NAMES:
        raise ConfigurationError(f"{ENV}={name!r}: expected one of {', '.join(_NAMES)}")
    return int(getattr(logging, name.upper()))


_NOISY = ("httpx", "botocore", "boto3", "urllib3", "uvicorn.access", "uvicorn.error", "nats", "alembic")


def configure_logging(level: int | None = None) -> None:
    """structlog lines on stderr for every stdlib logger: JSON, or readable when stderr is a terminal.

    ``level`` defaults to :func:`log_level`. Libraries that log every request stay at warning. Never log keys,
    tokens or plaintext: tests scan these lines for them. structlog is imported here, not at module level, so
    that enclave processes (which only call :func:`log_level`) never load it.
    """
    import structlog

    renderer: Any = structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level() if level is None else level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
