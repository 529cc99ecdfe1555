"""The registry of known-good OS measurements used by the OS phase, with provenance per entry.

The reference computes expected MRTD and RTMR0..2 by downloading dstack OS images and running dstack-mr with
the VM's shape; here they come from a pinned file (``data/os-measurements.toml`` by default): entries keyed by
OS image hash and VM shape, each saying where its values come from. The file is loaded only if its SHA-256 is
the pinned one, so a changed file is an error, not a silently different policy.

Which entries apply to a TD is chosen from its measured ``os-image-hash`` event (else the host-supplied
``vm_config``) and VM shape; whether it passes is decided by comparing the *quote's* registers with them (the
core's :class:`~enclavekit.attestation.tdx.MeasurementSet` check), never what a guest agent says about itself.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from enclavekit.attestation.tdx import MeasurementSet
from enclavekit.services.trust.errors import RegistryInvalid

__all__ = [
    "BUILTIN_SHA256",
    "OsEntry",
    "OsRegistry",
    "Provenance",
    "Selection",
    "load_registry",
]

BUILTIN_SHA256 = "ff1903e5d043f5691769589b6563e5f2f526ed8ebf5c18d7ff96a1a6cc508a54"
"""SHA-256 of the built-in ``data/os-measurements.toml`` (change both together)."""
MAX_REGISTRY_SIZE = 4 * 1024 * 1024
_METHODS = frozenset({"reproduced", "observed"})
_ENTRY_KEYS = frozenset({"id", "name", "os_image_hash", "mrtd", "rtmr0", "rtmr1", "rtmr2", "vm", "provenance"})
_PROVENANCE_KEYS = frozenset({"method", "source", "commit", "note"})


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an entry's values come from (``method``: ``reproduced`` or ``observed``)."""

    method: str
    source: str
    commit: str = ""
    note: str = ""

    def to_json(self) -> dict[str, str]:
        return {"method": self.method, "source": self.source, "commit": self.commit, "note": self.note}


@dataclass(frozen=True, slots=True)
class OsEntry:
    """One OS image on one VM shape, and the registers a TD booted that way must show."""

    id: str
    name: str
    os_image_hash: str | None
    vm: Mapping[str, Any]
    mrtd: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    provenance: Provenance

    def measurement_set(self) -> MeasurementSet:
        return MeasurementSet(self.mrtd, self.rtmr0, self.rtmr1, self.rtmr2, name=self.id)

    def matches(self, measurements: Mapping[str, str]) -> bool:
        """Whether hex ``measurements`` (``mrtd``, ``rtmr0``..) are this entry's."""
        return all(
            measurements.get(name, "").lower() == getattr(self, name).hex()
            for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2")
        )

    def fits(self, vm_config: Mapping[str, Any]) -> bool:
        """Whether ``vm_config`` has this entry's VM shape (every field the entry names, equal)."""
        return all(vm_config.get(key) == value for key, value in self.vm.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "os_image_hash": self.os_image_hash,
            "vm": dict(self.vm),
            "mrtd": self.mrtd.hex(),
            "rtmr0": self.rtmr0.hex(),
            "rtmr1": self.rtmr1.hex(),
            "rtmr2": self.rtmr2.hex(),
            "provenance": self.provenance.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """The entries that apply to one TD, and why (``key``: what chose them)."""

    entries: tuple[OsEntry, ...]
    key: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OsRegistry:
    entries: tuple[OsEntry, ...]
    source: str
    sha256: str

    def by_id(self, entry_id: str) -> OsEntry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def find(self, measurements: Mapping[str, str]) -> OsEntry | None:
        """The entry whose registers are exactly ``measurements`` (hex), if any."""
        return next((e for e in self.entries if e.matches(measurements)), None)

    def select(self, *, os_image_hash: str | None, vm_config: Mapping[str, Any] | None) -> Selection:
        """Entries for this OS image hash and VM shape.

        Unknown hash: every entry (the quote must match one of them). Known hash: its entries of this shape, or
        all its entries when the shape is unknown or none fits (so the report shows what was expected).
        """
        key: dict[str, Any] = {}
        if os_image_hash is None:
            return Selection(self.entries, key, "no OS image hash measured: any known OS image")
        image = os_image_hash.lower().removeprefix("0x")
        key["os_image_hash"] = image
        same_image = tuple(e for e in self.entries if e.os_image_hash == image)
        if not same_image:
            return Selection((), key, f"OS image {image} is not in the registry")
        if vm_config:
            key["vm"] = {k: vm_config[k] for k in sorted(vm_config) if k not in ("os_image_hash", "spec_version")}
            shaped = tuple(e for e in same_image if e.fits(vm_config))
            if shaped:
                return Selection(shaped, key, f"OS image {image[:16]}… on this VM shape")
            return Selection(same_image, key, f"OS image {image[:16]}… is known, but not on this VM shape")
        return Selection(same_image, key, f"OS image {image[:16]}… (VM shape not given)")


def _hex48(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RegistryInvalid(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise RegistryInvalid(f"{what} is not hex") from exc
    if len(raw) != 48:
        raise RegistryInvalid(f"{what} must be 48 bytes (96 hex digits)")
    return raw


def _entry(table: Any, number: int, seen: set[str]) -> OsEntry:
    what = f"registry entry {number}"
    if not isinstance(table, Mapping):
        raise RegistryInvalid(f"{what} must be a table")
    unknown = sorted(set(table) - _ENTRY_KEYS)
    if unknown:
        raise RegistryInvalid(f"{what} has unknown key(s) {unknown}")
    entry_id = table.get("id")
    if not isinstance(entry_id, str) or not entry_id:
        raise RegistryInvalid(f"{what} needs an id")
    if entry_id in seen:
        raise RegistryInvalid(f"{what}: id {entry_id!r} appears twice")
    seen.add(entry_id)
    what = f"registry entry {entry_id!r}"
    image = table.get("os_image_hash")
    if image is not None:
        if not isinstance(image, str) or len(image) != 64:
            raise RegistryInvalid(f"{what}: os_image_hash must be 64 hex digits")
        image = image.lower()
    vm = table.get("vm", {})
    if not isinstance(vm, Mapping):
        raise RegistryInvalid(f"{what}: vm must be a table")
    provenance = table.get("provenance")
    if not isinstance(provenance, Mapping):
        raise RegistryInvalid(f"{what}: provenance is required (method, source)")
    unknown = sorted(set(provenance) - _PROVENANCE_KEYS)
    if unknown:
        raise RegistryInvalid(f"{what}: provenance has unknown key(s) {unknown}")
    method = provenance.get("method")
    if method not in _METHODS:
        raise RegistryInvalid(f"{what}: provenance.method must be one of {sorted(_METHODS)}")
    source = provenance.get("source")
    if not isinstance(source, str) or not source:
        raise RegistryInvalid(f"{what}: provenance.source is required")
    name = table.get("name", entry_id)
    return OsEntry(
        id=entry_id,
        name=str(name),
        os_image_hash=image,
        vm=dict(vm),
        mrtd=_hex48(table.get("mrtd"), f"{what}: mrtd"),
        rtmr0=_hex48(table.get("rtmr0"), f"{what}: rtmr0"),
        rtmr1=_hex48(table.get("rtmr1"), f"{what}: rtmr1"),
        rtmr2=_hex48(table.get("rtmr2"), f"{what}: rtmr2"),
        provenance=Provenance(
            method=str(method),
            source=source,
            commit=str(provenance.get("commit", "")),
            note=str(provenance.get("note", "")),
        ),
    )


def parse_registry(data: bytes, *, source: str, sha256: str) -> OsRegistry:
    """Parse registry bytes whose pin was already checked."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RegistryInvalid(f"{source}: not a UTF-8 TOML file ({exc})") from exc
    if document.get("version") != 1:
        raise RegistryInvalid(f"{source}: version must be 1")
    unknown = sorted(set(document) - {"version", "tdx"})
    if unknown:
        raise RegistryInvalid(f"{source}: unknown key(s) {unknown}")
    tables: Sequence[Any] = document.get("tdx", [])
    if not isinstance(tables, list):
        raise RegistryInvalid(f"{source}: tdx must be an array of tables ([[tdx]])")
    seen: set[str] = set()
    entries = tuple(_entry(table, number, seen) for number, table in enumerate(tables, 1))
    return OsRegistry(entries, source, sha256)


def load_registry(path: Path | None = None, *, sha256: str | None = None) -> OsRegistry:
    """The built-in registry (``path`` None), or the file at ``path`` if its SHA-256 is ``sha256``."""
    if path is None:
        data = resources.files("enclavekit.services.trust").joinpath("data/os-measurements.toml").read_bytes()
        source, pin = "built-in os-measurements.toml", sha256 or BUILTIN_SHA256
    else:
        if sha256 is None:
            raise RegistryInvalid(f"{path}: a registry file of your own must be pinned (give its SHA-256)")
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_REGISTRY_SIZE + 1)
        except OSError as exc:
            raise RegistryInvalid(f"{path}: cannot read the registry ({exc.strerror})") from exc
        if len(data) > MAX_REGISTRY_SIZE:
            raise RegistryInvalid(f"{path}: over {MAX_REGISTRY_SIZE} bytes")
        source, pin = str(path), sha256
    actual = hashlib.sha256(data).hexdigest()
    if actual != pin.lower():
        raise RegistryInvalid(f"{source}: SHA-256 is {actual}, not the pinned {pin.lower()} (the file was changed)")
    return parse_registry(data, source=source, sha256=actual)
