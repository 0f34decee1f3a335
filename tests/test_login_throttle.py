"""Login throttling of console accounts: per username (existing or not) and per address, in the database."""

from __future__ import annotations

import datetime
import re
import threading

import pytest

from kamengsite import account_security as security
from kamengsite import ratelimit
from kamengsite.accounts import Account, create_account
from kamengsite.db import init_database, release_connections
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import all_sites
from kamengsite.testing import form_errors as errors, csrf_token

PASSWORD = "correct horse battery staple"
MAIN = "main.localhost"
LOCKED = re.compile(r"登录失败次数过多，请在 \d\d:\d\d（北京时间，约 (\d+) 分钟后）再试")



class Clock:
    def __init__(self, monkeypatch):
        self.now = utcnow()
        monkeypatch.setattr(security, "utcnow", lambda: self.now)

    def advance(self, **delta):
        self.now += datetime.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


@pytest.fixture
def main_site(host):
    return Site.get(Site.slug == "main")


@pytest.fixture
def operator(main_site):
    return create_account(main_site.id, "boss", PASSWORD)


def login(client, username="boss", password=PASSWORD):
    ratelimit.reset()  # the per-IP request limit (10/minute) is another test's business
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": username,
                                             "password": password})


def wait_of(response) -> int | None:
    for message in errors(response):
        match = LOCKED.fullmatch(message)
        if match:
            return int(match.group(1))
    return None


def test_five_failures_lock_the_account_with_a_growing_wait(client_for, operator, clock):
    client = client_for(MAIN)
    for _ in range(4):
        assert errors(login(client, password="wrong password")) == ["用户名或密码错误"]
    assert errors(login(client, password="wrong password")) == ["用户名或密码错误"]  # the 5th: counted, then locked
    refused = login(client)  # even the right password waits now
    assert refused.status_code == 200 and wait_of(refused) == 1
    assert client.get("/admin/").status_code == 302
    clock.advance(minutes=1, seconds=1)
    assert wait_of(login(client, password="wrong password")) is None  # one more try once the wait is over …
    assert wait_of(login(client)) == 2  # … and a failure doubles the wait
    clock.advance(minutes=2, seconds=1)
    login(client, password="wrong password")
    assert wait_of(login(client)) == 4
    clock.advance(minutes=4, seconds=1)
    assert login(client).status_code == 302  # a success clears the count
    assert security.failure_count(operator.site_id, "boss") == 0
    with all_sites():
        assert Account.get_by_id(operator.id).last_login_at is not None


def test_the_wait_is_capped_at_an_hour():
    waits = [security.wait_minutes(n, security.ACCOUNT_THRESHOLD) for n in range(0, 30)]
    assert waits[:5] == [0] * 5 and waits[5:9] == [1, 2, 4, 8] and max(waits) == 60 and waits[-1] == 60


def test_an_unknown_username_is_throttled_the_same_way(client_for, operator, clock):
    client = client_for(MAIN)
    for username in ("boss", "nobody"):
        answers = [errors(login(client, username, "wrong password")) for _ in range(5)]
        assert answers == [["用户名或密码错误"]] * 5
        assert wait_of(login(client, username, "wrong password")) == 1, username


def test_a_lock_is_per_username_and_the_address_has_its_own(client_for, main_site, operator, clock):
    create_account(main_site.id, "clerk", PASSWORD)
    client = client_for(MAIN)
    for _ in range(5):
        login(client, password="wrong password")
    assert login(client, "clerk").status_code == 302  # another account from the same address signs in
    for n in range(security.IP_THRESHOLD - 5):
        login(client_for(MAIN), f"user{n}", "wrong password")
    assert wait_of(login(client_for(MAIN), "clerk")) == 1  # the address has failed too often


def test_a_wrong_second_factor_counts_as_a_failure(client_for, operator, main_site, host):
    cipher = security.TotpCipher.from_instance(host.instance)
    security.begin_setup(main_site.id, operator, cipher)
    import pyotp

    security.confirm_setup(main_site.id, operator.id,
                           pyotp.TOTP(security.pending_secret(main_site.id, operator.id, cipher)).now(), cipher)
    client = client_for(MAIN)
    assert login(client).status_code == 302
    for _ in range(5):
        ratelimit.reset()
        page = client.get("/admin/login/code")
        client.post("/admin/login/code", data={"csrf_token": csrf_token(page), "code": "abc"})
    assert security.failure_count(main_site.id, "boss") == 5
    assert wait_of(login(client)) == 1


@pytest.mark.databases
def test_concurrent_failures_are_all_counted(db_instance):
    init_database(db_instance.database_url)
    site_id = Site.create(slug="shop").id
    threads, per_thread = 8, 5
    start = threading.Barrier(threads)
    problems = []

    def fail():
        try:
            start.wait()
            for _ in range(per_thread):
                security.record_failure(site_id, "boss", None)
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(exc)

    workers = [threading.Thread(target=fail) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        assert problems == []
        assert security.failure_count(site_id, "boss") == threads * per_thread
        assert security.locked_until(site_id, "boss", None) is not None
    finally:
        release_connections()


def test_the_login_page_and_the_lock_message_in_english(client_for, operator, clock):
    client = client_for(MAIN)
    assert "<h1>管理员登录</h1>" in client.get("/admin/login").get_data(as_text=True)
    page = client.get("/admin/login?lang=en").get_data(as_text=True)
    assert "<h1>Console sign-in</h1>" in page and "管理员登录" not in page
    for _attempt in range(security.ACCOUNT_THRESHOLD):
        login(client, password="wrong password")
    assert any(re.fullmatch(r"Too many failed sign-ins: try again at \d\d:\d\d Beijing time \(in about 1 minute\)", e)
               for e in errors(login(client)))
