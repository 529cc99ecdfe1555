"""The vault enclave's object store: the host's object service, reached over a plain RPC route.

An enclave has no disk (a Nitro enclave has none at all), so the vault keeps its objects with the host: the
launch setting ``objects_route`` (``vsock://3:PORT`` on Nitro, ``unix:///...`` or ``tcp://...`` locally) names the
host's object service (:mod:`~enclavekit.services.vault.object_service`), which stores them in a folder or in S3.
The link is not attested and not encrypted, on purpose: everything that crosses it is already ciphertext
(XChaCha20-Poly1305 under the user's ``state`` key, KMS blobs) or public (PIN verifiers), the host at the other
end is the party the vault does not trust anyway, and a rollback is caught by the guess ledger's version (ADR 0023).

What the enclave guards is that a hostile object service cannot crash it or make it wait forever: every call has
a deadline, every answer is bounded (frame size, object size, list length) and checked (base64, keys under the
asked prefix); any failure is :class:`~enclavekit.services.vault.errors.VaultUnavailable` (``vault_unavailable``),
and what a store *returns* is judged by :mod:`~enclavekit.services.vault.state` (``state_corrupt``,
``state_rolled_back``). Only the standard library, pydantic and :mod:`enclavekit.rpc`: no AWS SDK in the enclave.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pydantic import BaseModel, Field

from enclavekit.errors import Error
from enclavekit.rpc import DEFAULT_MAX_FRAME_SIZE, ClientOptions, ConnectionClosed, Route, RpcClient
from enclavekit.services.vault.errors import VaultUnavailable
from enclavekit.services.vault.objects import MAX_OBJECT, OBJECT_KEY, check_key

__all__ = [
    "MAX_LISTED",
    "OBJECTS_DELETE",
    "OBJECTS_GET",
    "OBJECTS_LIST",
    "OBJECTS_PUT",
    "ObjectData",
    "ObjectDone",
    "ObjectKey",
    "ObjectKeys",
    "ObjectPrefix",
    "ObjectPut",
    "RemoteObjectStore",
    "check_prefix",
]

MAX_LISTED: Final = 20_000
"""Keys one list may return: a vault holds at most 10,000 items, plus its indexes and headers."""
MAX_DATA_B64: Final = (MAX_OBJECT * 4) // 3 + 4
_KEY_PATTERN: Final = "^" + OBJECT_KEY.pattern + "$"
_PREFIX: Final = re.compile(r"(vaults|ballots)/[A-Za-z0-9_-]{1,64}/")

Resp = TypeVar("Resp", bound=BaseModel)


class ObjectKey(BaseModel):
    model_config = {"extra": "forbid"}
    key: str = Field(max_length=256, pattern=_KEY_PATTERN)


class ObjectPut(BaseModel):
    model_config = {"extra": "forbid"}
    key: str = Field(max_length=256, pattern=_KEY_PATTERN)
    data: str = Field(max_length=MAX_DATA_B64)
    """The object, base64 (at most ``MAX_OBJECT`` bytes decoded)."""


class ObjectPrefix(BaseModel):
    model_config = {"extra": "forbid"}
    prefix: str = Field(max_length=80, pattern="^" + _PREFIX.pattern + "$")


class ObjectData(BaseModel):
    data: str | None = Field(default=None, max_length=MAX_DATA_B64)
    """The object, base64; None when there is no such object."""


class ObjectDone(BaseModel):
    pass


class ObjectKeys(BaseModel):
    keys: list[str] = Field(max_length=MAX_LISTED)


OBJECTS_GET = Route("vault.objects.get", ObjectKey, ObjectData)
OBJECTS_PUT = Route("vault.objects.put", ObjectPut, ObjectDone)
OBJECTS_DELETE = Route("vault.objects.delete", ObjectKey, ObjectDone)
OBJECTS_LIST = Route("vault.objects.list", ObjectPrefix, ObjectKeys)


def check_prefix(prefix: str) -> str:
    """A list prefix is one user's folder, ``vaults/{user}/``, or one proposal's ballot box, ``ballots/{id}/`` (what
    the vault ever lists)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"not a vault object prefix: {prefix!r}")
    return prefix


def decode_object(data: str) -> bytes:
    """The bytes of a base64 object, checked against ``MAX_OBJECT``; ``ValueError`` otherwise."""
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError("an object is not base64") from exc
    if len(raw) > MAX_OBJECT:
        raise ValueError(f"an object of {len(raw)} bytes is over the limit of {MAX_OBJECT}")
    return raw


@dataclass
class RemoteObjectStore:
    """:class:`~enclavekit.services.vault.objects.ObjectStore` over the host's object service at ``address``.

    One connection, reopened after a failure; each call has ``timeout`` seconds. A failure of any kind (refused,
    hung, closed twice, an answer out of bounds) raises ``vault_unavailable``; only a connection that closed under
    a call is retried, once (the user's request fails otherwise, and the app retries it).
    """

    address: str
    timeout: float = 10.0
    connect_timeout: float = 5.0
    _client: RpcClient | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def _connection(self) -> RpcClient:
        async with self._lock:
            if self._client is None or self._client.closed:
                options = ClientOptions(
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.timeout,
                    default_timeout=self.timeout,
                    max_frame_size=DEFAULT_MAX_FRAME_SIZE,
                )
                # Not attested and not encrypted: only ciphertext crosses, to the host itself (module docstring).
                self._client = await RpcClient.connect(self.address, unsafe_plaintext=True, options=options)
            return self._client

    async def _call(self, route: Route[Any, Resp], request: BaseModel) -> Resp:
        """One call; once more on a new connection if the connection closed under it (the service restarted, or
        closed an idle connection): all four operations are idempotent (a put writes the same bytes again)."""
        for attempt in (1, 2):
            try:
                client = await self._connection()
                return await client.call(route, request, timeout=self.timeout)
            except ConnectionClosed as exc:
                if attempt == 1:
                    continue
                raise VaultUnavailable(f"the object service closed the connection: {exc.message}"[:300]) from exc
            except Error as exc:
                raise VaultUnavailable(f"the object service failed ({exc.code}): {exc.message}"[:300]) from exc
            except (OSError, TimeoutError) as exc:
                raise VaultUnavailable(f"the object service is unreachable ({type(exc).__name__})") from exc
        raise AssertionError("unreachable")

    async def get(self, key: str) -> bytes | None:
        answer = await self._call(OBJECTS_GET, ObjectKey(key=check_key(key)))
        if answer.data is None:
            return None
        try:
            return decode_object(answer.data)
        except ValueError as exc:
            raise VaultUnavailable(f"the object service answered {key} with {exc}") from exc

    async def put(self, key: str, data: bytes) -> None:
        if len(data) > MAX_OBJECT:
            raise ValueError("object too large")
        await self._call(OBJECTS_PUT, ObjectPut(key=check_key(key), data=base64.b64encode(data).decode()))

    async def delete(self, key: str) -> None:
        await self._call(OBJECTS_DELETE, ObjectKey(key=check_key(key)))

    async def list(self, prefix: str) -> list[str]:
        answer = await self._call(OBJECTS_LIST, ObjectPrefix(prefix=check_prefix(prefix)))
        for key in answer.keys:
            if not key.startswith(prefix) or not OBJECT_KEY.fullmatch(key) or ".." in key.split("/"):
                raise VaultUnavailable(f"the object service listed {key[:80]!r} under {prefix!r}")
        return sorted(set(answer.keys))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
