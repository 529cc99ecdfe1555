"""What an end user's program calls: embeddings from the attested inference enclave, each batch with a verified
AIR v1 receipt.

::

    async with InferenceClient("tcp://gateway:7100", NitroPolicy(measurements=[{0: pcr0}])) as client:
        embeddings, receipt = await client.embed(["my confidential sentence"], nonce=os.urandom(16))

Nothing is sent before the enclave's attestation verifies against the policy; the texts travel only inside the
attested session. Before ``embed`` returns, the receipt has been verified: signed by the key that an attestation
document of the same enclave binds (``user_data``; the document verifies against the same policy, and its
``public_key`` is this session's enclave key), its ``attestation_doc_hash`` is that document's, its measurements
are the document's PCR0..2, its ``request_hash`` is of the texts sent and its ``response_hash`` of the
embeddings received, and it carries the nonce when one was given. Any mismatch raises
:class:`ReceiptMismatch` (or the receipt verifier's error).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from enclavekit.attestation import nitro
from enclavekit.attestation.nitro import NitroAttestation, NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.errors import Rejected
from enclavekit.receipts import (
    AttestationBinding,
    MeasurementType,
    ReceiptPolicy,
    VerifiedReceipt,
    verify_receipt,
)
from enclavekit.receipts.errors import KeyNotBound
from enclavekit.services.inference.errors import BadInput
from enclavekit.services.inference.wire import (
    EMBED,
    INFO,
    EmbedRequest,
    InferenceInfo,
    InfoRequest,
    decode_embeddings_and_bytes,
    request_hash,
    response_hash_of_bytes,
    utf8_texts,
)

__all__ = ["EnclaveInfo", "InferenceClient", "ReceiptMismatch"]


class ReceiptMismatch(Rejected):
    """A receipt verified but does not describe this exchange (other input, output, enclave or document)."""

    code = "receipt_mismatch"


@dataclass(frozen=True, slots=True)
class EnclaveInfo:
    """The enclave's receipt key and the verified attestation document binding it."""

    info: InferenceInfo
    document: bytes
    attestation: NitroAttestation
    binding: AttestationBinding = field(init=False, repr=False, compare=False)
    """The two above (with the document's hash, computed once) as every receipt is checked against them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "binding", AttestationBinding(self.document, self.attestation))

    @property
    def document_hash(self) -> bytes:
        return self.binding.document_hash


class InferenceClient:
    """Embeddings with receipts over one attested connection (reconnecting, and re-attesting, when it breaks)."""

    def __init__(
        self,
        endpoint: str,
        policy: NitroPolicy,
        *,
        model_hash: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        **client_options: Any,
    ) -> None:
        self.policy = policy
        self.model_hash = model_hash
        """When set, receipts must name this model (the manifest hash the publisher announced)."""
        self._clock = clock
        self._client = AttestedClient.nitro(endpoint, policy, **client_options)
        self._info: EnclaveInfo | None = None
        self.last_truncated: tuple[bool, ...] = ()
        """Per text of the last ``embed``: whether it was cut at 256 tokens."""

    async def __aenter__(self) -> InferenceClient:
        await self._client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def info(self, *, refresh: bool = False) -> EnclaveInfo:
        """The enclave's receipt key and its attestation document, verified against the policy."""
        if self._info is not None and not refresh:
            return self._info
        info = await self._client.call(INFO, InfoRequest())
        document = base64.b64decode(info.receipt_document, validate=True)
        attestation = nitro.verify(document, self.policy, now=self._clock())
        peer = self._client.peer
        if peer is None or attestation.public_key != peer.public_key:
            raise ReceiptMismatch("the receipt key's document is not of the enclave this session is attested to")
        if attestation.user_data is None or attestation.user_data.hex() != info.receipt_public_key:
            raise ReceiptMismatch("the document does not bind the announced receipt key")
        self._info = EnclaveInfo(info, document, attestation)
        return self._info

    async def embed(
        self, texts: Sequence[str], nonce: bytes | None = None, *, timeout: float | None = None
    ) -> tuple[npt.NDArray[np.float32], VerifiedReceipt]:
        """One embedding per text (unit length, float32) and the batch's verified receipt."""
        encoded = utf8_texts(texts)
        if not encoded:
            raise BadInput("no texts to embed")
        if nonce is not None and not 8 <= len(nonce) <= 64:
            raise BadInput("a nonce is 8..64 bytes")
        request = EmbedRequest(texts=list(texts), nonce=None if nonce is None else nonce.hex())
        sent_hash = request_hash(encoded)  # before the call: what depends only on the request is cheaper done now
        answer = await self._client.call(EMBED, request, timeout=timeout)
        vectors, received = decode_embeddings_and_bytes(answer.embeddings, answer.count, answer.dimensions)
        if answer.count != len(encoded) or len(answer.truncated) != answer.count:
            raise ReceiptMismatch(f"{answer.count} embeddings for {len(encoded)} texts")
        raw = base64.b64decode(answer.receipt, validate=True)
        info = await self.info()
        try:
            receipt = self._verify(raw, info, nonce)
        except KeyNotBound:  # the enclave may have renewed its receipt key's document since: verify with the current
            info = await self.info(refresh=True)
            receipt = self._verify(raw, info, nonce)
        claims = receipt.claims
        if not hmac.compare_digest(claims.request_hash, sent_hash):
            raise ReceiptMismatch("the receipt's request_hash is not of the texts sent")
        if not hmac.compare_digest(
            claims.response_hash, response_hash_of_bytes(received, answer.count, answer.dimensions, answer.truncated)
        ):
            raise ReceiptMismatch("the receipt's response_hash is not of the embeddings received")
        measured = claims.enclave_measurements
        pcrs = info.attestation.pcrs
        if (measured.pcr0, measured.pcr1, measured.pcr2) != (pcrs.get(0), pcrs.get(1), pcrs.get(2)):
            raise ReceiptMismatch("the receipt's measurements are not the attested enclave's PCR0..2")
        if (claims.model_id, claims.model_version) != (answer.model_id, answer.model_version):
            raise ReceiptMismatch("the receipt names another model than the answer")
        self.last_truncated = tuple(answer.truncated)
        return vectors, receipt

    def _verify(self, raw: bytes, info: EnclaveInfo, nonce: bytes | None) -> VerifiedReceipt:
        policy = ReceiptPolicy(nonce=nonce, model_hash=self.model_hash, platform=MeasurementType.NITRO)
        return verify_receipt(raw, policy=policy, now=self._clock(), attestation=info.binding)
