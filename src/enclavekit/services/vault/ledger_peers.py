"""The guess ledger across vault enclaves: replicas reached over attested RPC, merges signed by the caller's NSM.

* A coordinator reaches each peer with an :class:`~enclavekit.client.AttestedClient` pinned to its own PCR0, so
  every answer comes from a genuine vault enclave; each answer names the replica's boot identity, and the ledger
  counts a replica once however many addresses the host lists for it.
* A merge carries an attestation document of the caller whose ``user_data`` is
  ``SHA-256("enclavekit vault ledger merge v1" ‖ canonical JSON of {user, entry})``; the replica accepts only a
  document with its own PCR0 (:func:`verify_merge`). A captured merge replayed changes nothing (merging is
  idempotent); a host without the NSM cannot make one.
* A booting replica is not ready (answers ``ledger_unavailable``) until it has merged the snapshots of a majority
  with itself (:meth:`GuessReplica.catch_up`), or — when no peer is ready at all — starts empty (genesis). Genesis
  can lose counts only if a majority is lost, and then every stored vault fails closed (docs/vault.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from enclavekit.attestation.nitro import NitroPolicy, verify
from enclavekit.client import AttestedClient
from enclavekit.errors import Error
from enclavekit.rpc import ClientOptions
from enclavekit.services.vault.errors import LedgerUnavailable, VaultRejected
from enclavekit.services.vault.guesses import GuessEntry, GuessReplica
from enclavekit.services.vault.wire import (
    LEDGER_MERGE,
    LEDGER_SNAPSHOT,
    LedgerMerge,
    LedgerSnapshotRequest,
)

__all__ = ["MergeRefused", "PeerReplica", "catch_up", "merge_binding", "verify_merge"]

logger = logging.getLogger(__name__)

PEER_TIMEOUT: Final = 5.0

Attest = Callable[[bytes], Awaitable[bytes]]
"""Makes an attestation document with the given ``user_data`` (the enclave's NSM)."""


class MergeRefused(VaultRejected):
    """A ledger merge whose caller is not a vault enclave of this image (or whose document binds other data)."""

    code = "ledger_merge_refused"


def merge_binding(user: str, entry: GuessEntry) -> bytes:
    body = json.dumps({"user": user, "entry": entry.to_json()}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"enclavekit vault ledger merge v1\x00" + body).digest()


def verify_merge(request: LedgerMerge, *, pcr0: bytes, roots: Sequence[bytes]) -> GuessEntry:
    """The entry of a merge request, if its document is a vault enclave's (own PCR0) binding exactly it."""
    try:
        entry = GuessEntry.from_json(request.entry)
        document = base64.b64decode(request.document, validate=True)
    except ValueError as exc:
        raise MergeRefused(f"malformed merge: {exc}") from exc
    policy = NitroPolicy(measurements=[{0: pcr0}], roots=tuple(roots), user_data=merge_binding(request.user, entry))
    try:
        verify(document, policy, now=datetime.now(UTC))
    except Error as exc:
        raise MergeRefused(f"the merge's attestation does not verify: {exc.code}") from exc
    return entry


@dataclass
class PeerReplica:
    """A :class:`~enclavekit.services.vault.guesses.Replica` in another vault enclave."""

    address: str
    pcr0: bytes
    roots: Sequence[bytes]
    attest: Attest
    identity: str | None = None
    _client: AttestedClient | None = field(default=None, repr=False)

    def _connection(self) -> AttestedClient:
        if self._client is None:
            policy = NitroPolicy(measurements=[{0: self.pcr0}], roots=tuple(self.roots))
            options = ClientOptions(connect_timeout=PEER_TIMEOUT, default_timeout=PEER_TIMEOUT)
            self._client = AttestedClient.nitro(self.address, policy, options=options, connect_attempts=1)
        return self._client

    async def _call(self, route: Any, request: Any) -> Any:
        try:
            return await self._connection().call(route, request)
        except Error as exc:
            if self._client is not None:  # reconnect (and re-attest) next time: the peer may have restarted
                await self._client.close()
                self._client = None
            raise LedgerUnavailable(f"ledger peer {self.address}: {exc.code}") from exc
        except OSError as exc:
            self._client = None
            raise LedgerUnavailable(f"ledger peer {self.address} unreachable") from exc

    async def merge(self, user: str, entry: GuessEntry) -> GuessEntry:
        document = await self.attest(merge_binding(user, entry))
        request = LedgerMerge(user=user, entry=entry.to_json(), document=base64.b64encode(document).decode())
        answer = await self._call(LEDGER_MERGE, request)
        self.identity = answer.replica
        return GuessEntry.from_json(answer.entry)

    async def snapshot(self) -> tuple[str, dict[str, GuessEntry]]:
        answer = await self._call(LEDGER_SNAPSHOT, LedgerSnapshotRequest())
        self.identity = answer.replica
        return answer.replica, {user: GuessEntry.from_json(raw) for user, raw in answer.entries.items()}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def catch_up(
    replica: GuessReplica,
    peers: Sequence[PeerReplica],
    *,
    own_identity: str,
    replicas: int | None = None,
    genesis_after: float = 3.0,
) -> None:
    """Make ``replica`` ready: merge the snapshots of a majority of ``replicas`` (the measured replica set size;
    default: the peers listed plus this one), or start empty once no peer has been ready for ``genesis_after``
    seconds. Retries until one happens."""
    size = replicas if replicas is not None else len(peers) + 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not replica.ready:
        answers = await asyncio.gather(*(peer.snapshot() for peer in peers), return_exceptions=True)
        snapshots: dict[str, dict[str, GuessEntry]] = {}
        for answer in answers:
            if isinstance(answer, tuple) and answer[0] != own_identity:
                snapshots[answer[0]] = answer[1]
        if len(snapshots) + 1 > size // 2:
            replica.catch_up(list(snapshots.values()), size)
            logger.info("ledger replica caught up from %d of %d peers", len(snapshots), len(peers))
            return
        if not snapshots and loop.time() - started >= genesis_after:
            replica.ready = True
            logger.warning("ledger replica starts empty (genesis): no peer was ready")
            return
        await asyncio.sleep(0.5)
