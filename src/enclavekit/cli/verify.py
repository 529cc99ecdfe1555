"""``enclavekit verify``: check attestation evidence from files.

Contract (other tools rely on it): exit 0 only if every file is valid, 1 if any is not, 2 for a usage error;
with ``--json`` one JSON object per file, one per line.
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from enclavekit.attestation.errors import Malformed
from enclavekit.attestation.evidence import (
    MAX_EVIDENCE_SIZE,
    EvidenceKind,
    EvidenceResult,
    VerifyOptions,
    parse_at,
    verify_evidence,
)
from enclavekit.attestation.nitro import UnsafePolicyWarning
from enclavekit.attestation.policy_file import PolicyFile, load_policy
from enclavekit.cli._app import app
from enclavekit.errors import ConfigurationError

__all__ = ["verify_command"]


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_EVIDENCE_SIZE + 1)


def _simulator_roots(state_dirs: list[Path]) -> tuple[bytes, ...]:
    if not state_dirs:
        return ()
    from enclavekit.nsm.simulator import load_root

    return tuple(load_root(directory) for directory in state_dirs)


@app.command("verify")
def verify_command(
    files: list[Path] = typer.Argument(..., help="Evidence files (Nitro attestation documents).", show_default=False),
    at: str = typer.Option("now", "--at", help="Verify as of: now, doc (its own timestamp), UNIX seconds, ISO 8601."),
    policy: Path | None = typer.Option(None, "--policy", help="TOML policy file (see docs/attestation.md)."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept debug enclaves (UNSAFE)."),
    trust_sim_root: list[Path] = typer.Option(
        [], "--trust-sim-root", help="Also trust the simulated NSM root kept in this state folder (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file, one per line."),
) -> None:
    """Verify attestation evidence. Without --policy: authenticity only (any code), debug mode rejected."""
    err = Console(stderr=True)
    try:
        moment = parse_at(at)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    policy_file: PolicyFile | None = None
    try:
        if policy is not None:
            policy_file = load_policy(policy)
        roots = _simulator_roots(trust_sim_root)
    except (ConfigurationError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if allow_debug:
        warnings.simplefilter("ignore", UnsafePolicyWarning)
        err.print("[yellow]warning:[/yellow] --allow-debug accepts debug enclaves, whose memory the host can read")
    options = VerifyOptions(policy=policy_file, at=moment, allow_debug=allow_debug, extra_nitro_roots=roots)

    out = Console(highlight=False, soft_wrap=True, width=None if err.is_terminal else 160)
    all_valid = True
    for path in files:
        try:
            data = _read(path)
        except OSError as exc:
            result = EvidenceResult(
                EvidenceKind.UNKNOWN, None, Malformed(f"cannot read file: {exc.strerror}"), datetime.now(UTC)
            )
        else:
            result = verify_evidence(data, options)
        all_valid &= result.valid
        if as_json:
            typer.echo(json.dumps({"file": str(path), **result.to_json()}))
        else:
            _print_human(out, path, result, policy_file is None)
    raise typer.Exit(0 if all_valid else 1)


_ALWAYS_SHOWN = frozenset({"pcr0", "pcr1", "pcr2", "pcr3", "pcr4", "pcr8"})


def _print_human(console: Console, path: Path, result: EvidenceResult, unpinned: bool) -> None:
    data = result.to_json()
    if result.valid:
        verdict = "[bold green]VALID[/bold green]"
    else:
        verdict = f"[bold red]INVALID[/bold red] ({data['error']['code']}: {data['error']['message']})"
    console.print(f"{path}: {verdict}")
    details = [f"tee {data['tee']}"]
    if data.get("module_id"):
        details.append(f"module {data['module_id']}")
    if data.get("timestamp"):
        details.append(f"made {data['timestamp']}")
    details.append(f"checked at {data['verified_at']}")
    if data.get("debug"):
        details.append("[yellow]DEBUG MODE[/yellow]")
    console.print("  " + ", ".join(details))
    table = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
    for check in data["checks"]:
        mark = "[green]✓[/green]" if check["ok"] else "[red]✗[/red]"
        table.add_row(mark, check["name"], check["detail"])
    console.print(table)
    measurements = data.get("measurements") or {}
    if measurements:
        console.print("  measurements:" + (" (not pinned: no --policy)" if unpinned else ""))
        for name, value in measurements.items():
            if name in _ALWAYS_SHOWN or value.strip("0"):
                console.print(f"    {name.upper():6} {value}")
