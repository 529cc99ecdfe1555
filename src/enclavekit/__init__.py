"""enclavekit: confidential services on AWS Nitro Enclaves and Intel TDX (dstack), in Python.

``__version__`` is read from the installed distribution on first use, not at import: scanning the installed
distributions costs tens of milliseconds that every command and every enclave process would otherwise pay.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("enclavekit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
        found = "0.0.0"
    globals()["__version__"] = found
    return found
