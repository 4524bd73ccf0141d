"""The dashboard in a real browser (issue 22, item 5): headless Chromium driven by Playwright
against the app served by a real HTTP server on 127.0.0.1.

Screenshots of the main pages go to ``$APIKEYS_TEST_ARTIFACTS`` (else this test's tmp_path).
Skipped, saying why, where Playwright or Chromium is missing; CI installs both.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKey, APIKeyUsage

from .servers import free_port

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the browser tests need it",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow
PREFIX = "/dashboard"
EVIL_PAGE = """<!doctype html><html><body>
<form id="attack" method="post" action="{target}">
  <input name="name" value="planted by another site"><input name="scopes" value="*">
</form>
<script>document.getElementById("attack").submit();</script>
</body></html>"""


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_DASHBOARD_URL_PREFIX": PREFIX, "APIKEYS_USAGE_MODE": "sync"}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("APIKEYS_TEST_ARTIFACTS") or tmp_path / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def serve(app: Any) -> Iterator[str]:
    server: BaseWSGIServer = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    yield from serve(app)


@pytest.fixture
def evil_origin(base_url: str) -> Iterator[str]:
    """Another site (another host name, so another origin and another site for cookies)
    whose page posts a form to the dashboard as soon as it loads."""
    page = EVIL_PAGE.format(target=f"{base_url}{PREFIX}/keys").encode()

    def evil_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [page]

    for url in serve(evil_app):
        yield url.replace("127.0.0.1", "localhost")


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def call(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def earlier_traffic(app: Flask, key_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    """Three weeks of made-up traffic, so the charts (and screenshots) have a shape."""
    now = datetime.now(UTC)
    chooser = random.Random(22)
    endpoints = [("GET", "/v1/presentations"), ("POST", "/v1/generate/outline")]
    rows = []
    for day in range(1, 22):
        for _ in range(chooser.randint(20, 60)):
            method, endpoint = chooser.choice(endpoints)
            status = chooser.choices([200, 201, 403, 429, 500], [70, 10, 10, 8, 2])[0]
            rows.append(
                {
                    "api_key_id": key_id,
                    "organization_id": organization_id,
                    "timestamp": now - timedelta(days=day, minutes=chooser.randint(0, 600)),
                    "endpoint": endpoint,
                    "method": method,
                    "status_code": status,
                    "response_time_ms": chooser.lognormvariate(3, 0.6),
                    "tokens_used": chooser.randint(0, 900) if method == "POST" else 0,
                    "cost_usd": 0.002 if method == "POST" else 0.0001,
                }
            )
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(sa.insert(APIKeyUsage), rows)
        session.commit()
        # Raw rows written behind the writer's back: into the rollups the statistics read.
        later = datetime.now(UTC) + timedelta(hours=1)
        app.extensions["apikeys"].service.retention.backfill_rollups(until=later)


def key_names(app: Flask) -> list[str]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return list(session.scalars(sa.select(APIKey.name)))


def test_an_admin_manages_keys_and_sees_usage_in_a_real_browser(
    app: Flask,
    apikeys: APIKeys,
    organization: uuid.UUID,
    base_url: str,
    evil_origin: str,
    browser: Any,
    artifacts: Path,
) -> None:
    with app.app_context():
        admin = apikeys.create_key(organization, "Ops admin", scopes=["admin", "presentations:*"])
        admin_key, admin_id = admin.key, admin.api_key.id
        # Keys in each state, so the list shows them all (and the screenshot does too).
        apikeys.create_key(organization, "Nightly export", "test", level="read-only",
                           expires_in_days=3)  # fmt: skip
        legacy = apikeys.create_key(
            organization, "Legacy integration", scopes=["presentations:read"]
        )
        apikeys.revoke_key(legacy.api_key.id, reason="replaced", revoked_by="ops@acme.io")
        other = apikeys.create_organization(name="Other", email="o@other.io", plan="free")
        other_key_id = apikeys.create_key(other, "theirs").api_key.id
    earlier_traffic(app, admin_id, organization)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    page = context.new_page()
    console_errors: list[str] = []
    page.on(
        "console", lambda message: message.type == "error" and console_errors.append(message.text)
    )
    failed_loads: list[str] = []
    page.on(
        "response",
        lambda response: (
            response.status >= 400
            and response.request.resource_type in ("stylesheet", "script", "image", "font")
            and failed_loads.append(f"{response.status} {response.url}")
        ),
    )

    # Sign in with the keyboard only.
    page.goto(f"{base_url}{PREFIX}/")
    assert page.url.endswith(f"{PREFIX}/sign-in")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.screenshot(path=artifacts / "dashboard-sign-in.png")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "key"
    page.keyboard.type(admin_key)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{PREFIX}/keys")
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    session_cookie = cookies["apikeys_dashboard_session"]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
    assert session_cookie["path"] == PREFIX and admin_key not in session_cookie["value"]
    assert page.evaluate("JSON.stringify(window.localStorage)") == "{}"

    # Create a key, read it from the page, copy it with the button.
    page.get_by_label("Name").fill("Browser key")
    page.get_by_label("Scopes").fill("presentations:read")
    page.get_by_role("button", name="Create key").click()
    page.get_by_text("You will not see it again").wait_for()
    new_key = page.locator("#new-key").input_value()
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied to the clipboard.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == new_key
    page.screenshot(path=artifacts / "dashboard-key-created.png")
    assert admin_key not in page.content()

    # Use it against a protected route, then find the request in the usage chart.
    assert call(f"{base_url}/v1/presentations", new_key) == 200
    page.get_by_role("link", name="Go to the key").click()
    page.get_by_role("link", name="Usage of this key").click()
    day_chart = page.locator("#chart-by-day svg")
    assert "1 requests" in (day_chart.get_attribute("aria-label") or "")
    endpoint_chart = page.locator("#chart-by-endpoint svg").get_attribute("aria-label") or ""
    assert "GET /v1/presentations 1" in endpoint_chart
    assert page.locator("#total-requests").inner_text() == "1"
    page.get_by_role("link", name="Usage", exact=True).click()
    page.screenshot(path=artifacts / "dashboard-usage.png", full_page=True)
    page.get_by_role("link", name="Keys", exact=True).click()
    assert new_key not in page.content()
    statuses = page.locator("tbody .badge").all_inner_texts()
    assert sorted(statuses) == ["active", "active", "expiring", "revoked"]
    page.screenshot(path=artifacts / "dashboard-keys.png", full_page=True)

    # Rotate with no overlap: the old key is refused at once, the new one works.
    page.get_by_role("link", name="Browser key").click()
    page.screenshot(path=artifacts / "dashboard-key.png", full_page=True)
    page.get_by_label("Overlap in hours").fill("0")
    page.get_by_role("button", name="Rotate key").click()
    page.get_by_text("Key rotated").wait_for()
    rotated_key = page.locator("#new-key").input_value()
    assert rotated_key != new_key
    assert call(f"{base_url}/v1/presentations", new_key) == 401
    assert call(f"{base_url}/v1/presentations", rotated_key) == 200

    # Revoke the new one with a reason: it is refused too.
    page.get_by_role("link", name="Go to the key").click()
    page.get_by_label("Reason").fill("Browser test done")
    page.get_by_role("button", name="Revoke key").click()
    page.get_by_text("The key was revoked.").wait_for()
    assert call(f"{base_url}/v1/presentations", rotated_key) == 401

    # The audit trail shows what happened, with the admin as actor.
    page.get_by_role("link", name="Audit", exact=True).click()
    audit_text = page.locator("main").inner_text()
    for event in ("key.created", "key.rotated", "key.revoked", "dashboard.signed_in"):
        assert event in audit_text
    revoked_row = page.locator("tbody tr", has_text="Browser test done").inner_text()
    assert "key.revoked" in revoked_row and "Ops admin" in revoked_row  # the actor
    page.screenshot(path=artifacts / "dashboard-audit.png", full_page=True)

    # Another organization's key id: 404, and it is untouched.
    response = page.goto(f"{base_url}{PREFIX}/keys/{other_key_id}")
    assert response is not None and response.status == 404

    # A script on the page that posts without the form's token is refused.
    refused = page.evaluate(
        """async (path) => (await fetch(path, {method: "POST",
              body: new URLSearchParams({name: "no token"})})).status""",
        f"{PREFIX}/keys",
    )
    assert refused == 403
    # Another site's form posting into the dashboard: refused, nothing created.
    attack = context.new_page()
    with attack.expect_response(f"{base_url}{PREFIX}/keys") as answered:
        attack.goto(evil_origin)
    assert answered.value.status == 403
    assert "planted by another site" not in key_names(app)
    assert "no token" not in key_names(app)

    # Sign out: the session is gone, the pages send back to sign-in.
    page.goto(f"{base_url}{PREFIX}/keys")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_text("You are signed out.").wait_for()
    page.goto(f"{base_url}{PREFIX}/usage")
    assert page.url.endswith(f"{PREFIX}/sign-in")
    assert failed_loads == []  # the stylesheet, the script
    assert [text for text in console_errors if "Failed to load resource" not in text] == []
    context.close()
