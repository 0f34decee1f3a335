"""Screenshots of each theme's home and product pages at phone and desktop widths.

    .venv/bin/python docs/screenshots/take.py        (or: make screenshots)

Builds a throw-away demo instance (main site: light, shop1: dark, shop2: business), serves it on a
free port in this process and drives Debian's Chromium with Playwright. Writes
``docs/screenshots/<theme>-<page>-<phone|desktop>.png`` and ``editor-desktop.png`` (shop1's owner
in the page editor), which docs/themes.md shows.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from pathlib import Path

from click.testing import CliRunner
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("KAMENGSITE_CHROMIUM", "/usr/bin/chromium")
SITES = {"main": "light", "shop1": "dark", "shop2": "business"}
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}


def build_demo(folder: Path) -> str:
    """Set up the demo; return shop1's owner password (printed once by the demo)."""
    from kamengsite.cli import main

    result = CliRunner().invoke(main, ["--instance", str(folder), "demo", "--no-serve"], catch_exceptions=False)
    if result.exit_code:
        sys.exit(f"demo setup failed:\n{result.output}")
    return re.search(r"shop1 owner account: admin / password: (\S+)", result.output).group(1)


def serve(folder: Path):
    from kamengsite.host import Host
    from kamengsite.instance import Instance

    server = make_server("127.0.0.1", 0, Host(Instance.load(folder)), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def first_product_path(page, base: str) -> str:
    page.goto(base)
    return page.locator("a[href*='/p/']").first.get_attribute("href")


def shoot_editor(browser, port: int, password: str, out: Path) -> Path:
    page = browser.new_page(viewport=VIEWPORTS["desktop"], device_scale_factor=1)
    page.goto(f"http://shop1.localhost:{port}/admin/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.goto(f"http://shop1.localhost:{port}/admin/theme/")
    page.wait_for_load_state("networkidle")
    path = out / "editor-desktop.png"
    page.screenshot(path=str(path), full_page=False)
    page.close()
    return path


def shoot(port: int, password: str, out: Path) -> list[Path]:
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP *.localhost 127.0.0.1"])
        for slug, theme in SITES.items():
            base = f"http://{slug}.localhost:{port}/"
            for width, viewport in VIEWPORTS.items():
                page = browser.new_page(viewport=viewport, device_scale_factor=1)
                pages = {"home": base, "product": base.rstrip("/") + first_product_path(page, base)}
                for name, url in pages.items():
                    page.goto(url)
                    page.wait_for_load_state("networkidle")
                    path = out / f"{theme}-{name}-{width}.png"
                    page.screenshot(path=str(path), full_page=False)
                    written.append(path)
                page.close()
        written.append(shoot_editor(browser, port, password, out))
        browser.close()
    return written


def main():
    with tempfile.TemporaryDirectory(prefix="kamengsite-shots-") as tmp:
        folder = Path(tmp) / "instance"
        password = build_demo(folder)
        server = serve(folder)
        try:
            written = shoot(server.server_port, password, HERE)
        finally:
            server.shutdown()
    for path in written:
        print(path.relative_to(HERE.parent.parent))


if __name__ == "__main__":
    main()
