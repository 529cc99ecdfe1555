"""``EnclaveApp``: what an enclave application is — its typed routes and its boot and shutdown hooks.

An app is written once and runs unchanged in the simulator (TCP/Unix, simulated NSM) and on Nitro (vsock,
``/dev/nsm``)::

    app = EnclaveApp("greeter")

    @app.route(GREET)
    async def greet(request: Greeting, call: CallContext) -> Greeting:
        return Greeting(text=f"hello, {request.text}")

Handlers run inside the TEE: the only code that sees plaintext. Every app also answers two built-in routes,
``enclave.health`` and ``enclave.attestation`` (the current attestation document, or a fresh one bound to a
nonce), which the host uses to serve attestation to clients without holding any key.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from enclavekit.errors import Rejected
from enclavekit.rpc import CallContext, Handler, Route, Router

if TYPE_CHECKING:
    from enclavekit.enclave.runtime import EnclaveContext

__all__ = [
    "ATTESTATION",
    "HEALTH",
    "AttestationRequest",
    "AttestationResponse",
    "EnclaveApp",
    "Health",
    "HealthRequest",
]

Hook = Callable[["EnclaveContext"], Awaitable[None]]


class HealthRequest(BaseModel):
    model_config = {"extra": "forbid"}


class Health(BaseModel):
    status: str
    app: str
    tee: str
    pcr0: str
    uptime_seconds: float
    document_age_seconds: float | None


class AttestationRequest(BaseModel):
    """``nonce`` (hex, at most 64 bytes) asks for a fresh document bound to it; none: the cached one."""

    model_config = {"extra": "forbid"}
    nonce: str | None = Field(default=None, max_length=128)


class AttestationResponse(BaseModel):
    document: str
    """The attestation document (COSE_Sign1), base64."""
    fresh: bool


HEALTH = Route("enclave.health", HealthRequest, Health)
ATTESTATION = Route("enclave.attestation", AttestationRequest, AttestationResponse)


class InvalidNonce(Rejected):
    code = "invalid_nonce"


@dataclass
class EnclaveApp:
    """Routes and hooks of one enclave application. ``state`` holds what boot hooks prepare for handlers."""

    name: str
    router: Router = field(default_factory=Router)
    state: dict[str, Any] = field(default_factory=dict)
    boot_hooks: list[Hook] = field(default_factory=list)
    serving_hooks: list[Hook] = field(default_factory=list)
    shutdown_hooks: list[Hook] = field(default_factory=list)
    _context: EnclaveContext | None = None

    def route(self, route: Route[Any, Any]) -> Callable[[Handler[Any, Any]], Handler[Any, Any]]:
        """Register the decorated coroutine as the handler of ``route``."""
        return self.router.handler(route)

    def on_boot(self, hook: Hook) -> Hook:
        """Run ``hook(context)`` once keys and attestation exist, before the first request is served."""
        self.boot_hooks.append(hook)
        return hook

    def on_serving(self, hook: Hook) -> Hook:
        """Run ``hook(context)`` once the server listens (``context.address`` is set)."""
        self.serving_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        self.shutdown_hooks.append(hook)
        return hook

    @property
    def context(self) -> EnclaveContext:
        """The running enclave's context (keys, NSM, attestation). Only valid after boot."""
        if self._context is None:
            raise RuntimeError(f"enclave app {self.name!r} has not booted")
        return self._context

    def bind(self, context: EnclaveContext) -> None:
        """Attach the runtime's context and the built-in routes (called once by the runtime)."""
        self._context = context
        started = time.monotonic()

        async def health(request: HealthRequest, call: CallContext) -> Health:
            return Health(
                status="ok",
                app=self.name,
                tee=context.tee,
                pcr0=context.pcr0.hex(),
                uptime_seconds=round(time.monotonic() - started, 3),
                document_age_seconds=context.document_age_seconds(),
            )

        async def attestation(request: AttestationRequest, call: CallContext) -> AttestationResponse:
            if request.nonce is None:
                return AttestationResponse(document=base64.b64encode(context.document()).decode(), fresh=False)
            try:
                nonce = bytes.fromhex(request.nonce)
            except (ValueError, binascii.Error) as exc:
                raise InvalidNonce("nonce must be hex") from exc
            if not nonce:
                raise InvalidNonce("nonce must not be empty")
            document = await context.attest(nonce=nonce)
            return AttestationResponse(document=base64.b64encode(document).decode(), fresh=True)

        if self.router.get(HEALTH.name) is None:
            self.router.add(HEALTH, health)
        if self.router.get(ATTESTATION.name) is None:
            self.router.add(ATTESTATION, attestation)
