"""The trusted computing base of an enclave app: what its enclave process loads, as an inventory.

:func:`inventory` starts a fresh interpreter that imports what the minimal entry point
(:mod:`enclavekit.enclave.launch`) imports and the app, and reads ``sys.modules`` there: the third-party
distributions (with versions, and the hashes pinned in ``requirements-enclave.lock`` when one is given), the
enclavekit modules and their line count. That is the code a client trusts when it accepts the enclave's PCRs.
Modules the interpreter loads at start-up (``site`` and its ``.pth`` hooks) are left out: they are not the
app's choice. Host-side only; the enclave never runs this.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any

from enclavekit.errors import ConfigurationError

__all__ = ["Distribution", "Inventory", "inventory", "lock_hashes"]

MAX_LOCK_SIZE = 1 << 20
_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

_PROBE = """
import json, sys
before = set(sys.modules)
import enclavekit.enclave.launch
from enclavekit.enclave.runtime import load_app
load_app(sys.argv[1])
files = {}
for name, module in sorted(sys.modules.items()):
    if name in before:
        continue
    files[name] = getattr(module, "__file__", None)
print(json.dumps(files))
"""


@dataclass(frozen=True, slots=True)
class Distribution:
    """A third-party distribution loaded inside the enclave; ``hashes`` as pinned in the enclave lockfile."""

    name: str
    version: str
    hashes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.hashes:
            out["hashes"] = list(self.hashes)
        return out


@dataclass(frozen=True, slots=True)
class Inventory:
    """What runs inside for ``app``: distributions, enclavekit modules, and the enclavekit lines they hold."""

    app: str
    distributions: tuple[Distribution, ...]
    modules: tuple[str, ...]
    lines: int

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "distributions": [d.to_json() for d in self.distributions],
            "modules": list(self.modules),
            "lines": self.lines,
        }


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_hashes(lockfile: Path) -> dict[str, tuple[str, ...]]:
    """``{normalized name: (sha256:..., ...)}`` from a hashed ``uv pip compile`` / pip-tools lockfile."""
    try:
        if lockfile.stat().st_size > MAX_LOCK_SIZE:
            raise ConfigurationError(f"lockfile {lockfile}: larger than {MAX_LOCK_SIZE} bytes")
        text = lockfile.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"lockfile {lockfile}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"lockfile {lockfile}: not UTF-8 text") from exc
    hashes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        requirement = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==", line)
        if requirement:
            current = hashes.setdefault(_normalize(requirement.group(1)), [])
            continue
        pinned = re.match(r"^\s+--hash=(sha256:[0-9a-f]{64})", line)
        if pinned and current is not None:
            current.append(pinned.group(1))
        elif not line.startswith(" "):
            current = None
    return {name: tuple(values) for name, values in hashes.items()}


def inventory(spec: str, *, lockfile: Path | None = None, timeout: float = 60.0) -> Inventory:
    """The inventory of the enclave app ``spec`` (``module:attribute``), from a fresh interpreter.

    Raises :class:`ConfigurationError` when ``spec`` is not ``module:attribute`` or the app cannot be imported.
    """
    if len(spec) > 200 or not _SPEC.match(spec):
        raise ConfigurationError(
            f"enclave app {spec[:200]!r}: expected module:attribute, e.g. enclavekit.enclave.demo:app"
        )
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, spec], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigurationError(f"enclave app {spec!r}: importing it took over {timeout:.0f} s") from exc
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigurationError(f"enclave app {spec!r}: cannot import it in a fresh interpreter ({last})")
    files: dict[str, str | None] = json.loads(probe.stdout)
    by_top = packages_distributions()
    pinned = lock_hashes(lockfile) if lockfile is not None else {}
    names: set[str] = set()
    for module in files:
        top = module.split(".")[0]
        if top == "enclavekit" or top in sys.stdlib_module_names:
            continue
        names.update(by_top.get(top, ()))
    distributions = []
    for name in sorted(names, key=_normalize):
        try:
            installed = version(name)
        except PackageNotFoundError:  # pragma: no cover - packages_distributions named it
            installed = "unknown"
        distributions.append(Distribution(_normalize(name), installed, pinned.get(_normalize(name), ())))
    modules = sorted(m for m in files if m == "enclavekit" or m.startswith("enclavekit."))
    lines = 0
    for module in modules:
        path = files[module]
        if path and path.endswith(".py"):
            lines += len(Path(path).read_bytes().splitlines())
    return Inventory(spec, tuple(distributions), tuple(modules), lines)
