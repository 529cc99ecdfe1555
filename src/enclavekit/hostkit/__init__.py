"""The host kit: what every enclavekit HTTP service shares, so that each one listens, limits, fails and is
configured the same way (see ``docs/services.md`` and ADR 0019).

* :func:`listen`, :func:`free_port`, :func:`running`, :class:`ServerThread`, :func:`serve_forever`,
  :func:`announce`, :func:`stop_on_signals` — the server runner (uvicorn without its signal capture; the ready
  line ``enclavekit up`` waits for);
* :class:`BodyLimit` — the streaming request-body limit (ASGI middleware);
* :func:`envelope`, :func:`http_status`, :func:`install_error_handlers`, :func:`describe_validation`,
  :class:`BadRequest`, :class:`PayloadTooLarge`, :class:`InvalidContentLength` — the error envelope
  ``{"allowRetry", "error": {"code", "message"}}`` and the status an error maps to;
* :func:`load_settings` — defaults < ``ENCLAVEKIT_<SERVICE>_<KEY>`` < ``--set KEY=VALUE`` < options.

Backoff is :func:`enclavekit.backoff.exponential_backoff`; migrations are :mod:`enclavekit.database`.

Names load on first use: importing this package pulls in no web framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enclavekit.hostkit._body_limit import BodyLimit
    from enclavekit.hostkit._envelope import (
        INTERNAL_ERROR,
        BadRequest,
        InvalidContentLength,
        PayloadTooLarge,
        describe_validation,
        envelope,
        http_status,
        render_envelope,
    )
    from enclavekit.hostkit._handlers import HttpProblem, install_error_handlers
    from enclavekit.hostkit._server import (
        RunningServer,
        ServerThread,
        announce,
        running,
        serve_forever,
        stop_on_signals,
    )
    from enclavekit.hostkit._settings import load_settings, parse_sets, setting_names
    from enclavekit.hostkit._socket import free_port, listen

_LAZY: dict[str, str] = {
    "BodyLimit": "_body_limit",
    "INTERNAL_ERROR": "_envelope",
    "BadRequest": "_envelope",
    "InvalidContentLength": "_envelope",
    "PayloadTooLarge": "_envelope",
    "describe_validation": "_envelope",
    "envelope": "_envelope",
    "http_status": "_envelope",
    "render_envelope": "_envelope",
    "HttpProblem": "_handlers",
    "install_error_handlers": "_handlers",
    "RunningServer": "_server",
    "ServerThread": "_server",
    "announce": "_server",
    "free_port": "_socket",
    "listen": "_socket",
    "running": "_server",
    "serve_forever": "_server",
    "stop_on_signals": "_server",
    "load_settings": "_settings",
    "parse_sets": "_settings",
    "setting_names": "_settings",
}

__all__ = [
    "INTERNAL_ERROR",
    "BadRequest",
    "BodyLimit",
    "HttpProblem",
    "InvalidContentLength",
    "PayloadTooLarge",
    "RunningServer",
    "ServerThread",
    "announce",
    "describe_validation",
    "envelope",
    "free_port",
    "http_status",
    "install_error_handlers",
    "listen",
    "load_settings",
    "parse_sets",
    "render_envelope",
    "running",
    "serve_forever",
    "setting_names",
    "stop_on_signals",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
