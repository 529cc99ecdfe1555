"""The enclave runtime: boot an :class:`EnclaveApp`, keep its attestation fresh, serve it, shut down cleanly.

Boot generates the session keys in memory, opens the NSM (``/dev/nsm`` on Nitro, the simulator otherwise),
attests the keys, runs the app's boot hooks and starts the attested RPC server. The attestation document is
refreshed well before its leaf certificate expires (3 h on Nitro), so cached-mode handshakes and joins work
hours after boot. Nothing secret is written to disk or to logs: keys live in this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import enclavekit
from enclavekit.channel import Responder, SessionKeys
from enclavekit.enclave.app import EnclaveApp
from enclavekit.errors import ConfigurationError
from enclavekit.nsm import Nsm, NsmSimulator, open_device
from enclavekit.rpc import RpcServer, ServerLimits

__all__ = [
    "CONFIG_ENTRY",
    "MAX_CONFIG_SIZE",
    "EnclaveContext",
    "RuntimeOptions",
    "expected_pcr0",
    "image_files",
    "load_app",
    "read_config",
    "serve_app",
]

CONFIG_ENTRY = "config"
"""The name under which the measured configuration file is part of the simulated image (see :func:`image_files`)."""
MAX_CONFIG_SIZE = 256 * 1024
"""Largest enclave configuration file accepted (bytes)."""

logger = logging.getLogger(__name__)


@dataclass
class EnclaveContext:
    """What a running enclave knows about itself. Handed to boot hooks; ``app.context`` in handlers."""

    app_name: str
    nsm: Nsm
    keys: SessionKeys
    responder: Responder
    tee: str
    pcr0: bytes
    state_dir: Path
    settings: Mapping[str, str] = field(default_factory=dict)
    config: bytes | None = None
    """The enclave's measured configuration file (its bytes are part of PCR0), or None when it has none."""
    address: str = ""
    """Where the enclave serves (set once it listens)."""
    _document_time: float = 0.0

    def document(self) -> bytes:
        """The current attestation document of the session keys (refreshed in the background)."""
        document = self.responder.cached_document
        if document is None:
            raise RuntimeError("the enclave has no attestation document yet")
        return document

    def document_age_seconds(self) -> float | None:
        if self.responder.cached_document is None:
            return None
        return round(time.monotonic() - self._document_time, 3)

    async def refresh(self) -> None:
        await asyncio.to_thread(self.responder.refresh_document)
        self._document_time = time.monotonic()

    async def attest(
        self, *, nonce: bytes | None = None, public_key: bytes | None = None, user_data: bytes | None = None
    ) -> bytes:
        """A new attestation document from the NSM (``public_key`` defaults to the session keys)."""
        key = self.keys.public_bytes if public_key is None else public_key
        return await asyncio.to_thread(self.nsm.attestation, public_key=key, nonce=nonce, user_data=user_data)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeOptions:
    """How to run an app: where to listen, which NSM, how often to refresh attestation."""

    listen: str
    state_dir: Path = Path(".enclavekit")
    device: bool = False
    """Use ``/dev/nsm`` (a real Nitro Enclave). Otherwise the simulator, with its CA in ``state_dir``."""
    refresh_interval: float = 600.0
    limits: ServerLimits | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    config: Path | None = None
    """The app's configuration file: read once at boot and measured with the image (PCR0), see ``image_files``."""


def load_app(spec: str) -> tuple[EnclaveApp, str]:
    """Import ``module:attribute`` and return the app with its module name."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"enclave app {spec!r}: expected module:attribute, e.g. enclavekit.enclave.demo:app")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"enclave app {spec!r}: cannot import {module_name} ({exc})") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, EnclaveApp):
        raise ConfigurationError(f"enclave app {spec!r}: {attribute} is not an EnclaveApp")
    return app, module_name


def read_config(path: Path) -> bytes:
    """The bytes of an enclave configuration file, read once (what is measured is what the app parses)."""
    try:
        with path.open("rb") as source:
            data = source.read(MAX_CONFIG_SIZE + 1)
    except OSError as exc:
        raise ConfigurationError(f"enclave configuration {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigurationError(f"enclave configuration {path}: larger than {MAX_CONFIG_SIZE} bytes")
    return data


def image_files(spec: str, config: bytes | None = None) -> dict[str, bytes]:
    """What the simulator measures into PCR0: the enclavekit package, the app's own code, its entrypoint and,
    when the app has one, its configuration file (entry ``config``).

    On Nitro, PCR0 measures the whole enclave image, including the command that starts the app (the
    Dockerfile's ``APP``); here the code that would be in that image and the ``module:attribute`` to run stand
    in, so changing the app, enclavekit, or which app the image starts changes PCR0 as rebuilding an EIF would.
    The configuration is measured like a file baked into the EIF: changing one byte of it changes PCR0, so
    whatever it fixes (where plaintext may go, which keys to use) is pinned by the PCR0 clients and KMS check.
    The app's module is imported if it is not yet.
    """
    module_name = spec.partition(":")[0]
    files: dict[str, bytes] = {"entrypoint": spec.encode()}
    if config is not None:
        files[CONFIG_ENTRY] = config
    roots = [("enclavekit", Path(enclavekit.__file__).parent)]
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    source = Path(module.__file__ or "")
    if not source.is_relative_to(roots[0][1]):
        roots.append(("app", source.parent if source.name == "__init__.py" else source))
    for prefix, root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                continue
            relative = path.name if root.is_file() else path.relative_to(root).as_posix()
            files[f"{prefix}/{relative}"] = path.read_bytes()
    return files


def expected_pcr0(spec: str, config: bytes | None = None) -> bytes:
    """The PCR0 the simulator gives ``spec`` with ``config``, computed without booting (for key policies)."""
    from enclavekit.nsm.measure import measure_code, measure_enclave

    return measure_enclave(measure_code(image_files(spec, config)), instance_id="-")[0]


def _open_nsm(spec: str, options: RuntimeOptions, config: bytes | None) -> tuple[Nsm, str, bytes]:
    if options.device:
        nsm = open_device()
        return nsm, "nitro", nsm.describe_pcr(0).data
    simulator = NsmSimulator(options.state_dir, app=image_files(spec, config))
    return simulator.client(), "nitro-simulated", simulator.pcr(0)


async def serve_app(
    app: EnclaveApp,
    spec: str,
    options: RuntimeOptions,
    *,
    on_ready: Callable[[dict[str, Any]], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Boot ``app`` and serve it until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    config = None if options.config is None else read_config(options.config)
    nsm, tee, pcr0 = _open_nsm(spec, options, config)
    keys = SessionKeys.generate()
    responder = Responder(keys, attester=nsm)
    context = EnclaveContext(
        app.name, nsm, keys, responder, tee, pcr0, options.state_dir, options.settings, config=config
    )
    await context.refresh()
    app.bind(context)
    for hook in app.boot_hooks:
        await hook(context)

    server = RpcServer(app.router, responder=responder, limits=options.limits)
    bound = await server.start(options.listen)
    context.address = str(bound)
    for hook in app.serving_hooks:
        await hook(context)
    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    async def refresh_forever() -> None:
        while True:
            await asyncio.sleep(options.refresh_interval)
            try:
                await context.refresh()
            except Exception:  # keep serving on the old document; it is logged and retried
                logger.exception("attestation refresh failed; retrying in %.0f s", options.refresh_interval)

    refresher = asyncio.create_task(refresh_forever())
    logger.info("enclave %s serving on %s (%s, PCR0 %s)", app.name, bound, tee, pcr0.hex()[:16])
    on_ready({"ready": True, "name": app.name, "address": str(bound), "pcr0": pcr0.hex(), "tee": tee})
    try:
        await stop.wait()
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await server.close()
        for hook in app.shutdown_hooks:
            try:
                await hook(context)
            except Exception:
                logger.exception("shutdown hook of %s failed", app.name)
        if own_stop:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        logger.info("enclave %s stopped", app.name)
