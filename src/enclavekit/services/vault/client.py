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
from enclavekit.services.vault.connection import Authorization, authorization_message, body_digest, sign
from enclavekit.services.vault.envelope import RequestEnvelope, open_response, seal_request
from enclavekit.services.vault.nats_auth import RECOVERY_NOTICE, for_app, for_vault, peer_for_vault
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
    _peer_keys: dict[str, bytes] = field(default_factory=dict)

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
            await self._nc.subscribe(f"MessageSpace.{self.user}.forApp.>", cb=self._on_message)
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
        parts = msg.subject.split(".", 4 if msg.subject.startswith("MessageSpace.") else 3)
        op = parts[-1]
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

    async def vault_key(self, peer: str | None = None, *, timeout: float | None = None) -> bytes:
        """Ask for, verify and remember the vault's attested key (or ``peer``'s vault's: the same image)."""
        if peer is None and self._vault_key is not None:
            return self._vault_key
        if peer is not None and peer in self._peer_keys:
            return self._peer_keys[peer]
        assert self._nc is not None
        nonce = secrets.token_hex(16)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._key_waiters[nonce] = waiter
        subject = for_vault(self.user, "key") if peer is None else peer_for_vault(peer, self.user, "key")
        await self._nc.publish(subject, json.dumps({"nonce": nonce}).encode())
        try:
            answer = await asyncio.wait_for(waiter, self.timeout if timeout is None else timeout)
        except TimeoutError as exc:
            raise VaultUnreachable(f"the vault did not answer for its key within {self.timeout} s") from exc
        finally:
            self._key_waiters.pop(nonce, None)
        document = base64.b64decode(answer["document"])
        key = verify_vault_key(document, pcr0=self.pcr0, roots=self.roots, nonce=bytes.fromhex(nonce))
        if peer is not None:
            self._peer_keys[peer] = key
            return key
        self._vault_key = key
        return self._vault_key

    async def call(
        self, op: str, payload: dict[str, Any], *, peer: str | None = None, message_id: bytes | None = None
    ) -> dict[str, Any]:
        """Send ``op`` with ``payload`` in an envelope (to ``peer``'s vault, or to the own); the vault's ``ok``
        answer, or raise :class:`VaultError`.

        A request the bridge could deliver to no enclave holding the key is re-sealed to a freshly fetched key
        and sent again until ``timeout``: it never ran, so resending is safe for every operation."""
        assert self._nc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            key = await self.vault_key(peer, timeout=max(0.001, deadline - loop.time()))
            try:
                data = await self._send(key, op, payload, deadline, peer=peer, message_id=message_id)
                break
            except _NotDelivered:
                if peer is None:
                    self._vault_key = None
                else:
                    self._peer_keys.pop(peer, None)
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
        if peer is None and isinstance(result.get("session"), str):
            self.session = result["session"]
        return result

    async def _send(
        self,
        key: bytes,
        op: str,
        payload: dict[str, Any],
        deadline: float,
        *,
        peer: str | None = None,
        message_id: bytes | None = None,
    ) -> bytes:
        assert self._nc is not None
        target = self.user if peer is None else peer
        request = seal_request(key, target, op, json.dumps(payload).encode(), now=time.time(), message_id=message_id)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[request.message_id] = (request, future)
        try:
            # Vault-Key: which enclave's key this is sealed to (a routing hint; the enclave's decryption checks it)
            subject = for_vault(self.user, op) if peer is None else peer_for_vault(peer, self.user, op)
            await self._nc.publish(subject, request.data, headers={"Vault-Key": key.hex()})
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

    def _auth(self, pin: str | None) -> dict[str, Any]:
        return {"pin": pin} if pin is not None else {"session": self.session}

    # --- voting (operations/voting.py); ``proposal`` is the operator-signed document as published -------------

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

    # --- connections (docs/vault.md, "Connections") -------------------------------------------------------------

    async def peer_call(
        self, connection: str, op: str, body: dict[str, Any], *, pin: str | None = None
    ) -> dict[str, Any]:
        """``op`` on the connected peer's vault: this vault signs the request (its connection key; the PIN or
        the session opens it), then the envelope goes to the peer's attested vault."""
        message_id = secrets.token_bytes(16)
        signed = await self.call(
            "connection.sign",
            {
                **self._auth(pin),
                "connection": connection,
                "op": op,
                "message_id": message_id.hex(),
                "body": body_digest(body),
            },
        )
        return await self.call(op, {**body, "auth": signed["auth"]}, peer=str(signed["peer"]), message_id=message_id)

    async def invite(
        self, *, grant: dict[str, Any] | None = None, ttl: float | None = None, pin: str | None = None
    ) -> dict[str, Any]:
        """A single-use invitation (give it to the other user out of band) granting ``grant`` to whoever uses it."""
        extra = {} if ttl is None else {"ttl": ttl}
        return dict((await self.call("connection.invite", {**self._auth(pin), "grant": grant, **extra}))["invitation"])

    async def accept(
        self, invitation: dict[str, Any], *, grant: dict[str, Any] | None = None, pin: str | None = None
    ) -> dict[str, Any]:
        """Use ``invitation``: a new key in this vault, the inviter's vault consumes the invitation, this vault
        records the connection. Returns ``{connection, peer, granted}`` (``granted``: what the inviter shares)."""
        inviter = str(invitation["inviter"])
        prepared = await self.call(
            "connection.accept",
            {**self._auth(pin), "inviter": inviter, "invitation": invitation["id"], "grant": grant},
        )
        body = {
            "invitation": invitation["id"],
            "token": invitation["token"],
            "key": prepared["key"],
            "proof": prepared["proof"],
            "grant": grant,
        }
        accepted = await self.call("connection.accept", body, peer=inviter)
        await self.call(
            "connection.confirm",
            {
                "session": self.session,
                "pending": prepared["pending"],
                "connection": accepted["connection"],
                "key": accepted["key"],
                "granted": accepted["granted"],
            },
        )
        return {"connection": accepted["connection"], "peer": inviter, "granted": accepted["granted"]}

    async def connections(self, *, pin: str | None = None) -> list[dict[str, Any]]:
        return list((await self.call("connection.list", self._auth(pin)))["connections"])

    async def revoke(self, connection: str, *, pin: str | None = None) -> bool:
        """Revoke ``connection`` in this vault (at once), then tell the peer's vault, with a notice this vault signed
        before it destroyed its key. Returns whether the peer's vault took note (it may be closed; the revocation
        holds regardless: its requests are refused here)."""
        message_id = secrets.token_bytes(16)
        payload = {"connection": connection, "op": "connection.revoke", "message_id": message_id.hex()}
        try:
            notice = await self.call("connection.sign", {**self._auth(pin), **payload, "body": body_digest({})})
        except VaultError as exc:
            if exc.remote_code != "connection_refused":  # already revoked (by either side): revoke here only
                raise
            notice = None
        await self.call("connection.revoke", {**self._auth(pin if notice is None else None), "connection": connection})
        if notice is None:
            return False
        try:
            await self.call(
                "connection.revoke", {"auth": notice["auth"]}, peer=str(notice["peer"]), message_id=message_id
            )
        except (VaultError, VaultCallFailed):
            return False
        return True

    async def grant(self, connection: str, grant: dict[str, Any], *, pin: str | None = None) -> None:
        await self.call("connection.grant", {**self._auth(pin), "connection": connection, "grant": grant})

    async def rotate(self, connection: str, *, pin: str | None = None) -> str:
        """A new key for this side of ``connection``, announced to the peer's vault (signed by the old key)."""
        message_id = secrets.token_bytes(16)
        payload = {**self._auth(pin), "connection": connection, "message_id": message_id.hex()}
        rotated = await self.call("connection.rotate", payload)
        body = {"key": rotated["key"], "auth": rotated["auth"]}
        await self.call("connection.rotate", body, peer=str(rotated["peer"]), message_id=message_id)
        return str(rotated["key"])

    async def set_profile(self, fields: dict[str, str | None], *, pin: str | None = None) -> list[str]:
        return list((await self.call("profile.set", {**self._auth(pin), "fields": fields}))["fields"])

    async def profile(self, fields: list[str] | None = None, *, pin: str | None = None) -> dict[str, str]:
        return dict((await self.call("profile.get", {**self._auth(pin), "fields": fields}))["fields"])

    async def peer_profile(
        self, connection: str, fields: list[str] | None = None, *, pin: str | None = None
    ) -> dict[str, str]:
        """The connected peer's profile fields that the connection shares (asking for another is refused)."""
        return dict((await self.peer_call(connection, "profile.get", {"fields": fields}, pin=pin))["fields"])

    async def peer_secret(self, connection: str, name: str, *, pin: str | None = None) -> bytes:
        answer = await self.peer_call(connection, "secret.get", {"name": name}, pin=pin)
        return base64.b64decode(answer["value"])

    async def send_message(self, connection: str, text: str, *, pin: str | None = None) -> dict[str, Any]:
        """Deliver ``text`` to the peer's vault (its answer is the delivery receipt), then keep it in the outbox."""
        ident = secrets.token_hex(16)
        delivered = await self.peer_call(connection, "message.send", {"id": ident, "text": text}, pin=pin)
        at = delivered["delivered_at"]
        payload = {"session": self.session, "connection": connection, "id": ident, "text": text, "delivered_at": at}
        await self.call("message.sent", payload)
        return {"id": ident, "delivered_at": at}

    async def messages(self, *, pin: str | None = None) -> dict[str, list[dict[str, Any]]]:
        answer = await self.call("message.list", self._auth(pin))
        return {"inbox": list(answer["inbox"]), "outbox": list(answer["outbox"])}

    async def read_message(self, ident: str, *, pin: str | None = None) -> dict[str, Any]:
        """Mark an inbox message read and send the read receipt to its sender's vault."""
        entry = dict((await self.call("message.read", {**self._auth(pin), "id": ident}))["message"])
        body = {"id": ident, "read_at": entry["read_at"]}
        await self.peer_call(str(entry["connection"]), "message.receipt", body)
        return entry

    # --- calls: signalling through the vaults; the media is the apps' business ----------------------------------

    async def signal(self, connection: str, kind: str, call: str, *, pin: str | None = None, **fields: str) -> None:
        """Send ``call.{kind}`` (offer, answer, ice, hangup) for ``call`` to the connected peer's vault."""
        await self.peer_call(connection, f"call.{kind}", {"call": call, **fields}, pin=pin)

    async def signals(self, *, pin: str | None = None) -> list[dict[str, Any]]:
        """The call signalling waiting in this vault (fetched once)."""
        return list((await self.call("call.signals", self._auth(pin)))["signals"])

    async def turn(self, connection: str, call: str, *, pin: str | None = None) -> dict[str, Any]:
        """Short-lived TURN relay credentials for ``call`` (RTCIceServer shape, with ``expires_at``)."""
        answer = await self.call("call.turn", {**self._auth(pin), "connection": connection, "call": call})
        return dict(answer["turn"])

    # --- business data contracts ------------------------------------------------------------------------------

    async def accept_contract(
        self, contract: dict[str, Any], signature: str, *, pin: str | None = None
    ) -> dict[str, Any]:
        """Accept a business's signed data contract (this client is the user's app)."""
        payload = {**self._auth(pin), "contract": contract, "signature": signature}
        return await self.call("contract.accept", payload)

    async def revoke_contract(self, contract: str, *, pin: str | None = None) -> None:
        await self.call("contract.revoke", {**self._auth(pin), "contract": contract})

    async def contracts(self, *, pin: str | None = None) -> list[dict[str, Any]]:
        return list((await self.call("contract.list", self._auth(pin)))["contracts"])

    async def contract_read(
        self, user: str, contract: str, business_key: bytes, fields: list[str] | None = None
    ) -> dict[str, str]:
        """As the business (this client's user; ``business_key`` the Ed25519 seed its contracts name): read
        ``user``'s profile fields under ``contract``."""
        message_id, body, now = secrets.token_bytes(16), {"fields": fields}, time.time()
        message = authorization_message(
            kind="contract",
            ident=contract,
            sender=self.user,
            target=user,
            op="profile.get",
            message_id=message_id.hex(),
            at=now,
            digest=body_digest(body),
        )
        auth = Authorization("contract", contract, now, sign(business_key, message)).to_json()
        answer = await self.call("profile.get", {**body, "auth": auth}, peer=user, message_id=message_id)
        return dict(answer["fields"])
