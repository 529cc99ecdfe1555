#!/usr/bin/env python3
"""Set up enclavekit's environment from the lockfile, then run one job.

Needs only Python 3.11+ and git. The environment lands in ``.venv/`` at the repository root and is rebuilt
when ``requirements.lock`` or ``pyproject.toml`` change.

    python3 dev.py up [ARGS...]     # the local stack (`enclavekit up`)
    python3 dev.py test [ARGS...]   # the test suite (pytest; ARGS go to pytest)
    python3 dev.py check            # lint (ruff) and types (mypy --strict)
    python3 dev.py setup            # only set up .venv
    python3 dev.py run CMD [ARGS]   # any command inside .venv (e.g. `run enclavekit verify FILE`)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".enclavekit-lock"
INPUTS = ("requirements.lock", "pyproject.toml")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, cwd=ROOT)


def setup() -> None:
    """Create or refresh ``.venv`` so it matches the lockfile exactly."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under whatever python3 the user has
        sys.exit(f"enclavekit needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    wanted = _fingerprint()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.create(VENV, with_pip=True, clear=True)
    python = BIN / "python"
    print("installing locked dependencies into .venv ...", file=sys.stderr)
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--require-hashes",
        "--no-deps",
        "-r",
        ROOT / "requirements.lock",
    )
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-build-isolation",
        "-e",
        ROOT,
    )
    STAMP.write_text(wanted + "\n")


def _exec(program: str, *args: str) -> None:
    path = BIN / program
    argv = [str(path), *args]
    os.execv(argv[0], argv)  # noqa: S606 - replaces this process with a program of .venv


def main(argv: list[str]) -> None:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return
    job, rest = argv[0], argv[1:]
    setup()
    if job == "setup":
        return
    if job == "up":
        _exec("enclavekit", "up", *rest)
    elif job == "test":
        _exec("python", "-m", "pytest", *rest)
    elif job == "check":
        _run(BIN / "ruff", "check", "src", "tests", "benchmarks", "dev.py")
        _run(BIN / "ruff", "format", "--check", "src", "tests", "benchmarks", "dev.py")
        _exec("mypy")
    elif job == "run":
        if not rest:
            sys.exit("usage: python3 dev.py run CMD [ARGS...]")
        _exec(rest[0], *rest[1:])
    else:
        sys.exit(f"unknown job {job!r}; see `python3 dev.py --help`")


if __name__ == "__main__":
    main(sys.argv[1:])
