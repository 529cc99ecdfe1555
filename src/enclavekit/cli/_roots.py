"""Trust roots named on the command line, shared by the commands that verify attestation documents."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_mark", "simulator_roots"]


def simulator_roots(state_dirs: list[Path]) -> tuple[bytes, ...]:
    """The simulated NSM roots kept in these state folders (``--trust-sim-root``), as DER."""
    if not state_dirs:
        return ()
    from enclavekit.nsm.simulator import load_root

    return tuple(load_root(directory) for directory in state_dirs)


def check_mark(check: dict[str, object]) -> str:
    """The rich mark of one check of a JSON report: passed ✓, not checked – (grey), anything else ✗."""
    return {"passed": "[green]✓[/green]", "not_checked": "[dim]–[/dim]"}.get(str(check.get("status")), "[red]✗[/red]")
