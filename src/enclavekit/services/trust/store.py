"""Targets and verification tasks in SQL (SQLAlchemy Core): SQLite by default, PostgreSQL with a URL.

The database is the source of truth; the queue only carries task ids. Every state change is one transaction
and every change a worker makes is conditional on the attempt it claimed, so a worker that was presumed dead
and comes back cannot overwrite a newer attempt's result, and a task is completed at most once:

* :meth:`TrustStore.claim` — ``pending`` (or ``active`` with an expired lease) → ``active``, attempt + 1;
* :meth:`TrustStore.heartbeat` — extend the lease of the attempt we hold;
* :meth:`TrustStore.complete` / :meth:`TrustStore.retry_later` / :meth:`TrustStore.fail` — end the attempt
  we hold, and update the target's summary and next check in the same transaction;
* :meth:`TrustStore.recover_expired` — active tasks whose lease ran out (their worker died) go back to
  ``pending`` (or ``failed`` once out of attempts): no task stays ``active`` forever.

On SQLite, write transactions begin ``IMMEDIATE`` (one writer at a time, waiting up to the busy timeout) so
concurrent processes never fail with "database is locked" half-way through a transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.types import TypeDecorator

from enclavekit.database import WRITE, create_engine
from enclavekit.services.trust.errors import NotFound
from enclavekit.services.trust.model import (
    AppRecord,
    Kind,
    Source,
    TargetOptions,
    TaskRecord,
    TaskStatus,
    Verdict,
)

__all__ = [
    "AppFilter",
    "NewApp",
    "Outcome",
    "TrustStore",
    "apps_table",
    "metadata",
    "tasks_table",
]


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored as naive UTC (the same on SQLite and PostgreSQL)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("datetimes stored by the trust service must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

apps_table = sa.Table(
    "trust_apps",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("tee", sa.String(16), nullable=False),
    sa.Column("endpoint_url", sa.Text, nullable=True),
    sa.Column("evidence_key", sa.String(200), nullable=True),
    sa.Column("collateral_key", sa.String(200), nullable=True),
    sa.Column("compose_key", sa.String(200), nullable=True),
    sa.Column("options", _JSON, nullable=False),
    sa.Column("app_metadata", _JSON, nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("os_name", sa.String(200), nullable=True),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("summary", _JSON, nullable=False),
    sa.Column("last_task_id", sa.String(36), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("last_verified_at", UtcDateTime, nullable=True),
    sa.Column("last_success_at", UtcDateTime, nullable=True),
    sa.Column("last_failure_at", UtcDateTime, nullable=True),
    sa.Column("next_check_at", UtcDateTime, nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Index("ix_trust_apps_verdict", "verdict"),
    sa.Index("ix_trust_apps_next_check_at", "next_check_at"),
    sa.Index("ix_trust_apps_last_verified_at", "last_verified_at"),
    sa.Index("ix_trust_apps_name", "name"),
)

tasks_table = sa.Table(
    "verification_tasks",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("trust_apps.id", ondelete="CASCADE"), nullable=False),
    sa.Column("job_name", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("valid", sa.Boolean, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("app_metadata", _JSON, nullable=False),
    sa.Column("verification_flags", _JSON, nullable=False),
    sa.Column("evidence_key", sa.String(200), nullable=True),
    sa.Column("result_bucket", sa.String(200), nullable=True),
    sa.Column("result_key", sa.String(200), nullable=True),
    sa.Column("summary", _JSON, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.String(64), nullable=True),
    sa.Column("lease_until", UtcDateTime, nullable=True),
    sa.Column("not_before", UtcDateTime, nullable=True),
    sa.Column("enqueued_at", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Index("ix_verification_tasks_app_id", "app_id"),
    sa.Index("ix_verification_tasks_status", "status"),
    sa.Index("ix_verification_tasks_created_at", "created_at"),
    sa.Index("ix_verification_tasks_started_at", "started_at"),
    sa.Index("ix_verification_tasks_finished_at", "finished_at"),
)

_OPEN = (TaskStatus.PENDING.value, TaskStatus.ACTIVE.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewApp:
    """A target to create (or find, if one with this id exists)."""

    id: str
    name: str
    kind: Kind
    source: Source
    tee: str
    subject: str
    options: TargetOptions
    endpoint_url: str | None = None
    evidence_key: str | None = None
    collateral_key: str | None = None
    compose_key: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How an attempt ended with a report (``completed``)."""

    verdict: Verdict
    valid: bool
    result_bucket: str
    result_key: str
    evidence_key: str | None
    summary: Mapping[str, Any]
    error_code: str | None = None
    error_message: str | None = None
    tee: str | None = None
    subject: str | None = None
    os_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AppFilter:
    """The app list's filters: a keyword, and exact values for the rest (None: any)."""

    q: str = ""
    tee: str | None = None
    kind: str | None = None
    verdict: str | None = None
    source: str | None = None
    os_name: str | None = None
    sort: str = "recent"
    limit: int = 50
    offset: int = 0


def _app(row: RowMapping) -> AppRecord:
    return AppRecord(
        id=row["id"],
        name=row["name"],
        kind=Kind(row["kind"]),
        source=Source(row["source"]),
        tee=row["tee"],
        endpoint_url=row["endpoint_url"],
        evidence_key=row["evidence_key"],
        collateral_key=row["collateral_key"],
        compose_key=row["compose_key"],
        options=TargetOptions.from_json(row["options"]),
        metadata=row["app_metadata"] or {},
        subject=row["subject"],
        os_name=row["os_name"],
        verdict=Verdict(row["verdict"]),
        summary=row["summary"] or {},
        last_task_id=row["last_task_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_verified_at=row["last_verified_at"],
        last_success_at=row["last_success_at"],
        last_failure_at=row["last_failure_at"],
        next_check_at=row["next_check_at"],
        enabled=row["enabled"],
    )


def _task(row: RowMapping) -> TaskRecord:
    return TaskRecord(
        id=row["id"],
        app_id=row["app_id"],
        job_name=row["job_name"],
        status=TaskStatus(row["status"]),
        verdict=None if row["verdict"] is None else Verdict(row["verdict"]),
        valid=row["valid"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        app_metadata=row["app_metadata"] or {},
        verification_flags=row["verification_flags"] or {},
        evidence_key=row["evidence_key"],
        result_bucket=row["result_bucket"],
        result_key=row["result_key"],
        summary=row["summary"] or {},
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
        not_before=row["not_before"],
        enqueued_at=row["enqueued_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _now() -> datetime:
    return datetime.now(UTC)


class TrustStore:
    """All SQL of the trust service. Methods are synchronous (call them from a thread in async code)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> TrustStore:
        store = cls(create_engine(url))
        if migrate:
            store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    # --- schema ---------------------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (serialised across processes)."""
        from enclavekit.services.trust.migrations import upgrade

        with self._migration_lock():
            upgrade(self.engine)

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(727271)"))
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(727271)"))
                    conn.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with Path(f"{database}.migrate.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(**WRITE)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # --- targets --------------------------------------------------------------------------------------------

    def add_target(
        self, app: NewApp, *, job_name: str, now: datetime | None = None, flags: Mapping[str, Any] | None = None
    ) -> tuple[AppRecord, TaskRecord]:
        """Create the target (unless it exists) and a task to verify it, unless one is already open.

        Returns the target and its open task. One transaction: both rows or neither.
        """
        now = now or _now()
        with self._write() as conn:
            existing = conn.execute(sa.select(apps_table).where(apps_table.c.id == app.id)).mappings().first()
            if existing is None:
                conn.execute(
                    apps_table.insert().values(
                        id=app.id,
                        name=app.name,
                        kind=str(app.kind),
                        source=str(app.source),
                        tee=app.tee,
                        endpoint_url=app.endpoint_url,
                        evidence_key=app.evidence_key,
                        collateral_key=app.collateral_key,
                        compose_key=app.compose_key,
                        options=app.options.to_json(),
                        app_metadata=dict(app.metadata),
                        subject=app.subject,
                        os_name=None,
                        verdict=str(Verdict.PENDING),
                        summary={},
                        last_task_id=None,
                        created_at=now,
                        updated_at=now,
                        enabled=True,
                    )
                )
            task = self._open_task(conn, app.id)
            if task is None:
                task = self._insert_task(conn, app.id, job_name, app.metadata, flags or app.options.to_json(), now)
            record = conn.execute(sa.select(apps_table).where(apps_table.c.id == app.id)).mappings().one()
            return _app(record), task

    def request_verification(self, app_id: str, *, job_name: str = "manual", now: datetime | None = None) -> TaskRecord:
        """A task to verify ``app_id`` now: the open one if there is one, else a new one."""
        now = now or _now()
        with self._write() as conn:
            row = conn.execute(sa.select(apps_table).where(apps_table.c.id == app_id)).mappings().first()
            if row is None:
                raise NotFound(f"no app {app_id!r}")
            task = self._open_task(conn, app_id)
            if task is not None:
                return task
            return self._insert_task(conn, app_id, job_name, row["app_metadata"], row["options"], now)

    def update_endpoint(
        self, app_id: str, *, endpoint_url: str, options: TargetOptions, now: datetime | None = None
    ) -> bool:
        """Point an endpoint target at a new URL or options (a restarted stack); True if anything changed, and
        then its next check is due at once."""
        now = now or _now()
        with self._write() as conn:
            row = conn.execute(sa.select(apps_table).where(apps_table.c.id == app_id)).mappings().first()
            if row is None:
                raise NotFound(f"no app {app_id!r}")
            if row["endpoint_url"] == endpoint_url and row["options"] == options.to_json():
                return False
            conn.execute(
                apps_table.update()
                .where(apps_table.c.id == app_id)
                .values(
                    endpoint_url=endpoint_url,
                    subject=endpoint_url[:200],
                    options=options.to_json(),
                    app_metadata={**(row["app_metadata"] or {}), "endpoint": endpoint_url},
                    next_check_at=now,
                    updated_at=now,
                )
            )
            return True

    def set_enabled(self, app_id: str, enabled: bool) -> None:
        with self._write() as conn:
            result = conn.execute(
                apps_table.update().where(apps_table.c.id == app_id).values(enabled=enabled, updated_at=_now())
            )
            if result.rowcount == 0:
                raise NotFound(f"no app {app_id!r}")

    def _open_task(self, conn: Connection, app_id: str) -> TaskRecord | None:
        row = (
            conn.execute(
                sa.select(tasks_table)
                .where(tasks_table.c.app_id == app_id, tasks_table.c.status.in_(_OPEN))
                .order_by(tasks_table.c.created_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        return None if row is None else _task(row)

    def _insert_task(
        self,
        conn: Connection,
        app_id: str,
        job_name: str,
        app_metadata: Mapping[str, Any],
        flags: Mapping[str, Any],
        now: datetime,
    ) -> TaskRecord:
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "app_id": app_id,
            "job_name": job_name,
            "status": TaskStatus.PENDING.value,
            "app_metadata": dict(app_metadata),
            "verification_flags": dict(flags),
            "summary": {},
            "attempts": 0,
            "created_at": now,
        }
        conn.execute(tasks_table.insert().values(**values))
        row = conn.execute(sa.select(tasks_table).where(tasks_table.c.id == values["id"])).mappings().one()
        return _task(row)

    # --- reads ----------------------------------------------------------------------------------------------

    def get_app(self, app_id: str) -> AppRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(apps_table).where(apps_table.c.id == app_id)).mappings().first()
        if row is None:
            raise NotFound(f"no app {app_id!r}")
        return _app(row)

    def get_task(self, task_id: str) -> TaskRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(tasks_table).where(tasks_table.c.id == task_id)).mappings().first()
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return _task(row)

    def history(self, app_id: str, *, limit: int = 50) -> list[TaskRecord]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks_table)
                .where(tasks_table.c.app_id == app_id)
                .order_by(tasks_table.c.created_at.desc())
                .limit(limit)
            ).mappings()
            return [_task(row) for row in rows]

    def list_apps(self, filters: AppFilter) -> tuple[list[AppRecord], int]:
        """One page of targets matching ``filters``, and how many match in all."""
        conditions: list[sa.ColumnElement[bool]] = [apps_table.c.enabled.is_(True)]
        keyword = filters.q.strip().lower()
        if keyword:
            pattern = f"%{_escape_like(keyword)}%"
            conditions.append(
                sa.or_(
                    *(
                        sa.func.lower(column).like(pattern, escape="\\")
                        for column in (apps_table.c.name, apps_table.c.id, apps_table.c.subject, apps_table.c.os_name)
                    )
                )
            )
        for column, value in (
            (apps_table.c.tee, filters.tee),
            (apps_table.c.kind, filters.kind),
            (apps_table.c.verdict, filters.verdict),
            (apps_table.c.source, filters.source),
            (apps_table.c.os_name, filters.os_name),
        ):
            if value:
                conditions.append(column == value)
        order: list[Any]
        if filters.sort == "name":
            order = [sa.func.lower(apps_table.c.name), apps_table.c.id]
        elif filters.sort == "status":
            rank = sa.case(
                {"failed": 0, "error": 1, "incomplete": 2, "pending": 3, "verified": 4},
                value=apps_table.c.verdict,
                else_=5,
            )
            order = [rank, sa.func.lower(apps_table.c.name)]
        elif filters.sort == "created":
            order = [apps_table.c.created_at.desc(), apps_table.c.id]
        else:
            order = [apps_table.c.last_verified_at.desc().nulls_last(), apps_table.c.created_at.desc()]
        query = (
            sa.select(apps_table)
            .where(*conditions)
            .order_by(*order)
            .limit(max(1, min(filters.limit, 500)))
            .offset(max(0, filters.offset))
        )
        with self._read() as conn:
            rows = [_app(row) for row in conn.execute(query).mappings()]
            total = conn.execute(sa.select(sa.func.count()).select_from(apps_table).where(*conditions)).scalar_one()
        return rows, int(total)

    def counts(self) -> dict[str, int]:
        """How many enabled targets have each verdict."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(apps_table.c.verdict, sa.func.count())
                .where(apps_table.c.enabled.is_(True))
                .group_by(apps_table.c.verdict)
            ).all()
        return {str(verdict): int(count) for verdict, count in rows}

    def facets(self) -> dict[str, list[str]]:
        """The distinct values the app list can be filtered by."""
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            for name, column in (("tee", apps_table.c.tee), ("kind", apps_table.c.kind), ("os", apps_table.c.os_name)):
                values = conn.execute(sa.select(column).where(column.is_not(None)).distinct()).scalars()
                out[name] = sorted(str(v) for v in values if v)
        return out

    def task_counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(sa.select(tasks_table.c.status, sa.func.count()).group_by(tasks_table.c.status)).all()
        return {str(status): int(count) for status, count in rows}

    # --- the worker's side ----------------------------------------------------------------------------------

    def claim(self, task_id: str, worker_id: str, *, lease: float, now: datetime | None = None) -> TaskRecord | None:
        """Take ``task_id`` for one attempt; None if it is not ours to run (done, cancelled, leased, not due)."""
        now = now or _now()
        claimable = sa.or_(
            sa.and_(
                tasks_table.c.status == TaskStatus.PENDING.value,
                sa.or_(tasks_table.c.not_before.is_(None), tasks_table.c.not_before <= now),
            ),
            sa.and_(tasks_table.c.status == TaskStatus.ACTIVE.value, tasks_table.c.lease_until < now),
        )
        with self._write() as conn:
            result = conn.execute(
                tasks_table.update()
                .where(tasks_table.c.id == task_id, claimable)
                .values(
                    status=TaskStatus.ACTIVE.value,
                    attempts=tasks_table.c.attempts + 1,
                    worker_id=worker_id,
                    lease_until=now + timedelta(seconds=lease),
                    started_at=now,
                    not_before=None,
                )
            )
            if result.rowcount != 1:
                return None
            row = conn.execute(sa.select(tasks_table).where(tasks_table.c.id == task_id)).mappings().one()
            return _task(row)

    def heartbeat(self, task: TaskRecord, *, lease: float, now: datetime | None = None) -> bool:
        """Extend the lease of the attempt ``task`` holds; False if it is no longer ours."""
        now = now or _now()
        with self._write() as conn:
            result = conn.execute(
                tasks_table.update().where(*self._ours(task)).values(lease_until=now + timedelta(seconds=lease))
            )
            return result.rowcount == 1

    @staticmethod
    def _ours(task: TaskRecord) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            tasks_table.c.id == task.id,
            tasks_table.c.status == TaskStatus.ACTIVE.value,
            tasks_table.c.attempts == task.attempts,
            tasks_table.c.worker_id == task.worker_id,
        )

    def complete(
        self,
        task: TaskRecord,
        outcome: Outcome,
        *,
        recheck_after_success: timedelta,
        recheck_after_failure: timedelta,
        now: datetime | None = None,
    ) -> bool:
        """End the attempt ``task`` holds with a report; False (and nothing changed) if it is no longer ours."""
        now = now or _now()
        with self._write() as conn:
            ended = self._end_attempt(
                conn,
                task,
                TaskStatus.COMPLETED,
                verdict=str(outcome.verdict),
                valid=outcome.valid,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                evidence_key=outcome.evidence_key,
                result_bucket=outcome.result_bucket,
                result_key=outcome.result_key,
                summary=dict(outcome.summary),
                finished_at=now,
            )
            if not ended:
                return False
            recheck = recheck_after_success if outcome.verdict is Verdict.VERIFIED else recheck_after_failure
            extra: dict[str, Any] = {}
            if outcome.tee:
                extra["tee"] = outcome.tee
            if outcome.subject:
                extra["subject"] = outcome.subject[:200]
            if outcome.os_name is not None:
                extra["os_name"] = outcome.os_name[:200]
            self._update_app(conn, task, outcome.verdict, dict(outcome.summary), now, now + recheck, extra)
            return True

    def retry_later(self, task: TaskRecord, *, code: str, message: str, not_before: datetime) -> bool:
        """Give the attempt back: the task is ``pending`` again, not to be claimed before ``not_before``."""
        with self._write() as conn:
            return self._end_attempt(
                conn,
                task,
                TaskStatus.PENDING,
                error_code=code,
                error_message=message,
                not_before=not_before,
                enqueued_at=None,
                worker_id=None,
            )

    def fail(
        self,
        task: TaskRecord,
        *,
        code: str,
        message: str,
        recheck_after_failure: timedelta,
        now: datetime | None = None,
    ) -> bool:
        """End the attempt ``task`` holds without a report (``failed``); the target's verdict becomes ``error``."""
        now = now or _now()
        with self._write() as conn:
            return self._fail_attempt(conn, task, code, message, now, recheck_after_failure)

    def _end_attempt(self, conn: Connection, task: TaskRecord, status: TaskStatus, **values: Any) -> bool:
        """The one conditional UPDATE that ends the attempt ``task`` holds: set ``status`` and ``values`` and drop
        the lease, only while the row is still this attempt's (:meth:`_ours`); False if it no longer is."""
        result = conn.execute(
            tasks_table.update().where(*self._ours(task)).values(status=status.value, lease_until=None, **values)
        )
        return result.rowcount == 1

    def _fail_attempt(
        self, conn: Connection, task: TaskRecord, code: str, message: str, now: datetime, recheck: timedelta
    ) -> bool:
        """End the attempt as ``failed`` (verdict ``error``) and show the error on the target."""
        ended = self._end_attempt(
            conn,
            task,
            TaskStatus.FAILED,
            verdict=str(Verdict.ERROR),
            valid=False,
            error_code=code,
            error_message=message,
            finished_at=now,
        )
        if ended:
            summary = {"error": {"code": code, "message": message}}
            self._update_app(conn, task, Verdict.ERROR, summary, now, now + recheck, {})
        return ended

    def _update_app(
        self,
        conn: Connection,
        task: TaskRecord,
        verdict: Verdict,
        summary: dict[str, Any],
        now: datetime,
        next_check: datetime,
        extra: dict[str, Any],
    ) -> None:
        app = conn.execute(sa.select(apps_table).where(apps_table.c.id == task.app_id)).mappings().one()
        if app["last_task_id"] is not None and app["last_task_id"] != task.id:
            newer = conn.execute(
                sa.select(tasks_table.c.created_at).where(tasks_table.c.id == app["last_task_id"])
            ).scalar_one_or_none()
            if newer is not None and newer > task.created_at:
                return  # a newer task already reported; this older one is history only
        values: dict[str, Any] = {
            "verdict": str(verdict),
            "summary": summary,
            "last_task_id": task.id,
            "last_verified_at": now,
            "updated_at": now,
            "next_check_at": next_check,
            **extra,
        }
        if verdict is Verdict.VERIFIED:
            values["last_success_at"] = now
        else:
            values["last_failure_at"] = now
        conn.execute(apps_table.update().where(apps_table.c.id == task.app_id).values(**values))

    def cancel(self, task_id: str, *, now: datetime | None = None) -> TaskRecord:
        """Cancel a task that has not finished (a worker holding it can no longer complete it)."""
        now = now or _now()
        with self._write() as conn:
            conn.execute(
                tasks_table.update()
                .where(tasks_table.c.id == task_id, tasks_table.c.status.in_(_OPEN))
                .values(status=TaskStatus.CANCELLED.value, finished_at=now, lease_until=None)
            )
            row = conn.execute(sa.select(tasks_table).where(tasks_table.c.id == task_id)).mappings().first()
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return _task(row)

    # --- the dispatcher's side ------------------------------------------------------------------------------

    def recover_expired(
        self,
        *,
        max_attempts: int,
        recheck_after_failure: timedelta,
        now: datetime | None = None,
    ) -> list[str]:
        """Active tasks whose lease ran out (their worker died): back to ``pending``, or ``failed`` when out of
        attempts. Returns the ids given back."""
        now = now or _now()
        recovered: list[str] = []
        with self._write() as conn:
            rows = (
                conn.execute(
                    sa.select(tasks_table).where(
                        tasks_table.c.status == TaskStatus.ACTIVE.value, tasks_table.c.lease_until < now
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                task = _task(row)
                if task.attempts >= max_attempts:
                    message = f"its worker stopped answering {task.attempts} time(s); giving up"
                    self._fail_attempt(conn, task, "worker_lost", message, now, recheck_after_failure)
                    continue
                retried = self._end_attempt(
                    conn,
                    task,
                    TaskStatus.PENDING,
                    enqueued_at=None,
                    worker_id=None,
                    error_code="worker_lost",
                    error_message="its worker stopped answering; retrying",
                )
                if retried:
                    recovered.append(task.id)
        return recovered

    def due_for_publish(self, *, republish_after: float, limit: int = 500, now: datetime | None = None) -> list[str]:
        """Pending tasks that are due and not on the queue (never published, or published long ago)."""
        now = now or _now()
        stale = now - timedelta(seconds=republish_after)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks_table.c.id)
                .where(
                    tasks_table.c.status == TaskStatus.PENDING.value,
                    sa.or_(tasks_table.c.not_before.is_(None), tasks_table.c.not_before <= now),
                    sa.or_(tasks_table.c.enqueued_at.is_(None), tasks_table.c.enqueued_at < stale),
                )
                .order_by(tasks_table.c.created_at)
                .limit(limit)
            ).scalars()
            return [str(row) for row in rows]

    def mark_enqueued(self, task_ids: Sequence[str], *, now: datetime | None = None) -> None:
        if not task_ids:
            return
        now = now or _now()
        with self._write() as conn:
            conn.execute(
                tasks_table.update()
                .where(tasks_table.c.id.in_(list(task_ids)), tasks_table.c.status == TaskStatus.PENDING.value)
                .values(enqueued_at=now)
            )

    def schedule_due(self, *, limit: int = 200, now: datetime | None = None) -> list[str]:
        """Create a task for each enabled target whose next check is due and that has no open task."""
        now = now or _now()
        created: list[str] = []
        with self._write() as conn:
            rows = (
                conn.execute(
                    sa.select(apps_table)
                    .where(
                        apps_table.c.enabled.is_(True),
                        apps_table.c.next_check_at.is_not(None),
                        apps_table.c.next_check_at <= now,
                    )
                    .order_by(apps_table.c.next_check_at)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            for row in rows:
                claimed = conn.execute(
                    apps_table.update()
                    .where(apps_table.c.id == row["id"], apps_table.c.next_check_at == row["next_check_at"])
                    .values(next_check_at=None)
                )
                if claimed.rowcount != 1 or self._open_task(conn, row["id"]) is not None:
                    continue
                task = self._insert_task(conn, row["id"], "scheduled", row["app_metadata"], row["options"], now)
                created.append(task.id)
        return created


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
