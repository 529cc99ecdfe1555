"""What ``enclavekit verify`` does once its command line is parsed (by Typer, or by the fast path's argparse).

Contract (other tools rely on it): exit 0 only if every file is valid, 1 if any is not, 2 for a usage error
(a missing or unreadable file, a bad option: nothing is verified then); with ``--json`` (or ``--format ear``)
one JSON object per file, one per line, always; with several files a last line
``N verified, M invalid, K errors`` (on stderr with ``--json``). The core's messages name no flag: this module
adds the hint (``hint`` in the JSON line) that says which flag would change the verdict.

Nothing here imports Typer, and rich loads only when something is printed through it (the human report, an
error or a warning): ``enclavekit verify --json DOC`` of a valid document never imports it.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from enclavekit.attestation.errors import AttestationError, CollateralInvalid, CollateralUnavailable, Malformed
from enclavekit.attestation.evidence import (
    MAX_EVIDENCE_SIZE,
    Evidence,
    EvidenceKind,
    EvidenceResult,
    VerifyOptions,
    verify_evidence,
)
from enclavekit.attestation.nitro import UnsafePolicyWarning
from enclavekit.attestation.verification_time import At, AtInvalid, NoEvidenceTime
from enclavekit.cli._roots import check_mark, simulator_roots
from enclavekit.cli._verify_options import VerifyArgs
from enclavekit.errors import ConfigurationError

if TYPE_CHECKING:  # TDX, dstack and policy files load only when used: `verify DOC` of a Nitro document stays fast
    from rich.console import Console

    from enclavekit.attestation.collateral import Collateral
    from enclavekit.attestation.policy_file import PolicyFile

__all__ = ["run_verify"]


class _Stderr:
    """rich's console on stderr, made (and rich imported) the first time something is printed to it."""

    __slots__ = ("_console",)

    def __init__(self) -> None:
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, soft_wrap=True)  # one message, one line (tools read it)
        return self._console

    def print(self, message: str, *, highlight: bool | None = None) -> None:
        self.console.print(message, highlight=highlight)


def _echo(line: str) -> None:
    """One line on stdout, flushed (as click's echo writes it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_EVIDENCE_SIZE + 1)


def _read_compose(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from enclavekit.attestation.dstack import MAX_COMPOSE_SIZE

    with path.open("rb") as handle:
        data = handle.read(MAX_COMPOSE_SIZE + 1)
    if len(data) > MAX_COMPOSE_SIZE:
        raise ValueError(f"{path}: app-compose file over {MAX_COMPOSE_SIZE} bytes")
    return data


def _collateral_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enclavekit" / "collateral"


def _with_fetched_collateral(evidence: Evidence, options: VerifyOptions, pccs: str, err: _Stderr) -> VerifyOptions:
    """At the edge: fetch (or reuse from the disk cache) the collateral for this quote's platform."""
    quote = evidence.quote
    if quote is None:
        return options  # not a quote, or not a usable one: the report will say what is wrong with it
    from enclavekit.attestation.collateral import fetch_collateral

    try:
        moment = options.at.resolve(now=datetime.now(UTC), evidence_time=None)
        fetched = fetch_collateral(quote, pccs_url=pccs, now=moment, cache_dir=_collateral_cache())
    except (NoEvidenceTime, AttestationError):
        return options  # the report will say it (a quote has no time of its own, or what the PCCS gave is bad)
    except CollateralUnavailable as exc:
        err.print(f"[yellow]warning:[/yellow] no collateral from the PCCS: {exc.message}")
        return options
    return replace(options, collateral=(fetched, *options.collateral))


def run_verify(args: VerifyArgs) -> int:
    """Verify ``args.files`` and print the verdicts; the exit status (0 all valid, 1 any not, 2 usage error)."""
    files, at, policy, allow_debug = args.files, args.at, args.policy, args.allow_debug
    trust_sim_root, collateral, pccs, compose = args.trust_sim_root, args.collateral, args.pccs, args.compose
    unsafe_no_collateral, output_format, as_json = args.unsafe_no_collateral, args.output_format, args.as_json
    err = _Stderr()
    try:
        moment = At.parse(at)
    except AtInvalid as exc:
        err.print(f"[red]error:[/red] --at: {exc.message}")
        return 2
    unreadable = _unreadable(files)
    if unreadable:
        for path, reason in unreadable:
            err.print(f"[red]error:[/red] {path}: cannot read the evidence file ({reason})")
        return 2
    policy_file: PolicyFile | None = None
    try:
        if policy is not None:
            from enclavekit.attestation.policy_file import load_policy

            policy_file = load_policy(policy)
        roots = simulator_roots(trust_sim_root)
        collaterals: list[Collateral] = []
        collateral_error: CollateralInvalid | None = None
        if collateral:
            from enclavekit.attestation.collateral import load_collateral
        for path in collateral:
            try:
                collaterals.append(load_collateral(path))
            except CollateralInvalid as exc:  # a bad document, not a bad command: each quote's line says so
                collateral_error = collateral_error or exc
        app_compose = _read_compose(compose)
        if output_format not in ("report", "ear"):
            raise ValueError(f"--format {output_format!r}: expected report or ear")
        if pccs is not None and not pccs.startswith(("https://", "http://")):
            raise ValueError(f"--pccs {pccs!r}: expected an http(s) URL")
    except (ConfigurationError, OSError, ValueError, Malformed) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
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
        collateral=tuple(collaterals),
        unsafe_no_collateral=unsafe_no_collateral,
        app_compose=app_compose,
    )

    out: Console | None = None  # made for the human report only: JSON output needs no rich
    tally = _Tally()
    for path in files:
        try:
            data = _read(path)
        except OSError as exc:  # vanished or became unreadable after the check above: still a usage error
            err.print(f"[red]error:[/red] {path}: cannot read the evidence file ({exc.strerror})")
            tally.unreadable += 1
            continue
        evidence = Evidence.from_bytes(data)  # parsed once: everything below reads this
        if collateral_error is not None and evidence.kind in (EvidenceKind.QUOTE, EvidenceKind.DSTACK):
            result = EvidenceResult(evidence.kind, None, collateral_error, datetime.now(UTC))
        else:
            file_options = _with_fetched_collateral(evidence, options, pccs, err) if pccs else options
            result = verify_evidence(evidence, file_options)
        tally.add(result)
        hint = _hint(result, evidence, options)
        if output_format == "ear":
            _echo(json.dumps(result.to_ear()))
        elif as_json:
            line = {"file": str(path), **result.to_json()}
            if hint is not None:
                line["hint"] = hint
            _echo(json.dumps(line))
        else:
            out = out or _stdout(err)
            _print_human(out, path, result, policy_file is None, hint)
    if len(files) > 1:
        summary = tally.summary()
        if as_json or output_format == "ear":
            err.print(summary, highlight=False)
        else:
            (out or _stdout(err)).print(summary)
    if tally.unreadable:
        return 2
    return 0 if tally.all_valid else 1


def _stdout(err: _Stderr) -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=None if err.console.is_terminal else 160)


def _unreadable(files: list[Path]) -> list[tuple[Path, str]]:
    """The evidence files that cannot be opened (checked before any is verified: a usage error, not a verdict)."""
    problems: list[tuple[Path, str]] = []
    for path in files:
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            problems.append((path, exc.strerror or type(exc).__name__))
    return problems


class _Tally:
    """Counts for the summary line: verified, invalid (the evidence was refused), errors (it could not be judged:
    a policy without a section for its kind)."""

    __slots__ = ("errors", "invalid", "unreadable", "verified")

    def __init__(self) -> None:
        self.verified = self.invalid = self.errors = self.unreadable = 0

    def add(self, result: EvidenceResult) -> None:
        if result.error is None:
            self.verified += 1
        elif isinstance(result.error, AttestationError):
            self.invalid += 1
        else:
            self.errors += 1

    @property
    def all_valid(self) -> bool:
        return self.invalid == self.errors == 0

    def summary(self) -> str:
        return f"{self.verified} verified, {self.invalid} invalid, {self.errors + self.unreadable} errors"


def _hint(result: EvidenceResult, evidence: Evidence, options: VerifyOptions) -> str | None:
    """Which flag would change this verdict, if one would (the core's messages name none)."""
    if result.error is None:
        return None
    code = result.error.code
    if code == "chain_untrusted" and not options.extra_nitro_roots and _simulated(evidence):
        return (
            "this document is signed by enclavekit's NSM simulator, not AWS: trust its root with "
            "--trust-sim-root STATE_DIR (the folder of `enclavekit up`, default .enclavekit)"
        )
    if code == "debug_mode" and not options.allow_debug:
        return "--allow-debug accepts debug enclaves and TDs (UNSAFE: the host can read their memory)"
    if code == "collateral_missing":
        return (
            "give Intel's collateral with --collateral FILE or --pccs URL; --unsafe-no-collateral checks "
            "everything but the hardware (UNSAFE)"
        )
    if code == "collateral_invalid":
        return "fix or replace the file given with --collateral"
    if code in ("certificate_expired", "collateral_expired") and options.at.is_now:
        return "--at TIME verifies as of another time (--at doc: a Nitro document's own timestamp)"
    if isinstance(result.error, NoEvidenceTime):
        return "give --at a time (UNIX seconds or ISO 8601) or now"
    return None


def _simulated(evidence: Evidence) -> bool:
    """Whether a Nitro document's root certificate is an enclavekit NSM simulator's (named so by its CA)."""
    document = evidence.document
    if document is None:
        return False
    try:
        root = x509.load_der_x509_certificate(document.cabundle[0])
    except ValueError:
        return False
    units = root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
    return any(attribute.value == "NSM simulator" for attribute in units)


_ALWAYS_SHOWN = frozenset(
    {"pcr0", "pcr1", "pcr2", "pcr3", "pcr4", "pcr8", "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data"}
)


def _print_human(console: Console, path: Path, result: EvidenceResult, unpinned: bool, hint: str | None) -> None:
    data = result.to_json()
    if result.valid:
        verdict = "[bold green]VALID[/bold green]"
    elif any(not check["ok"] and check["detail"] == data["error"]["message"] for check in data["checks"]):
        verdict = f"[bold red]INVALID[/bold red] ({data['error']['code']}: see {_first_failed(data)} below)"
    else:
        verdict = f"[bold red]INVALID[/bold red] ({data['error']['code']}: {data['error']['message']})"
    console.print(f"{path}: {verdict}")
    if hint is not None:
        console.print(f"  [yellow]hint:[/yellow] {hint}")
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
    if data.get("hardware_verified") is False and result.valid:
        console.print("  [yellow]hardware NOT verified: no collateral, so signature and TCB were not checked[/yellow]")
    app_info = data.get("app")
    if app_info:
        console.print(f"  app {app_info['app_id']}, compose hash {app_info['compose_hash']}")
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
    for check in data["checks"]:
        table.add_row(check_mark(check), check["name"], check["detail"])
    console.print(table)
    measurements = data.get("measurements") or {}
    if measurements:
        console.print("  measurements:" + (" (not pinned: no --policy)" if unpinned else ""))
        for name, value in measurements.items():
            if name in _ALWAYS_SHOWN or value.strip("0"):
                console.print(f"    {name.upper():6} {value}")


def _first_failed(data: dict[str, object]) -> str:
    checks = data["checks"]
    assert isinstance(checks, list)
    return next(str(check["name"]) for check in checks if not check["ok"])
