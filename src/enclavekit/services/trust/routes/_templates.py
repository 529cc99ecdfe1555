"""The Jinja2 environment of the trust web app (autoescaped, strict), with its few filters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2

from enclavekit import __version__

__all__ = ["environment"]

_VERDICT_TEXT = {
    "verified": "Verified",
    "failed": "Failed",
    "incomplete": "Incomplete",
    "error": "Error",
    "pending": "Pending",
    "passed": "Passed",
    "skipped": "Skipped",
    "not_checked": "Not checked",
    "active": "Running",
    "completed": "Completed",
    "cancelled": "Cancelled",
}


def _ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "in a moment" if future else "just now"


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(value: Any, size: int = 16) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= size else text[:size] + "…"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("enclavekit.services.trust", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["when"] = _when
    env.filters["short"] = _short
    env.filters["label"] = lambda value: _VERDICT_TEXT.get(str(value), str(value).title())
    env.globals["version"] = __version__
    return env
