"""World ID: check proofs with the sequencer's ``POST /v2/semaphore-proof/verify``, and a local stand-in.

The API binds a proof to ``signal = "{encrypted_push_id}:{timestamp}"`` and asks the sequencer (URL in the
settings) whether the proof holds for that signal's hash, the nullifier hash, the Merkle root and the app's
external nullifier, with ``maxRootAgeSeconds`` 3600. Its answers map to: unknown or too old root → 400
``invalid_root``; a proof that does not verify → 401 ``invalid_proof``; anything else (5xx, prover errors,
network) → 503 ``world_id_unavailable``.

Hashes are World ID's: ``hash_to_field(x) = keccak256(x) >> 8`` as 32 bytes, external nullifier
``hash_to_field(hash_to_field(app_id) ‖ action)``.

:class:`WorldIdStandIn` implements the same HTTP contract for ``enclavekit up`` and tests. It cannot verify
zero-knowledge proofs; instead a proof is an HMAC under the stand-in's secret (kept in the state folder) over
everything the real proof binds, so only ``enclavekit notify dev-proof`` (which reads that secret) can mint
proofs it accepts, and a proof for another signal, nullifier or root is refused exactly as the real one is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclavekit.services.notify.errors import InvalidProof, InvalidRoot, WorldIdUnavailable

__all__ = [
    "CREDENTIAL_TYPES",
    "DevProof",
    "WorldIdStandIn",
    "WorldIdVerifier",
    "external_nullifier_hash",
    "hash_to_field",
    "keccak256",
    "load_stand_in_secret",
    "mint_proof",
]

CREDENTIAL_TYPES = ("orb", "device", "document", "secure_document")
MAX_ROOT_AGE = 3600

# --- keccak256 (the Ethereum variant: original Keccak padding, not SHA3's) ---------------------------------------

_RC = [
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
]  # fmt: skip
_ROT = [[0, 36, 3, 41, 18], [1, 44, 10, 45, 2], [62, 6, 43, 15, 61], [28, 55, 25, 21, 56], [27, 20, 39, 8, 14]]
_MASK = (1 << 64) - 1


def _keccak_f(state: list[list[int]]) -> None:
    for rc in _RC:
        c = [state[x][0] ^ state[x][1] ^ state[x][2] ^ state[x][3] ^ state[x][4] for x in range(5)]
        d = [c[(x - 1) % 5] ^ (((c[(x + 1) % 5] << 1) | (c[(x + 1) % 5] >> 63)) & _MASK) for x in range(5)]
        for x in range(5):
            for y in range(5):
                state[x][y] ^= d[x]
        b = [[0] * 5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                r = _ROT[x][y]
                v = state[x][y]
                b[y][(2 * x + 3 * y) % 5] = ((v << r) | (v >> (64 - r))) & _MASK if r else v
        for x in range(5):
            for y in range(5):
                state[x][y] = b[x][y] ^ ((~b[(x + 1) % 5][y]) & b[(x + 2) % 5][y])
        state[0][0] ^= rc


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum (and World ID) use it."""
    rate = 136
    padded = bytearray(data) + b"\x01" + b"\x00" * ((rate - (len(data) + 1) % rate) % rate)
    padded[-1] |= 0x80
    state = [[0] * 5 for _ in range(5)]
    for offset in range(0, len(padded), rate):
        block = padded[offset : offset + rate]
        for i in range(rate // 8):
            x, y = i % 5, i // 5
            state[x][y] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        _keccak_f(state)
    return b"".join(state[i % 5][i // 5].to_bytes(8, "little") for i in range(4))


def hash_to_field(data: bytes) -> bytes:
    """World ID's hash to the SNARK field: keccak256, shifted right by 8 bits, as 32 bytes."""
    return (int.from_bytes(keccak256(data), "big") >> 8).to_bytes(32, "big")


def external_nullifier_hash(app_id: str, action: str) -> bytes:
    return hash_to_field(hash_to_field(app_id.encode()) + action.encode())


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


# --- the verifier the API uses ----------------------------------------------------------------------------------


@dataclass
class WorldIdVerifier:
    """Checks proofs against a sequencer at ``url`` (the real one, or the stand-in)."""

    url: str
    app_id: str
    action: str
    timeout: float = 10.0

    def request(self, *, proof: str, nullifier_hash: str, merkle_root: str, signal: str) -> dict[str, Any]:
        return {
            "root": merkle_root,
            "signalHash": _hex(hash_to_field(signal.encode())),
            "nullifierHash": nullifier_hash,
            "externalNullifierHash": _hex(external_nullifier_hash(self.app_id, self.action)),
            "proof": _proof_words(proof),
            "maxRootAgeSeconds": MAX_ROOT_AGE,
        }

    def verify(self, *, proof: str, nullifier_hash: str, merkle_root: str, signal: str) -> None:
        """Return if the sequencer accepts the proof; raise InvalidRoot, InvalidProof or WorldIdUnavailable."""
        body = self.request(proof=proof, nullifier_hash=nullifier_hash, merkle_root=merkle_root, signal=signal)
        try:
            answer = httpx.post(f"{self.url.rstrip('/')}/v2/semaphore-proof/verify", json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise WorldIdUnavailable(f"the World ID sequencer is unreachable ({type(exc).__name__})") from exc
        if answer.status_code == 200:
            return
        text = answer.text.lower()
        if 400 <= answer.status_code < 500:
            if "root" in text:
                raise InvalidRoot("the Merkle root is unknown to World ID or older than an hour")
            raise InvalidProof("the World ID proof does not verify for this signal")
        raise WorldIdUnavailable(f"the World ID sequencer answered HTTP {answer.status_code}")


def _proof_words(proof: str) -> list[str]:
    """A proof as the sequencer wants it: 8 field elements, ``0x`` + 64 hex each (packed input split)."""
    text = proof[2:] if proof.startswith("0x") else proof
    if len(text) == 512:
        return ["0x" + text[i : i + 64] for i in range(0, 512, 64)]
    return [proof]


# --- the stand-in -----------------------------------------------------------------------------------------------


def load_stand_in_secret(state_dir: Path) -> bytes:
    """The stand-in's secret in ``STATE/notify/world-id.key`` (created on first use, mode 0600)."""
    path = state_dir / "notify" / "world-id.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as sink:
            sink.write(os.urandom(32))
    return path.read_bytes()


@dataclass(frozen=True, slots=True)
class DevProof:
    proof: str
    nullifier_hash: str
    merkle_root: str
    credential_type: str

    def to_json(self) -> dict[str, str]:
        return {
            "proof": self.proof,
            "nullifier_hash": self.nullifier_hash,
            "merkle_root": self.merkle_root,
            "credential_type": self.credential_type,
        }


def _root(secret: bytes, label: str) -> str:
    return _hex(hash_to_field(hmac.new(secret, f"root:{label}".encode(), hashlib.sha256).digest()))


def _mac(secret: bytes, root: str, signal_hash: str, nullifier: str, external: str) -> list[str]:
    message = "|".join(v.lower() for v in (root, signal_hash, nullifier, external)).encode()
    words = []
    for i in range(8):
        words.append(_hex(hmac.new(secret, bytes([i]) + message, hashlib.sha256).digest()))
    return words


def mint_proof(
    secret: bytes,
    *,
    signal: str,
    app_id: str,
    action: str,
    identity: str = "dev",
    credential_type: str = "orb",
    root: str = "current",
) -> DevProof:
    """A proof the stand-in accepts for ``signal``; ``identity`` picks the nullifier (one per person)."""
    external = _hex(external_nullifier_hash(app_id, action))
    nullifier = _hex(hash_to_field(hmac.new(secret, f"id:{identity}:{external}".encode(), hashlib.sha256).digest()))
    merkle_root = _root(secret, root)
    words = _mac(secret, merkle_root, _hex(hash_to_field(signal.encode())), nullifier, external)
    return DevProof("0x" + "".join(w[2:] for w in words), nullifier, merkle_root, credential_type)


@dataclass
class WorldIdStandIn:
    """The sequencer's verify endpoint for proofs minted by :func:`mint_proof` under ``secret``."""

    secret: bytes
    started: float = 0.0
    requests: int = 0

    def __post_init__(self) -> None:
        self.started = self.started or time.time()

    def roots(self) -> dict[str, float]:
        """Known roots and when each was current: the live one, and one from two hours ago."""
        return {_root(self.secret, "current"): time.time(), _root(self.secret, "old"): self.started - 7200}

    async def verify(self, request: Request) -> Response:
        self.requests += 1
        try:
            body = json.loads(await request.body())
            root = str(body["root"]).lower()
            words = [str(w).lower() for w in body["proof"]]
            signal_hash = str(body["signalHash"])
            nullifier = str(body["nullifierHash"])
            external = str(body["externalNullifierHash"])
            max_age = int(body.get("maxRootAgeSeconds", MAX_ROOT_AGE))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"code": "invalid_request", "message": "malformed request"}, status_code=400)
        roots = self.roots()
        if root not in roots:
            return JSONResponse({"code": "invalid_root", "message": "invalid root"}, status_code=400)
        if time.time() - roots[root] > max_age:
            return JSONResponse({"code": "root_too_old", "message": "root provided is too old"}, status_code=400)
        expected = _mac(self.secret, root, signal_hash, nullifier, external)
        if len(words) != 8 or not all(hmac.compare_digest(a, b) for a, b in zip(words, expected, strict=True)):
            return JSONResponse({"code": "invalid_proof", "message": "invalid semaphore proof"}, status_code=400)
        return JSONResponse({"valid": True})

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v2/semaphore-proof/verify", self.verify, methods=["POST"])])
