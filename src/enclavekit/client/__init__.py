"""The attested client SDK: connect to an enclave through any relay, verify it, call its routes.

::

    policy = NitroPolicy(measurements=[{0: pcr0}])
    async with AttestedClient.nitro("tcp://relay.example:7000", policy) as client:
        note = await client.call(GET_NOTE, NoteKey(key="k"))

Nothing is sent before the enclave's attestation document has verified against the policy, and every byte
after that is sealed to keys only that enclave holds, so the relay in between learns only sizes and timing.

With ``identity=`` (a :class:`~enclavekit.channel.ClientIdentityKey`, e.g. from
:func:`enclavekit.client.identity.load_or_create`) the client proves its long-term key in every handshake, and the
enclave's handlers see it as ``CallContext.client_key``; without it the client is anonymous.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.channel import AttestedPeer, IdentitySigner, Initiator, Verifier
from enclavekit.channel.adapters import NitroVerifier
from enclavekit.channel.wire import Mode
from enclavekit.rpc import ClientOptions, ConnectionClosed, ConnectionFailed, Route, RpcClient

__all__ = ["AttestedClient"]

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

logger = logging.getLogger(__name__)


class AttestedClient:
    """One logical connection to an enclave; reconnects (and re-attests) after a failure.

    A call that fails because the connection broke raises; the next call opens a new, freshly attested
    session. Connecting itself is retried ``connect_attempts`` times with backoff; a call is never re-sent
    on its own, since it may have run.
    """

    def __init__(
        self,
        endpoint: str,
        verifier: Verifier,
        *,
        options: ClientOptions | None = None,
        accept_cached_documents: timedelta | None = None,
        connect_attempts: int = 3,
        identity: IdentitySigner | None = None,
    ) -> None:
        self.endpoint = endpoint
        modes = (Mode.FRESH,) if accept_cached_documents is None else (Mode.FRESH, Mode.CACHED)
        self._initiator = Initiator(verifier, modes=modes, max_document_age=accept_cached_documents, identity=identity)
        self._options = options or ClientOptions()
        self._connect_attempts = max(1, connect_attempts)
        self._client: RpcClient | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def nitro(cls, endpoint: str, policy: NitroPolicy, **kwargs: Any) -> AttestedClient:
        return cls(endpoint, NitroVerifier(policy), **kwargs)

    async def connect(self) -> RpcClient:
        """The live connection, opening (and attesting) a new one when needed."""
        client = self._client
        if client is not None and not client.closed:  # every call asks: no lock on the way when it is up
            return client
        async with self._lock:
            if self._client is not None and not self._client.closed:
                return self._client
            delay = 0.1
            for attempt in range(1, self._connect_attempts + 1):
                try:
                    self._client = await RpcClient.connect(
                        self.endpoint, initiator=self._initiator, options=self._options
                    )
                    return self._client
                except (ConnectionFailed, ConnectionClosed, OSError) as exc:
                    if attempt == self._connect_attempts:
                        raise
                    logger.info("connect to %s failed (%s); retrying in %.1f s", self.endpoint, exc, delay)
                    await asyncio.sleep(delay)
                    delay *= 2
            raise AssertionError("unreachable")

    @property
    def peer(self) -> AttestedPeer | None:
        """The enclave's verified attestation on the current connection."""
        return None if self._client is None else self._client.peer

    @property
    def client_key(self) -> bytes | None:
        """The public key this client proves in its handshakes (None: anonymous); the enclave's ``client_key``."""
        signer = self._initiator.identity
        return None if signer is None else signer.public_key

    async def call(self, route: Route[Req, Resp], request: Req, *, timeout: float | None = None) -> Resp:
        client = await self.connect()
        return await client.call(route, request, timeout=timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> AttestedClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
