"""The operator's member registry (real SQLite): what the bridge records, joined as the ledger's replicas know it —
and nothing of a user's data, PIN or invitation code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.services.vault.guesses import GuessEntry
from enclavekit.services.vault.invitation import issue
from enclavekit.services.vault.members import MemberRegistry, join_snapshots, registry_path

NOW = 1_800_000_000.0


def test_replica_snapshots_are_joined_so_a_stale_replica_hides_no_guess_or_lock() -> None:
    fresh = GuessEntry(attempts={"a": 3}, cleared={"a": 1}, generation=1)
    stale = GuessEntry(attempts={"a": 1}, generation=1)
    locked = GuessEntry(generation=1, locked_at=1)
    joined = join_snapshots(
        [
            {"alice": stale.to_json(), "bob": locked.to_json()},
            {"alice": fresh.to_json(), "bob": {"garbage": True}},  # a malformed entry is skipped, never a crash
        ]
    )
    assert joined["alice"].attempts_left == 8 and joined["bob"].locked


def test_registry_records_activity_state_and_invitation_uses_but_never_a_code(tmp_path: Path) -> None:
    registry = MemberRegistry.open(tmp_path)
    invitation, code = issue(ClientIdentityKey.generate(), ttl=60, now=NOW, user="alice")
    registry.add_invitation(invitation, created_at=NOW)
    registry.record_message("alice", "enroll", NOW + 1)
    registry.record_message("alice", "secret.put", NOW + 5)
    registry.record_ledger(
        {
            "alice": GuessEntry(attempts={"a": 2}, generation=1, limit=5),
            invitation.ledger_key: GuessEntry(claims=frozenset({"alice"})),
            "invite:" + "00" * 12: GuessEntry(claims=frozenset({"x", "y"})),  # issued elsewhere: still listed
        },
        NOW + 6,
    )
    [alice] = registry.members()
    assert (alice.status, alice.attempts_left, alice.guess_limit) == ("enrolled", 3, 5)
    assert alice.enrolled_at == NOW + 1 and alice.last_op == "secret.put" and alice.state_at == NOW + 6
    records = {r.id: r for r in registry.invitations()}
    assert records[invitation.id_hex].used_by == ("alice",) and records[invitation.id_hex].status(NOW) == "used"
    assert records["00" * 12].used_by == ("x", "y") and records["00" * 12].created_at is None
    registry.close()
    assert code.encode() not in registry_path(tmp_path).read_bytes()


def test_unused_invitation_is_open_until_it_expires(tmp_path: Path) -> None:
    registry = MemberRegistry.open(tmp_path)
    invitation, _ = issue(ClientIdentityKey.generate(), ttl=60, now=NOW)
    registry.add_invitation(invitation, created_at=NOW)
    [record] = registry.invitations()
    assert record.status(NOW + 59) == "open" and record.status(NOW + 61) == "expired"
    registry.close()
    assert MemberRegistry.open_existing(tmp_path / "elsewhere") is None
    assert not (tmp_path / "elsewhere").exists()


def test_invite_command_refuses_without_the_operator_key_or_with_a_bad_ttl_as_json(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from enclavekit.client.identity import load_or_create
    from enclavekit.services.vault.stack import operator_key_path

    command = [sys.executable, "-m", "enclavekit.cli", "vault", "invite", "create", "--state", str(tmp_path), "--json"]

    def invite(*args: str) -> tuple[int, dict[str, Any]]:
        run = subprocess.run([*command, *args], capture_output=True, timeout=60)
        return run.returncode, json.loads(run.stdout)

    status, answer = invite()
    assert status == 1 and answer["error"]["code"] == "no_operator_key"
    load_or_create(operator_key_path(tmp_path))
    status, answer = invite("--ttl", "400d")
    assert status == 1 and answer["error"]["code"] == "bad_ttl"
    status, answer = invite("--user", "bob", "--ttl", "2h")
    assert status == 0 and answer["user"] == "bob" and len(str(answer["code"])) == 146
