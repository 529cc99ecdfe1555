"""trust: attestation verification as a service (a Trust Center) for Nitro enclaves and dstack apps on TDX.

Targets — evidence uploaded once, or endpoints polled — are verified on a schedule by workers fed from a
JetStream queue; tasks live in SQL (SQLite or PostgreSQL), reports in object storage (a folder or S3); people
see the results in a server-rendered web app (app list, app pages with phases, trust graph and history, badge,
widget), programs through a JSON API and signed EAR tokens. See ``docs/trust.md``.

Host-side parts, as in every service: :mod:`~enclavekit.services.trust.api` (HTTP),
:mod:`~enclavekit.services.trust.store` (SQL), :mod:`~enclavekit.services.trust.worker` and
:mod:`~enclavekit.services.trust.dispatcher` (work), :mod:`~enclavekit.services.trust.verification` (the
verification itself, pure), and :mod:`~enclavekit.services.trust.client` for programs. There is no enclave part:
everything the service handles is public evidence.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enclavekit.services.trust.client import TrustApiError, TrustClient
    from enclavekit.services.trust.model import AppRecord, Kind, Source, TargetOptions, TaskRecord, TaskStatus, Verdict
    from enclavekit.services.trust.registry import OsEntry, OsRegistry, load_registry
    from enclavekit.services.trust.service import Accepted, TrustService
    from enclavekit.services.trust.settings import TrustSettings
    from enclavekit.services.trust.verification import TrustReport, VerificationInput, verify_target

_LAZY: dict[str, str] = {
    "Accepted": "enclavekit.services.trust.service",
    "AppRecord": "enclavekit.services.trust.model",
    "Kind": "enclavekit.services.trust.model",
    "OsEntry": "enclavekit.services.trust.registry",
    "OsRegistry": "enclavekit.services.trust.registry",
    "Source": "enclavekit.services.trust.model",
    "TargetOptions": "enclavekit.services.trust.model",
    "TaskRecord": "enclavekit.services.trust.model",
    "TaskStatus": "enclavekit.services.trust.model",
    "TrustApiError": "enclavekit.services.trust.client",
    "TrustClient": "enclavekit.services.trust.client",
    "TrustReport": "enclavekit.services.trust.verification",
    "TrustService": "enclavekit.services.trust.service",
    "TrustSettings": "enclavekit.services.trust.settings",
    "Verdict": "enclavekit.services.trust.model",
    "VerificationInput": "enclavekit.services.trust.verification",
    "load_registry": "enclavekit.services.trust.registry",
    "verify_target": "enclavekit.services.trust.verification",
}
"""Where each public name lives; imported on first use, so importing this package loads nothing heavy."""

__all__ = [
    "Accepted",
    "AppRecord",
    "Kind",
    "OsEntry",
    "OsRegistry",
    "Source",
    "TargetOptions",
    "TaskRecord",
    "TaskStatus",
    "TrustApiError",
    "TrustClient",
    "TrustReport",
    "TrustService",
    "TrustSettings",
    "Verdict",
    "VerificationInput",
    "load_registry",
    "verify_target",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
