"""The embeddable status badge: a small SVG in the familiar two-part shape ("attestation | verified")."""

from __future__ import annotations

from html import escape

from enclavekit.services.trust.model import AppRecord, Verdict

__all__ = ["badge_svg"]

_COLOURS = {
    Verdict.VERIFIED: "#15803d",
    Verdict.FAILED: "#b91c1c",
    Verdict.INCOMPLETE: "#b45309",
    Verdict.ERROR: "#6b21a8",
    Verdict.PENDING: "#4b5563",
}
_TEXT = {
    Verdict.VERIFIED: "verified",
    Verdict.FAILED: "failed",
    Verdict.INCOMPLETE: "incomplete",
    Verdict.ERROR: "error",
    Verdict.PENDING: "pending",
}


def _width(text: str) -> int:
    return 12 + int(6.4 * len(text))


def badge_svg(app: AppRecord | None, *, label: str = "attestation") -> str:
    """The badge of ``app`` (None: an unknown app, shown as such rather than as an error)."""
    if app is None:
        status, colour = "unknown app", "#4b5563"
    else:
        status, colour = _TEXT[app.verdict], _COLOURS[app.verdict]
        if app.verdict is Verdict.VERIFIED and app.summary.get("simulated"):
            status, colour = "verified (simulated)", "#0f766e"
        elif app.verdict is Verdict.VERIFIED and app.summary.get("code_pinned") is False:
            status = "genuine, code not pinned"
    left, right = _width(label), _width(status)
    total = left + right
    title = escape(f"{label}: {status}" + (f" — {app.name}" if app is not None else ""))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{title}">'
        f"<title>{title}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#fff" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="20" fill="#374151"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        f'<rect width="{total}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2:.1f}" y="14">{escape(label)}</text>'
        f'<text x="{left + right / 2:.1f}" y="14">{escape(status)}</text></g></svg>'
    )
