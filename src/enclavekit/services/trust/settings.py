"""The trust service's settings: where its data lives and how it schedules, verifies and serves.

One state folder holds everything by default (``STATE/trust/``: the SQLite file, the object folder, cached
collateral, the EAR signing key); each piece can point elsewhere instead (a PostgreSQL URL, an ``s3://`` bucket, a
NATS cluster). Environment variables ``ENCLAVEKIT_TRUST_<FIELD>`` override the defaults, ``--set FIELD=VALUE``
and the CLI's own options override both (the host kit's :func:`~enclavekit.hostkit.settings.load_settings`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from enclavekit.backoff import exponential_backoff

__all__ = ["DEFAULT_NATS_URL", "TrustSettings"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class TrustSettings(BaseModel):
    """Every knob of the trust service, checked once at startup."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: Path = Field(description="Folder for the service's own files (SQLite, objects, keys, collateral).")
    database_url: str = Field("", description="SQLAlchemy URL; default a SQLite file in the state folder.")
    objects_url: str = Field("", description="Folder path or s3://bucket/prefix; default a folder in state.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (for S3-compatible stores).")
    nats_url: str = DEFAULT_NATS_URL
    stream: str = "TRUST_TASKS"
    subject: str = "enclavekit.trust.tasks"
    consumer: str = "trust-workers"

    pccs_url: str | None = Field(None, description="Intel PCCS for TDX collateral; None: offline.")
    registry_path: Path | None = Field(None, description="OS measurement registry; None: the built-in one.")
    registry_sha256: str | None = Field(None, description="Pin of registry_path (required with it).")
    simulator_roots: tuple[Path, ...] = Field((), description="State folders whose simulated NSM root to trust.")

    concurrency: int = Field(5, ge=1, le=64, description="Tasks one worker process runs at once.")
    task_timeout: float = Field(300.0, gt=0, description="Seconds one task may take (fetch and verify).")
    lease: float = Field(30.0, gt=0, description="Seconds a claimed task stays ours without a heartbeat.")
    max_attempts: int = Field(3, ge=1, description="Attempts before a task whose infrastructure fails is failed.")
    backoff_base: float = Field(2.0, gt=0, description="Retry n waits backoff_base * 4**(n-1) seconds.")
    backoff_max: float = Field(300.0, gt=0)
    recheck_after_success: timedelta = timedelta(hours=24)
    recheck_after_failure: timedelta = timedelta(minutes=30)
    dispatch_interval: float = Field(1.0, gt=0, description="Seconds between dispatcher passes.")
    republish_after: float = Field(60.0, gt=0, description="Re-publish a pending task not claimed in this long.")

    max_upload: int = Field(4 * 1024 * 1024, gt=0, description="Largest evidence file (bytes).")
    max_request: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body (all parts).")
    fetch_timeout: float = Field(10.0, gt=0)
    frame_ancestors: tuple[str, ...] = Field(("'self'",), description="Who may embed the widget (CSP).")
    cors_origins: tuple[str, ...] = ("*",)
    admin_token: str | None = Field(None, description="Bearer token for registering endpoints over HTTP.")
    public_url: str | None = Field(None, description="The URL people reach the web app at (embed snippets).")

    @field_validator("registry_sha256")
    @classmethod
    def _hex_pin(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.strip().lower()
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ValueError("registry_sha256 must be 64 hex digits")
        return value

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.trust_dir / 'trust.db'}"

    @property
    def effective_objects_url(self) -> str:
        return self.objects_url or str(self.trust_dir / "objects")

    @property
    def collateral_cache(self) -> Path:
        return self.trust_dir / "collateral"

    @property
    def signing_key_path(self) -> Path:
        return self.trust_dir / "ear-signing-key.pem"

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        return exponential_backoff(attempt, base=self.backoff_base, cap=self.backoff_max, factor=4)
