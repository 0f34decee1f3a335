"""Rate limits hold across server processes when they share Redis (``KAMENGSITE_RATELIMIT_URI``).

Two ``kamengsite serve`` processes take the order-lookup form (10 a minute per site and client IP)
from one client, alternately. With a shared Redis store the 11th and 12th are refused, whichever
process they reach; with the default per-process memory each process allows its own ten, which is
what the control case shows (so the shared case is not passing by accident).
"""

from __future__ import annotations

import os
import random

import pytest
from conftest import IN_CI, make_instance
from test_risk_processes import TOKEN_RE, _free_port, _request, _start, _stop

from kamengsite.host import Host

REDIS_URL = os.environ.get("KAMENGSITE_TEST_REDIS", "redis://127.0.0.1:6379/13")
LOOKUPS = 12  # the lookup form allows 10 a minute per site and IP


def _redis_or_skip():
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        if IN_CI:
            pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc} (CI=true: a missing service is a failure)")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")


def _lookups_through_two_processes(tmp_path, monkeypatch, shared_uri: str | None) -> list[int]:
    if shared_uri:
        monkeypatch.setenv("KAMENGSITE_RATELIMIT_URI", shared_uri)
    else:
        monkeypatch.delenv("KAMENGSITE_RATELIMIT_URI", raising=False)
    # A client address of its own for this run: counters of other runs in the same Redis never meet it.
    monkeypatch.setattr("test_risk_processes.BUYER_IP", f"198.51.100.{random.randint(1, 254)}")
    instance = make_instance(tmp_path / "instance", f"sqlite:///{tmp_path / 'limits.db'}", trusted_proxies=1)
    Host(instance).registry.create(instance.main_site, template="main")
    servers = [_start(instance.path, port) for port in (_free_port(), _free_port())]
    ports = [int(proc.args[proc.args.index("--port") + 1]) for proc in servers]
    try:
        status, headers, body = _request(ports[0], "GET", "/lookup", host_name="main.localhost")
        assert status == 200, body[:500]
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        token = TOKEN_RE.search(body).group(1)
        form = {"csrf_token": token, "order_no": "K20260101000000000000"}
        return [_request(ports[n % 2], "POST", "/lookup", host_name="main.localhost", cookie=cookie, form=form)[0]
                for n in range(LOOKUPS)]
    finally:
        for proc in servers:
            _stop(proc)


@pytest.mark.slow
def test_a_limit_holds_across_two_processes_sharing_redis(tmp_path, monkeypatch):
    _redis_or_skip()
    statuses = _lookups_through_two_processes(tmp_path, monkeypatch, REDIS_URL)
    assert statuses[:10] == [200] * 10, statuses
    assert statuses[10:] == [429, 429], statuses


@pytest.mark.slow
def test_without_redis_each_process_counts_alone(tmp_path, monkeypatch):
    statuses = _lookups_through_two_processes(tmp_path, monkeypatch, None)
    assert statuses == [200] * LOOKUPS, statuses  # six per process: neither reached its ten
