"""The README's first command: `kamengsite demo` sets everything up and serves it."""

from __future__ import annotations

import os
import signal
import socket
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, host_name, path="/", headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host_name, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_demo_serves_main_site_and_two_themed_sub_sites_with_products(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAMENGSITE_INSTANCE")}
    proc = subprocess.Popen([sys.executable, "-m", "kamengsite", "--instance", str(tmp_path / "instance"),
                             "demo", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # the printed keys, live
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, _ = _get(port, f"main.localhost:{port}", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.3)
        pages = {name: _get(port, f"{name}.localhost:{port}") for name in ("main", "shop1", "shop2")}
        for name, (status, body) in pages.items():
            assert status == 200, name
            assert "/p/" in body, f"{name} lists no products"
        themes = {name: body.split('class="theme-', 1)[1].split('"', 1)[0] for name, (_, body) in pages.items()}
        assert len({themes["shop1"], themes["shop2"]}) == 2, themes  # two different themes
        assert _get(port, f"nosuch.localhost:{port}")[0] == 404
        _the_printed_reseller_key_works(port, "".join(lines))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(timeout=10)
    output = "".join(lines)
    assert "sub-site:" in output and "shop1" in output


def _the_printed_reseller_key_works(port, output):
    """The demo prints a reseller's API key once: a signed request with it reads the ¥500 wallet."""
    from kamengsite.api.signing import signed_headers

    found = re.search(r"reseller API key: (\S+) / secret: (\S+)", output)
    assert found, output
    headers = signed_headers(found.group(1), found.group(2), "GET", "/api/v1/balance")
    status, body = _get(port, f"main.localhost:{port}", "/api/v1/balance", headers)
    assert status == 200, body
    assert json.loads(body)["data"] == {"balance_fen": 50000, "currency": "CNY"}
