"""The web playground in a real browser: the system Chromium (/usr/bin/chromium; tests/setup.sh installs it)
driven by Playwright for Python, against the session's real Serve app with the tiny checkpoint (`serve_url`).

One browser for the session, a fresh context and page per test. Every page collects console errors and
uncaught exceptions; a test fails if its flow produced any (tests that provoke an HTTP error on purpose
remove the one "Failed to load resource" line it causes with `expect_console_errors`).

Screenshots (`screenshot(page, name)`) go to docs/images/ with SAM3_SCREENSHOTS=1 (commit-ready PNGs for the
README), else to a temp dir. SAM3_E2E_URL=http://host:port points the tests at an app that already runs (quick
iterations on the page) instead of starting one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
REPO = Path(__file__).resolve().parents[2]
UI_TIMEOUT_MS = 60_000  # a model call on a busy 2-core CI box


@pytest.fixture(scope="session")
def app_url(request) -> str:
    """Base URL of the app under test (the session's `serve_url`, or SAM3_E2E_URL)."""
    return os.environ.get("SAM3_E2E_URL") or request.getfixturevalue("serve_url")


@pytest.fixture(scope="package")
def browser() -> Iterator:
    """One Chromium for the tests of this folder, closed when they are done: Playwright's sync API keeps an
    asyncio loop running in the main thread while it is open, which would break later tests that run their own
    loop (asyncio.run, Ray's sync `.result()`)."""
    # CI (CI=1, set by .ci/run) must run these: a missing browser fails there instead of skipping
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    try:
        from playwright import sync_api
    except ImportError:
        missing("Playwright for Python is not installed (the dev extra has it)")
    if not os.path.exists(CHROMIUM):
        missing(f"no Chromium at {CHROMIUM} (tests/setup.sh installs the system package)")
    profile = tempfile.mkdtemp(prefix="sam3-chromium-")
    with sync_api.sync_playwright() as pw:
        # a persistent context on a fresh user-data-dir = a browser with nothing from earlier runs
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT,
            accept_downloads=True)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class ConsoleLog:
    """Console errors and uncaught page exceptions of one page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def expect(self, status: int, count: int = 1) -> None:
        """Remove the `count` "Failed to load resource: … status of {status}" lines a deliberate error causes."""
        for _ in range(count):
            match = next((e for e in self.errors if "Failed to load resource" in e and f"status of {status}" in e), None)
            assert match is not None, f"expected a console line for HTTP {status}; got {self.errors}"
            self.errors.remove(match)


@pytest.fixture
def page(browser, app_url) -> Iterator:
    """A fresh page of the playground (/ redirects to /ui/), loaded and initialised; fails the test on console
    errors or page exceptions."""
    pg = browser.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    log = ConsoleLog(pg)
    pg.console_log = log
    pg.goto(app_url + "/")
    assert pg.url.split("#")[0].endswith("/ui/"), pg.url
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_selector("#ready-state[data-state='ready']")
    yield pg
    try:
        assert log.errors == [], f"console errors: {log.errors}"
    finally:
        pg.close()


def screenshot(page, name: str) -> Path:
    """Save a PNG of the page: docs/images/{name}.png with SAM3_SCREENSHOTS=1, else a temp dir."""
    folder = REPO / "docs" / "images" if os.environ.get("SAM3_SCREENSHOTS") == "1" else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    from PIL import Image  # a palette PNG: a UI screenshot stays far under 150 kB

    with Image.open(path) as shot:
        palette = shot.convert("RGB").quantize(colors=96, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)
    return path


def scene_png(width: int = 320, height: int = 200) -> bytes:
    """A small synthetic street: sky and road gradients, two "cars", a "person". Smooth, so it compresses
    well (small uploads, small screenshots)."""
    img = np.zeros((height, width, 3), np.uint8)
    horizon = height * 3 // 5
    img[:horizon] = np.linspace([235, 206, 135], [250, 235, 200], horizon, dtype=np.uint8)[:, None, :]  # BGR sky
    img[horizon:] = np.linspace([110, 110, 110], [70, 70, 70], height - horizon, dtype=np.uint8)[:, None, :]
    cv2.rectangle(img, (30, horizon - 10), (120, horizon + 25), (40, 40, 200), -1)  # red car
    cv2.circle(img, (50, horizon + 28), 9, (20, 20, 20), -1)
    cv2.circle(img, (100, horizon + 28), 9, (20, 20, 20), -1)
    cv2.rectangle(img, (180, horizon + 5), (280, horizon + 45), (200, 120, 30), -1)  # blue car
    cv2.circle(img, (200, horizon + 48), 9, (20, 20, 20), -1)
    cv2.circle(img, (260, horizon + 48), 9, (20, 20, 20), -1)
    cv2.circle(img, (150, horizon - 45), 8, (150, 180, 230), -1)  # person
    cv2.rectangle(img, (142, horizon - 37), (158, horizon + 5), (60, 60, 220), -1)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def canvas_pixel(page, selector: str, x: int, y: int) -> list[int]:
    """RGBA of canvas pixel (x, y) (canvas pixels = image pixels)."""
    return page.eval_on_selector(
        selector, "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)", [x, y])


def click_canvas(page, selector: str, x: float, y: float, shift: bool = False) -> None:
    """Click the canvas at image pixel (x, y) (the canvas is CSS-scaled), with Shift held if `shift`."""
    box = page.locator(selector).bounding_box()
    size = page.eval_on_selector(selector, "c => [c.width, c.height]")
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / size[0], box["y"] + (y + 0.5) * box["height"] / size[1])
    if shift:
        page.keyboard.up("Shift")


def point_inside(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a mask pixel far from the mask's edge (the distance transform's maximum)."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    assert mask[y, x]
    return int(x), int(y)
