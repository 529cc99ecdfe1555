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
* The members are a :class:`~enclavekit.services.vault.guesses.View` (``replicas`` boot identities), and a
  coordinator counts only answers of members of one view that report it. A booting replica merges nothing and
  counts toward no quorum (``ledger_unavailable``) until it is a member of a view (:meth:`GuessReplica.plan`):
  listed in one (it was accepted, or is a genesis member) and caught up from ``quorum`` of its ready
  members; or accepted as the replacement of one member by ``quorum`` members of the current view
  (``vault.ledger.join``, compare-and-set on the view, each acceptor handing over its snapshot); or, when every
  other peer is booting, by genesis — a new view and an empty ledger on which every stored vault fails closed
  (docs/vault.md). An enclave the host starts in addition to a whole view is a member of nothing.
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
from enclavekit.services.vault.guesses import Answer, GuessEntry, GuessReplica, Peers, Proposal, View
from enclavekit.services.vault.wire import (
    LEDGER_JOIN,
    LEDGER_MERGE,
    LEDGER_SNAPSHOT,
    LedgerJoin,
    LedgerMerge,
    LedgerSnapshotRequest,
)

__all__ = [
    "MergeRefused",
    "PeerReplica",
    "catch_up",
    "join_binding",
    "merge_binding",
    "verify_join",
    "verify_merge",
]

logger = logging.getLogger(__name__)

PEER_TIMEOUT: Final = 5.0

Attest = Callable[[bytes], Awaitable[bytes]]
"""Makes an attestation document with the given ``user_data`` (the enclave's NSM)."""


class MergeRefused(VaultRejected):
    """A ledger merge whose caller is not a vault enclave of this image (or whose document binds other data)."""

    code = "ledger_merge_refused"


def _binding(label: bytes, body: dict[str, object]) -> bytes:
    return hashlib.sha256(label + b"\x00" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()


def _verify_peer(document: str, binding: bytes, *, pcr0: bytes, roots: Sequence[bytes], what: str) -> None:
    """Raise :class:`MergeRefused` unless ``document`` is a vault enclave's (own PCR0, measured roots) binding it."""
    try:
        raw = base64.b64decode(document, validate=True)
    except ValueError as exc:
        raise MergeRefused(f"malformed {what}: {exc}") from exc
    policy = NitroPolicy(measurements=[{0: pcr0}], roots=tuple(roots), user_data=binding)
    try:
        verify(raw, policy, now=datetime.now(UTC))
    except Error as exc:
        raise MergeRefused(f"the {what}'s attestation does not verify: {exc.code}") from exc


def merge_binding(user: str, entry: GuessEntry, replica: str, view: View | None = None) -> bytes:
    """What a merge's attestation binds: the user, the entry, the boot identity of the receiving replica and the
    coordinator's ledger view."""
    body: dict[str, object] = {"user": user, "entry": entry.to_json(), "replica": replica}
    body["view"] = None if view is None else view.to_json()
    return _binding(b"enclavekit vault ledger merge v3", body)


def verify_merge(
    request: LedgerMerge, *, pcr0: bytes, roots: Sequence[bytes], replica: str, view: View | None = None
) -> GuessEntry:
    """The entry of a merge request, if its document is a vault enclave's (own PCR0) binding exactly it, this
    replica's boot identity ``replica`` and this replica's ``view`` (a write of another view — a coordinator of a
    ledger the host started beside this one — is refused, so no entry moves between them). The empty entry (a
    read: it changes nothing) needs no document."""
    try:
        entry = GuessEntry.from_json(request.entry)
        sent = None if request.view is None else View.from_json(request.view)
    except ValueError as exc:
        raise MergeRefused(f"malformed merge: {exc}") from exc
    if entry != GuessEntry():
        binding = merge_binding(request.user, entry, replica, sent)
        _verify_peer(request.document, binding, pcr0=pcr0, roots=roots, what="merge")
        if sent != view:
            raise LedgerUnavailable("a write of another ledger view: refused")
    return entry


def join_binding(view: View, joiner: str, replaced: str) -> bytes:
    """What a join request's attestation binds: the view it changes, the joining boot and the member it replaces."""
    return _binding(
        b"enclavekit vault ledger join v1", {"view": view.to_json(), "joiner": joiner, "replaced": replaced}
    )


def verify_join(request: LedgerJoin, *, pcr0: bytes, roots: Sequence[bytes]) -> View:
    """The view a join request changes, if its document is a vault enclave's (own PCR0) binding the request."""
    try:
        view = View.from_json(request.view)
    except ValueError as exc:
        raise MergeRefused(f"malformed join: {exc}") from exc
    binding = join_binding(view, request.joiner, request.replaced)
    _verify_peer(request.document, binding, pcr0=pcr0, roots=roots, what="join")
    return view


def _view(raw: dict[str, Any] | None) -> View | None:
    try:
        return None if raw is None else View.from_json(raw)
    except ValueError as exc:
        raise LedgerUnavailable(f"a ledger peer sent a malformed view: {exc}") from exc


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

    async def merge(self, user: str, entry: GuessEntry, view: View | None = None) -> Answer:
        if self.identity is None or entry == GuessEntry():  # a read: learns the boot identity merges must bind
            answer = await self._call(LEDGER_MERGE, LedgerMerge(user=user, entry=GuessEntry().to_json(), document=""))
            self.identity = answer.replica
        if entry != GuessEntry():
            assert self.identity is not None
            document = await self.attest(merge_binding(user, entry, self.identity, view))
            request = LedgerMerge(
                user=user,
                entry=entry.to_json(),
                document=base64.b64encode(document).decode(),
                view=None if view is None else view.to_json(),
            )
            answer = await self._call(LEDGER_MERGE, request)
            self.identity = answer.replica
        view = _view(answer.view)
        if view is None:  # a peer of a many-replica ledger is always in a view once it answers
            raise LedgerUnavailable(f"ledger peer {self.address} answered outside any view")
        return Answer(GuessEntry.from_json(answer.entry), answer.replica, view)

    async def snapshot(self) -> tuple[str, bool, View | None, dict[str, GuessEntry]]:
        """``(boot identity, ready, view, entries)`` of the peer; a booting peer answers ``ready`` false, no view and
        no entries."""
        answer = await self._call(LEDGER_SNAPSHOT, LedgerSnapshotRequest())
        self.identity = answer.replica
        entries = {user: GuessEntry.from_json(raw) for user, raw in answer.entries.items()}
        return answer.replica, answer.ready, _view(answer.view), entries

    async def accept(self, proposal: Proposal, own: str) -> tuple[str, View | None, dict[str, GuessEntry]]:
        """Ask this peer, a member of the proposal's view, to accept its successor; ``(boot identity, its new view,
        its snapshot as it accepted)``."""
        replaced = next(iter(proposal.view.members - proposal.successor.members))
        document = await self.attest(join_binding(proposal.view, own, replaced))
        request = LedgerJoin(
            view=proposal.view.to_json(),
            joiner=own,
            replaced=replaced,
            document=base64.b64encode(document).decode(),
        )
        answer = await self._call(LEDGER_JOIN, request)
        entries = {user: GuessEntry.from_json(raw) for user, raw in answer.entries.items()}
        return answer.replica, _view(answer.view), entries

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
    """Make ``replica`` a member of a view, retrying every ``interval`` seconds (:meth:`GuessReplica.plan`): join a
    view that lists it from ``quorum`` of its ready members; or propose to replace a member of the
    current view and ask its ready members, of which ``quorum`` must accept (:meth:`GuessReplica.joined`); or, when
    every other of the ``replicas - 1`` peers is booting, genesis. Members of a fresh set that boot together thus
    all start: the first to see the others booting makes the genesis view, which lists them, and they join it.

    Anything else (too few members ready, peers silent, a change that too few accepted) waits: a host that hides,
    stops or adds enclaves gets a replica that does not serve, never one that forgot. ``replicas`` and ``quorum``
    are the measured ones."""
    while not replica.ready:
        answers = await asyncio.gather(*(peer.snapshot() for peer in peers), return_exceptions=True)
        ready: dict[str, tuple[View | None, dict[str, GuessEntry]]] = {}
        booting: set[str] = set()
        by_identity: dict[str, PeerReplica] = {}
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
            if not isinstance(answer, tuple):
                logger.debug("ledger peer gave no snapshot: %s", answer)
                continue
            identity, is_ready, view, entries = answer
            if identity == own_identity:
                continue
            by_identity[identity] = peer
            if is_ready:
                ready[identity] = (view, entries)
            else:
                booting.add(identity)
        plan = replica.plan(ready, booting, own=own_identity, replicas=replicas, quorum=quorum)
        if isinstance(plan, Proposal):
            acceptors = [by_identity[i] for i in sorted(plan.acceptors)]
            results = await asyncio.gather(*(p.accept(plan, own_identity) for p in acceptors), return_exceptions=True)
            accepted: Peers = {r[0]: (r[1], r[2]) for r in results if isinstance(r, tuple)}
            plan = replica.joined(plan, accepted, own=own_identity, quorum=quorum)
        if plan:
            assert replica.view is not None
            logger.warning(
                "ledger replica ready: a member of view %d (%d ready and %d booting peers answered)",
                replica.view.number,
                len(ready),
                len(booting),
            )
            return
        await asyncio.sleep(interval)
