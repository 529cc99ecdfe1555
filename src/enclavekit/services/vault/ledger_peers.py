"""The guess ledger across vault enclaves: replicas reached over attested RPC, merges signed by the caller's NSM.

* A coordinator reaches each peer with an :class:`~enclavekit.client.AttestedClient` pinned to its own PCR0, so
  every answer comes from a genuine vault enclave; each answer names the replica's boot identity, and the ledger
  counts a replica once however many addresses the host lists for it.
* A merge carries an attestation document of the caller whose ``user_data`` is
  ``SHA-256("enclavekit vault ledger merge v2" ‖ canonical JSON of {user, entry, replica})``, ``replica`` being the
  boot identity of the replica it is sent to; the replica accepts only a document with its own PCR0 and its own
  boot identity (:func:`verify_merge`). A captured merge replayed to the same boot changes nothing (merging is
  idempotent); replayed to another boot — after a restart, into a ledger that forgot the user — it is refused, so
  a host cannot bring back an old entry (with its epoch and a low count) once every replica restarted; a host
  without the NSM cannot make one. The coordinator learns a peer's boot identity from its answer to a read (a
  merge of the empty entry, which changes nothing and needs no document) on each new connection.
* A booting replica is a new member: it merges nothing and counts toward no quorum (``ledger_unavailable``) until
  it has merged the snapshots of ``replicas - quorum + 1`` ready peers (:meth:`GuessReplica.catch_up`), or until
  every other member of the measured set attests that it holds no ledger entry (genesis,
  :meth:`GuessReplica.genesis`).
  Genesis after the set existed means all members restarted at once; then every stored vault fails closed
  (docs/vault.md).
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


def merge_binding(user: str, entry: GuessEntry, replica: str) -> bytes:
    """What a merge's attestation binds: the user, the entry and the boot identity of the receiving replica."""
    body = {"user": user, "entry": entry.to_json(), "replica": replica}
    return hashlib.sha256(
        b"enclavekit vault ledger merge v2\x00" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).digest()


def verify_merge(request: LedgerMerge, *, pcr0: bytes, roots: Sequence[bytes], replica: str) -> GuessEntry:
    """The entry of a merge request, if its document is a vault enclave's (own PCR0) binding exactly it and this
    replica's boot identity ``replica``. The empty entry (a read: it changes nothing) needs no document."""
    try:
        entry = GuessEntry.from_json(request.entry)
        if entry == GuessEntry():
            return entry
        document = base64.b64decode(request.document, validate=True)
    except ValueError as exc:
        raise MergeRefused(f"malformed merge: {exc}") from exc
    binding = merge_binding(request.user, entry, replica)
    policy = NitroPolicy(measurements=[{0: pcr0}], roots=tuple(roots), user_data=binding)
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
            self.identity = None
            raise LedgerUnavailable(f"ledger peer {self.address}: {exc.code}") from exc
        except OSError as exc:
            self._client = None
            self.identity = None
            raise LedgerUnavailable(f"ledger peer {self.address} unreachable") from exc

    async def merge(self, user: str, entry: GuessEntry) -> GuessEntry:
        if self.identity is None or entry == GuessEntry():  # a read: learns the boot identity merges must bind
            answer = await self._call(LEDGER_MERGE, LedgerMerge(user=user, entry=GuessEntry().to_json(), document=""))
            self.identity = answer.replica
            if entry == GuessEntry():
                return GuessEntry.from_json(answer.entry)
        assert self.identity is not None
        document = await self.attest(merge_binding(user, entry, self.identity))
        request = LedgerMerge(user=user, entry=entry.to_json(), document=base64.b64encode(document).decode())
        answer = await self._call(LEDGER_MERGE, request)
        self.identity = answer.replica
        return GuessEntry.from_json(answer.entry)

    async def snapshot(self) -> tuple[str, bool, dict[str, GuessEntry]]:
        """``(boot identity, ready, entries)`` of the peer; a booting peer answers ``ready`` false, no entries."""
        answer = await self._call(LEDGER_SNAPSHOT, LedgerSnapshotRequest())
        self.identity = answer.replica
        entries = {user: GuessEntry.from_json(raw) for user, raw in answer.entries.items()}
        return answer.replica, answer.ready, entries

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def catch_up(
    replica: GuessReplica,
    peers: Sequence[PeerReplica],
    *,
    own_identity: str,
    replicas: int,
    quorum: int,
    interval: float = 0.5,
) -> None:
    """Make ``replica`` ready, retrying every ``interval`` seconds until one of two things is attested:

    * ``replicas - quorum + 1`` distinct ready peers answered their snapshots: merge them
      (:meth:`GuessReplica.catch_up`);
    * every other member of the measured set (``replicas - 1`` distinct boot identities) answered that it holds
      no ledger entry (booting, or started empty itself and recorded nothing since): the set is new, or every
      write is lost already — start empty (:meth:`GuessReplica.genesis`). Members of a fresh set that boot
      together thus all start: the first to see the others booting starts empty, the others then see it empty.

    Anything else (a peer ready but too few of them, peers silent) waits: a host that hides or stops peers gets
    no replica that forgot, only one that does not serve. ``replicas`` and ``quorum`` are the measured ones."""
    while not replica.ready:
        answers = await asyncio.gather(*(peer.snapshot() for peer in peers), return_exceptions=True)
        ready: dict[str, dict[str, GuessEntry]] = {}
        booting: set[str] = set()
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
            if not isinstance(answer, tuple):
                logger.debug("ledger peer gave no snapshot: %s", answer)
                continue
            if answer[0] == own_identity:
                continue
            identity, is_ready, entries = answer
            if is_ready:
                ready[identity] = entries
            else:
                booting.add(identity)
        if replica.join(ready, booting, replicas=replicas, quorum=quorum):
            logger.warning(
                "ledger replica ready: %d ready and %d booting peers answered (%s)",
                len(ready),
                len(booting - set(ready)),
                "caught up" if len(ready) >= replicas - quorum + 1 else "genesis: no peer holds an entry",
            )
            return
        await asyncio.sleep(interval)
