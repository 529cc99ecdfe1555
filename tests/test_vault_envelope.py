"""The app↔vault envelope: only the vault opens a request, only the requester opens the answer, nothing re-routes
or replays, garbage is a specific error."""

from __future__ import annotations

import secrets

import pytest
from nacl.bindings import crypto_scalarmult_base

from enclavekit.services.vault.envelope import (
    MAX_ENVELOPE,
    EnvelopeInvalid,
    EnvelopeReplayed,
    ReplayGuard,
    open_request,
    open_response,
    seal_request,
    seal_response,
)

VAULT_SECRET = bytes(range(1, 33))
VAULT_PUBLIC = crypto_scalarmult_base(VAULT_SECRET)
NOW = 1_800_000_000.0

# The vector of docs/vault.md: fixed vault key, ephemeral key, nonces and message id.
VECTOR_INPUTS = {
    "ephemeral": bytes([0x42] * 32),
    "nonce": bytes([0x24] * 24),
    "message_id": bytes([0x16] * 16),
}
VECTOR_REQUEST = (
    "01132c442be010fbd57e72603328aa76e71fccc1503aae219327d14d9c9993f472242424242424242424242424242424242424242424"
    "242424000001a3185c50001616161616161616161616161616161605616c6963650a7365637265742e67657488ce1c60fc49383eb99b"
    "1dd639a40c172c1a1e065c336ccd2b6fd7eaf6a606"
)
VECTOR_RESPONSE = (
    "01252525252525252525252525252525252525252525252525704ce513012b79c091fb296380fcf3915c6f6dfec2de3c2dca12c6"
)


def _vector() -> tuple[bytes, bytes]:
    request = seal_request(VAULT_PUBLIC, "alice", "secret.get", b'{"name":"seed"}', now=NOW, **VECTOR_INPUTS)
    opened = open_request(VAULT_SECRET, request.data)
    return request.data, seal_response(opened, b'{"ok":true}', nonce=bytes([0x25] * 24))


def test_envelope_matches_the_documented_vector() -> None:
    request, response = _vector()
    assert request.hex() == VECTOR_REQUEST
    assert response.hex() == VECTOR_RESPONSE
    # recomputed with another X25519/HKDF implementation (pyca/cryptography), per the documented schedule
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

    eph = X25519PrivateKey.from_private_bytes(VECTOR_INPUTS["ephemeral"])
    shared = eph.exchange(X25519PublicKey.from_public_bytes(VAULT_PUBLIC))
    eph_public = request[1:33]
    info = b"app->vault" + eph_public + VAULT_PUBLIC
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"enclavekit vault envelope v1", info=info).derive(shared)
    head = 81 + 1 + 5 + 1 + 10
    assert crypto_aead_xchacha20poly1305_ietf_decrypt(request[head:], request[:head], request[33:57], key) == (
        b'{"name":"seed"}'
    )


def test_only_the_vault_opens_a_request_and_only_the_requester_the_answer() -> None:
    request = seal_request(VAULT_PUBLIC, "alice", "unlock", b"pin 2468", now=NOW)
    opened = open_request(VAULT_SECRET, request.data)
    assert (opened.user, opened.op, opened.payload) == ("alice", "unlock", b"pin 2468")
    assert b"2468" not in request.data
    with pytest.raises(EnvelopeInvalid):
        open_request(secrets.token_bytes(32), request.data)  # another enclave's key
    answer = seal_response(opened, b"ok")
    assert open_response(request, answer) == b"ok"
    other = seal_request(VAULT_PUBLIC, "alice", "unlock", b"pin 2468", now=NOW)
    with pytest.raises(EnvelopeInvalid):
        open_response(other, answer)  # each request's key is single-use


def test_host_cannot_reroute_a_request_to_another_user_or_operation() -> None:
    data = bytearray(seal_request(VAULT_PUBLIC, "alice", "secret.get", b"x", now=NOW).data)
    at = 81 + 1
    data[at : at + 5] = b"bobby"  # same length, other user
    with pytest.raises(EnvelopeInvalid):
        open_request(VAULT_SECRET, bytes(data))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x02" + bytes(200), b"\x01" + bytes(81) + b"\xff", b"\x01" + bytes(300), bytes(MAX_ENVELOPE + 1)],
)
def test_malformed_envelope_is_a_specific_error(data: bytes) -> None:
    with pytest.raises(EnvelopeInvalid):
        open_request(VAULT_SECRET, data)


def test_replayed_or_stale_envelope_is_refused() -> None:
    guard = ReplayGuard(window=60, capacity=3)
    guard.check(b"a" * 16, NOW, now=NOW)
    with pytest.raises(EnvelopeReplayed):
        guard.check(b"a" * 16, NOW, now=NOW + 1)
    with pytest.raises(EnvelopeReplayed):
        guard.check(b"b" * 16, NOW - 61, now=NOW)
    with pytest.raises(EnvelopeReplayed):
        guard.check(b"c" * 16, NOW + 61, now=NOW)
    for i in range(4):  # overflow the memory: the forgotten oldest cannot come back
        guard.check(bytes([i]) * 16, NOW + 1 + i, now=NOW + 1)
    with pytest.raises(EnvelopeReplayed):
        guard.check(b"a" * 16, NOW, now=NOW + 2)


def test_host_setting_the_clock_forward_then_back_cannot_replay_a_message() -> None:
    """The host captures the user's right-PIN request (which would clear the host's wrong guesses), moves the
    enclave's clock forward so that the guard forgets its id, then back so that its timestamp is in the window."""
    guard = ReplayGuard(window=60)
    guard.check(b"u" * 16, NOW, now=NOW)
    guard.check(b"h" * 16, NOW + 3600, now=NOW + 3600)  # an hour later: the user's id has left the guard's memory
    with pytest.raises(EnvelopeReplayed):
        guard.check(b"u" * 16, NOW, now=NOW + 1)  # the clock set back: the replay is still refused
    guard.check(b"n" * 16, NOW + 3601, now=NOW + 3601)  # fresh messages by the moved clock still pass
