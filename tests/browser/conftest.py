"""Real-browser fixtures: a live server for an instance, and a Playwright page in Debian's Chromium.

``live_server`` serves a ``kamengsite.host.Host`` with werkzeug's threaded server on
127.0.0.1 and a free port; ``live_server.url("main")`` is ``http://main.localhost:PORT/``
(Chromium resolves every ``*.localhost`` name to the loopback address by itself, and
``--host-resolver-rules`` below makes sure of it). ``page`` is a fresh browser context
and page from Playwright's sync API, driving ``/usr/bin/chromium`` (the browser
Playwright downloads for itself cannot be fetched here: ``make browser-deps`` installs
Debian's ``chromium`` and the ``playwright`` Python package).

Missing Chromium or Playwright skips these tests on a laptop and fails them under
CI=true, the same rule as for the database servers (``_unavailable`` in tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from conftest import _unavailable  # tests/conftest.py (this folder is a package: its conftest is browser.conftest)

CHROMIUM = os.environ.get("KAMENGSITE_CHROMIUM", "/usr/bin/chromium")
#: Chromium's own background traffic goes nowhere on a closed network; keep it quiet and start fast.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP localhost 127.0.0.1",
]
#: Phone-sized viewport (iPhone X class) for the responsive checks.
PHONE = {"width": 375, "height": 812}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


class LiveServer:
    """A host served over real HTTP in a background thread."""

    def __init__(self, host):
        self.host = host
        self.server = make_server("127.0.0.1", 0, host, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="live-server", daemon=True)

    def url(self, slug: str, path: str = "/") -> str:
        return f"http://{slug}.localhost:{self.port}{path}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(host):
    """``host`` (tests/conftest.py: SQLite instance, main site) served on a free port."""
    server = LiveServer(host).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (Playwright sync API)."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        _unavailable(f"Chromium is not installed at {CHROMIUM} (make browser-deps installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install -e '.[test]')")
    args = list(CHROMIUM_ARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    manager = sync_playwright().start()
    try:
        try:
            launched = manager.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start is "not available"
            _unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
        yield launched
        launched.close()
    finally:
        manager.stop()


@pytest.fixture
def browser_context(browser):
    context = browser.new_context(locale="zh-CN")
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(browser_context):
    """A fresh page in its own context (own cookies), desktop-sized."""
    p = browser_context.new_page()
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.js_errors = errors  # tests may assert there were none
    yield p
    p.close()


@pytest.fixture
def phone_page(browser):
    """A page in a phone-sized context (375×812, touch, mobile)."""
    context = browser.new_context(locale="zh-CN", viewport=PHONE, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    context.set_default_timeout(15_000)
    p = context.new_page()
    yield p
    context.close()


#: Records CSP violations in every frame (a page and its iframes) where the test can read them.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI + " at " + location.pathname);
});
"""


@pytest.fixture
def console_errors(page):
    """The page's console errors (the favicon's 404 aside); also starts watching for CSP violations."""
    found = []

    def record(msg):
        where = (msg.location or {}).get("url", "")
        if msg.type == "error" and not where.endswith("/favicon.ico"):  # the browser asks every site for one
            found.append(f"{msg.text} at {where}")

    page.on("console", record)
    page.add_init_script(WATCH_CSP)
    return found


def csp_violations(page) -> list[str]:
    """The CSP violations seen so far in each frame of ``page`` (needs the ``console_errors`` fixture)."""
    found = []
    for frame in page.frames:
        try:
            found.extend(frame.evaluate("window.__csp || []"))
        except Exception:  # noqa: BLE001 - a frame navigating away has nothing to report
            pass
    return found
