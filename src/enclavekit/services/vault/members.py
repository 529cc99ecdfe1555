"""The operator's view of the vault (host side): members, their vault state as the host may know it, invitations.

Written by the bridge (:class:`~enclavekit.services.vault.host.VaultBridge`) and the ``vault invite`` command;
read by ``enclavekit vault members`` / ``vault invite list`` and the web app's vault page. One SQLite file,
``STATE/vault/members.db`` (the project's :func:`enclavekit.database.create_engine`: WAL, busy timeout, so the
bridge, the command and the web app can share it). What it holds, and why the host may hold it (ADR 0021):

* per user: first seen, last activity and last operation (the bridge relays ``OwnerSpace.{user}.forVault.{op}``:
  it sees these anyway), and the vault state from the guess ledger — enrolled, locked, attempts left, the guess
  limit — joined over the snapshots of every vault enclave's replica (``vault.ledger.snapshot``, which already
  answers these counts to the host, since peers catch up through it). ``enrolled_at`` is when the bridge first
  saw the user's ``enroll`` that the ledger then showed as enrolled (a host-side time, not the enclave's).
* per invitation: id, user binding, issue and expiry times — never the code (a code on the host's disk would let
  the host enrol someone the operator did not invite); its use (the users it admitted) from the ledger.

Never a PIN, a secret, an envelope or anything inside one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from enclavekit.database import WRITE, create_engine
from enclavekit.services.vault.guesses import GuessEntry
from enclavekit.services.vault.invitation import Invitation

__all__ = ["INVITE_PREFIX", "InvitationRecord", "Member", "MemberRegistry", "join_snapshots", "registry_path"]

INVITE_PREFIX: Final = "invite:"
MAX_LIST: Final = 10_000
"""Rows one listing returns at most (newest first)."""

_metadata = sa.MetaData()
members_table = sa.Table(
    "vault_members",
    _metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_activity", sa.Float, nullable=False),
    sa.Column("last_op", sa.String(64), nullable=False),
    sa.Column("enroll_seen_at", sa.Float),
    sa.Column("enrolled_at", sa.Float),
    sa.Column("enrolled", sa.Boolean, nullable=False, default=False),
    sa.Column("locked", sa.Boolean, nullable=False, default=False),
    sa.Column("attempts_left", sa.Integer),
    sa.Column("guess_limit", sa.Integer),
    sa.Column("state_at", sa.Float),
)
invitations_table = sa.Table(
    "vault_invitations",
    _metadata,
    sa.Column("id", sa.String(24), primary_key=True),
    sa.Column("created_at", sa.Float),
    sa.Column("expires_at", sa.Integer),
    sa.Column("user", sa.String(64)),
    sa.Column("used_by", sa.Text),
    sa.Column("used_seen_at", sa.Float),
)


def registry_path(state: Path) -> Path:
    return state / "vault" / "members.db"


@dataclass(frozen=True, slots=True)
class Member:
    user: str
    first_seen: float
    last_activity: float
    last_op: str
    enrolled_at: float | None
    enrolled: bool
    locked: bool
    attempts_left: int | None
    guess_limit: int | None
    state_at: float | None

    @property
    def status(self) -> str:
        """``locked``, ``enrolled`` or ``seen`` (messages, but no vault in the ledger)."""
        return "locked" if self.locked else "enrolled" if self.enrolled else "seen"

    def to_json(self) -> dict[str, object]:
        return {
            "user": self.user,
            "status": self.status,
            "enrolled": self.enrolled,
            "locked": self.locked,
            "attempts_left": self.attempts_left,
            "guess_limit": self.guess_limit,
            "enrolled_at": self.enrolled_at,
            "first_seen": self.first_seen,
            "last_activity": self.last_activity,
            "last_op": self.last_op,
            "state_at": self.state_at,
        }


@dataclass(frozen=True, slots=True)
class InvitationRecord:
    id: str
    created_at: float | None
    expires_at: int | None
    user: str | None
    used_by: tuple[str, ...]
    """The users the ledger says presented the code (one: it admitted that user; more: contested, admits none)."""

    def status(self, now: float) -> str:
        """``used``, ``expired`` or ``open``."""
        if self.used_by:
            return "used"
        if self.expires_at is not None and now > self.expires_at:
            return "expired"
        return "open"

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "id": self.id,
            "status": self.status(now),
            "user": self.user,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "used_by": list(self.used_by),
        }


class MemberRegistry:
    """The registry over one database URL (default: ``STATE/vault/members.db``)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        with self.engine.connect().execution_options(**WRITE) as connection:
            _metadata.create_all(connection)
            connection.commit()

    @classmethod
    def open(cls, state: Path) -> MemberRegistry:
        return cls(f"sqlite:///{registry_path(state)}")

    @classmethod
    def open_existing(cls, state: Path) -> MemberRegistry | None:
        """The registry if the bridge or a command has made one (a reader creates no file)."""
        return cls.open(state) if registry_path(state).exists() else None

    def close(self) -> None:
        self.engine.dispose()

    def record_message(self, user: str, op: str, at: float) -> None:
        """The bridge relayed ``op`` for ``user`` at ``at`` (host time)."""
        m = members_table
        with self.engine.begin() as connection:
            connection.execution_options(**WRITE)
            row = connection.execute(sa.select(m.c.user).where(m.c.user == user)).first()
            values: dict[str, object] = {"last_activity": at, "last_op": op[:64]}
            if op == "enroll":
                values["enroll_seen_at"] = at
            if row is None:
                connection.execute(m.insert().values(user=user, first_seen=at, **values))
            else:
                connection.execute(m.update().where(m.c.user == user).values(**values))

    def record_ledger(self, entries: Mapping[str, GuessEntry], at: float) -> None:
        """The ledger as the bridge read it at ``at``: each user's state, each invitation's use."""
        m, i = members_table, invitations_table
        with self.engine.begin() as connection:
            connection.execution_options(**WRITE)
            for key, entry in entries.items():
                if key.startswith(INVITE_PREFIX):
                    invitation = key[len(INVITE_PREFIX) :]
                    used = json.dumps(sorted(entry.claims))
                    if connection.execute(sa.select(i.c.id).where(i.c.id == invitation)).first() is None:
                        connection.execute(i.insert().values(id=invitation, used_by=used, used_seen_at=at))
                    else:
                        connection.execute(i.update().where(i.c.id == invitation).values(used_by=used, used_seen_at=at))
                    continue
                row = connection.execute(sa.select(m.c.enrolled_at, m.c.enroll_seen_at).where(m.c.user == key)).first()
                state = {
                    "enrolled": entry.enrolled,
                    "locked": entry.locked,
                    "attempts_left": entry.attempts_left if entry.enrolled else None,
                    "guess_limit": entry.limit if entry.enrolled else None,
                    "state_at": at,
                }
                if row is None:
                    enrolled_at = at if entry.enrolled else None
                    connection.execute(
                        m.insert().values(
                            user=key, first_seen=at, last_activity=at, last_op="", enrolled_at=enrolled_at, **state
                        )
                    )
                else:
                    if entry.enrolled and row.enrolled_at is None:
                        state["enrolled_at"] = row.enroll_seen_at or at
                    connection.execute(m.update().where(m.c.user == key).values(**state))

    def add_invitation(self, invitation: Invitation, *, created_at: float) -> None:
        """The operator issued ``invitation`` (its code is not kept)."""
        with self.engine.begin() as connection:
            connection.execution_options(**WRITE)
            connection.execute(
                invitations_table.insert().values(
                    id=invitation.id_hex,
                    created_at=created_at,
                    expires_at=invitation.expires_at,
                    user=invitation.user,
                )
            )

    def members(self) -> list[Member]:
        m = members_table
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(m).order_by(m.c.last_activity.desc()).limit(MAX_LIST)).all()
        return [
            Member(
                r.user,
                r.first_seen,
                r.last_activity,
                r.last_op,
                r.enrolled_at,
                bool(r.enrolled),
                bool(r.locked),
                r.attempts_left,
                r.guess_limit,
                r.state_at,
            )
            for r in rows
        ]

    def invitations(self) -> list[InvitationRecord]:
        i = invitations_table
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(i).order_by(sa.func.coalesce(i.c.created_at, i.c.used_seen_at).desc()).limit(MAX_LIST)
            ).all()
        return [
            InvitationRecord(r.id, r.created_at, r.expires_at, r.user, tuple(json.loads(r.used_by or "[]")))
            for r in rows
        ]


def join_snapshots(snapshots: Iterable[Mapping[str, Mapping[str, object]]]) -> dict[str, GuessEntry]:
    """The join of replica snapshots (raw JSON entries): what every answering replica knows, per key. A malformed
    entry is skipped (a snapshot comes from an attested vault enclave, but the registry never trusts a crash)."""
    joined: dict[str, GuessEntry] = {}
    for snapshot in snapshots:
        for key, raw in snapshot.items():
            try:
                entry = GuessEntry.from_json(dict(raw))
            except ValueError:
                continue
            joined[key] = joined.get(key, GuessEntry()).merge(entry)
    return joined
