"""A test enclave app that belongs to a track (configured from the environment) and can show its secret's id.

With ``TRACK_KMS_KEY`` it persists the track secret through KMS at the endpoint its measured configuration
(``--config``: ``{"kms_endpoint": {...}}``) names, through :func:`enclave_kms_client` like the real apps."""

from __future__ import annotations

import json
import os

from pydantic import BaseModel

from enclavekit.enclave import EnclaveApp
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.enclave.tracks import Track, enclave_kms_client, lease_store
from enclavekit.kms.client import KmsClient
from enclavekit.kms.measured import MeasuredKmsEndpoint
from enclavekit.rpc import CallContext, Route


class Empty(BaseModel):
    pass


class TrackState(BaseModel):
    fingerprint: str
    genesis: bool
    restored: bool


STATE = Route("test.track_state", Empty, TrackState)

app = EnclaveApp("tracked")
track = Track(
    os.environ.get("TRACK_NAME", "test"),
    lease_store(os.environ.get("TRACK_NATS_URL", "nats://127.0.0.1:4222"), ttl=float(os.environ.get("TRACK_TTL", "3"))),
    renew_interval=float(os.environ.get("TRACK_RENEW", "0.5")),
    join_timeout=float(os.environ.get("TRACK_JOIN_TIMEOUT", "20")),
    kms_key_id=os.environ.get("TRACK_KMS_KEY") or None,
)


def measured_kms(context: EnclaveContext) -> KmsClient:
    config = json.loads(context.config or b"{}")
    return enclave_kms_client(context, MeasuredKmsEndpoint.from_document(config["kms_endpoint"], region="us-east-1"))


track.kms = measured_kms
track.attach(app)


@app.route(STATE)
async def state(request: Empty, call: CallContext) -> TrackState:
    return TrackState(fingerprint=track.fingerprint(), genesis=track.genesis, restored=track.restored)


class Secret(BaseModel):
    hex: str


LEAK = Route("test.leak_secret", Empty, Secret)


@app.route(LEAK)
async def leak(request: Empty, call: CallContext) -> Secret:
    """TEST ONLY: hands out the raw track secret, so tests can search for it where it must never be."""
    return Secret(hex=track.secret.hex())
