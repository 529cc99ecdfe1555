"""Attestation policies written down in a TOML file, one section per TEE.

::

    [nitro]
    allow_debug = false          # default
    max_age_seconds = 600        # optional
    user_data = "68656c6c6f"     # optional, hex; likewise nonce and public_key

    [[nitro.measurements]]       # one allowed set; add more for upgrades
    PCR0 = "a1b2..."             # 96 hex digits (SHA-384)
    PCR1 = "..."
    PCR2 = "..."

    [[nitro.measurements]]
    describe_eif = "release/describe-eif.json"   # what `nitro-cli describe-eif` / `build-enclave` printed

    [tdx]                        # TDX quotes and dstack bundles (docs/attestation-tdx.md)
    compose_files = ["app-compose.json"]

    [[tdx.measurements]]         # MRTD and RTMR0..2 of a known OS image on a known VM shape
    mrtd = "..."
    rtmr0 = "..."
    rtmr1 = "..."
    rtmr2 = "..."

Unknown keys are errors (a typo must not silently weaken a policy), and so is a section that pins nothing.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.attestation.tdx import TdxPolicy

__all__ = ["PolicyFile", "load_policy", "parse_describe_eif", "parse_policy"]

MAX_POLICY_FILE = 1024 * 1024
_NITRO_KEYS = frozenset(
    {"measurements", "allow_debug", "max_age_seconds", "clock_skew_seconds", "nonce", "public_key", "user_data"}
)


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """The policies of one file; a TEE without a section has no policy (its evidence is refused)."""

    nitro: NitroPolicy | None = None
    tdx: TdxPolicy | None = None
    source: str = "<policy>"


def load_policy(path: Path) -> PolicyFile:
    """Read and check a TOML policy file."""
    try:
        size = path.stat().st_size
        if size > MAX_POLICY_FILE:
            raise PolicyInvalid(f"{path}: policy file of {size} bytes is over {MAX_POLICY_FILE}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyInvalid(f"{path}: cannot read the policy file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise PolicyInvalid(f"{path}: policy file is not UTF-8") from exc
    return parse_policy(text, base_dir=path.parent, source=str(path))


def parse_policy(text: str, *, base_dir: Path, source: str = "<policy>") -> PolicyFile:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyInvalid(f"{source}: not valid TOML ({exc})") from exc
    unknown = sorted(set(document) - {"nitro", "tdx"})
    if unknown:
        raise PolicyInvalid(f"{source}: unknown section(s) {unknown}")
    if not document:
        raise PolicyInvalid(f"{source}: the policy has no [nitro] or [tdx] section")
    nitro = _nitro(document["nitro"], base_dir, source) if "nitro" in document else None
    tdx = _tdx(document["tdx"], base_dir, source) if "tdx" in document else None
    return PolicyFile(nitro=nitro, tdx=tdx, source=source)


def _tdx(table: Any, base_dir: Path, source: str) -> TdxPolicy:
    if not isinstance(table, Mapping):
        raise PolicyInvalid(f"{source}: [tdx] must be a table")
    try:
        return TdxPolicy.from_mapping(table, base_dir=base_dir)
    except PolicyInvalid as exc:
        raise PolicyInvalid(f"{source}: {exc.message}") from exc


def _hex(value: Any, what: str, *, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise PolicyInvalid(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise PolicyInvalid(f"{what} is not valid hex") from exc
    if length is not None and len(raw) != length:
        raise PolicyInvalid(f"{what} must be {length} bytes ({2 * length} hex digits), got {len(raw)}")
    return raw


def parse_describe_eif(data: Mapping[str, Any], *, what: str = "describe-eif output") -> dict[int, bytes]:
    """PCRs from what ``nitro-cli describe-eif`` or ``nitro-cli build-enclave`` prints (its ``Measurements``)."""
    measurements = data.get("Measurements", data)
    if not isinstance(measurements, Mapping):
        raise PolicyInvalid(f"{what}: no Measurements object")
    algorithm = measurements.get("HashAlgorithm")
    if algorithm is not None and not (isinstance(algorithm, str) and algorithm.lower().startswith("sha384")):
        raise PolicyInvalid(f"{what}: hash algorithm {algorithm!r} is not SHA-384")
    pcrs = {
        int(key[3:]): _hex(value, f"{what}: {key}", length=48)
        for key, value in measurements.items()
        if isinstance(key, str) and key.upper().startswith("PCR") and key[3:].isdigit()
    }
    if not pcrs:
        raise PolicyInvalid(f"{what}: no PCR values")
    return pcrs


def _measurement_set(entry: Any, base_dir: Path, what: str) -> dict[int, bytes]:
    if not isinstance(entry, Mapping):
        raise PolicyInvalid(f"{what} must be a table")
    if "describe_eif" in entry:
        if len(entry) != 1:
            raise PolicyInvalid(f"{what}: describe_eif cannot be combined with other keys")
        path = base_dir / str(entry["describe_eif"])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PolicyInvalid(f"{what}: cannot read {path} as nitro-cli JSON ({exc})") from exc
        if not isinstance(data, Mapping):
            raise PolicyInvalid(f"{what}: {path} is not a JSON object")
        return parse_describe_eif(data, what=str(path))
    if "Measurements" in entry:
        return parse_describe_eif(entry, what=what)
    pcrs: dict[int, bytes] = {}
    for key, value in entry.items():
        name = str(key).upper()
        if not (name.startswith("PCR") and name[3:].isdigit()):
            raise PolicyInvalid(f"{what}: unknown key {key!r} (expected PCR0, PCR1, ... or describe_eif)")
        pcrs[int(name[3:])] = _hex(value, f"{what}: {key}", length=48)
    return pcrs


def _nitro(table: Any, base_dir: Path, source: str) -> NitroPolicy:
    if not isinstance(table, Mapping):
        raise PolicyInvalid(f"{source}: [nitro] must be a table")
    unknown = sorted(set(table) - _NITRO_KEYS)
    if unknown:
        raise PolicyInvalid(f"{source}: [nitro] has unknown key(s) {unknown}")
    entries = table.get("measurements", [])
    if not isinstance(entries, list):
        raise PolicyInvalid(f"{source}: nitro.measurements must be an array of tables ([[nitro.measurements]])")
    sets = [_measurement_set(e, base_dir, f"{source}: measurement set {i}") for i, e in enumerate(entries, 1)]
    options: dict[str, Any] = {}
    for key in ("allow_debug",):
        if key in table:
            if not isinstance(table[key], bool):
                raise PolicyInvalid(f"{source}: nitro.{key} must be true or false")
            options[key] = table[key]
    for key, field in (("max_age_seconds", "max_age"), ("clock_skew_seconds", "clock_skew")):
        if key in table:
            seconds = table[key]
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
                raise PolicyInvalid(f"{source}: nitro.{key} must be a positive number")
            options[field] = timedelta(seconds=seconds)
    for key in ("nonce", "public_key", "user_data"):
        if key in table:
            options[key] = _hex(table[key], f"{source}: nitro.{key}")
    try:
        return NitroPolicy(measurements=sets, **options)
    except PolicyInvalid as exc:
        raise PolicyInvalid(f"{source}: {exc.message}") from exc
