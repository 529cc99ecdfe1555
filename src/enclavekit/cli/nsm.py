"""``enclavekit nsm``: attestation documents and NSM facts from the simulated NSM (or the real one, inside).

Exit codes: 0 success, 1 the NSM failed (absent device, device error), 2 a usage error (bad hex, a field over
1024 bytes, an unusable state folder).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import typer
from cryptography import x509
from rich.console import Console

from enclavekit.cli._app import app
from enclavekit.nsm.device import DEFAULT_PATH, NsmDevice
from enclavekit.nsm.errors import NsmError, SimulatorStateError
from enclavekit.nsm.messages import MAX_ATTESTATION_FIELD
from enclavekit.nsm.port import Nsm
from enclavekit.nsm.simulator import DEFAULT_STATE_DIR, NsmSimulator

__all__ = ["attest_command", "describe_command", "nsm_app"]

nsm_app = typer.Typer(
    name="nsm",
    help="The Nitro Secure Module: simulated attestation documents and NSM facts.",
    no_args_is_help=True,
)
app.add_typer(nsm_app, name="nsm")

_SHOWN_PCRS = (0, 1, 2, 3, 4, 8)


def _hex_field(value: str | None, option: str) -> bytes | None:
    """``value`` as bytes (hex, optional ``0x``), at most 1024 of them; a usage error (exit 2) otherwise."""
    if value is None:
        return None
    text = value.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        data = bytes.fromhex(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not hexadecimal: {value[:40]!r}", param_hint=option) from exc
    if len(data) > MAX_ATTESTATION_FIELD:
        raise typer.BadParameter(
            f"{len(data)} bytes; the NSM accepts at most {MAX_ATTESTATION_FIELD}", param_hint=option
        )
    return data


def _fail(console: Console, exc: Exception, code: int) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(code)


class _Session:
    """The NSM a command talks to: the simulator in ``state`` or, with ``--device``, the real one."""

    def __init__(self, *, device: bool, state: Path, app_path: Path | None) -> None:
        self.simulator: NsmSimulator | None = None
        self._device: NsmDevice | None = None
        if device:
            self._device = NsmDevice(DEFAULT_PATH)
            self.nsm = Nsm(self._device)
        else:
            self.simulator = NsmSimulator(state, app=app_path)
            self.nsm = self.simulator.client()

    def close(self) -> None:
        if self._device is not None:
            self._device.close()


def _open(console: Console, *, device: bool, state: Path, app_path: Path | None) -> _Session:
    try:
        return _Session(device=device, state=state, app_path=app_path)
    except SimulatorStateError as exc:
        raise _fail(console, exc, 2) from exc
    except NsmError as exc:
        raise _fail(console, exc, 1) from exc
    except OSError as exc:
        raise _fail(console, SimulatorStateError(f"{state}: {exc.strerror or exc}"), 2) from exc


_STATE = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder of the simulator (its CA lives in STATE/nsm).")
_APP = typer.Option(
    None, "--app", exists=True, help="The enclave application's code (file or folder), measured into PCR0/PCR2."
)
_DEVICE = typer.Option(False, "--device", help=f"Use the real NSM ({DEFAULT_PATH}, inside a Nitro Enclave).")


@nsm_app.command("attest")
def attest_command(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the attestation document (COSE_Sign1)."),
    nonce: str | None = typer.Option(None, "--nonce", help="Nonce to bind (hex, at most 1024 bytes)."),
    user_data: str | None = typer.Option(None, "--user-data", help="User data to bind (hex, at most 1024 bytes)."),
    public_key: str | None = typer.Option(None, "--public-key", help="Public key to bind (hex, at most 1024 bytes)."),
    app_path: Path | None = _APP,
    state: Path = _STATE,
    device: bool = _DEVICE,
) -> None:
    """Write an attestation document; print PCR0 and where the document went."""
    fields = {
        "nonce": _hex_field(nonce, "--nonce"),
        "user_data": _hex_field(user_data, "--user-data"),
        "public_key": _hex_field(public_key, "--public-key"),
    }
    err = Console(stderr=True, soft_wrap=True)
    session = _open(err, device=device, state=state, app_path=app_path)
    try:
        document = session.nsm.attestation(**fields)
        pcr0 = session.nsm.describe_pcr(0).data
    except NsmError as exc:
        raise _fail(err, exc, 1) from exc
    finally:
        session.close()
    try:
        out.write_bytes(document)
    except OSError as exc:
        raise _fail(err, OSError(f"cannot write {out}: {exc.strerror or exc}"), 1) from exc
    typer.echo(f"PCR0 {pcr0.hex()}")
    typer.echo(f"wrote {out} ({len(document)} bytes)")
    if session.simulator is not None:
        err.print(
            f"simulated NSM: verify with `enclavekit verify {out} --trust-sim-root {state}`",
            highlight=False,
        )


@nsm_app.command("describe")
def describe_command(
    state: Path = _STATE,
    app_path: Path | None = _APP,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: bool = _DEVICE,
) -> None:
    """Describe the NSM: module id, version, PCR bank and (simulator) its root certificate."""
    err = Console(stderr=True, soft_wrap=True)
    session = _open(err, device=device, state=state, app_path=app_path)
    try:
        description = session.nsm.describe_nsm()
        pcrs = {index: session.nsm.describe_pcr(index) for index in _SHOWN_PCRS}
    except NsmError as exc:
        raise _fail(err, exc, 1) from exc
    finally:
        session.close()
    facts: dict[str, Any] = {
        "source": "device" if session.simulator is None else "simulator",
        "module_id": description.module_id,
        "version": description.version,
        "digest": description.digest.value,
        "max_pcrs": description.max_pcrs,
        "locked_pcrs": list(description.locked_pcrs),
        "pcrs": {str(index): state_.data.hex() for index, state_ in pcrs.items()},
    }
    if session.simulator is not None:
        root = x509.load_der_x509_certificate(session.simulator.root_der)
        facts["simulator"] = {
            "state": str(state),
            "root_subject": root.subject.rfc4514_string(),
            "root_sha256": hashlib.sha256(session.simulator.root_der).hexdigest(),
            "root_not_after": root.not_valid_after_utc.isoformat(),
        }
    if as_json:
        typer.echo(json.dumps(facts))
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"NSM ({facts['source']}) {description.module_id}, API {description.version}")
    out.print(f"  {description.max_pcrs} PCRs ({description.digest.value}), locked: {_ranges(description.locked_pcrs)}")
    for index, pcr in pcrs.items():
        out.print(f"  PCR{index:<2} {pcr.data.hex()}{'' if pcr.locked else ' (unlocked)'}")
    if "simulator" in facts:
        sim = facts["simulator"]
        out.print(f"  simulated: root {sim['root_subject']}")
        out.print(f"    SHA-256 {sim['root_sha256']}, in {state} (SIMULATOR ONLY)")


def _ranges(indexes: tuple[int, ...]) -> str:
    """``0-15, 17`` for ``(0, 1, ..., 15, 17)``."""
    parts: list[str] = []
    start = previous = None
    for index in (*indexes, None):
        if index is not None and previous is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ", ".join(parts) or "none"
