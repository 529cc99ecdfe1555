"""What a user's app calls: the vault over NATS, end to end encrypted to the attested vault enclave.

The client asks the vault for its key (``OwnerSpace.{user}.forVault.key`` with a fresh nonce), verifies the
attestation document — chain, pinned PCR0, the nonce — and takes the X25519 key it binds
(:func:`verify_vault_key`). Every request is then an envelope to that key with a single-use ephemeral key
(:mod:`~enclavekit.services.vault.envelope`); the host relays bytes it cannot read.

It never waits forever: connecting to NATS gives up after ``connect_timeout`` (a closed port at once), a request
after ``timeout``; both raise :class:`VaultUnreachable` (``vault_unreachable``). When the bridge answers that the
enclave holding its key is gone (``enclave_unreachable``: nothing was delivered) the client fetches and verifies a
key again — another enclave's — re-seals the request and sends it again, within the same ``timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from enclavekit.attestation.nitro import NitroPolicy, verify
from enclavekit.channel.protocols import IdentitySigner
from enclavekit.errors import Error, InfrastructureError
from enclavekit.services.vault.envelope import RequestEnvelope, open_response, seal_request
from enclavekit.services.vault.nats_auth import RECOVERY_NOTICE, for_app, for_vault
from enclavekit.services.vault.recovery import cancel_message
from enclavekit.services.vault.wire import ENCLAVE_LOST, ENCLAVE_UNREACHABLE

__all__ = ["VaultCallFailed", "VaultClient", "VaultError", "VaultUnreachable", "verify_vault_key"]


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


class VaultUnreachable(VaultCallFailed):
    """NATS did not accept the connection in time, or nothing answered a request within the timeout."""

    code = "vault_unreachable"


class _NotDelivered(VaultCallFailed):
    """The bridge reached no enclave holding the key the request was sealed to: nothing ran; re-key and resend."""

    code = ENCLAVE_UNREACHABLE


async def _quiet(error: Exception) -> None:
    """nats-py's error callback: the failure is raised to the caller, not logged with a traceback."""


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
    connect_timeout: float = 3.0
    _nc: Nats | None = None
    _vault_key: bytes | None = None
    _waiting: dict[bytes, tuple[RequestEnvelope, asyncio.Future[bytes]]] = field(default_factory=dict)
    _key_waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    session: str | None = None

    async def __aenter__(self) -> VaultClient:
        where = urlsplit(self.nats_url)
        try:
            # max_reconnect_attempts=0 would retry an unreachable server forever (nats-py); 1 gives up at once.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    self.nats_url,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.05,
                    connect_timeout=self.connect_timeout,
                    error_cb=_quiet,
                ),
                self.connect_timeout * 2,
            )
            await self._nc.subscribe(for_app(self.user, ">"), cb=self._on_message)
            await asyncio.wait_for(self._nc.flush(), self.connect_timeout)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            if self._nc is not None:
                await self._nc.close()
            # the URL carries the user's NATS password: name only the host and port
            raise VaultUnreachable(f"NATS at {where.hostname}:{where.port}: {type(exc).__name__}: {exc}") from exc
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
                if "error" in answer:
                    waiter.set_exception(VaultUnreachable(f"no vault enclave answered: {answer['error']}"))
                else:
                    waiter.set_result(answer)
            return
        message_id = bytes.fromhex(headers.get("Vault-Message-Id", "")) if "Vault-Message-Id" in headers else b""
        pending = self._waiting.pop(message_id, None)
        if pending is None:
            return
        request, future = pending
        if future.done():
            return
        if headers.get("Vault-Error") == ENCLAVE_UNREACHABLE:
            future.set_exception(_NotDelivered("the enclave holding the vault key is gone"))
            return
        if "Vault-Error" in headers:
            if headers["Vault-Error"] == ENCLAVE_LOST:
                self._vault_key = None  # that enclave is gone: the next request takes another's key
            future.set_exception(VaultCallFailed(f"the vault bridge refused the request: {headers['Vault-Error']}"))
            return
        try:
            future.set_result(open_response(request, msg.data))
        except Error as exc:
            future.set_exception(exc)

    async def vault_key(self, *, timeout: float | None = None) -> bytes:
        """Ask for, verify and remember the vault's attested key."""
        if self._vault_key is not None:
            return self._vault_key
        assert self._nc is not None
        nonce = secrets.token_hex(16)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._key_waiters[nonce] = waiter
        await self._nc.publish(for_vault(self.user, "key"), json.dumps({"nonce": nonce}).encode())
        try:
            answer = await asyncio.wait_for(waiter, self.timeout if timeout is None else timeout)
        except TimeoutError as exc:
            raise VaultUnreachable(f"the vault did not answer for its key within {self.timeout} s") from exc
        finally:
            self._key_waiters.pop(nonce, None)
        document = base64.b64decode(answer["document"])
        self._vault_key = verify_vault_key(document, pcr0=self.pcr0, roots=self.roots, nonce=bytes.fromhex(nonce))
        return self._vault_key

    async def call(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send ``op`` with ``payload`` in an envelope; the vault's ``ok`` answer, or raise :class:`VaultError`.

        A request the bridge could deliver to no enclave holding the key is re-sealed to a freshly fetched key
        and sent again until ``timeout``: it never ran, so resending is safe for every operation."""
        assert self._nc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            key = await self.vault_key(timeout=max(0.001, deadline - loop.time()))
            try:
                data = await self._send(key, op, payload, deadline)
                break
            except _NotDelivered:
                self._vault_key = None
                if loop.time() + 0.1 >= deadline:
                    raise VaultUnreachable(f"no vault enclave took {op} within {self.timeout} s") from None
                await asyncio.sleep(0.1)
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

    async def _send(self, key: bytes, op: str, payload: dict[str, Any], deadline: float) -> bytes:
        assert self._nc is not None
        request = seal_request(key, self.user, op, json.dumps(payload).encode(), now=time.time())
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[request.message_id] = (request, future)
        try:
            # Vault-Key: which enclave's key this is sealed to (a routing hint; the enclave's decryption checks it)
            await self._nc.publish(for_vault(self.user, op), request.data, headers={"Vault-Key": key.hex()})
            return await asyncio.wait_for(future, max(0.001, deadline - asyncio.get_running_loop().time()))
        except TimeoutError as exc:
            raise VaultUnreachable(f"no answer to {op} within {self.timeout} s") from exc
        finally:
            self._waiting.pop(request.message_id, None)

    # --- the operations ---------------------------------------------------------------------------------------

    async def enroll(self, pin: str, *, invitation: str | None, limit: int = 10) -> dict[str, Any]:
        """Create the vault, admitted by the operator's ``invitation`` code (single use; see ``invitation.py``)."""
        payload: dict[str, Any] = {"pin": pin, "limit": limit}
        if invitation is not None:
            payload["invitation"] = invitation
        return await self.call("enroll", payload)

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

    # --- devices and recovery (docs/vault.md, ADR 0022) -------------------------------------------------------

    async def add_device(self, device: bytes, *, pin: str | None = None) -> dict[str, Any]:
        """Enroll ``device`` (a raw Ed25519 public key): it may then cancel recoveries. PIN, or the session."""
        auth: dict[str, Any] = {"pin": pin} if pin is not None else {"session": self.session}
        return await self.call("device.add", {**auth, "device": device.hex()})

    async def recover_start(self) -> dict[str, Any]:
        """Start a recovery: ``{pending, recovery, due, claim}`` — keep the claim, it alone gets the token."""
        return await self.call("recover.start", {})

    async def recover_status(self) -> dict[str, Any]:
        """``{pending, recovery, due}``, from the vault (the notices on ``forApp.recovery`` are only a hint)."""
        return await self.call("recover.status", {})

    async def recover_cancel(self, device: IdentitySigner | None = None, *, pin: str | None = None) -> dict[str, Any]:
        """Cancel the pending recovery, signed by an enrolled ``device`` key, or with the PIN."""
        if device is None:
            return await self.call("recover.cancel", {"pin": pin})
        number = int((await self.recover_status())["recovery"])
        signature = device.sign(cancel_message(self.user, number))
        return await self.call("recover.cancel", {"device": device.public_key.hex(), "signature": signature.hex()})

    async def recover_token(self, claim: str) -> dict[str, Any]:
        """``{token, expires}`` once the recovery is due (``recovery_not_due`` before)."""
        return await self.call("recover.token", {"claim": claim})

    async def recover_complete(self, token: str, new_pin: str) -> dict[str, Any]:
        """Restore the vault with ``new_pin``: ``{generation, audit_head, session}``."""
        return await self.call("recover.complete", {"token": token, "new_pin": new_pin})

    async def watch_recovery(self, callback: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Call ``callback`` with each notice on ``OwnerSpace.{user}.forApp.recovery`` (a hint: ask the status)."""
        assert self._nc is not None

        async def on_notice(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                notice = json.loads(msg.data)
                if isinstance(notice, dict):
                    await callback(notice)

        await self._nc.subscribe(for_app(self.user, RECOVERY_NOTICE), cb=on_notice)
        await self._nc.flush()

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
