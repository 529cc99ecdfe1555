"""``enclavekit verify``: check attestation evidence from files.

Contract (other tools rely on it): exit 0 only if every file is valid, 1 if any is not, 2 for a usage error;
with ``--json`` one JSON object per file, one per line.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from enclavekit.attestation.collateral import fetch_collateral, load_collateral
from enclavekit.attestation.dstack import MAX_COMPOSE_SIZE, DstackBundle
from enclavekit.attestation.errors import AttestationError, CollateralUnavailable, Malformed
from enclavekit.attestation.evidence import (
    MAX_EVIDENCE_SIZE,
    EvidenceKind,
    EvidenceResult,
    VerifyOptions,
    detect,
    parse_at,
    verify_evidence,
)
from enclavekit.attestation.nitro import UnsafePolicyWarning
from enclavekit.attestation.policy_file import PolicyFile, load_policy
from enclavekit.attestation.quote import Quote
from enclavekit.cli._app import app
from enclavekit.cli._roots import simulator_roots
from enclavekit.errors import ConfigurationError

__all__ = ["verify_command"]


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_EVIDENCE_SIZE + 1)


def _read_compose(path: Path | None) -> bytes | None:
    if path is None:
        return None
    with path.open("rb") as handle:
        data = handle.read(MAX_COMPOSE_SIZE + 1)
    if len(data) > MAX_COMPOSE_SIZE:
        raise ValueError(f"{path}: app-compose file over {MAX_COMPOSE_SIZE} bytes")
    return data


def _collateral_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enclavekit" / "collateral"


def _with_fetched_collateral(data: bytes, options: VerifyOptions, pccs: str, err: Console) -> VerifyOptions:
    """At the edge: fetch (or reuse from the disk cache) the collateral for this quote's platform."""
    kind = detect(data)
    if kind not in (EvidenceKind.QUOTE, EvidenceKind.DSTACK):
        return options
    try:
        quote = DstackBundle.from_json(data).quote if kind is EvidenceKind.DSTACK else Quote.parse(data)
        moment = options.at if isinstance(options.at, datetime) else datetime.now(UTC)
        fetched = fetch_collateral(quote, pccs_url=pccs, now=moment, cache_dir=_collateral_cache())
    except AttestationError:
        return options  # the report will say what is wrong with the evidence
    except CollateralUnavailable as exc:
        err.print(f"[yellow]warning:[/yellow] no collateral from the PCCS: {exc.message}")
        return options
    return replace(options, collateral=(fetched, *options.collateral))


@app.command("verify")
def verify_command(
    files: list[Path] = typer.Argument(
        ..., help="Evidence files: Nitro documents, DCAP quotes (raw or hex), dstack bundles.", show_default=False
    ),
    at: str = typer.Option("now", "--at", help="Verify as of: now, doc (its own timestamp), UNIX seconds, ISO 8601."),
    policy: Path | None = typer.Option(None, "--policy", help="TOML policy file (see docs/attestation.md)."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept debug enclaves (UNSAFE)."),
    trust_sim_root: list[Path] = typer.Option(
        [], "--trust-sim-root", help="Also trust the simulated NSM root kept in this state folder (repeatable)."
    ),
    collateral: list[Path] = typer.Option(
        [], "--collateral", help="Intel DCAP collateral JSON for TDX/SGX quotes (repeatable: one per platform)."
    ),
    pccs: str | None = typer.Option(None, "--pccs", help="Fetch missing collateral from this PCCS URL (cached)."),
    compose: Path | None = typer.Option(None, "--compose", help="The app-compose file of a dstack bundle."),
    unsafe_no_collateral: bool = typer.Option(
        False, "--unsafe-no-collateral", help="Without collateral, check all but the hardware (UNSAFE)."
    ),
    output_format: str = typer.Option("report", "--format", help="report (the JSON report) or ear (EAR claims)."),
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
        roots = simulator_roots(trust_sim_root)
        collaterals = tuple(load_collateral(path) for path in collateral)
        app_compose = _read_compose(compose)
        if output_format not in ("report", "ear"):
            raise ValueError(f"--format {output_format!r}: expected report or ear")
        if pccs is not None and not pccs.startswith(("https://", "http://")):
            raise ValueError(f"--pccs {pccs!r}: expected an http(s) URL")
    except (ConfigurationError, OSError, ValueError, Malformed) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if allow_debug:
        warnings.simplefilter("ignore", UnsafePolicyWarning)
        err.print("[yellow]warning:[/yellow] --allow-debug accepts debug enclaves, whose memory the host can read")
    if unsafe_no_collateral:
        err.print(
            "[yellow]warning:[/yellow] --unsafe-no-collateral: TDX quotes without collateral are reported valid "
            "although their hardware (signature, TCB) was NOT verified"
        )
    options = VerifyOptions(
        policy=policy_file,
        at=moment,
        allow_debug=allow_debug,
        extra_nitro_roots=roots,
        collateral=collaterals,
        unsafe_no_collateral=unsafe_no_collateral,
        app_compose=app_compose,
    )

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
            file_options = _with_fetched_collateral(data, options, pccs, err) if pccs else options
            result = verify_evidence(data, file_options)
        all_valid &= result.valid
        if output_format == "ear":
            typer.echo(json.dumps(result.to_ear()))
        elif as_json:
            typer.echo(json.dumps({"file": str(path), **result.to_json()}))
        else:
            _print_human(out, path, result, policy_file is None)
    raise typer.Exit(0 if all_valid else 1)


_ALWAYS_SHOWN = frozenset(
    {"pcr0", "pcr1", "pcr2", "pcr3", "pcr4", "pcr8", "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data"}
)


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
    if data.get("tcb_status"):
        advisories = ", ".join(data.get("advisory_ids") or []) or "no advisories"
        details.append(f"TCB {data['tcb_status']} ({advisories})")
    console.print("  " + ", ".join(details))
    if data.get("hardware_verified") is False:
        console.print("  [yellow]hardware NOT verified: no collateral, so signature and TCB were not checked[/yellow]")
    app_info = data.get("app")
    if app_info:
        console.print(f"  app {app_info['app_id']}, compose hash {app_info['compose_hash']}")
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
