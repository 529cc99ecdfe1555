"""What a user's app calls: the vault over NATS, end to end encrypted to the attested vault enclave.

The client asks the vault for its key (``OwnerSpace.{user}.forVault.key`` with a fresh nonce), verifies the
attestation document — chain, pinned PCR0, the nonce — and takes the X25519 key it binds
(:func:`verify_vault_key`). Every request is then an envelope to that key with a single-use ephemeral key
(:mod:`~enclavekit.services.vault.envelope`); the host relays bytes it cannot read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from enclavekit.attestation.nitro import NitroPolicy, verify
from enclavekit.errors import Error, InfrastructureError
from enclavekit.services.vault.envelope import RequestEnvelope, open_response, seal_request
from enclavekit.services.vault.nats_auth import for_app, for_vault

__all__ = ["VaultCallFailed", "VaultClient", "VaultError", "verify_vault_key"]


class VaultError(Error):
    """The vault answered with an error (its ``code`` is the vault's; ``attempts_left`` for ``pin_invalid``)."""

    code = "vault_error"

    def __init__(self, message: str, *, remote_code: str, attempts_left: int | None = None) -> None:
        super().__init__(message)
        self.remote_code = remote_code
        self.attempts_left = attempts_left

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.remote_code, "message": self.message}
        if self.attempts_left is not None:
            out["attempts_left"] = self.attempts_left
        return out


class VaultCallFailed(InfrastructureError):
    """No answer from the vault in time (or the bridge refused the envelope)."""

    code = "vault_call_failed"


def verify_vault_key(document: bytes, *, pcr0: Sequence[bytes], roots: Sequence[bytes], nonce: bytes) -> bytes:
    """The vault's X25519 key, if ``document`` is a valid, fresh (``nonce``) attestation of a pinned image."""
    policy = NitroPolicy(measurements=[{0: p} for p in pcr0], roots=tuple(roots), nonce=nonce)
    attested = verify(document, policy, now=datetime.now(UTC))
    key = attested.public_key
    if key is None or len(key) != 32:
        raise VaultCallFailed("the vault's attestation binds no X25519 key")
    return key


@dataclass
class VaultClient:
    """One user's connection to their vault. ``nats_url`` carries the user's credentials."""

    nats_url: str
    user: str
    pcr0: Sequence[bytes]
    roots: Sequence[bytes]
    timeout: float = 30.0
    _nc: Nats | None = None
    _vault_key: bytes | None = None
    _waiting: dict[bytes, tuple[RequestEnvelope, asyncio.Future[bytes]]] = field(default_factory=dict)
    _key_waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    session: str | None = None

    async def __aenter__(self) -> VaultClient:
        self._nc = await nats.connect(self.nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        await self._nc.subscribe(for_app(self.user, ">"), cb=self._on_message)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def _on_message(self, msg: Msg) -> None:
        op = msg.subject.split(".", 3)[3]
        headers = msg.headers or {}
        if op == "key":
            try:
                answer = json.loads(msg.data)
                waiter = self._key_waiters.pop(str(answer.get("nonce")), None)
            except (ValueError, AttributeError):
                return
            if waiter is not None and not waiter.done():
                waiter.set_result(answer)
            return
        message_id = bytes.fromhex(headers.get("Vault-Message-Id", "")) if "Vault-Message-Id" in headers else b""
        pending = self._waiting.pop(message_id, None)
        if pending is None:
            return
        request, future = pending
        if future.done():
            return
        if "Vault-Error" in headers:
            future.set_exception(VaultCallFailed(f"the vault bridge refused the request: {headers['Vault-Error']}"))
            return
        try:
            future.set_result(open_response(request, msg.data))
        except Error as exc:
            future.set_exception(exc)

    async def vault_key(self) -> bytes:
        """Ask for, verify and remember the vault's attested key."""
        if self._vault_key is not None:
            return self._vault_key
        assert self._nc is not None
        nonce = secrets.token_hex(16)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._key_waiters[nonce] = waiter
        await self._nc.publish(for_vault(self.user, "key"), json.dumps({"nonce": nonce}).encode())
        try:
            answer = await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError as exc:
            raise VaultCallFailed("the vault did not answer for its key") from exc
        document = base64.b64decode(answer["document"])
        self._vault_key = verify_vault_key(document, pcr0=self.pcr0, roots=self.roots, nonce=bytes.fromhex(nonce))
        return self._vault_key

    async def call(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send ``op`` with ``payload`` in an envelope; the vault's ``ok`` answer, or raise :class:`VaultError`."""
        assert self._nc is not None
        key = await self.vault_key()
        request = seal_request(key, self.user, op, json.dumps(payload).encode(), now=time.time())
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[request.message_id] = (request, future)
        await self._nc.publish(for_vault(self.user, op), request.data)
        try:
            data = await asyncio.wait_for(future, self.timeout)
        except TimeoutError as exc:
            self._waiting.pop(request.message_id, None)
            raise VaultCallFailed(f"no answer to {op} within {self.timeout} s") from exc
        answer = json.loads(data)
        if "error" in answer:
            error = answer["error"]
            raise VaultError(
                str(error.get("message", "")),
                remote_code=str(error.get("code")),
                attempts_left=error.get("attempts_left"),
            )
        result: dict[str, Any] = answer["ok"]
        if isinstance(result.get("session"), str):
            self.session = result["session"]
        return result

    # --- the operations ---------------------------------------------------------------------------------------

    async def enroll(self, pin: str, *, limit: int = 10) -> dict[str, Any]:
        return await self.call("enroll", {"pin": pin, "limit": limit})

    async def put_secret(self, name: str, value: bytes, *, pin: str, critical: bool = False) -> int:
        answer = await self.call(
            "secret.put", {"pin": pin, "name": name, "value": base64.b64encode(value).decode(), "critical": critical}
        )
        return int(answer["version"])

    async def get_secret(self, name: str, *, pin: str | None = None, version: int | None = None) -> bytes:
        auth: dict[str, Any] = {"pin": pin} if pin is not None else {"session": self.session}
        answer = await self.call("secret.get", {**auth, "name": name, "version": version})
        return base64.b64decode(answer["value"])

    async def list_secrets(self, *, pin: str) -> list[dict[str, Any]]:
        return list((await self.call("secret.list", {"pin": pin}))["secrets"])

    async def change_pin(self, pin: str, new_pin: str) -> dict[str, Any]:
        return await self.call("pin.change", {"pin": pin, "new_pin": new_pin})

    async def audit(self, *, pin: str) -> tuple[list[dict[str, Any]], str]:
        answer = await self.call("audit.get", {"pin": pin})
        return list(answer["records"]), str(answer["head"])

    # --- voting (operations/voting.py); ``proposal`` is the operator-signed document as published -------------

    def _auth(self, pin: str | None) -> dict[str, Any]:
        return {"pin": pin} if pin is not None else {"session": self.session}

    async def cast_vote(self, proposal: dict[str, Any], choice: str, *, pin: str | None = None) -> dict[str, Any]:
        """Vote ``choice`` on ``proposal`` (with the PIN, or the session of an earlier call)."""
        answer = await self.call("vote.cast", {**self._auth(pin), "proposal": proposal, "choice": choice})
        answer.pop("session", None)
        return answer

    async def vote_proof(self, proposal: dict[str, Any], *, pin: str | None = None) -> dict[str, Any]:
        """After the close: ``{"leaf", "index", "path": [{"hash", "side"}], "root"}`` of this user's ballot."""
        answer = await self.call("vote.proof", {**self._auth(pin), "proposal": proposal})
        return dict(answer["proof"])

    async def vote_results(self, proposal: dict[str, Any]) -> dict[str, Any]:
        """After the close: the tally the vault computes from the box (``{"proposal", "root", "counts",
        "leaves"}``); anyone can recompute it (``proposal_board.box_results``)."""
        return await self.call("vote.results", {"proposal": proposal})
