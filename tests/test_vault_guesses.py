"""The guess ledger: counted guesses survive replays, restarts of a minority, concurrency; a majority loss fails
closed."""

from __future__ import annotations

import asyncio

import pytest

from enclavekit.services.vault.errors import LedgerUnavailable
from enclavekit.services.vault.guesses import (
    MAX_SLOTS,
    GuessEntry,
    GuessLedger,
    GuessReplica,
    MemoryReplica,
    Proposal,
    View,
    check_guess_limit,
)
from tests.vault_support import join, members

EPOCH = "5e" * 16


class DownReplica:
    """A replica the host has stopped: it never answers."""

    async def merge(self, user: str, entry: GuessEntry) -> GuessEntry:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _replicas(n: int = 3) -> list[MemoryReplica]:
    return [MemoryReplica() for _ in range(n)]


async def _wrong_guess(ledger: GuessLedger, user: str = "alice") -> GuessEntry:
    async with ledger.lock(user):
        entry = await ledger.read(user)
        return (await ledger.begin_attempt(user, entry)).entry


async def test_replayed_ledger_message_grants_no_extra_guess() -> None:
    replicas = _replicas()
    ledger = GuessLedger(replicas)
    await ledger.enroll("alice", epoch=EPOCH)
    captured = []
    for _ in range(3):
        captured.append(await _wrong_guess(ledger))
    assert captured[-1].uncleared == 3
    for old in captured:  # the host replays what it captured: merging is idempotent and monotone
        for replica in replicas:
            await replica.merge("alice", old)
    assert (await ledger.read("alice")).uncleared == 3


async def test_concurrent_guesses_from_several_coordinators_are_all_counted() -> None:
    replicas = _replicas(5)
    coordinators = [GuessLedger(replicas) for _ in range(4)]  # four vault enclaves serving the same user
    await coordinators[0].enroll("alice", epoch=EPOCH)
    await asyncio.gather(*(_wrong_guess(c) for c in coordinators for _ in range(2)))
    assert (await coordinators[0].read("alice")).uncleared == 8


async def test_restarted_coordinator_does_not_reuse_its_old_count() -> None:
    replicas = _replicas()
    await GuessLedger(replicas).enroll("alice", epoch=EPOCH)
    for _ in range(2):
        await _wrong_guess(GuessLedger(replicas))  # a fresh boot each time (new slot)
    assert (await GuessLedger(replicas).read("alice")).uncleared == 2


async def test_restarting_a_minority_of_replicas_forgets_no_guess() -> None:
    replicas = members()
    ledger = GuessLedger(replicas)
    await ledger.enroll("alice", epoch=EPOCH)
    await _wrong_guess(ledger)
    await _wrong_guess(ledger)
    restarted = MemoryReplica(GuessReplica())  # the host restarts replica 0: its memory is gone
    with pytest.raises(LedgerUnavailable):
        restarted.replica.merge("alice", GuessEntry())  # it answers nothing before it joined
    assert join(restarted, replicas[1:])  # it replaces its former boot, accepted by the two others
    replicas[0] = restarted
    replicas[2] = MemoryReplica(GuessReplica(ready=False))  # and then another one, not yet caught up
    assert (await GuessLedger(replicas).read("alice")).uncleared == 2


async def test_replica_cannot_join_from_a_minority() -> None:
    a, _, _ = members()
    new = MemoryReplica(GuessReplica())
    assert not join(new, [a]) and not join(new, [])
    assert not new.replica.ready


async def test_host_cutting_off_a_peer_then_restarting_a_replica_gets_no_extra_guess() -> None:
    """The reviewer's attack, played on the replicas: guesses written to {A, C} while B is cut off; the host
    restarts C and lets it see B only; a quorum {B, C} must not have forgotten them."""
    a, b, c = members()
    ledger = GuessLedger([a, b, c])
    await ledger.enroll("alice", epoch=EPOCH)
    cut_off = GuessLedger([a, DownReplica(), c], timeout=0.3)  # type: ignore[list-item]
    for _ in range(3):
        await _wrong_guess(cut_off)
    assert b.replica.entries["alice"].uncleared == 0  # B never saw them
    new_c = MemoryReplica(GuessReplica())
    assert not join(new_c, [b])  # one ready member is not enough
    with pytest.raises(LedgerUnavailable):
        await GuessLedger([DownReplica(), b, new_c], timeout=0.3).read("alice")  # type: ignore[list-item]
    assert join(new_c, [b, a])
    assert (await GuessLedger([DownReplica(), b, new_c], timeout=0.3).read("alice")).uncleared == 3  # type: ignore[list-item]


@pytest.mark.parametrize(("replicas", "quorum"), [(3, 2), (5, 3), (5, 4), (4, 3)])
def test_boot_listed_in_a_view_joins_only_from_a_quorum_of_its_members(replicas: int, quorum: int) -> None:
    """A boot the view lists (its acceptance answers were lost) joins only when ``quorum`` members report the view:
    with four replicas and a quorum of three, two acceptors of each of two rival changes would otherwise let both
    joiners join (each then a quorum of its own view with its two acceptors) and fork the ledger."""
    others = [f"m{i}" for i in range(replicas - 1)]
    view = View(2, frozenset({"own", *others}))
    empty: dict[str, GuessEntry] = {}
    short = GuessReplica()
    assert not short.plan(
        dict.fromkeys(others[: quorum - 1], (view, empty)), (), own="own", replicas=replicas, quorum=quorum
    )
    joined = GuessReplica()
    assert joined.plan(dict.fromkeys(others[:quorum], (view, KNOWS)), (), own="own", replicas=replicas, quorum=quorum)
    assert joined.ready and joined.view == view and joined.entries == KNOWS


@pytest.mark.parametrize("booting", [0, 1])
def test_replica_starts_empty_only_when_every_other_member_is_booting(booting: int) -> None:
    fresh = GuessReplica()
    assert not fresh.plan({}, [f"b{i}" for i in range(booting)], own="own", replicas=3, quorum=2)
    assert fresh.plan({}, ["b0", "b1"], own="own", replicas=3, quorum=2)
    assert fresh.ready and fresh.entries == {} and fresh.view == View(1, frozenset({"own", "b0", "b1"}))


async def test_without_a_majority_the_ledger_fails_closed() -> None:
    replicas: list[object] = [MemoryReplica(), DownReplica(), DownReplica()]
    ledger = GuessLedger(replicas, timeout=0.2)  # type: ignore[arg-type]
    with pytest.raises(LedgerUnavailable):
        await ledger.read("alice")


async def test_right_pin_clears_only_the_attempts_it_saw() -> None:
    replicas = _replicas()
    a, b = GuessLedger(replicas), GuessLedger(replicas)
    await a.enroll("alice", epoch=EPOCH)
    await _wrong_guess(a)
    async with a.lock("alice"):
        attempt = await a.begin_attempt("alice", await a.read("alice"))
        await _wrong_guess(b)  # a concurrent wrong guess the right one did not see
        await a.clear("alice", attempt)
    assert (await a.read("alice")).uncleared == 1


async def test_locked_never_unlocks_by_merging_an_older_entry() -> None:
    replicas = _replicas()
    ledger = GuessLedger(replicas)
    before = await ledger.enroll("alice", epoch=EPOCH)
    await ledger.lock_out("alice", before)
    for replica in replicas:
        await replica.merge("alice", before)
    assert (await ledger.read("alice")).locked


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"attempts": {}},
        {"attempts": {"a": "1"}, "cleared": {}, "generation": 1, "version": 0, "locked": False, "limit": 10},
        {"attempts": {}, "cleared": {}, "generation": 1, "version": 0, "locked": 0, "limit": 10},
    ],
)
def test_malformed_entry_from_a_peer_is_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="malformed"):
        GuessEntry.from_json(raw)


def test_entry_round_trips_and_limit_is_bounded() -> None:
    entry = GuessEntry(attempts={"s": 2}, cleared={"s": 1}, generation=2, version=5, limit=3)
    assert GuessEntry.from_json(entry.to_json()) == entry
    for bad in (0, 256):
        with pytest.raises(ValueError, match=r"1\.\.255"):
            check_guess_limit(bad)


async def test_one_replica_listed_under_several_addresses_counts_once() -> None:
    real = MemoryReplica()
    ledger = GuessLedger([real, real, real, DownReplica(), DownReplica()], timeout=0.3)  # type: ignore[list-item]
    with pytest.raises(LedgerUnavailable):
        await ledger.read("alice")  # one enclave three times is not a majority of five


KNOWS = {"alice": GuessEntry(attempts={"s": 3}, generation=1)}
VIEW = View(3, frozenset({"a", "b", "c"}))


def test_fresh_set_booting_together_all_join() -> None:
    first, second, third = GuessReplica(), GuessReplica(), GuessReplica()
    assert first.plan({}, {"b", "c"}, own="a", replicas=3, quorum=2)  # both others booting: genesis
    genesis = first.view
    assert genesis == View(1, frozenset({"a", "b", "c"}))
    assert second.plan({"a": (genesis, {})}, {"c"}, own="b", replicas=3, quorum=2)  # listed; the others hold nothing
    assert third.plan({"a": (genesis, {}), "b": (genesis, {})}, (), own="c", replicas=3, quorum=2)
    assert second.view == third.view == genesis


@pytest.mark.parametrize(
    ("ready", "booting"),
    [
        ({"b": (VIEW, KNOWS)}, set()),  # the host hides A: B alone (it missed the guesses) is not enough
        ({}, {"b"}),  # one peer hidden, one booting: no genesis
        ({}, set()),  # every peer hidden: no genesis
        ({"b": (VIEW, KNOWS)}, {"a"}),  # a majority restarted at once while B still holds entries: wait, never forget
        ({"b": (VIEW, {})}, {"b"}),  # one peer under two answers counts once
        ({"b": (VIEW, {}), "x": (VIEW, {})}, set()),  # a stranger reporting the view is not one of its members
        ({"a": (VIEW, {}), "b": (VIEW, {}), "c": (VIEW, {})}, set()),  # the view is whole: one more gets nothing
        ({"b": (None, {}), "x": (None, {})}, set()),  # ready peers outside any view count toward nothing
    ],
)
def test_restarted_replica_does_not_join_while_the_host_hides_or_restarts_peers(
    ready: dict[str, tuple[View | None, dict[str, GuessEntry]]], booting: set[str]
) -> None:
    restarted = GuessReplica()
    assert restarted.plan(ready, booting, own="c2", replicas=3, quorum=2) is False
    assert not restarted.ready and restarted.entries == {}


def test_restarted_replica_proposes_to_replace_the_member_that_did_not_answer() -> None:
    plan = GuessReplica().plan({"a": (VIEW, {}), "b": (VIEW, KNOWS)}, (), own="c2", replicas=3, quorum=2)
    assert isinstance(plan, Proposal)
    assert plan.successor == View(4, frozenset({"a", "b", "c2"})) and plan.acceptors == {"a", "b"}


def test_restarted_replica_joins_with_what_both_acceptors_know() -> None:
    a, b = GuessReplica(ready=True, view=VIEW, entries=dict(KNOWS)), GuessReplica(ready=True, view=VIEW)
    restarted = GuessReplica()
    plan = restarted.plan({"a": (VIEW, a.snapshot()), "b": (VIEW, {})}, (), own="c2", replicas=3, quorum=2)
    assert isinstance(plan, Proposal)
    accepted = {n: (r.accept(VIEW, "c2", "c", own=n), r.snapshot()) for n, r in (("a", a), ("b", b))}
    assert restarted.joined(plan, accepted, own="c2", quorum=2)
    assert restarted.entries["alice"].uncleared == 3 and a.view == b.view == restarted.view


def test_a_member_accepts_one_successor_of_its_view_only() -> None:
    """Compare-and-set: two boots racing to replace members of one view cannot both be accepted by a quorum."""
    a = GuessReplica(ready=True, view=VIEW)
    a.accept(VIEW, "d", "c", own="a")
    with pytest.raises(LedgerUnavailable):
        a.accept(VIEW, "e", "b", own="a")
    with pytest.raises(LedgerUnavailable):  # and a replica that is not a member of the view accepts nothing
        GuessReplica(ready=True, view=VIEW).accept(VIEW, "e", "b", own="x")


@pytest.mark.parametrize("stale_first", [True, False])
async def test_quorum_counts_only_replicas_whose_answers_it_merged(stale_first: bool) -> None:
    """Two replicas answer at once, one of them without the guesses: the read must include the other's answer,
    not return as soon as two tasks are done with only one answer merged."""
    knows, stale = _replicas(2)
    await GuessLedger([knows, stale, DownReplica()], timeout=0.3).enroll("alice", epoch=EPOCH)  # type: ignore[list-item]
    for _ in range(2):
        await _wrong_guess(GuessLedger([knows, DownReplica(), MemoryReplica()], timeout=0.3))  # type: ignore[list-item]
    order = [stale, knows] if stale_first else [knows, stale]
    assert (await GuessLedger([*order, DownReplica()], timeout=0.3).read("alice")).uncleared == 2  # type: ignore[list-item]


def test_racing_enrollments_merge_to_one_epoch_everywhere() -> None:
    a = GuessEntry(generation=1, epoch="aa" * 16)
    b = GuessEntry(generation=1, epoch="bb" * 16)
    assert a.merge(b).epoch == b.merge(a).epoch == "bb" * 16
    assert GuessEntry.from_json(a.merge(b).to_json()) == a.merge(b)


@pytest.mark.parametrize("epoch", ["x" * 32, "AB" * 16, "ab" * 15, 7])
def test_a_peer_sending_a_malformed_epoch_is_refused(epoch: object) -> None:
    raw = GuessEntry(generation=1, epoch=EPOCH).to_json() | {"epoch": epoch}
    with pytest.raises(ValueError, match=r"epoch|malformed"):
        GuessEntry.from_json(raw)


class HostNetwork:
    """The host between coordinators and replicas: reads pass at once; each count reaches a replica only when the
    host's order says so (after every coordinator has read), and a count to a replica outside the order is dropped."""

    def __init__(self, replicas: list[MemoryReplica], order: dict[int, list[int]], coordinators: int) -> None:
        self.replicas, self.order, self.coordinators = replicas, order, coordinators
        self.turn = dict.fromkeys(order, 0)
        self.moved = asyncio.Condition()
        self.have_read: set[int] = set()
        self.all_read = asyncio.Event()

    def route(self, coordinator: int, index: int) -> Routed:
        return Routed(self, coordinator, index)


class Routed:
    def __init__(self, network: HostNetwork, coordinator: int, index: int) -> None:
        self.network, self.coordinator, self.index = network, coordinator, index
        self.identity = network.replicas[index].identity

    async def merge(self, user: str, entry: GuessEntry) -> GuessEntry:
        net, replica = self.network, self.network.replicas[self.index]
        if entry == GuessEntry():  # a read
            net.have_read.add(self.coordinator)
            if len(net.have_read) == net.coordinators:
                net.all_read.set()
            return await replica.merge(user, entry)
        await net.all_read.wait()
        order = net.order[self.index]
        if self.coordinator not in order:
            await asyncio.Event().wait()  # dropped
        async with net.moved:
            await net.moved.wait_for(lambda: order[net.turn[self.index]] == self.coordinator)
            answer = await replica.merge(user, entry)
            net.turn[self.index] += 1
            net.moved.notify_all()
        return answer


async def test_host_ordering_concurrent_guesses_across_replicas_gets_no_guess_past_the_limit() -> None:
    """Fifteen coordinators (enclaves of the vault's image the host started) each send one wrong guess at once;
    the host delivers group 0's counts to replicas {0, 1}, group 1's to {1, 2}, group 2's to {2, 0}, ordering
    each replica so that every group sees one other group and no more: each count's answer then shows at most 10
    uncleared attempts, and without a read after the count all 15 would try the PIN under a limit of 10."""
    replicas = _replicas()
    await GuessLedger(replicas).enroll("alice", epoch=EPOCH)
    groups = [range(0, 5), range(5, 10), range(10, 15)]
    order = {0: [*groups[0], *groups[2]], 1: [*groups[1], *groups[0]], 2: [*groups[2], *groups[1]]}
    network = HostNetwork(replicas, order, coordinators=15)
    coordinators = [GuessLedger([network.route(c, r) for r in range(3)], quorum=2) for c in range(15)]

    async def guess(ledger: GuessLedger) -> bool:
        entry = await ledger.read("alice")
        return not (await ledger.begin_attempt("alice", entry)).over_limit  # what the core then tries

    tried = await asyncio.wait_for(asyncio.gather(*(guess(c) for c in coordinators)), timeout=30)
    assert sum(tried) <= 10
    assert (await GuessLedger(replicas).read("alice")).uncleared == 15  # every guess was counted


async def test_an_entry_with_every_slot_used_refuses_a_new_boots_guess_with_a_specific_error() -> None:
    """Each coordinator boot that counts a guess takes a slot for good (a right PIN clears it but cannot remove it:
    the merge is a per-slot maximum). At ``MAX_SLOTS`` boots the entry is full: the next boot's guess is refused,
    uncounted and untried, with ``ledger_unavailable`` (it used to escape as a bare ValueError) — an open limit."""
    replicas = _replicas()
    await GuessLedger(replicas).enroll("alice", epoch=EPOCH)
    for _ in range(MAX_SLOTS):
        ledger = GuessLedger(replicas)  # a restarted enclave serving alice, who unlocks with her PIN
        await ledger.clear("alice", await ledger.begin_attempt("alice", await ledger.read("alice")))
    ledger = GuessLedger(replicas)
    with pytest.raises(LedgerUnavailable, match="no room"):
        await ledger.begin_attempt("alice", await ledger.read("alice"))
    assert (await ledger.read("alice")).uncleared == 0


async def test_host_restarting_a_replica_among_fresh_strangers_gets_no_extra_guess() -> None:
    """The reviewer's attack by another road: guesses written to {A, C} while B is cut off; the host restarts C
    with two fresh enclaves of the image (X, Y, booting) as its only peers, so C sees every other peer booting and
    starts empty (genesis); then it serves alice from {B, C}. C's genesis is a new view, B is a member of the old
    one: no quorum of one view, and the guesses are not forgotten."""
    a, b, c = members()
    await GuessLedger([a, b, c]).enroll("alice", epoch=EPOCH)
    for _ in range(3):
        await _wrong_guess(GuessLedger([a, DownReplica(), c], timeout=0.3))  # type: ignore[list-item]
    restarted = MemoryReplica(GuessReplica())
    assert join(restarted, [], booting=["x", "y"])  # its peers as the host listed them: both booting
    try:
        seen = (await GuessLedger([DownReplica(), b, restarted], timeout=0.3).read("alice")).uncleared  # type: ignore[list-item]
    except LedgerUnavailable:
        seen = 3
    assert seen == 3, "the quorum {B, C} forgot the guesses"


@pytest.mark.parametrize(("replicas", "quorum"), [(3, 2), (4, 3), (5, 3), (5, 4)])
def test_rival_changes_of_one_view_let_at_most_one_boot_join(replicas: int, quorum: int) -> None:
    """Two boots the host started race to replace members of one view, and the host splits the members between
    them in every way: at most one joins, by its acceptors' answers or by adopting the view the others report."""
    names = [f"m{i}" for i in range(replicas)]
    view = View(5, frozenset(names))
    for split in range(replicas + 1):
        members = {n: GuessReplica(ready=True, view=view) for n in names}
        rivals = {"j1": view.successor("j1", names[-1]), "j2": view.successor("j2", names[0])}  # each replaces a member
        # the other one's acceptors include, so its own acceptors all stay members of its view
        accepted: dict[str, dict[str, tuple[View | None, dict[str, GuessEntry]]]] = {"j1": {}, "j2": {}}
        for i, name in enumerate(names):
            joiner = "j1" if i < split else "j2"
            replaced = names[-1] if joiner == "j1" else names[0]
            accepted[joiner][name] = (members[name].accept(view, joiner, replaced, own=name), {})
        joined = []
        for joiner, successor in rivals.items():
            new = GuessReplica()
            plan = Proposal(view, successor, frozenset(names))
            reports = {n: (r.view, r.snapshot()) for n, r in members.items()}
            if (
                new.joined(plan, accepted[joiner], own=joiner, quorum=quorum)
                or new.plan(reports, (), own=joiner, replicas=replicas, quorum=quorum) is True
            ):
                joined.append(joiner)
        assert len(joined) <= 1, f"{joined} both joined with {split} of {replicas} accepting j1"


async def test_host_pairing_a_replica_with_a_ledger_it_started_moves_no_entry_and_gets_no_guess() -> None:
    """The host starts three fresh enclaves (genesis: a second ledger, empty) and lists two of them as the peers of
    X, a member of alice's ledger. Before, X's reads merged every answer (its own, with alice's entry) and its
    writes reached the new ledger too, so alice's entry — epoch and all — moved into a ledger whose quorum the real
    one never hears from, and guesses counted there were counted nowhere else. Now a coordinator counts and merges
    only its own view, and a replica refuses a write of another view."""
    x, a, b = members()
    p, q, _ = members()  # the ledger the host started
    await GuessLedger([x, a, b], view=lambda: x.replica.view).enroll("alice", epoch=EPOCH)
    bridged = GuessLedger([x, p, q], view=lambda: x.replica.view, timeout=0.3)
    with pytest.raises(LedgerUnavailable):
        await bridged.read("alice")  # X alone is no quorum of its view
    await _wrong_guess(GuessLedger([x, a, p], view=lambda: x.replica.view, timeout=0.3))  # counted at {X, A}
    assert "alice" not in p.replica.entries  # P refused the write: nothing crossed over
    other_side = GuessLedger([p, q, x], view=lambda: p.replica.view, timeout=0.3)
    assert not (await other_side.read("alice")).enrolled  # the new ledger knows no alice: her vault fails closed
