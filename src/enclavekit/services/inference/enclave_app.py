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
import resource
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.enclave.app import EnclaveApp
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.errors import ConfigurationError, Error
from enclavekit.receipts import EnclaveMeasurements, MeasurementType, ReceiptClaims, sign_receipt
from enclavekit.rpc import CallContext
from enclavekit.services.inference import engine as _engine  # noqa: F401 - first: pins BLAS threads before numpy
from enclavekit.services.inference.config import InferenceConfig
from enclavekit.services.inference.errors import BadInput, ModelRefused, NotReady
from enclavekit.services.inference.loader import KeyRelease, LoadedModel, load_package
from enclavekit.services.inference.wire import (
    EMBED,
    INFO,
    EmbedRequest,
    EmbedResponse,
    InferenceInfo,
    InfoRequest,
    encode_embeddings,
    request_hash,
    response_hash,
    utf8_texts,
)

__all__ = ["ISSUER", "MODEL_HASH_SCHEME", "InferenceEnclave", "app", "build_app", "kms_release"]

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
    _measurements: EnclaveMeasurements | None = None
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _executor: ThreadPoolExecutor | None = None

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
        try:
            package = Path(context.settings["package"])
        except KeyError as exc:
            raise ConfigurationError(f"the inference enclave needs --set {exc.args[0]}=...") from exc
        pcrs = await asyncio.to_thread(lambda: [context.nsm.describe_pcr(i).data for i in (0, 1, 2)])
        self._measurements = EnclaveMeasurements(
            measurement_type=MeasurementType.NITRO, pcr0=pcrs[0], pcr1=pcrs[1], pcr2=pcrs[2]
        )
        await self._renew_document()
        self._executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="inference-worker")
        try:
            release = kms_release(context, self.config)
            self.model = await asyncio.to_thread(load_package, package, self.config, release)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.model.embedder.embed, ["warm up"])
        except ModelRefused as exc:
            self.error = exc
            logger.error("inference enclave refuses to serve: %s", exc)
            return
        self.cold_start_seconds = time.perf_counter() - started
        logger.info(
            "inference enclave ready in %.2f s (%s), receipt key %s",
            self.cold_start_seconds,
            ", ".join(f"{k} {v:.2f} s" for k, v in self.model.timings.items()),
            self.receipt_public_key.hex()[:16],
        )

    async def _shutdown(self, context: EnclaveContext) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _renew_document(self) -> tuple[bytes, bytes]:
        assert self._context is not None
        if self._document is None or time.monotonic() - self._document[0] > DOCUMENT_MAX_AGE:
            document = await self._context.attest(user_data=self.receipt_public_key)
            self._document = (time.monotonic(), document, hashlib.sha256(document).digest())
        return self._document[1], self._document[2]

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
            config_digest=config.digest().hex(),
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
        assert self._executor is not None and self._measurements is not None
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, model.embedder.embed, request.texts)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        _, document_hash = await self._renew_document()
        claims = ReceiptClaims(
            iss=ISSUER,
            iat=int(time.time()),
            cti=uuid.uuid4().bytes,
            model_id=model.manifest.model_id,
            model_version=model.manifest.version,
            model_hash=model.manifest.model_hash,
            model_hash_scheme=MODEL_HASH_SCHEME,
            request_hash=request_hash(encoded),
            response_hash=response_hash(result.vectors, result.truncated),
            attestation_doc_hash=document_hash,
            enclave_measurements=self._measurements,
            policy_version=f"enclavekit-inference/1 config-sha256:{config.digest().hex()}",
            sequence_number=next(self._sequence),
            execution_time_ms=elapsed_ms,
            memory_peak_mb=_peak_rss_mb(),
            security_mode=self._context.tee if self._context is not None else "unknown",
            eat_nonce=nonce,
        )
        receipt = sign_receipt(claims, self._receipt_key)
        self.served += 1
        logger.debug("embedded %d texts (%d tokens) in %d ms", len(encoded), result.tokens, elapsed_ms)
        return EmbedResponse(
            model_id=model.manifest.model_id,
            model_version=model.manifest.version,
            count=len(encoded),
            dimensions=int(result.vectors.shape[1]),
            embeddings=encode_embeddings(result.vectors),
            truncated=list(result.truncated),
            tokens=result.tokens,
            receipt=base64.b64encode(receipt).decode(),
        )


def _peak_rss_mb() -> int:
    """This process's peak RSS in MiB: ``VmHWM`` (``ru_maxrss`` would include the parent's, carried over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def build_app(name: str = "inference") -> tuple[EnclaveApp, InferenceEnclave]:
    enclave_app = EnclaveApp(name)
    state = InferenceEnclave()
    state.attach(enclave_app)
    return enclave_app, state


app, state = build_app()
