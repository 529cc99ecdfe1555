"""How the simulator measures an enclave: code → digest → PCRs, deterministically.

A real Nitro Enclave's PCRs are measured by the Nitro Hypervisor from the enclave image file (EIF): PCR0 the
whole image, PCR1 the kernel and bootstrap, PCR2 the application, PCR3 the parent's IAM role, PCR4 the parent
instance id, PCR8 the image's signing certificate. The simulator has no EIF, so it measures what it runs:

* ``app``   = :func:`measure_code` of the enclave application (its files, or bytes) — for an app started by
  the enclave runtime, also its measured configuration file as the entry ``config``
  (:func:`enclavekit.enclave.runtime.image_files`), the way a file baked into an EIF is part of PCR0 and PCR2,
* ``boot``  = SHA-384 of :data:`BOOT_IMAGE` (a constant naming the simulated kernel and bootstrap),
* PCR1 = extend(0, boot), PCR2 = extend(0, app), PCR0 = extend(PCR1, app) — the image is the bootstrap
  followed by the application, so changing either changes PCR0;
* PCR3 = extend(0, role ARN) when a role is given, else zero; PCR4 = extend(0, parent instance id);
* PCR8 and every other PCR of 0..15 = zero (an unsigned image);
* debug mode zeroes PCR0, PCR1, PCR2 and PCR8, as the real NSM does.

where extend(pcr, data) = SHA-384(pcr ‖ data) and 0 is 48 zero bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeAlias

__all__ = [
    "BOOT_IMAGE",
    "CODE_MEASUREMENT_VERSION",
    "PCR_SIZE",
    "ZERO_PCR",
    "CodeSource",
    "Measurements",
    "extend",
    "measure_code",
    "measure_enclave",
]

PCR_SIZE = 48
ZERO_PCR = bytes(PCR_SIZE)
BOOT_IMAGE = b"enclavekit NSM simulator: kernel and bootstrap, v1"
"""What the simulated PCR1 measures: there is no kernel to hash, so a fixed, versioned name stands in."""
CODE_MEASUREMENT_VERSION = b"enclavekit-code-measurement-v1\x00"
"""Domain separation prefix of :func:`measure_code`; changes only with its format."""
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")

CodeSource: TypeAlias = "bytes | str | os.PathLike[str] | Mapping[str, bytes]"
"""Code to measure: raw bytes, a file, a directory tree, or an explicit ``{relative path: content}`` map."""


def extend(pcr: bytes, data: bytes) -> bytes:
    """A PCR extension: SHA-384(pcr ‖ data)."""
    return hashlib.sha384(pcr + data).digest()


def measure_code(source: CodeSource) -> bytes:
    """A deterministic SHA-384 of code: the same files give the same digest anywhere, any change changes it.

    The digest covers a sorted list of (relative POSIX path, content) entries::

        SHA-384("enclavekit-code-measurement-v1\\0" ‖ for each entry in path order:
                u64be(len(path)) ‖ path(UTF-8) ‖ u64be(len(content)) ‖ content)

    ``bytes`` is one entry with the empty path; a file is one entry named by its base name; a directory is
    every regular file below it, by path relative to it, skipping byte-code (``__pycache__``, ``*.pyc``) and
    tool folders (``.git``, ``.mypy_cache``...); a mapping gives the entries directly. Symbolic links are
    followed for files and not for directories.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        entries: dict[str, bytes] = {"": bytes(source)}
    elif isinstance(source, Mapping):
        entries = {}
        for name, content in source.items():
            if not isinstance(name, str) or not isinstance(content, bytes | bytearray):
                raise TypeError("measure_code: a mapping must map relative paths (str) to contents (bytes)")
            entries[_normalise(name)] = bytes(content)
    else:
        entries = _read_tree(Path(source))
    digest = hashlib.sha384(CODE_MEASUREMENT_VERSION)
    for name in sorted(entries, key=lambda n: n.encode()):
        encoded = name.encode()
        content = entries[name]
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


def _normalise(name: str) -> str:
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"measure_code: {name!r} leaves its tree")
    return "/".join(parts)


def _read_tree(root: Path) -> dict[str, bytes]:
    info = root.stat()
    if stat.S_ISREG(info.st_mode):
        return {root.name: root.read_bytes()}
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"measure_code: {root} is neither a file nor a directory")
    entries: dict[str, bytes] = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        for filename in filenames:
            if filename.endswith(_SKIPPED_SUFFIXES):
                continue
            path = Path(directory, filename)
            if path.is_file():
                entries[path.relative_to(root).as_posix()] = path.read_bytes()
    return entries


@dataclass(frozen=True, slots=True)
class Measurements:
    """The boot-time PCRs of a simulated enclave (index → 48 bytes; PCRs not listed are zero)."""

    pcrs: Mapping[int, bytes]
    app_digest: bytes

    def __getitem__(self, index: int) -> bytes:
        return self.pcrs.get(index, ZERO_PCR)


def measure_enclave(
    app_digest: bytes,
    *,
    instance_id: str,
    role_arn: str | None = None,
    debug: bool = False,
    boot_image: bytes = BOOT_IMAGE,
) -> Measurements:
    """The PCRs the simulated hypervisor sets at boot, from the application's :func:`measure_code` digest."""
    if len(app_digest) != PCR_SIZE:
        raise ValueError("app_digest must be a 48-byte SHA-384 digest (see measure_code)")
    boot = hashlib.sha384(boot_image).digest()
    pcr1 = extend(ZERO_PCR, boot)
    pcrs = {
        0: extend(pcr1, app_digest),
        1: pcr1,
        2: extend(ZERO_PCR, app_digest),
        3: ZERO_PCR if role_arn is None else extend(ZERO_PCR, role_arn.encode()),
        4: extend(ZERO_PCR, instance_id.encode()),
    }
    if debug:
        pcrs[0] = pcrs[1] = pcrs[2] = ZERO_PCR
    return Measurements(MappingProxyType(pcrs), app_digest)
