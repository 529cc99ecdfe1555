"""Settings of notify's host parts (API, ingest worker, dispatcher), checked once at startup.

Defaults put everything in one state folder (``STATE/notify/notify.db`` for SQLite); a PostgreSQL URL, a NATS
cluster, AWS KMS or the real World ID sequencer are settings, not code paths. Environment variables
``ENCLAVEKIT_NOTIFY_<FIELD>`` override the defaults; ``--set FIELD=VALUE`` overrides both (the host kit's
:func:`~enclavekit.hostkit.settings.load_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from enclavekit.backoff import exponential_backoff

__all__ = ["NotifySettings"]


class NotifySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: Path = Path(".enclavekit")
    database_url: str = ""
    nats_url: str = "nats://127.0.0.1:4222"
    inbox_stream: str = "NOTIFY_INBOX"
    inbox_subject: str = "notify.inbox"
    stream: str = "NOTIFY_NOTIFICATIONS"
    subject: str = "notify.notifications"
    dead_letter_subject: str = "notify.dead"
    dispatcher_consumer: str = "notify-dispatcher"
    ingest_consumer: str = "notify-ingest"

    # the enclave, as host parts reach it
    enclave: str = Field("", description="Address of the notify enclave (or its relay), e.g. tcp://H:P.")
    enclave_pcr0: tuple[str, ...] = Field((), description="Accepted PCR0 values (hex) of the notify enclave.")
    simulator_roots: tuple[Path, ...] = Field((), description="State folders whose simulated NSM root to trust.")
    enclave_track: str = "notify"

    # tokens and World ID
    kms_url: str | None = None
    kms_ca_file: Path | None = Field(None, description="CA bundle that KMS's certificate must chain to (local KMS).")
    kms_region: str = "us-east-1"
    jwt_key_id: str = ""
    jwt_issuer: str = "enclavekit-notify"
    world_id_url: str = "https://developer.worldcoin.org"
    world_id_app_id: str = "app_enclavekit_notify"
    world_id_action: str = "notify-authorize"

    # media
    media_bucket: str = "notify-media"
    s3_endpoint_url: str | None = None
    trusted_cdn_url: str = "https://cdn.example.invalid"

    # limits
    max_body: int = Field(256 * 1024, gt=0)
    max_subscriptions: int = Field(100, ge=1, le=1000)

    # delivery (the dispatcher initialises the enclave with these)
    braze_api_key: str = Field("", repr=False)
    braze_api_key_file: Path | None = Field(None, description="JSON file with braze_api_key (keeps it off argv).")
    braze_url: str = "https://rest.iad-01.braze.com"
    egress_proxy: str | None = None

    # dispatcher
    batch_size: int = Field(50, ge=1, le=500)
    concurrency: int = Field(8, ge=1, le=256)
    enclave_timeout: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=50)
    backoff_base: float = Field(1.0, ge=0)
    backoff_max: float = Field(60.0, gt=0)
    ack_wait: float = Field(60.0, gt=0)
    max_in_flight: int = Field(64, ge=1, le=4096)

    @property
    def notify_dir(self) -> Path:
        return self.state_dir / "notify"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.notify_dir / 'notify.db'}"

    def effective_braze_api_key(self) -> str:
        if self.braze_api_key or self.braze_api_key_file is None:
            return self.braze_api_key
        data = json.loads(self.braze_api_key_file.read_text())
        return str(data["braze_api_key"])

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        return exponential_backoff(attempt, base=self.backoff_base, cap=self.backoff_max, factor=2)
