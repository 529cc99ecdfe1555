"""Targets and tasks in SQL, on real SQLite and real PostgreSQL: claims, leases, retries, schedule, filters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from enclavekit.services.trust.errors import NotFound
from enclavekit.services.trust.migrations import VERSION_TABLE
from enclavekit.services.trust.model import Kind, Source, TargetOptions, TaskRecord, TaskStatus, Verdict
from enclavekit.services.trust.service import TrustService
from enclavekit.services.trust.settings import TrustSettings
from enclavekit.services.trust.store import AppFilter, NewApp, Outcome, TrustStore, metadata
from tests.test_trust_helpers import drop_postgres, nitro_sample, postgres_or_skip

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY, HALF_HOUR = timedelta(hours=24), timedelta(minutes=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrustStore]:
    if request.param == "sqlite":
        opened = TrustStore.open(f"sqlite:///{tmp_path / 'trust.db'}")
        yield opened
        opened.close()
        return
    url = postgres_or_skip()
    opened = TrustStore.open(url)
    try:
        yield opened
    finally:
        opened.close()
        drop_postgres(url)


def new_app(ident: str = "u-1", name: str = "app one", **changes: object) -> NewApp:
    values: dict[str, object] = {
        "id": ident,
        "name": name,
        "kind": Kind.APP,
        "source": Source.UPLOAD,
        "tee": "tdx",
        "subject": "mrtd 0011",
        "options": TargetOptions(),
        "evidence_key": "evidence/00",
        **changes,
    }
    return NewApp(**values)  # type: ignore[arg-type]


def outcome(verdict: Verdict = Verdict.VERIFIED, key: str = "reports/x.json") -> Outcome:
    return Outcome(
        verdict=verdict,
        valid=verdict is Verdict.VERIFIED,
        result_bucket="file:///objects",
        result_key=key,
        evidence_key="evidence/00",
        summary={"verdict": str(verdict)},
        os_name="dstack OS",
    )


def complete(store: TrustStore, task: TaskRecord, verdict: Verdict = Verdict.VERIFIED, *, now: datetime) -> bool:
    return store.complete(task, outcome(verdict), recheck_after_success=DAY, recheck_after_failure=HALF_HOUR, now=now)


def test_migrations_create_exactly_the_tables_the_code_uses(store: TrustStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    assert differences == []
    store.migrate()  # idempotent


def test_a_task_is_claimed_by_one_worker_only(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(worker: str) -> None:
        barrier.wait()
        if store.claim(task.id, worker, lease=30, now=T0) is not None:
            winners.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    claimed = store.get_task(task.id)
    assert claimed.status is TaskStatus.ACTIVE and claimed.attempts == 1 and claimed.worker_id == winners[0]


def test_a_worker_presumed_dead_cannot_overwrite_the_newer_attempt(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    first = store.claim(task.id, "slow", lease=5, now=T0)
    assert first is not None
    assert store.claim(task.id, "eager", lease=5, now=T0 + timedelta(seconds=1)) is None  # still leased
    second = store.claim(task.id, "eager", lease=5, now=T0 + timedelta(seconds=6))
    assert second is not None and second.attempts == 2
    assert not store.heartbeat(first, lease=5, now=T0 + timedelta(seconds=7))
    assert not complete(store, first, Verdict.FAILED, now=T0 + timedelta(seconds=8))
    assert complete(store, second, now=T0 + timedelta(seconds=9))
    done = store.get_task(task.id)
    assert done.status is TaskStatus.COMPLETED and done.verdict is Verdict.VERIFIED and done.attempts == 2
    assert not complete(store, second, now=T0 + timedelta(seconds=10))  # completed once, never twice
    assert store.get_app("u-1").verdict is Verdict.VERIFIED


def test_a_task_whose_worker_died_does_not_stay_active(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    moment = T0
    for attempt in (1, 2):
        claimed = store.claim(task.id, f"dies-{attempt}", lease=2, now=moment)
        assert claimed is not None and claimed.attempts == attempt
        moment += timedelta(seconds=3)
        assert store.recover_expired(max_attempts=3, recheck_after_failure=HALF_HOUR, now=moment) == [task.id]
        recovered = store.get_task(task.id)
        assert recovered.status is TaskStatus.PENDING and recovered.error_code == "worker_lost"
    claimed = store.claim(task.id, "dies-3", lease=2, now=moment)
    assert claimed is not None and claimed.attempts == 3
    moment += timedelta(seconds=3)
    assert store.recover_expired(max_attempts=3, recheck_after_failure=HALF_HOUR, now=moment) == []
    failed = store.get_task(task.id)
    assert failed.status is TaskStatus.FAILED and failed.error_code == "worker_lost"
    app = store.get_app("u-1")
    assert app.verdict is Verdict.ERROR and app.next_check_at == moment + HALF_HOUR


def test_a_retried_task_waits_for_its_backoff(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    claimed = store.claim(task.id, "w", lease=30, now=T0)
    assert claimed is not None
    later = T0 + timedelta(seconds=8)
    assert store.retry_later(claimed, code="endpoint_unavailable", message="refused", not_before=later)
    assert store.due_for_publish(republish_after=60, now=T0 + timedelta(seconds=1)) == []
    assert store.claim(task.id, "w", lease=30, now=T0 + timedelta(seconds=1)) is None
    assert store.due_for_publish(republish_after=60, now=later) == [task.id]
    again = store.claim(task.id, "w", lease=30, now=later)
    assert again is not None and again.attempts == 2


def test_unclaimed_published_tasks_are_published_again(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    assert store.due_for_publish(republish_after=60, now=T0) == [task.id]
    store.mark_enqueued([task.id], now=T0)
    assert store.due_for_publish(republish_after=60, now=T0 + timedelta(seconds=30)) == []
    assert store.due_for_publish(republish_after=60, now=T0 + timedelta(seconds=61)) == [task.id]


def test_reverification_follows_the_reference_schedule(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    claimed = store.claim(task.id, "w", lease=30, now=T0)
    assert claimed is not None and complete(store, claimed, now=T0)
    app = store.get_app("u-1")
    assert app.next_check_at == T0 + DAY and app.last_success_at == T0
    assert store.schedule_due(now=T0 + DAY - timedelta(seconds=1)) == []
    scheduled = store.schedule_due(now=T0 + DAY)
    assert len(scheduled) == 1
    assert store.schedule_due(now=T0 + DAY) == []  # a second dispatcher schedules nothing more
    second = store.claim(scheduled[0], "w", lease=30, now=T0 + DAY)
    assert second is not None and second.job_name == "scheduled"
    assert complete(store, second, Verdict.FAILED, now=T0 + DAY)
    app = store.get_app("u-1")
    assert app.verdict is Verdict.FAILED and app.next_check_at == T0 + DAY + HALF_HOUR
    assert app.last_success_at == T0 and app.last_failure_at == T0 + DAY
    assert [t.verdict for t in store.history("u-1")] == [Verdict.FAILED, Verdict.VERIFIED]


def test_an_older_task_finishing_late_does_not_replace_the_newer_verdict(store: TrustStore) -> None:
    _, old = store.add_target(new_app(), job_name="upload", now=T0)
    old_claim = store.claim(old.id, "slow", lease=300, now=T0)
    assert old_claim is not None
    store.set_enabled("u-1", True)
    # a manual re-verification while the first still runs returns the open task, not a second one
    assert store.request_verification("u-1", now=T0).id == old.id
    assert complete(store, old_claim, Verdict.FAILED, now=T0 + timedelta(seconds=1))
    newer = store.request_verification("u-1", now=T0 + timedelta(seconds=2))
    newer_claim = store.claim(newer.id, "fast", lease=30, now=T0 + timedelta(seconds=2))
    assert newer_claim is not None and complete(store, newer_claim, now=T0 + timedelta(seconds=3))
    assert store.get_app("u-1").verdict is Verdict.VERIFIED


def test_one_open_task_per_target(store: TrustStore) -> None:
    app, first = store.add_target(new_app(), job_name="upload", now=T0)
    again, second = store.add_target(new_app(), job_name="upload", now=T0)
    assert first.id == second.id and app.id == again.id
    assert len(store.history("u-1")) == 1
    with pytest.raises(NotFound):
        store.request_verification("u-unknown")


def test_app_list_filters_sorts_and_pages(store: TrustStore) -> None:
    for index in range(30):
        tee = "nitro" if index % 3 == 0 else "tdx"
        kind = Kind.KMS if index % 5 == 0 else Kind.APP
        _, task = store.add_target(
            new_app(f"u-{index:02d}", f"app {index:02d}", tee=tee, kind=kind, subject=f"subject-{index}"),
            job_name="upload",
            now=T0 + timedelta(seconds=index),
        )
        claimed = store.claim(task.id, "w", lease=30, now=T0)
        assert claimed is not None
        complete(store, claimed, Verdict.VERIFIED if index % 2 else Verdict.FAILED, now=T0 + timedelta(minutes=index))
    everything, total = store.list_apps(AppFilter(limit=10))
    assert total == 30 and len(everything) == 10
    assert everything[0].id == "u-29"  # most recently verified first
    nitro, total = store.list_apps(AppFilter(tee="nitro", limit=100))
    assert total == 10 and all(a.tee == "nitro" for a in nitro)
    failed_kms, total = store.list_apps(AppFilter(verdict="failed", kind="kms", limit=100))
    assert total == 3 and {a.id for a in failed_kms} == {"u-00", "u-10", "u-20"}
    by_name, _ = store.list_apps(AppFilter(sort="name", limit=3, offset=3))
    assert [a.name for a in by_name] == ["app 03", "app 04", "app 05"]
    problems_first, _ = store.list_apps(AppFilter(sort="status", limit=1))
    assert problems_first[0].verdict is Verdict.FAILED
    found, total = store.list_apps(AppFilter(q="SUBJECT-17"))
    assert total == 1 and found[0].id == "u-17"
    assert store.counts() == {"verified": 15, "failed": 15}
    assert store.facets()["tee"] == ["nitro", "tdx"]


def test_search_wildcards_are_taken_literally(store: TrustStore) -> None:
    store.add_target(new_app("u-a", "100% real"), job_name="upload", now=T0)
    store.add_target(new_app("u-b", "1000 real"), job_name="upload", now=T0)
    store.add_target(new_app("u-c", "a_b"), job_name="upload", now=T0)
    store.add_target(new_app("u-d", "axb"), job_name="upload", now=T0)
    assert [a.id for a in store.list_apps(AppFilter(q="100%"))[0]] == ["u-a"]
    assert [a.id for a in store.list_apps(AppFilter(q="a_b"))[0]] == ["u-c"]


def test_nothing_is_stored_half_when_the_database_fails(tmp_path: Path) -> None:
    settings = TrustSettings(state_dir=tmp_path)
    service = TrustService(settings)
    try:
        with service.store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE verification_tasks"))
        with pytest.raises(sa.exc.OperationalError):
            service.submit(nitro_sample("base_2024-11-30_nondebug.cbor").read_bytes())
        with service.store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM trust_apps")).scalar_one() == 0
        objects = tmp_path / "trust" / "objects"
        assert not any(p.is_file() for p in objects.rglob("*")) if objects.exists() else True
    finally:
        service.close()


def test_a_restarted_stack_moves_its_enclaves_to_their_new_endpoints(tmp_path: Path) -> None:
    service = TrustService(TrustSettings(state_dir=tmp_path))
    enclave = {"name": "demo", "pcr0": "ab" * 48, "attestation_url": "http://127.0.0.1:1111/attestation"}
    try:
        assert service.register_stack_enclaves([enclave]) == ["enclave-demo"]
        assert service.register_stack_enclaves([enclave]) == []  # unchanged: nothing to do
        (tmp_path / "stack.json").write_text(
            '{"services": {"relay_demo": {"attestation_url": "http://127.0.0.1:2222/attestation"}},'
            ' "enclaves": [{"name": "demo", "pcr0": "' + "cd" * 48 + '", "address": "unix:///x.sock"}]}'
        )
        assert service.register_stack_file(tmp_path / "stack.json") == ["enclave-demo"]
        app = service.store.get_app("enclave-demo")
        assert app.endpoint_url == "http://127.0.0.1:2222/attestation"
        assert app.options.pcrs == {0: "cd" * 48} and app.options.nonce
        assert app.next_check_at is not None  # due at once
        assert service.register_stack_file(tmp_path / "absent.json") == []
    finally:
        service.close()


def test_a_cancelled_task_cannot_be_completed_by_the_worker_holding_it(store: TrustStore) -> None:
    _, task = store.add_target(new_app(), job_name="upload", now=T0)
    held = store.claim(task.id, "w", lease=30, now=T0)
    assert held is not None
    cancelled = store.cancel(task.id, now=T0 + timedelta(seconds=1))
    assert cancelled.status is TaskStatus.CANCELLED
    assert not complete(store, held, now=T0 + timedelta(seconds=2))
    assert store.claim(task.id, "other", lease=30, now=T0 + timedelta(minutes=5)) is None
    assert store.get_app("u-1").verdict is Verdict.PENDING
    assert store.cancel(task.id).status is TaskStatus.CANCELLED  # cancelling twice is harmless
