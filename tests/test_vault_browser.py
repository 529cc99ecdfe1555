"""The web app's vault page in a real browser (Debian's Chromium, driven by Playwright), over a real member registry
(SQLite, written through the same code the vault's bridge and ``vault invite create`` use) and the real ``trust
serve`` process: members with their state, invitations open, used and expired; the operator's sign-in when an
admin token is set; and, without one, nobody but a same-site loopback client (no cross-site read, no rebound DNS
name). Screenshots go to ``test-artifacts/trust/`` (as for trust's browser tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.services.vault.guesses import GuessEntry
from enclavekit.services.vault.invitation import issue
from enclavekit.services.vault.members import MemberRegistry
from tests.test_trust_browser import (  # the same Chromium, tab and screenshot folder as trust's browser tests
    ARTIFACTS,
    browser,  # noqa: F401  (fixture)
    page,  # noqa: F401  (fixture)
)
from tests.test_trust_helpers import NatsServer, TrustProcess, serve_argv

TOKEN = "operator-token-4f1c9e"
PIN_LIKE = "2468"


def _populate(state: Path) -> dict[str, str]:
    """A registry as the bridge leaves it: three members (one locked after guesses), three invitations."""
    operator = ClientIdentityKey.generate()
    now = time.time()
    registry = MemberRegistry.open(state)
    try:
        used, _ = issue(operator, ttl=86400, now=now - 3600, user="alice")
        open_, _ = issue(operator, ttl=7 * 86400, now=now)
        expired, _ = issue(operator, ttl=60, now=now - 7200, user="carol")
        for invitation, created in ((used, now - 3600), (open_, now), (expired, now - 7200)):
            registry.add_invitation(invitation, created_at=created)
        registry.record_message("alice", "enroll", now - 3000)
        registry.record_message("bob", "enroll", now - 2000)
        registry.record_message("bob", "secret.list", now - 60)
        registry.record_message("dave", "secret.get", now - 30)
        registry.record_ledger(
            {
                "alice": GuessEntry(attempts={"s1": 2}, cleared={"s1": 1}, generation=1),
                "bob": GuessEntry(attempts={"s1": 3}, generation=1, locked_at=1, limit=3),
                used.ledger_key: GuessEntry(claims=frozenset({"alice"})),
            },
            now - 10,
        )
    finally:
        registry.close()
    return {"used": used.id_hex, "open": open_.id_hex, "expired": expired.id_hex}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two web apps on the same registry: the local stack's (no admin token) and one with an admin token."""
    root = tmp_path_factory.mktemp("vault-page")
    state = root / "state"
    ids = _populate(state)
    nats = NatsServer(root / "nats")
    nats.start()
    plain = TrustProcess(serve_argv(state, nats.url), log=root / "plain.log")
    guarded = TrustProcess(
        serve_argv(state, nats.url), env={"ENCLAVEKIT_TRUST_ADMIN_TOKEN": TOKEN}, log=root / "guarded.log"
    )
    try:
        plain.start()
        guarded.start()
        yield {"plain": plain.url, "guarded": guarded.url, "ids": ids}
    finally:
        plain.stop()
        guarded.stop()
        nats.stop()


@pytest.mark.browser
def test_vault_page_lists_members_with_their_state_and_invitations(
    sites: dict[str, Any],
    page: Any,  # noqa: F811  (fixture)
) -> None:
    page.goto(sites["plain"] + "/")
    page.click("nav >> text=Vault")
    page.wait_for_selector("#members")
    rows = page.locator("#members tbody tr")
    assert rows.count() == 3
    assert page.locator('tr[data-user="alice"]').get_attribute("data-status") == "enrolled"
    assert page.locator('tr[data-user="alice"] .attempts').inner_text() == "9 of 10"
    assert page.locator('tr[data-user="bob"] .pill').inner_text() == "Locked"
    assert page.locator('tr[data-user="bob"] .attempts').inner_text() == "0 of 3"
    assert page.locator('tr[data-user="dave"]').get_attribute("data-status") == "seen"  # messages, no vault
    assert page.locator('[data-stat="enrolled"] .n').inner_text() == "1"
    assert page.locator('[data-stat="locked"] .n').inner_text() == "1"
    ids = sites["ids"]
    for status in ("used", "open", "expired"):
        assert page.locator(f'tr[data-invitation="{ids[status]}"]').get_attribute("data-status") == status
    assert page.locator(f'tr[data-invitation="{ids["used"]}"] .used-by').inner_text() == "alice"
    assert page.locator('[data-stat="open"] .n').inner_text() == "1"
    text = page.locator("main").inner_text()
    assert PIN_LIKE not in text
    page.screenshot(path=str(ARTIFACTS / "10-vault-members.png"), full_page=True)
    assert not page.problems


@pytest.mark.browser
def test_with_an_admin_token_the_vault_page_asks_the_operator_to_sign_in(
    sites: dict[str, Any],
    page: Any,  # noqa: F811  (fixture)
) -> None:
    page.goto(sites["guarded"] + "/vault")
    assert page.locator("#operator-login").is_visible()
    assert page.locator("#members").count() == 0
    page.fill('input[name="token"]', "not-the-token")
    page.click("#operator-login button")
    page.wait_for_selector("#login-failed")
    assert page.locator("#members").count() == 0
    page.fill('input[name="token"]', TOKEN)
    page.click("#operator-login button")
    page.wait_for_selector("#members")
    assert page.locator("#members tbody tr").count() == 3
    page.screenshot(path=str(ARTIFACTS / "11-vault-operator-signed-in.png"), full_page=True)
    assert all("401" in problem for problem in page.problems), page.problems  # the sign-in page's own status


def test_without_a_token_only_a_same_site_loopback_client_reads_the_members(sites: dict[str, Any]) -> None:
    url = sites["plain"] + "/api/vault"
    assert httpx.get(url).json()["members"][0]["user"] in {"alice", "bob", "dave"}
    for headers in (
        {"Origin": "https://evil.example"},  # a page the operator visits, reading through CORS *
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "rebound.evil.example"},  # a DNS name rebound to 127.0.0.1
    ):
        answer = httpx.get(url, headers=headers)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "operator_only", headers
        assert httpx.get(sites["plain"] + "/vault", headers=headers).status_code == 403
    guarded = sites["guarded"] + "/api/vault"
    assert httpx.get(guarded).status_code == 403  # loopback is not enough once a token is set
    assert httpx.get(guarded, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_vault_page_of_a_state_folder_without_a_vault_says_so(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    from enclavekit.services.trust.vault_page import add_vault_page

    rendered: list[dict[str, Any]] = []

    def render(name: str, request: Any, status: int = 200, **context: Any) -> HTMLResponse:
        rendered.append({"name": name, **context})
        return HTMLResponse(name, status_code=status)

    app = FastAPI()
    add_vault_page(app, page=render, state_dir=tmp_path, admin_token=TOKEN)
    from fastapi.testclient import TestClient

    answer = TestClient(app).get("/vault", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and rendered[-1]["present"] is False
    assert not (tmp_path / "vault").exists()  # a reader creates no registry
