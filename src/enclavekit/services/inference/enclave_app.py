"""The inference enclave: the only code that sees the client's text and the model's plaintext weights.

Boot: read the trust-deciding configuration (the measured ``--config`` file, part of PCR0; there is no
host-chosen alternative), make the receipt key (Ed25519, memory only)
and an attestation document whose ``user_data`` is its raw public key, then load the model package
(``--set package=DIR``; :func:`~enclavekit.services.inference.loader.load_package`: signature, KMS key release to
an attested Recipient, chunk-by-chunk authenticated decryption, hashes). A model that does not verify is
refused: the enclave then answers ``inference.info`` with the error and every ``inference.embed`` with
``model_refused`` — it never serves another model. The KMS endpoint and its TLS trust anchor are in the measured
configuration; the host may give only ``kms_route`` (a TCP path) and credentials; KMS's key policy and the signed
manifest decide the rest.

Routes, and why each cannot leak:

* ``inference.embed`` — texts in, embeddings and one AIR v1 receipt out, over the attested session only (the
  runtime serves nothing in the clear); it logs counts and timings, never text.
* ``inference.info`` — the model's id, version and manifest hash, the receipt key and its attestation
  document, the configuration digest, the limits: all public.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import os
import resource
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.enclave.app import EnclaveApp
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.errors import ConfigurationError, Error
from enclavekit.receipts import EnclaveMeasurements, MeasurementType, ReceiptSigner
from enclavekit.rpc import CallContext
from enclavekit.services.inference import engine as _engine  # noqa: F401 - first: pins BLAS threads before numpy
from enclavekit.services.inference.config import InferenceConfig
from enclavekit.services.inference.engine import Embedder, Embeddings
from enclavekit.services.inference.errors import BadInput, ModelRefused, NotReady
from enclavekit.services.inference.loader import KeyRelease, LoadedModel, load_package
from enclavekit.services.inference.request_workers import RequestWorkers
from enclavekit.services.inference.wire import (
    EMBED,
    INFO,
    EmbedRequest,
    EmbedResponse,
    InferenceInfo,
    InfoRequest,
    embedding_bytes,
    request_hash,
    response_hash_of_bytes,
    utf8_texts,
)

__all__ = ["ISSUER", "MODEL_HASH_SCHEME", "InferenceEnclave", "PeakRss", "app", "build_app", "kms_release"]

logger = logging.getLogger(__name__)

ISSUER = "enclavekit-inference"
MODEL_HASH_SCHEME = "sha256-manifest"
DOCUMENT_MAX_AGE = 600.0
"""The receipt key's attestation document is renewed after this many seconds (receipts name the current one)."""


def kms_release(context: EnclaveContext, config: InferenceConfig) -> KeyRelease:
    """Decrypt the data key with KMS, sealed to a fresh Recipient key in an attestation document of this enclave,
    from the KMS endpoint the measured configuration names (:func:`~enclavekit.enclave.tracks.enclave_kms_client`)."""
    from enclavekit.enclave.tracks import enclave_kms_client

    kms = enclave_kms_client(context, config.kms_endpoint())

    def release(blob: bytes, encryption_context: Mapping[str, str], key_id: str) -> bytes:
        return kms.decrypt(blob, encryption_context=encryption_context, key_id=key_id)

    return release


@dataclass
class InferenceEnclave:
    """The state of one inference enclave: its configuration, receipt key, model and counters."""

    config: InferenceConfig | None = None
    model: LoadedModel | None = None
    error: Error | None = None
    served: int = 0
    cold_start_seconds: float | None = None
    _context: EnclaveContext | None = None
    _receipt_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, repr=False)
    _document: tuple[float, bytes, bytes] | None = None
    _config_digest: bytes = b""
    _policy_version: str = ""
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _workers: RequestWorkers | None = None
    _signer: ReceiptSigner | None = None
    _peak_rss: PeakRss | None = None

    def attach(self, app: EnclaveApp) -> None:
        app.on_boot(self._boot)
        app.on_shutdown(self._shutdown)
        app.route(EMBED)(self.embed)
        app.route(INFO)(self.info)

    @property
    def receipt_public_key(self) -> bytes:
        return self._receipt_key.public_key().public_bytes_raw()

    async def _boot(self, context: EnclaveContext) -> None:
        started = time.perf_counter()
        self._context = context
        if context.config is None:
            raise ConfigurationError("the inference enclave needs its measured configuration: --config FILE")
        if "config" in context.settings:
            raise ConfigurationError("config is not a launch setting: the configuration is measured (--config FILE)")
        self.config = InferenceConfig.from_bytes(context.config)
        self._config_digest = self.config.digest()  # the configuration never changes: hashed once
        self._policy_version = f"enclavekit-inference/1 config-sha256:{self._config_digest.hex()}"
        self._peak_rss = PeakRss()
        try:
            package = Path(context.settings["package"])
        except KeyError as exc:
            raise ConfigurationError(f"the inference enclave needs --set {exc.args[0]}=...") from exc
        pcrs = await asyncio.to_thread(lambda: [context.nsm.describe_pcr(i).data for i in (0, 1, 2)])
        measurements = EnclaveMeasurements(
            measurement_type=MeasurementType.NITRO, pcr0=pcrs[0], pcr1=pcrs[1], pcr2=pcrs[2]
        )
        await self._renew_document()
        self._workers = RequestWorkers(self.config.workers, name="inference-worker")
        try:
            release = kms_release(context, self.config)
            self.model = await asyncio.to_thread(load_package, package, self.config, release)
            await self._workers.run(self.model.embedder.embed, ["warm up"])
        except ModelRefused as exc:
            self.error = exc
            logger.error("inference enclave refuses to serve: %s", exc)
            return
        manifest = self.model.manifest
        self._signer = ReceiptSigner(  # the claims that do not change per request, checked and encoded once
            self._receipt_key,
            iss=ISSUER,
            model_id=manifest.model_id,
            model_version=manifest.version,
            model_hash=manifest.model_hash,
            model_hash_scheme=MODEL_HASH_SCHEME,
            enclave_measurements=measurements,
            policy_version=self._policy_version,
            security_mode=context.tee,
        )
        self.cold_start_seconds = time.perf_counter() - started
        logger.info(
            "inference enclave ready in %.2f s (%s), receipt key %s",
            self.cold_start_seconds,
            ", ".join(f"{k} {v:.2f} s" for k, v in self.model.timings.items()),
            self.receipt_public_key.hex()[:16],
        )

    async def _shutdown(self, context: EnclaveContext) -> None:
        if self._workers is not None:
            self._workers.close()
        if self._peak_rss is not None:
            self._peak_rss.close()

    async def _renew_document(self) -> tuple[bytes, bytes]:
        """The receipt key's current attestation document and its SHA-256 (a new one after ``DOCUMENT_MAX_AGE``)."""
        current = self._document
        if current is not None and time.monotonic() - current[0] <= DOCUMENT_MAX_AGE:
            return current[1], current[2]
        assert self._context is not None
        document = await self._context.attest(user_data=self.receipt_public_key)
        self._document = (time.monotonic(), document, hashlib.sha256(document).digest())
        return document, self._document[2]

    def _ready(self) -> tuple[LoadedModel, InferenceConfig]:
        if self.error is not None:
            raise ModelRefused(f"this enclave refused its model: {self.error.message}")
        if self.model is None or self.config is None:
            raise NotReady("the model is not loaded yet")
        return self.model, self.config

    # --- routes ----------------------------------------------------------------------------------------------

    async def info(self, request: InfoRequest, call: CallContext) -> InferenceInfo:
        document, _ = await self._renew_document()
        config = self.config
        assert config is not None
        manifest = self.model.manifest if self.model is not None else None
        return InferenceInfo(
            ready=self.model is not None and self.error is None,
            error=None if self.error is None else self.error.to_json(),
            model_id=config.model_id,
            model_version=config.version,
            model_hash=None if manifest is None else manifest.model_hash.hex(),
            receipt_public_key=self.receipt_public_key.hex(),
            receipt_document=base64.b64encode(document).decode(),
            config_digest=self._config_digest.hex(),
            max_batch=config.limits.max_batch,
            max_text_bytes=config.limits.max_text_bytes,
        )

    async def embed(self, request: EmbedRequest, call: CallContext) -> EmbedResponse:
        model, config = self._ready()
        limits = config.limits
        if not request.texts:
            raise BadInput("no texts to embed")
        if len(request.texts) > limits.max_batch:
            raise BadInput(f"{len(request.texts)} texts, over the {limits.max_batch} allowed per request")
        encoded = utf8_texts(request.texts)
        total = 0
        for index, text in enumerate(encoded):
            if not text:
                raise BadInput(f"text {index} is empty")
            if len(text) > limits.max_text_bytes:
                raise BadInput(f"text {index} is {len(text)} bytes, over {limits.max_text_bytes}")
            total += len(text)
        if total > limits.max_total_bytes:
            raise BadInput(f"the texts hold {total} bytes, over {limits.max_total_bytes}")
        nonce = bytes.fromhex(request.nonce) if request.nonce is not None else None
        assert self._workers is not None and self._signer is not None and self._peak_rss is not None
        engine = self._workers.run(_timed_embed, model.embedder, request.texts)
        try:
            # While the request worker wakes up and runs the engine, this thread does what depends only on the
            # request: a worker's wake-up costs ~0.1 ms on an idle machine, and this work costs more after the
            # engine's pass over the weights has evicted the caches (ADR 0029).
            cti = uuid.uuid4().bytes
            hashed = request_hash(encoded)
            _, document_hash = await self._renew_document()
            result, elapsed_ms = await engine
        except BaseException:
            engine.cancel()  # a failure here must not leave the engine's outcome unobserved
            raise
        count, dimensions = result.vectors.shape
        raw = embedding_bytes(result.vectors)  # hashed and sent: the same bytes, converted once
        receipt = self._signer.sign(
            iat=int(time.time()),
            cti=cti,
            request_hash=hashed,
            response_hash=response_hash_of_bytes(raw, count, dimensions, result.truncated),
            attestation_doc_hash=document_hash,
            sequence_number=next(self._sequence),
            execution_time_ms=elapsed_ms,
            memory_peak_mb=self._peak_rss.mib(),
            eat_nonce=nonce,
        )
        self.served += 1
        logger.debug("embedded %d texts (%d tokens) in %d ms", count, result.tokens, elapsed_ms)
        manifest = model.manifest
        return EmbedResponse.model_construct(  # built here from checked values: no second validation
            model_id=manifest.model_id,
            model_version=manifest.version,
            count=count,
            dimensions=dimensions,
            embeddings=base64.b64encode(raw).decode(),
            truncated=list(result.truncated),
            tokens=result.tokens,
            receipt=base64.b64encode(receipt).decode(),
        )


def _timed_embed(embedder: Embedder, texts: list[str]) -> tuple[Embeddings, int]:
    """The engine's call on a request worker, and its time in ms (``execution_time_ms``)."""
    started = time.perf_counter()
    result = embedder.embed(texts)
    return result, int((time.perf_counter() - started) * 1000)


class PeakRss:
    """This process's peak RSS in MiB: ``VmHWM`` of ``/proc/self/status``, read through a descriptor opened once
    (``pread``: no open, no text decoding per receipt; safe from several request workers at once).
    ``ru_maxrss`` is the fallback where there is no procfs; it may include a parent's peak carried over exec."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def mib(self) -> int:
        fd = self._fd
        if fd is not None:
            try:
                status = os.pread(fd, 8192, 0)
                start = status.index(b"VmHWM:") + 6
                return int(status[start : status.index(b"kB", start)]) // 1024
            except (OSError, ValueError):
                pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def build_app(name: str = "inference") -> tuple[EnclaveApp, InferenceEnclave]:
    enclave_app = EnclaveApp(name)
    state = InferenceEnclave()
    state.attach(enclave_app)
    return enclave_app, state


app, state = build_app()
