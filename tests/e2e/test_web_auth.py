"""The page of an app with API keys, served under a route prefix (the session's `auth_url` app at /auth): the
page itself is public, API calls without a key show 401 missing_api_key in the error panel, the key typed into
the page's field is sent as X-API-Key (never in a URL) and kept in the browser for the next visit."""

from __future__ import annotations

import os

import pytest

from tests.conftest import ACME_KEY
from tests.e2e.conftest import scene_png


@pytest.fixture(scope="module")
def prefixed_url(request) -> str:
    return os.environ.get("SAM3_E2E_AUTH_URL") or request.getfixturevalue("auth_url")


def test_api_key_field_under_a_route_prefix(browser, prefixed_url, tmp_path):
    image = tmp_path / "street.png"
    image.write_bytes(scene_png(160, 100))
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(prefixed_url + "/")  # /auth -> /auth/ui/
        assert page.url.split("#")[0] == prefixed_url + "/ui/"
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("#ready-state[data-state='ready']")  # /readyz is public
        page.fill("#api-key", "")
        page.dispatch_event("#api-key", "change")
        with page.expect_response(lambda r: r.url.endswith("/auth/v1/images")) as info:
            page.set_input_files("#image-file", str(image))
        assert info.value.status == 401
        page.wait_for_selector("#error-panel:not([hidden])")
        assert page.inner_text("#error-code") == "missing_api_key"
        assert page.inner_text("#error-request-id") == info.value.json()["error"]["request_id"]
        page.fill("#api-key", ACME_KEY)
        page.press("#api-key", "Enter")
        page.dispatch_event("#api-key", "change")
        page.keyboard.press("Escape")
        with page.expect_response(lambda r: r.url.endswith("/auth/v1/images")) as info:
            page.set_input_files("#image-file", str(image))
        assert info.value.status == 200
        assert info.value.request.headers["x-api-key"] == ACME_KEY and ACME_KEY not in info.value.url
        page.wait_for_selector(f"#image-canvas[data-image-id='{info.value.json()['image_id']}']")
        # the key stays in this browser: a reload keeps it in the field
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert page.input_value("#api-key") == ACME_KEY
        assert page.is_hidden("#error-panel")
    finally:
        page.evaluate("() => window.localStorage.removeItem('sam3.apiKey')")
        page.close()
    # the deliberate 401 (and the cluster poll without a key) are the only failed loads
    assert errors and all("status of 401" in e for e in errors), errors
