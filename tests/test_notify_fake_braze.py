"""The fake Braze refuses what Braze refuses (so our requests are checked the way Braze would check them)."""

from __future__ import annotations

from typing import Any

import pytest

from enclavekit.services.notify.braze import braze_payload
from enclavekit.services.notify.fake_braze import validate_send


def _valid() -> dict[str, Any]:
    return braze_payload(["alias-1", "alias-2"], {"topic": "t", "encryptedMessageBase64": "QQ==", "messageKind": "k"})


def test_our_payload_is_valid() -> None:
    assert validate_send(_valid()) is None


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b.update(unknown=1), "Unknown parameter"),
        (lambda b: b.update(user_aliases=[{"alias_name": f"a{i}", "alias_label": "l"} for i in range(51)]), "50"),
        (lambda b: b.update(user_aliases=[{"alias_name": "a"}]), "exactly alias_name and alias_label"),
        (lambda b: b.update(user_aliases=[{"alias_name": "", "alias_label": "l"}]), "non-empty"),
        (lambda b: b.update(user_aliases=[]), "recipients"),
        (lambda b: b.update(broadcast=True), "broadcast"),
        (lambda b: b.update(messages={}), "non-empty"),
        (lambda b: b.update(messages={"pigeon": {}}), "Unknown message type"),
        (lambda b: b["messages"]["apple_push"].pop("alert"), "requires an alert"),
        (lambda b: b["messages"]["android_push"].update(alert=3), "string alert"),
        (lambda b: b["messages"]["apple_push"].update(extra={"n": 1}), "string values"),
        (lambda b: b.update(external_user_ids=[1]), "array of strings"),
    ],
)
def test_requests_braze_would_refuse_are_refused(mutate: Any, error: str) -> None:
    body = _valid()
    mutate(body)
    problem = validate_send(body)
    assert problem is not None and error in problem


def test_silent_apple_pushes_need_no_alert() -> None:
    body = _valid()
    body["messages"]["apple_push"] = {"content-available": True}
    assert validate_send(body) is None
