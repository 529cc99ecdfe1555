"""Subscriptions and auth proofs in SQL (SQLAlchemy Core): SQLite by default, PostgreSQL with a URL.

Only ciphertext and metadata live here: topics, HMAC keys, sealed push IDs (hex), expiry times. The schema is
created by the Alembic migrations in ``migrations/`` (:func:`open_store` runs them).

* subscriptions — key ``(topic, hmac_key)``; ``encrypted_push_id``, ``ttl`` (unix s, with a random extra of
  60..86400 s against timing analysis), ``deletion_request`` (sealed push IDs of others who asked to delete
  it: tombstones, resolved in plaintext by the enclave).
* auth proofs — key ``nullifier_hash``; ``encrypted_push_id``, ``push_id_rotated_at`` (UTC midnight),
  ``ttl`` (now + a random 6..8 months, refreshed on every authorize).

Expired rows are invisible to reads and removed by :meth:`NotifyStore.sweep_expired`. On SQLite, writes begin
``IMMEDIATE`` so concurrent processes wait for each other instead of failing half-way; on PostgreSQL the
tombstone update locks its row (``FOR UPDATE``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from enclavekit.database import WRITE, create_engine

__all__ = [
    "AUTH_PROOF_TTL",
    "AuthProof",
    "NotifyStore",
    "Subscription",
    "auth_proofs",
    "create_engine",
    "metadata",
    "open_store",
    "subscriptions",
]

DAY = 86_400
AUTH_PROOF_TTL = (180 * DAY, 240 * DAY)
"""An auth proof lives a random 6..8 months after its last use."""
SUBSCRIPTION_JITTER = (60, 86_400)

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

subscriptions = sa.Table(
    "notify_subscriptions",
    metadata,
    sa.Column("topic", sa.String(256), primary_key=True),
    sa.Column("hmac_key", sa.String(84), primary_key=True),
    sa.Column("encrypted_push_id", sa.String(1120), nullable=False),
    sa.Column("ttl", sa.BigInteger, nullable=False),
    sa.Column("deletion_request", _JSON, nullable=False),
    sa.Index("notify_subscriptions_ttl", "ttl"),
)

auth_proofs = sa.Table(
    "notify_auth_proofs",
    metadata,
    sa.Column("nullifier_hash", sa.String(66), primary_key=True),
    sa.Column("encrypted_push_id", sa.String(1120), nullable=False),
    sa.Column("push_id_rotated_at", sa.BigInteger, nullable=False),
    sa.Column("ttl", sa.BigInteger, nullable=False),
    sa.Index("notify_auth_proofs_ttl", "ttl"),
)


_PAGE = (  # built once: ingest runs it for every message, and building a select costs more than running it
    sa.select(subscriptions)
    .where(
        subscriptions.c.topic == sa.bindparam("topic"),
        subscriptions.c.hmac_key > sa.bindparam("after"),
        subscriptions.c.ttl > sa.bindparam("now"),
    )
    .order_by(subscriptions.c.hmac_key)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str
    hmac_key: str
    encrypted_push_id: str
    ttl: int
    deletion_request: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthProof:
    nullifier_hash: str
    encrypted_push_id: str
    push_id_rotated_at: int
    ttl: int


def utc_midnight(now: int) -> int:
    return now - now % DAY


class NotifyStore:
    """Every query notify makes. Methods are synchronous (call them from a thread in async code)."""

    def __init__(self, engine: Engine, *, rng: random.Random | None = None) -> None:
        self.engine = engine
        self._rng = rng or random.SystemRandom()
        self._upsert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            connection = connection.execution_options(**WRITE)
            with connection.begin():
                yield connection

    # --- subscriptions ---------------------------------------------------------------------------------------

    def subscribe(self, items: Sequence[tuple[str, str, int]], encrypted_push_id: str) -> None:
        """Upsert ``(topic, hmac_key, ttl)`` rows for this push ID; each stored TTL gets a random extra."""
        rows = [
            {
                "topic": topic,
                "hmac_key": hmac_key,
                "encrypted_push_id": encrypted_push_id,
                "ttl": ttl + self._rng.randint(*SUBSCRIPTION_JITTER),
                "deletion_request": [],
            }
            for topic, hmac_key, ttl in items
        ]
        if not rows:
            return
        statement = self._upsert(subscriptions)
        statement = statement.on_conflict_do_update(
            index_elements=["topic", "hmac_key"],
            set_={
                "encrypted_push_id": statement.excluded.encrypted_push_id,
                "ttl": statement.excluded.ttl,
                "deletion_request": statement.excluded.deletion_request,
            },
        )
        with self._write() as connection:
            connection.execute(statement, rows)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """One connection for several reads (``page``, ``all_for_topic``): ingest reads a whole batch on it."""
        with self.engine.connect() as connection:
            yield connection

    def page(
        self, topic: str, *, now: int, after: str = "", limit: int = 500, connection: Connection | None = None
    ) -> list[Subscription]:
        """Live subscriptions of ``topic`` with ``hmac_key > after``, in key order (paginate with the last key)."""
        parameters = {"topic": topic, "after": after, "now": now, "limit": limit}
        if connection is not None:
            return [_subscription(row) for row in connection.execute(_PAGE, parameters).mappings()]
        with self.reading() as own:
            return [_subscription(row) for row in own.execute(_PAGE, parameters).mappings()]

    def all_for_topic(
        self, topic: str, *, now: int, page_size: int = 500, connection: Connection | None = None
    ) -> Iterator[Subscription]:
        after = ""
        while True:
            page = self.page(topic, now=now, after=after, limit=page_size, connection=connection)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].hmac_key

    def get(self, topic: str, hmac_key: str, *, now: int) -> Subscription | None:
        query = sa.select(subscriptions).where(
            subscriptions.c.topic == topic, subscriptions.c.hmac_key == hmac_key, subscriptions.c.ttl > now
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return None if row is None else _subscription(row)

    def unsubscribe(
        self, topic: str, hmac_key: str, encrypted_push_id: str, *, now: int
    ) -> Literal["deleted", "tombstoned", "not_found"]:
        """The owner's request deletes the row; anyone else's adds their sealed push ID to its tombstones."""
        key = (subscriptions.c.topic == topic) & (subscriptions.c.hmac_key == hmac_key)
        with self._write() as connection:
            query = sa.select(subscriptions).where(key, subscriptions.c.ttl > now)
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update()
            row = connection.execute(query).mappings().first()
            if row is None:
                return "not_found"
            if row["encrypted_push_id"] == encrypted_push_id:
                connection.execute(sa.delete(subscriptions).where(key))
                return "deleted"
            tombstones = list(row["deletion_request"] or [])
            if encrypted_push_id not in tombstones:
                tombstones.append(encrypted_push_id)
                connection.execute(sa.update(subscriptions).where(key).values(deletion_request=tombstones[-64:]))
            return "tombstoned"

    def delete_for_push_ids(self, topic: str, encrypted_push_ids: Iterable[str]) -> int:
        """Delete ``topic``'s rows of these push IDs (the enclave found them tombstoned by their owner)."""
        ids = list(set(encrypted_push_ids))
        if not ids:
            return 0
        with self._write() as connection:
            result = connection.execute(
                sa.delete(subscriptions).where(
                    subscriptions.c.topic == topic, subscriptions.c.encrypted_push_id.in_(ids)
                )
            )
            return int(result.rowcount or 0)

    # --- auth proofs -----------------------------------------------------------------------------------------

    def auth_proof(self, nullifier_hash: str, *, now: int) -> AuthProof | None:
        query = sa.select(auth_proofs).where(auth_proofs.c.nullifier_hash == nullifier_hash, auth_proofs.c.ttl > now)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None:
            return None
        return AuthProof(row["nullifier_hash"], row["encrypted_push_id"], row["push_id_rotated_at"], row["ttl"])

    def _proof_ttl(self, now: int) -> int:
        return now + self._rng.randint(*AUTH_PROOF_TTL)

    def put_auth_proof(self, nullifier_hash: str, encrypted_push_id: str, *, now: int) -> AuthProof:
        """Store (or rotate to) ``encrypted_push_id``; the rotation time is today's UTC midnight."""
        row: dict[str, str | int] = {
            "nullifier_hash": nullifier_hash,
            "encrypted_push_id": encrypted_push_id,
            "push_id_rotated_at": utc_midnight(now),
            "ttl": self._proof_ttl(now),
        }
        statement = self._upsert(auth_proofs)
        statement = statement.on_conflict_do_update(
            index_elements=["nullifier_hash"],
            set_={k: statement.excluded[k] for k in ("encrypted_push_id", "push_id_rotated_at", "ttl")},
        )
        with self._write() as connection:
            connection.execute(statement, row)
        return AuthProof(nullifier_hash, encrypted_push_id, utc_midnight(now), int(row["ttl"]))

    def refresh_auth_proof(self, nullifier_hash: str, *, now: int) -> None:
        """Activity: push the proof's expiry to a new random 6..8 months from now."""
        with self._write() as connection:
            connection.execute(
                sa.update(auth_proofs)
                .where(auth_proofs.c.nullifier_hash == nullifier_hash)
                .values(ttl=self._proof_ttl(now))
            )

    # --- housekeeping ----------------------------------------------------------------------------------------

    def sweep_expired(self, *, now: int) -> int:
        """Delete expired subscriptions and auth proofs; returns how many rows went."""
        with self._write() as connection:
            removed = connection.execute(sa.delete(subscriptions).where(subscriptions.c.ttl <= now)).rowcount or 0
            removed += connection.execute(sa.delete(auth_proofs).where(auth_proofs.c.ttl <= now)).rowcount or 0
        return int(removed)

    def dump(self) -> Iterator[dict[str, Any]]:
        """Every row of both tables (audits and tests: what the host holds)."""
        with self.engine.connect() as connection:
            for table in (subscriptions, auth_proofs):
                for row in connection.execute(sa.select(table)).mappings():
                    yield {"table": table.name, **dict(row)}


def _subscription(row: Any) -> Subscription:
    return Subscription(
        row["topic"], row["hmac_key"], row["encrypted_push_id"], int(row["ttl"]), tuple(row["deletion_request"] or ())
    )


def open_store(url: str) -> NotifyStore:
    """An engine for ``url`` with the schema migrated to the newest revision."""
    from enclavekit.services.notify.migrations import upgrade

    engine = create_engine(url)
    upgrade(engine)
    return NotifyStore(engine)
