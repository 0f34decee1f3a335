"""The README's first command: `kamengsite demo` sets everything up and serves it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, host_name, path="/"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host_name})
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
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, _ = _get(port, f"main.localhost:{port}", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        pages = {name: _get(port, f"{name}.localhost:{port}") for name in ("main", "shop1", "shop2")}
        for name, (status, body) in pages.items():
            assert status == 200, name
            assert "/p/" in body, f"{name} lists no products"
        themes = {name: body.split('class="theme-', 1)[1].split('"', 1)[0] for name, (_, body) in pages.items()}
        assert len({themes["shop1"], themes["shop2"]}) == 2, themes  # two different themes
        assert _get(port, f"nosuch.localhost:{port}")[0] == 404
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert "sub-site:" in output and "shop1" in output
