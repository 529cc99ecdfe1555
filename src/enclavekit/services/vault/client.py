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
from enclavekit.services.vault.connection import Authorization, authorization_message, body_digest, sign
from enclavekit.services.vault.envelope import RequestEnvelope, open_response, seal_request
from enclavekit.services.vault.nats_auth import for_app, for_vault, peer_for_vault

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
    _peer_keys: dict[str, bytes] = field(default_factory=dict)

    async def __aenter__(self) -> VaultClient:
        self._nc = await nats.connect(self.nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        await self._nc.subscribe(for_app(self.user, ">"), cb=self._on_message)
        await self._nc.subscribe(f"MessageSpace.{self.user}.forApp.>", cb=self._on_message)
        await self._nc.flush()
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

    async def vault_key(self, peer: str | None = None) -> bytes:
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
            answer = await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError as exc:
            raise VaultCallFailed("the vault did not answer for its key") from exc
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
        answer, or raise :class:`VaultError`."""
        assert self._nc is not None
        key = await self.vault_key(peer)
        target = self.user if peer is None else peer
        request = seal_request(key, target, op, json.dumps(payload).encode(), now=time.time(), message_id=message_id)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[request.message_id] = (request, future)
        subject = for_vault(self.user, op) if peer is None else peer_for_vault(peer, self.user, op)
        await self._nc.publish(subject, request.data)
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
        if peer is None and isinstance(result.get("session"), str):
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

    # --- connections (docs/vault.md, "Connections") -------------------------------------------------------------

    def _auth(self, pin: str | None) -> dict[str, Any]:
        return {"pin": pin} if pin is not None else {"session": self.session}

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
