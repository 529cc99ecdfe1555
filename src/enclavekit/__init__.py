"""enclavekit: confidential services on AWS Nitro Enclaves and Intel TDX (dstack), in Python."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("enclavekit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
