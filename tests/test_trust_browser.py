"""The web app in a real browser (Debian's Chromium, driven by Playwright): list, filter, open an app and see its
checks and trust graph, upload evidence and watch the verdict arrive, embed the badge and the widget.

Screenshots go to ``test-artifacts/trust/`` (or ``$ENCLAVEKIT_ARTIFACTS/trust``). Without ``/usr/bin/chromium``
the tests skip, unless ``ENCLAVEKIT_REQUIRE_BROWSER=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.nitro_samples import samples
from tests.test_trust_helpers import NatsServer, TrustProcess, nitro_sample, serve_argv, tdx, upload, wait_task

pytestmark = pytest.mark.browser  # one set: -m browser / -m "not browser" (as -k browser / -k "not browser")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = (
    Path(os.environ.get("ENCLAVEKIT_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")) / "trust"
)


def _browser_or_skip() -> Any:
    reason = None
    if not CHROMIUM.exists():
        reason = f"no browser: {CHROMIUM} is absent (apt-get install chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            reason = f"playwright is not installed ({exc})"
    if reason is not None:
        if os.environ.get("ENCLAVEKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; ENCLAVEKIT_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(reason)
    return sync_playwright


class Partner:
    """Another origin (a real loopback server) whose page embeds the badge and the widget."""

    def __init__(self) -> None:
        self.page = b""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(outer.page)))
                self.end_headers()
                self.wfile.write(outer.page)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def partner() -> Iterator[Partner]:
    server = Partner()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, partner: Partner) -> Iterator[str]:
    _browser_or_skip()
    root = tmp_path_factory.mktemp("trust-browser")
    nats = NatsServer(root / "nats")
    nats.start()
    process = TrustProcess(
        serve_argv(root / "state", nats.url, "--frame-ancestor", partner.origin), log=root / "serve.log"
    )
    try:
        process.start()
        tasks = [upload(process.url, s.data, at="doc").json()["task_id"] for s in samples() if s.valid]
        for name, kind in (
            ("debugData_kms_bundle.json", "kms"),
            ("debugData_gateway_bundle.json", "gateway"),
            ("debugData2_app_bundle.json", "app"),
        ):
            tasks.append(upload(process.url, tdx("trust-center", name).read_bytes(), kind=kind).json()["task_id"])
        for task in tasks:
            wait_task(process.url, task)
        yield process.url
    finally:
        process.stop()
        nats.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="trust-chromium-"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    tab = browser.new_page()
    problems: list[str] = []
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: problems.append(str(error)))
    tab.problems = problems
    yield tab
    tab.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_app_list_shows_every_app_with_its_status_and_filters_narrow_it(site: str, page: Any) -> None:
    page.goto(site + "/")
    rows = page.locator("#apps tbody tr")
    assert rows.count() == 12
    assert page.locator('[data-stat="verified"] .n').inner_text() == "5"
    assert page.locator('[data-stat="failed"] .n').inner_text() == "5"
    assert page.locator('[data-stat="incomplete"] .n').inner_text() == "2"
    shot(page, "01-app-list")
    page.select_option('select[name="status"]', "failed")  # applies at once (vendored JS)
    page.wait_for_url("**status=failed**")
    statuses = page.locator("#apps tbody tr .pill[data-status]").all_inner_texts()
    assert statuses and set(statuses) == {"Failed"}
    page.select_option('select[name="tee"]', "tdx")
    page.wait_for_url("**tee=tdx**")
    assert page.locator("#apps tbody tr").count() == 1
    shot(page, "02-app-list-filtered")
    page.goto(site + "/")
    page.fill('input[name="q"]', "55760b065a3f")
    page.press('input[name="q"]', "Enter")
    page.wait_for_url("**q=55760b065a3f**")
    assert page.locator("#apps tbody tr").count() == 1
    assert not page.problems


def test_app_page_shows_each_phase_its_checks_and_the_trust_graph(site: str, page: Any) -> None:
    page.goto(site + "/?kind=kms")
    page.locator("#apps tbody tr td.name a").first.click()
    page.wait_for_selector("#app-name")
    assert page.locator("#verdict .pill").inner_text() == "Failed"
    for ident in ("hardware", "os", "source", "binding"):
        assert page.locator(f'[data-phase="{ident}"]').count() == 1
    compose = page.locator('[data-check="dstack.compose_file"]')
    assert compose.get_attribute("data-check-status") == "failed"
    assert compose.locator("details.values dd").first.is_visible()  # expected vs actual, open on failures
    assert page.locator('[data-check="collateral.source"]').get_attribute("data-check-status") == "error"
    graph = page.locator("svg.trust-graph")
    assert graph.is_visible()
    assert graph.locator("g.node").count() == 5
    assert graph.locator('g.node[data-kind="kms"]').count() == 2  # the KMS itself, and its key provider
    assert page.locator("#history tbody tr").count() == 1
    shot(page, "03-app-page-kms")
    page.goto(site + "/?kind=gateway")
    page.locator("#apps tbody tr td.name a").first.click()
    page.wait_for_selector("[data-registry]")
    assert "Known OS" in page.locator("[data-registry]").inner_text()
    shot(page, "04-app-page-gateway")
    assert not page.problems


def test_uploaded_evidence_gets_its_verdict_in_the_browser(site: str, page: Any, tmp_path: Path) -> None:
    evidence = tmp_path / "attestation.cbor"
    evidence.write_bytes(nitro_sample("base_2024-11-30_nondebug.cbor").read_bytes())
    page.goto(site + "/submit")
    shot(page, "05-upload-form")
    page.set_input_files("#evidence", str(evidence))
    page.fill("#name", "payments enclave (archived)")
    page.fill("#at", "2024-11-30T16:22:49Z")
    page.click("#upload button[type=submit]")
    page.wait_for_url("**/tasks/**")
    page.wait_for_selector("#task-verdict .pill", timeout=30_000)  # the page polls, then reloads itself
    assert page.locator("#task-verdict .pill").inner_text() == "Verified"
    shot(page, "06-task-verified")
    page.click("text=payments enclave (archived)")
    page.wait_for_selector("#app-name")
    assert page.locator("#app-name").inner_text() == "payments enclave (archived)"
    assert not page.problems


def test_garbage_upload_is_refused_with_its_reason_on_the_form(site: str, page: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("these are not the attestations you are looking for")
    page.goto(site + "/submit")
    page.set_input_files("#evidence", str(garbage))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#upload-error")
    assert page.locator("#upload-error").get_attribute("data-code") == "malformed"
    assert "not recognised as attestation evidence" in page.locator("#upload-error").inner_text()
    shot(page, "07-upload-refused")


def test_badge_and_widget_embed_on_an_allowed_site_only(site: str, page: Any, partner: Partner, browser: Any) -> None:
    page.goto(site + "/?kind=gateway")
    app_id = page.locator("#apps tbody tr").first.get_attribute("data-app")
    partner.page = (
        f'<html><body><h1>Partner</h1><img id="badge" src="{site}/badge/{app_id}.svg">'
        f'<iframe id="widget" src="{site}/widget/{app_id}" width="440" height="90"></iframe></body></html>'
    ).encode()
    page.goto(partner.origin + "/")
    page.wait_for_function("document.getElementById('badge').naturalWidth > 0")
    frame = page.frame_locator("#widget")
    assert frame.locator(".widget-card").get_attribute("data-verdict") == "incomplete"
    shot(page, "08-embedded-on-partner")
    # the same page from an origin the allowlist does not name: the browser refuses to frame the widget
    page.goto(site.replace("127.0.0.1", "localhost") + f"/apps/{app_id}")
    other = browser.new_page()
    blocked: list[str] = []
    other.on("console", lambda message: blocked.append(message.text))
    other.set_content(f'<iframe id="widget" src="{site}/widget/{app_id}"></iframe>')
    other.wait_for_timeout(1000)
    assert other.frame_locator("#widget").locator(".widget-card").count() == 0
    assert any("frame-ancestors" in text for text in blocked)
    other.close()


def test_pages_are_usable_on_a_phone(site: str, browser: Any) -> None:
    phone = browser.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(site + "/")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the app list scrolls sideways ({width}px)"
    shot(phone, "09-phone-app-list")
    phone.close()
