"""notify's storage on SQLite and PostgreSQL: the same tests, the same rules, on both."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from enclavekit.services.notify.store import AUTH_PROOF_TTL, DAY, NotifyStore, create_engine, open_store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    name = f"notify_store_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyStore]:
    url = f"sqlite:///{tmp_path / 'n.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = open_store(url)
    opened = NotifyStore(opened.engine, rng=random.Random(7))
    try:
        yield opened
    finally:
        opened.engine.dispose()


def _topic() -> str:
    return f"/xmtp/mls/1/g-{uuid.uuid4().hex}"


def _key() -> str:
    return uuid.uuid4().hex * 2 + "0" * 20


NOW = 1_800_000_000


def test_migrations_are_idempotent(store: NotifyStore) -> None:
    """Every process upgrades at start-up: a second run must keep the rows and leave the schema at head."""
    import sqlalchemy as sa

    from enclavekit.services.notify.migrations import HEAD, VERSION_TABLE, upgrade

    topic, key = _topic(), _key()
    store.subscribe([(topic, key, NOW + 3600)], "aa" * 60)
    tables = set(sa.inspect(store.engine).get_table_names())
    upgrade(store.engine)
    upgrade(store.engine)
    assert set(sa.inspect(store.engine).get_table_names()) == tables
    with store.engine.connect() as connection:
        versions = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    assert versions == [HEAD]
    row = store.get(topic, key, now=NOW)
    assert row is not None and row.encrypted_push_id == "aa" * 60


def test_upsert_overwrites_and_clears_tombstones(store: NotifyStore) -> None:
    topic, key = _topic(), _key()
    store.subscribe([(topic, key, NOW + 3600)], "aa" * 60)
    assert store.unsubscribe(topic, key, "bb" * 60, now=NOW) == "tombstoned"
    assert store.get(topic, key, now=NOW).deletion_request == ("bb" * 60,)  # type: ignore[union-attr]
    store.subscribe([(topic, key, NOW + 7200)], "cc" * 60)
    row = store.get(topic, key, now=NOW)
    assert row is not None and row.encrypted_push_id == "cc" * 60 and row.deletion_request == ()


def test_stored_ttls_get_a_random_extra_against_timing_analysis(store: NotifyStore) -> None:
    topic = _topic()
    items = [(topic, _key(), NOW + 3600) for _ in range(40)]
    store.subscribe(items, "aa" * 60)
    extras = [s.ttl - (NOW + 3600) for s in store.all_for_topic(topic, now=NOW)]
    assert all(60 <= e <= 86_400 for e in extras)
    assert len(set(extras)) > 30, "the extra is random per row"


def test_expired_rows_are_invisible_and_swept(store: NotifyStore) -> None:
    topic = _topic()
    store.subscribe([(topic, _key(), NOW - 100_000)], "aa" * 60)  # expired even with the largest extra
    live = _key()
    store.subscribe([(topic, live, NOW + 3600)], "aa" * 60)
    store.put_auth_proof("0x" + "1" * 64, "aa" * 60, now=NOW - 300 * DAY)
    assert [s.hmac_key for s in store.all_for_topic(topic, now=NOW)] == [live]
    assert store.auth_proof("0x" + "1" * 64, now=NOW) is None
    assert store.sweep_expired(now=NOW) >= 2
    assert [r for r in store.dump() if r.get("topic") == topic and r["hmac_key"] != live] == []


def test_pages_cover_every_subscription_once(store: NotifyStore) -> None:
    topic = _topic()
    keys = sorted(_key() for _ in range(23))
    for key in keys:
        store.subscribe([(topic, key, NOW + 3600)], "aa" * 60)
    assert [s.hmac_key for s in store.all_for_topic(topic, now=NOW, page_size=5)] == keys


def test_only_the_owner_deletes_and_others_only_leave_tombstones(store: NotifyStore) -> None:
    topic, key = _topic(), _key()
    store.subscribe([(topic, key, NOW + 3600)], "aa" * 60)
    assert store.unsubscribe(topic, key, "bb" * 60, now=NOW) == "tombstoned"
    assert store.unsubscribe(topic, key, "bb" * 60, now=NOW) == "tombstoned"
    assert store.get(topic, key, now=NOW).deletion_request == ("bb" * 60,)  # type: ignore[union-attr]
    assert store.unsubscribe(topic, key, "aa" * 60, now=NOW) == "deleted"
    assert store.unsubscribe(topic, key, "aa" * 60, now=NOW) == "not_found"


def test_tombstones_from_many_writers_at_once_are_all_kept(store: NotifyStore) -> None:
    topic, key = _topic(), _key()
    store.subscribe([(topic, key, NOW + 3600)], "aa" * 60)
    writers = [f"{i:02x}" * 60 for i in range(16)]
    threads = [threading.Thread(target=store.unsubscribe, args=(topic, key, w), kwargs={"now": NOW}) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = store.get(topic, key, now=NOW)
    assert row is not None and sorted(row.deletion_request) == sorted(writers)


def test_tombstone_deletion_touches_only_that_topic(store: NotifyStore) -> None:
    first, second = _topic(), _topic()
    store.subscribe([(first, _key(), NOW + 3600), (second, _key(), NOW + 3600)], "aa" * 60)
    assert store.delete_for_push_ids(first, ["aa" * 60]) == 1
    assert list(store.all_for_topic(first, now=NOW)) == []
    assert len(list(store.all_for_topic(second, now=NOW))) == 1


def test_auth_proofs_rotate_at_utc_midnight_and_refresh_their_ttl(store: NotifyStore) -> None:
    nullifier = "0x" + uuid.uuid4().hex * 2
    proof = store.put_auth_proof(nullifier, "aa" * 60, now=NOW + 12_345)
    assert proof.push_id_rotated_at % DAY == 0 and proof.push_id_rotated_at <= NOW + 12_345
    assert AUTH_PROOF_TTL[0] <= proof.ttl - (NOW + 12_345) <= AUTH_PROOF_TTL[1]
    later = NOW + 100 * DAY
    store.refresh_auth_proof(nullifier, now=later)
    refreshed = store.auth_proof(nullifier, now=later)
    assert refreshed is not None and refreshed.ttl >= later + AUTH_PROOF_TTL[0]
    assert refreshed.push_id_rotated_at == proof.push_id_rotated_at, "activity does not count as a rotation"


def test_concurrent_upserts_of_one_subscription_leave_one_row(store: NotifyStore) -> None:
    topic, key = _topic(), _key()
    threads = [
        threading.Thread(target=store.subscribe, args=([(topic, key, NOW + 3600)], f"{i:02x}" * 60)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(store.all_for_topic(topic, now=NOW))) == 1


def test_sqlite_engine_is_ready_for_several_processes(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'deep' / 'n.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
