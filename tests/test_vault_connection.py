"""Connections, data contracts and TURN credentials, sans-I/O: what a peer request's authorization binds, what a
capability grant may say, what a contract's signature covers, and coturn's credential formula."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from enclavekit.enclave.measured_config import InvalidEnclaveConfig
from enclavekit.errors import Error
from enclavekit.services.vault.connection import (
    AUTH_WINDOW,
    Authorization,
    AuthorizationInvalid,
    Capabilities,
    CapabilityDenied,
    ConnectionRefused,
    authorization_message,
    body_digest,
    new_key,
    public_key,
    sign,
    token_digest,
    tokens_match,
    verify,
)
from enclavekit.services.vault.data_contract import ContractInvalid, DataContract, offer_contract
from enclavekit.services.vault.turn import TurnConfig, turn_credentials

NOW = 1_700_000_000.0
REQUEST: dict[str, Any] = {
    "sender": "bob",
    "target": "alice",
    "op": "profile.get",
    "message_id": "ab" * 16,
    "digest": body_digest({"fields": ["name"]}),
}


def _signed(key: bytes, at: float = NOW, **changes: Any) -> Authorization:
    fields = {**REQUEST, **changes}
    message = authorization_message(kind="connection", ident="c1", at=at, **fields)
    return Authorization("connection", "c1", at, sign(key, message))


def test_authorization_verifies_for_exactly_the_request_it_signs() -> None:
    key = new_key()
    verify(_signed(key), public_key(key), now=NOW + AUTH_WINDOW - 1, **REQUEST)


@pytest.mark.parametrize(
    "moved",
    [
        {"sender": "mallory"},  # another sender presenting it
        {"target": "carol"},  # replayed to another user's vault
        {"op": "secret.get"},  # moved to another operation
        {"message_id": "cd" * 16},  # wrapped into another envelope
        {"digest": body_digest({"fields": ["email"]})},  # another body
    ],
)
def test_authorization_moved_to_another_request_is_refused(moved: dict[str, Any]) -> None:
    key = new_key()
    with pytest.raises(ConnectionRefused):
        verify(_signed(key), public_key(key), now=NOW, **{**REQUEST, **moved})


def test_authorization_by_another_key_or_stale_is_refused() -> None:
    key = new_key()
    with pytest.raises(ConnectionRefused):
        verify(_signed(new_key()), public_key(key), now=NOW, **REQUEST)
    with pytest.raises(AuthorizationInvalid):
        verify(_signed(key, at=NOW - AUTH_WINDOW - 1), public_key(key), now=NOW, **REQUEST)
    with pytest.raises(AuthorizationInvalid):
        verify(_signed(key, at=NOW + AUTH_WINDOW + 1), public_key(key), now=NOW, **REQUEST)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"kind": "connection", "id": "c1", "at": NOW},
        {"kind": "session", "id": "c1", "at": NOW, "signature": "00" * 64},
        {"kind": "connection", "id": "../c1", "at": NOW, "signature": "00" * 64},
        {"kind": "connection", "id": "c1", "at": "now", "signature": "00" * 64},
        {"kind": "connection", "id": "c1", "at": NOW, "signature": "zz" * 64},
        {"kind": "connection", "id": "c1", "at": NOW, "signature": "00" * 63},
        {"kind": "connection", "id": "c1", "at": NOW, "signature": "00" * 64, "extra": 1},
    ],
)
def test_malformed_authorization_is_a_specific_error(raw: object) -> None:
    with pytest.raises(AuthorizationInvalid):
        Authorization.from_json(raw)


def test_capabilities_grant_nothing_unless_named() -> None:
    assert Capabilities.from_json(None) == Capabilities() == Capabilities.from_json({})
    granted = Capabilities.from_json({"profile": ["name", "name", "email"], "calls": True})
    assert granted == Capabilities(profile=("email", "name"), calls=True)
    assert Capabilities.from_json(granted.to_json()) == granted


@pytest.mark.parametrize(
    "raw",
    [
        {"profile": "name"},
        {"profile": ["../name"]},
        {"profile": ["x"] * 65},
        {"messages": "yes"},
        {"everything": True},
        ["profile"],
    ],
)
def test_malformed_capabilities_are_refused(raw: object) -> None:
    with pytest.raises(Error) as caught:
        Capabilities.from_json(raw)
    assert caught.value.code in (CapabilityDenied.code, "vault_rejected")


def test_invitation_token_matches_only_itself() -> None:
    digest = token_digest(b"\x01" * 32)
    assert tokens_match(digest, b"\x01" * 32)
    assert not tokens_match(digest, b"\x02" * 32)


def test_contract_signature_covers_every_field() -> None:
    key = new_key()
    contract, signature = offer_contract(
        key, business="acme", user="henry", fields=["name"], purpose="delivery", expires_at=NOW + 60
    )
    contract.check_signature(signature)
    assert DataContract.from_json(contract.to_json()) == contract
    for change in ({"fields": ("name", "phone")}, {"expires_at": NOW + 10**6}, {"user": "alice"}, {"purpose": "ads"}):
        with pytest.raises(ContractInvalid):
            dataclasses.replace(contract, **change).check_signature(signature)


@pytest.mark.parametrize(
    "change",
    [
        {"format": "other"},
        {"id": "x"},
        {"key": "00"},
        {"fields": []},
        {"fields": ["../x"]},
        {"purpose": ""},
        {"expires_at": "tomorrow"},
        {"business": "a b"},
        {"extra": 1},
    ],
)
def test_malformed_contract_is_refused(change: dict[str, Any]) -> None:
    contract, _ = offer_contract(new_key(), business="acme", user="henry", fields=["n"], purpose="p", expires_at=NOW)
    with pytest.raises(ContractInvalid):
        DataContract.from_json({**contract.to_json(), **change})


def test_turn_credentials_follow_coturns_rest_api_formula() -> None:
    # expected value: echo -n USERNAME | openssl dgst -sha1 -hmac SECRET -binary | base64 (coturn's recipe)
    config = TurnConfig(("turn:turn.example.org:3478?transport=udp",), b"north-wind-static-secret", ttl=300)
    relay = turn_credentials(config, "0123456789abcdef0123456789abcdef:alice", now=1_700_000_000.4)
    assert relay == {
        "urls": ["turn:turn.example.org:3478?transport=udp"],
        "username": "1700000300:0123456789abcdef0123456789abcdef:alice",
        "credential": "walkOUFGptO4QKwj3qvawpOaKIY=",
        "expires_at": 1_700_000_300,
    }


@pytest.mark.parametrize(
    "raw",
    [
        {"urls": ["http://x"], "secret": "s" * 16},
        {"urls": [], "secret": "s" * 16},
        {"urls": ["turn:x:3478"], "secret": "short"},
        {"urls": ["turn:x:3478"], "secret": "s" * 16, "ttl": 86400},
        {"urls": ["turn:x:3478"], "secret": "s" * 16, "realm": "x"},
    ],
)
def test_turn_configuration_is_checked(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidEnclaveConfig):
        TurnConfig.from_json(raw)
