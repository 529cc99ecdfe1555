"""The guess ledger: wrong PINs counted where the host cannot roll them back.

Each user's entry is a join-semilattice (a CRDT): ``attempts`` and ``cleared`` are grow-only counters with one
slot per coordinator boot (merged by per-slot maximum), ``generation`` (which PIN setting is current) and
``version`` (the newest stored state) only grow, and ``locked_at`` (the generation that hit the limit) never goes
down — only a recovery's newer generation leaves it behind; a pending recovery's number, due time and claim hash
and the highest closed recovery only grow (:mod:`~enclavekit.services.vault.recovery`). Merging is idempotent,
commutative and associative, so a replayed, reordered or duplicated message can only repeat what is already known.

The entry lives in the memory of the vault enclaves' *replicas* (never on the host's disk). A coordinator (the
enclave serving the user) writes by sending its merged entry to every replica and waiting for a **majority** to
answer with their merged entry; it reads the same way and merges the answers. Any two majorities intersect, so a
read sees every write that completed before it: a counted guess cannot be forgotten unless a majority of the
replicas lose their memory at once. Then the ledger does not say "no guesses": a user whose vault exists in
storage but not in the ledger is refused (:class:`~enclavekit.services.vault.errors.LedgerUnavailable`). The
replicas are the members of a :class:`View` (``replicas`` boot identities; ADR 0027), and a majority is one of a
single view's members: a restarted replica, or any other new boot of the image, answers nothing (so it counts
toward no quorum) until a quorum of the current view accepted it in place of one member and it merged their
snapshots, enough to include a holder of every acknowledged write (:meth:`GuessReplica.plan`,
:meth:`GuessReplica.accept`, :meth:`GuessReplica.joined`); it starts empty — a new view, a new ledger — only when
every other peer attests that it is booting too.

The same replicas hold the single-use record of invitation codes (:meth:`GuessLedger.claim`): an entry under the
key ``invite:{id}`` whose ``claims`` is a grow-only set of the users who presented the code (ADR 0021).

An unlock is: count the attempt at a majority and then read a majority (:meth:`GuessLedger.begin_attempt`),
refuse if the uncleared attempts exceed the limit, only then try the PIN; the right PIN clears the attempts that
were seen, a wrong one at the limit locks. Concurrent guesses from several coordinators are all counted: each
increments its own slot; and at most ``limit`` of them are tried, however the host orders their messages.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from enclavekit.services.vault.errors import LedgerUnavailable

__all__ = [
    "DEFAULT_GUESS_LIMIT",
    "Answer",
    "Attempt",
    "GuessEntry",
    "GuessLedger",
    "GuessReplica",
    "MemoryReplica",
    "Proposal",
    "Replica",
    "View",
    "check_guess_limit",
]

DEFAULT_GUESS_LIMIT: Final = 10
MAX_SLOTS: Final = 256
"""Coordinator boots remembered per entry; an entry with more slots is refused (a bound, not a policy)."""
MAX_CLAIMS: Final = 8
"""Claimants an invitation entry remembers: the ``MAX_CLAIMS`` least user ids (still a join: the least ``k`` of a
union). One claimant is a use; two or more is a used (contested) code — the exact set past two never matters."""


def check_guess_limit(limit: int) -> int:
    """The guess limit if it is 1..255."""
    if not isinstance(limit, int) or not 1 <= limit <= 255:
        raise ValueError("the guess limit is 1..255")
    return limit


def _merge_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for slot, count in b.items():
        if count > out.get(slot, 0):
            out[slot] = count
    return out


_EPOCH: Final = re.compile(r"(?:[0-9a-f]{32})?")
_FIELDS: Final = frozenset(
    {
        "attempts",
        "cleared",
        "rights",
        "generation",
        "version",
        "locked_at",
        "limit",
        "epoch",
        "recovery",
        "recovery_closed",
    }
)
LIFETIME_FACTOR: Final = 10
"""Wrong guesses a vault tolerates over its life (per enrollment or recovery): ``LIFETIME_FACTOR × limit``. A right
PIN resets the consecutive count, not this one, so a host that guesses between the user's own unlocks gets at most
this many guesses in all (100 for the default limit: 1 % of the 4-digit PINs), not ``limit − 1`` per unlock."""


@dataclass(frozen=True, slots=True)
class GuessEntry:
    """One user's ledger entry. ``enrolled`` is false only for the empty entry (nothing known)."""

    attempts: Mapping[str, int] = field(default_factory=dict)
    cleared: Mapping[str, int] = field(default_factory=dict)
    rights: Mapping[str, int] = field(default_factory=dict)
    """Right PINs per coordinator slot (grow-only): wrong guesses in all = attempts − rights (:attr:`wrong_total`)."""
    generation: int = 0
    version: int = 0
    locked_at: int = 0
    """The generation that reached the guess limit (0: none). It locks that generation for good; only a recovery,
    which makes a newer generation, leaves it behind (:mod:`~enclavekit.services.vault.recovery`)."""
    limit: int = DEFAULT_GUESS_LIMIT
    epoch: str = ""
    """The enrollment this entry belongs to: 32 hex digits drawn by the enclave that enrolled the user. The vault's
    keys are derived with it, so a header from another enrollment (one the ledger forgot when every replica
    restarted, put back by the host after it enrolled the same name again) can test no PIN."""
    claims: frozenset[str] = frozenset()
    """Invitation entries only (key ``invite:{id}``): the users who claimed the code, grow-only."""
    recovery: tuple[int, int, str] = (0, 0, "")
    """The latest recovery started: (number, due time in unix seconds, SHA-256 hex of its claim). Merged by
    maximum, so the first start of a number is kept and a concurrent one can only push the due time later."""
    recovery_closed: int = 0
    """The highest recovery number cancelled or completed: a recovery is pending while its number is above it."""

    def __post_init__(self) -> None:
        if max(len(self.attempts), len(self.cleared), len(self.rights)) > MAX_SLOTS:
            raise ValueError("guess entry has too many slots")
        if len(self.claims) > MAX_CLAIMS or not all(isinstance(c, str) and 0 < len(c) <= 64 for c in self.claims):
            raise ValueError("guess entry claims are at most 8 user ids")
        if (
            any(c < 0 for c in (*self.attempts.values(), *self.cleared.values(), *self.rights.values()))
            or min(self.generation, self.locked_at, self.recovery[0], self.recovery[1], self.recovery_closed) < 0
        ):
            raise ValueError("guess entry counts are non-negative")
        if len(self.recovery[2]) > 64:
            raise ValueError("guess entry recovery claim is a SHA-256 hex digest")
        check_guess_limit(self.limit)
        if not _EPOCH.fullmatch(self.epoch):
            raise ValueError("guess entry epoch is empty or 32 hex digits")

    @property
    def enrolled(self) -> bool:
        return self.generation > 0

    @property
    def locked(self) -> bool:
        """The current generation reached the guess limit."""
        return self.locked_at > 0 and self.locked_at >= self.generation

    @property
    def recovery_pending(self) -> bool:
        return self.recovery[0] > self.recovery_closed

    @property
    def uncleared(self) -> int:
        """Attempts not followed by a right PIN that saw them."""
        return sum(max(0, n - self.cleared.get(slot, 0)) for slot, n in self.attempts.items())

    @property
    def wrong_total(self) -> int:
        """Attempts that were not a right PIN, over the entry's life (an attempt in flight counts until it is)."""
        return max(0, sum(self.attempts.values()) - sum(self.rights.values()))

    @property
    def lifetime_limit(self) -> int:
        return LIFETIME_FACTOR * self.limit

    @property
    def exhausted(self) -> bool:
        """No guess is left: the consecutive limit or the lifetime budget is reached (the next step is the lock)."""
        return self.uncleared >= self.limit or self.wrong_total >= self.lifetime_limit

    @property
    def attempts_left(self) -> int:
        if self.locked:
            return 0
        return max(0, min(self.limit - self.uncleared, self.lifetime_limit - self.wrong_total))

    def merge(self, other: GuessEntry) -> GuessEntry:
        """The least entry that knows everything both know (the lattice join)."""
        return GuessEntry(
            attempts=_merge_counts(self.attempts, other.attempts),
            cleared=_merge_counts(self.cleared, other.cleared),
            rights=_merge_counts(self.rights, other.rights),
            generation=max(self.generation, other.generation),
            version=max(self.version, other.version),
            locked_at=max(self.locked_at, other.locked_at),
            limit=self._merged_limit(other),
            epoch=max(self.epoch, other.epoch),  # two racing enrollments: one deterministic winner everywhere
            claims=frozenset(sorted(self.claims | other.claims)[:MAX_CLAIMS]),
            recovery=max(self.recovery, other.recovery),
            recovery_closed=max(self.recovery_closed, other.recovery_closed),
        )

    def _merged_limit(self, other: GuessEntry) -> int:
        if self.enrolled != other.enrolled:  # the empty entry's default never overrides an enrolled limit
            return self.limit if self.enrolled else other.limit
        return min(self.limit, other.limit)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "attempts": dict(self.attempts),
            "cleared": dict(self.cleared),
            "rights": dict(self.rights),
            "generation": self.generation,
            "version": self.version,
            "locked_at": self.locked_at,
            "limit": self.limit,
            "epoch": self.epoch,
            "recovery": list(self.recovery),
            "recovery_closed": self.recovery_closed,
        }
        if self.claims:  # only invitation entries have claims; a user's entry is unchanged
            out["claims"] = sorted(self.claims)
        return out

    @classmethod
    def from_json(cls, raw: object) -> GuessEntry:
        """Parse an entry a peer sent; raises ValueError on anything malformed."""
        if not isinstance(raw, dict) or set(raw) - {"claims"} != _FIELDS:
            raise ValueError("malformed guess entry")
        claims = raw.get("claims", [])
        if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
            raise ValueError("malformed guess entry claims")
        counts: list[dict[str, int]] = []
        for name in ("attempts", "cleared", "rights"):
            value = raw[name]
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and len(k) <= 64 and type(v) is int for k, v in value.items()
            ):
                raise ValueError(f"malformed guess entry {name}")
            counts.append(dict(value))
        ints = [raw[n] for n in ("generation", "version", "locked_at", "limit", "recovery_closed")]
        recovery = raw["recovery"]
        if (
            not all(type(v) is int for v in ints)
            or type(raw["epoch"]) is not str
            or not isinstance(recovery, list)
            or len(recovery) != 3
            or not (type(recovery[0]) is int and type(recovery[1]) is int and isinstance(recovery[2], str))
        ):
            raise ValueError("malformed guess entry fields")
        return cls(
            attempts=counts[0],
            cleared=counts[1],
            rights=counts[2],
            generation=ints[0],
            version=ints[1],
            locked_at=ints[2],
            limit=ints[3],
            epoch=raw["epoch"],
            claims=frozenset(claims),
            recovery=(recovery[0], recovery[1], recovery[2]),
            recovery_closed=ints[4],
        )


MAX_MEMBERS: Final = 255


@dataclass(frozen=True, slots=True)
class View:
    """Who the ledger's members are: the boot identities of exactly ``replicas`` enclaves, numbered.

    A view is made by genesis (number 1: every member was booting together) or as the one successor of the view
    before it, a new boot replacing one member, accepted by ``quorum`` members of that view
    (:meth:`GuessReplica.accept`: compare-and-set, a member accepts one successor of its view and never a second).
    Two successors of one view would need two disjoint sets of ``quorum`` acceptors among ``replicas``, so a view
    has at most one successor that counts: starting more enclaves of the image does not fork the ledger."""

    number: int
    members: frozenset[str]

    def __post_init__(self) -> None:
        if type(self.number) is not int or self.number < 1 or not 0 < len(self.members) <= MAX_MEMBERS:
            raise ValueError("malformed ledger view")
        if not all(isinstance(m, str) and 0 < len(m) <= 64 for m in self.members):
            raise ValueError("malformed ledger view members")

    def successor(self, joiner: str, replaced: str) -> View:
        """This view with ``replaced`` (a member) replaced by ``joiner`` (a new boot)."""
        if replaced not in self.members or joiner in self.members:
            raise ValueError("a view change replaces one member by a boot that is not a member")
        return View(self.number + 1, (self.members - {replaced}) | {joiner})

    def to_json(self) -> dict[str, object]:
        return {"number": self.number, "members": sorted(self.members)}

    @classmethod
    def from_json(cls, raw: object) -> View:
        """Parse a view a peer sent; raises ValueError on anything malformed."""
        if not isinstance(raw, dict) or set(raw) != {"number", "members"} or not isinstance(raw["members"], list):
            raise ValueError("malformed ledger view")
        if not all(isinstance(m, str) for m in raw["members"]) or len(set(raw["members"])) != len(raw["members"]):
            raise ValueError("malformed ledger view members")
        return cls(raw["number"], frozenset(raw["members"]))


@dataclass(frozen=True, slots=True)
class Answer:
    """A replica's answer to a merge: its merged entry, its boot identity and its view (``None`` only for a replica
    outside any view: an in-process one in tests, or the single replica of a one-replica ledger)."""

    entry: GuessEntry
    identity: str
    view: View | None


class Replica(Protocol):
    """One member of the ledger: merges what it is sent and answers with its merged entry. A write sent with the
    coordinator's ``view`` is merged only by a replica whose view it is."""

    async def merge(self, user: str, entry: GuessEntry, view: View | None = None) -> GuessEntry | Answer: ...


@dataclass(frozen=True, slots=True)
class Proposal:
    """A booting replica's request to replace ``view``'s member by itself: ``successor``, to be accepted by
    ``quorum`` of ``acceptors`` (ready members of ``view`` that reported it)."""

    view: View
    successor: View
    acceptors: frozenset[str]


Peers = Mapping[str, tuple[View | None, Mapping[str, GuessEntry]]]
"""Ready peers' answers by boot identity: the view each reported and its entries."""


def _holds_nothing(entries: Mapping[str, GuessEntry]) -> bool:
    return all(e == GuessEntry() for e in entries.values())


@dataclass
class GuessReplica:
    """The ledger held in one enclave's memory. It answers only once it is a member of a view (genesis, or a change
    its predecessor's members accepted) and holds what that view's members held."""

    entries: dict[str, GuessEntry] = field(default_factory=dict)
    ready: bool = False
    view: View | None = None

    def merge(self, user: str, entry: GuessEntry) -> GuessEntry:
        if not self.ready:
            raise LedgerUnavailable("this ledger replica has not caught up with its peers yet")
        merged = self.entries.get(user, GuessEntry()).merge(entry)
        if merged != GuessEntry():  # a read of an unknown user stores nothing
            self.entries[user] = merged
        return merged

    def snapshot(self) -> dict[str, GuessEntry]:
        return dict(self.entries)

    def _start(self, view: View, snapshots: Collection[Mapping[str, GuessEntry]]) -> None:
        for snapshot in snapshots:
            for user, entry in snapshot.items():
                self.entries[user] = self.entries.get(user, GuessEntry()).merge(entry)
        self.view = view
        self.ready = True

    def plan(self, ready: Peers, booting: Collection[str], *, own: str, replicas: int, quorum: int) -> Proposal | bool:
        """Decide from one round of attested peer answers (``own``: this boot's identity). True: ready now; a
        :class:`Proposal`: ask its acceptors (then :meth:`joined`); False: ask again later.

        * A view of ``replicas`` members that lists this boot (its acceptance answers were lost, or it is a genesis
          member): join it with the snapshots of ``quorum`` of its ready members that report it — so the view had
          ``quorum`` acceptors and is the one successor of its predecessor (fewer reporters could be a change that
          failed, and a second one could then be adopted too: two views of one lineage), and those snapshots
          include a holder of every acknowledged write — or empty, if it is a genesis view whose other members all
          answered and hold nothing.
        * A view reported by at least ``quorum`` of its ready members: propose to replace a member that did not
          answer (none: the view is whole, wait — a host starting one more enclave gets no member).
        * Every other of the ``replicas - 1`` peers booting (distinct boot identities): genesis, a new view and a
          new, empty ledger (stored vaults fail closed on it; an old header matches no PIN under a new epoch)."""
        booting = set(booting) - set(ready) - {own}
        views: dict[View, dict[str, Mapping[str, GuessEntry]]] = {}
        for identity, (view, entries) in ready.items():
            if view is not None and identity != own and identity in view.members and len(view.members) == replicas:
                views.setdefault(view, {})[identity] = entries
        for view, holders in views.items():
            if own not in view.members:
                continue
            others = view.members - {own}
            empty = all(i in booting or (i in holders and _holds_nothing(holders[i])) for i in others)
            if len(holders) >= quorum or (view.number == 1 and empty):
                self._start(view, list(holders.values()))
                return True
        for view, holders in sorted(views.items(), key=lambda item: -item[0].number):
            absent = sorted(view.members - set(holders))
            if own not in view.members and len(holders) >= quorum and absent:
                return Proposal(view, view.successor(own, absent[0]), frozenset(holders))
        if not ready and len(booting) == replicas - 1:
            self._start(View(1, frozenset({own, *booting})), ())
            return True
        return False

    def accept(self, view: View, joiner: str, replaced: str, *, own: str) -> View:
        """As a member of ``view``: accept its successor with ``joiner`` for ``replaced`` — only if ``view`` is this
        replica's current view (compare-and-set: one successor per view). The caller answers with the new view and
        this replica's snapshot, taken at once."""
        if not self.ready or self.view != view or own not in view.members:
            raise LedgerUnavailable("this replica's view is not the one the change starts from")
        self.view = view.successor(joiner, replaced)
        return self.view

    def joined(self, proposal: Proposal, accepted: Peers, *, own: str, quorum: int) -> bool:
        """Ready if ``quorum`` members of the proposal's view accepted exactly its successor; their snapshots (taken
        as they accepted) hold every write acknowledged in that view."""
        agreeing = {
            identity: entries
            for identity, (view, entries) in accepted.items()
            if identity != own and identity in proposal.acceptors and view == proposal.successor
        }
        if len(agreeing) < quorum:
            return False
        self._start(proposal.successor, list(agreeing.values()))
        return True


@dataclass
class MemoryReplica:
    """A :class:`Replica` over a :class:`GuessReplica` in this process (tests, and the local member itself)."""

    replica: GuessReplica = field(default_factory=lambda: GuessReplica(ready=True))
    identity: str = field(default_factory=lambda: secrets.token_hex(8))

    async def merge(self, user: str, entry: GuessEntry, view: View | None = None) -> Answer:
        if view is not None and entry != GuessEntry() and self.replica.view != view:
            raise LedgerUnavailable("a write of another ledger view: refused")
        return Answer(self.replica.merge(user, entry), self.identity, self.replica.view)


@dataclass(frozen=True, slots=True)
class Attempt:
    """A counted attempt: the entry as a majority knew it right after the count."""

    entry: GuessEntry
    slot: str

    @property
    def over_limit(self) -> bool:
        entry = self.entry
        return entry.locked or entry.uncleared > entry.limit or entry.wrong_total > entry.lifetime_limit


@dataclass
class GuessLedger:
    """The coordinator: majority writes and reads over ``replicas``; one slot per boot (``slot``).

    ``quorum``, when given, is the measured quorum (more than half of the measured replica set): it holds however
    few replicas the host made reachable, so a host listing fewer peers gets no smaller quorum.

    ``view``, when given (a vault enclave of a many-replica ledger: its own replica's view), is the only view that
    counts: only its members' answers reporting it are counted and merged, and writes are sent with it, so that a
    replica of another view (a genesis among boots the host started) neither counts nor receives this view's
    entries. Without it (tests' in-process replicas), answers are grouped by the view they report."""

    replicas: Sequence[Replica]
    timeout: float = 5.0
    quorum: int | None = None
    view: Callable[[], View | None] | None = None
    slot: str = field(default_factory=lambda: secrets.token_hex(8))
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _own: dict[str, int] = field(default_factory=dict)

    @property
    def majority(self) -> int:
        return self.quorum if self.quorum is not None else len(self.replicas) // 2 + 1

    def lock(self, user: str) -> asyncio.Lock:
        """Serialises this coordinator's operations on one user (its slot only grows one at a time)."""
        return self._locks.setdefault(user, asyncio.Lock())

    async def _quorum(self, user: str, entry: GuessEntry) -> GuessEntry:
        """Send ``entry`` to every replica; the join of it and the answers of ``majority`` distinct replicas that are
        members of one view and reported it (:class:`View`: a boot outside the view counts toward nothing), only
        theirs — an answer from another view is neither counted nor merged.

        A replica counts only once its answer is merged into the result (an answer that arrived but was not merged
        would let a quorum "include" a replica whose knowledge the result lacks)."""
        own = None if self.view is None else self.view()
        if self.view is not None and own is None:
            raise LedgerUnavailable("this enclave's ledger replica is in no view yet")
        tasks: dict[asyncio.Future[GuessEntry | Answer], Replica] = {
            asyncio.ensure_future(self._send(replica, user, entry, own)): replica for replica in self.replicas
        }
        merged: dict[View | None, GuessEntry] = {}
        counted: dict[View | None, set[str]] = {}
        pending: set[asyncio.Future[GuessEntry | Answer]] = set(tasks)
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            while pending:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    try:
                        result = task.result()
                    except (TimeoutError, LedgerUnavailable, OSError, ValueError):  # an absent or broken replica
                        continue
                    answer = result if isinstance(result, Answer) else Answer(result, self._identity(tasks[task]), None)
                    if (answer.view is not None and answer.identity not in answer.view.members) or (
                        own is not None and answer.view != own
                    ):
                        continue
                    merged[answer.view] = merged.get(answer.view, entry).merge(answer.entry)
                    counted.setdefault(answer.view, set()).add(answer.identity)
                    if len(counted[answer.view]) >= self.majority:
                        return merged[answer.view]
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        most = max((len(members) for members in counted.values()), default=0)
        raise LedgerUnavailable(
            f"{most} of {len(self.replicas)} ledger replicas answered in one view; need {self.majority}"
        )

    @staticmethod
    async def _send(replica: Replica, user: str, entry: GuessEntry, view: View | None) -> GuessEntry | Answer:
        return await (replica.merge(user, entry) if view is None else replica.merge(user, entry, view))

    @staticmethod
    def _identity(replica: Replica) -> str:
        """A replica's boot identity: one boot counts once, however many addresses name it."""
        return getattr(replica, "identity", None) or f"anonymous-{id(replica)}"

    async def read(self, user: str) -> GuessEntry:
        """What a majority knows about ``user`` (written back to them, so the next read sees no less)."""
        return await self._quorum(user, GuessEntry())

    async def enroll(self, user: str, limit: int = DEFAULT_GUESS_LIMIT, *, epoch: str) -> GuessEntry:
        """Start ``user``'s entry at generation 1 for the enrollment ``epoch``; the caller refuses if the read shows
        one exists, and if the answer names another epoch (another enrollment raced this one and won)."""
        return await self._quorum(user, GuessEntry(generation=1, limit=check_guess_limit(limit), epoch=epoch))

    async def begin_attempt(self, user: str, known: GuessEntry) -> Attempt:
        """Count one attempt at a majority, then read a majority again, before anything is tried; ``known`` is a
        fresh :meth:`read`.

        The read after the count is what bounds concurrent guesses: the answers to a count show only what those
        replicas had merged when it arrived, so a host ordering the counts of many coordinators differently at each
        replica can make every one of them see few others (15 tried under a limit of 10 with three replicas,
        ``test_host_ordering_concurrent_guesses_across_replicas_gets_no_guess_past_the_limit``). A read that
        starts after this count completed sees every count that completed before it started; so of the guesses
        that are tried, the one whose read started last sees all the others — at most ``limit`` are tried."""
        if self.slot not in known.attempts and len(known.attempts) >= MAX_SLOTS:
            raise LedgerUnavailable(f"{user}'s ledger entry has no room for another coordinator boot: refusing")
        mine = max(self._own.get(user, 0), known.attempts.get(self.slot, 0)) + 1
        self._own[user] = mine
        update = known.merge(GuessEntry(attempts={self.slot: mine}, generation=known.generation, limit=known.limit))
        entry = await self._quorum(user, update)
        return Attempt(entry.merge(await self.read(user)), self.slot)

    async def clear(self, user: str, attempt: Attempt, **bumps: int) -> GuessEntry:
        """The right PIN: clear the attempts that ``attempt`` saw (and raise ``generation``/``version``)."""
        entry = attempt.entry
        update = GuessEntry(
            attempts=entry.attempts,
            cleared=entry.attempts,
            rights={attempt.slot: entry.rights.get(attempt.slot, 0) + 1},  # this attempt was a right PIN
            generation=bumps.get("generation", entry.generation),
            version=bumps.get("version", entry.version),
            limit=entry.limit,
        )
        return await self._quorum(user, entry.merge(update))

    async def claim(self, key: str, claimant: str) -> GuessEntry:
        """Add ``claimant`` to the claims of entry ``key`` at a majority; the join of what the majority knew.

        Single use: a claimant holds the key only if the answer's claims are exactly itself. Two claimants racing
        cannot both see only themselves — each answer comes from a majority, two majorities share a replica, and
        that replica merged one claim before the other — so at most one wins (a tie refuses both). The same
        claimant asking again sees itself alone again: a retry after a lost answer is not a second use."""
        async with self.lock(key):
            return await self._quorum(key, GuessEntry(claims=frozenset({claimant})))

    async def bump(self, user: str, known: GuessEntry, *, version: int) -> GuessEntry:
        """Record that stored state reached ``version`` (a rollback below it is then detected)."""
        return await self._quorum(
            user, known.merge(GuessEntry(generation=known.generation, version=version, limit=known.limit))
        )

    async def switch_generation(self, user: str, known: GuessEntry, *, generation: int, version: int) -> GuessEntry:
        """The PIN changed: ``generation`` (its header and state already stored) and ``version`` are current."""
        update = GuessEntry(generation=generation, version=version, limit=known.limit)
        return await self._quorum(user, known.merge(update))

    async def lock_out(self, user: str, known: GuessEntry) -> GuessEntry:
        """The limit is reached: lock this generation for good (a recovery makes a newer one)."""
        return await self._quorum(
            user, known.merge(GuessEntry(generation=known.generation, locked_at=known.generation, limit=known.limit))
        )

    async def start_recovery(self, user: str, known: GuessEntry, *, number: int, due: int, claim: str) -> GuessEntry:
        """Record recovery ``number`` (due at ``due``, claimed by the holder of the claim hashed to ``claim``)."""
        return await self._quorum(user, known.merge(GuessEntry(recovery=(number, due, claim), limit=known.limit)))

    async def close_recovery(self, user: str, known: GuessEntry, number: int) -> GuessEntry:
        """Recovery ``number`` is cancelled: it can never complete (``recovery_closed`` only grows)."""
        return await self._quorum(user, known.merge(GuessEntry(recovery_closed=number, limit=known.limit)))

    async def complete_recovery(
        self, user: str, known: GuessEntry, *, generation: int, version: int, limit: int, epoch: str
    ) -> GuessEntry:
        """Recovery ``known.recovery`` completed: ``generation`` (its header and state already stored) is current,
        every attempt known so far is cleared, and the recovery is closed. ``epoch`` is the entry's (a new one when
        the ledger had lost the user); the caller checks the answer names it."""
        update = GuessEntry(
            attempts=known.attempts,
            cleared=known.attempts,
            rights={self.slot: known.rights.get(self.slot, 0) + known.wrong_total},  # a new life: a new budget
            generation=generation,
            version=version,
            limit=known.limit if known.enrolled else check_guess_limit(limit),
            epoch=epoch,
            recovery_closed=known.recovery[0],
        )
        return await self._quorum(user, known.merge(update))
