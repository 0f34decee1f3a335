"""Forgotten console passwords: the mail, the link, its single use and its expiry (kamengsite/password_reset.py)."""

from __future__ import annotations

import re

import pytest

from kamengsite import jobs, password_reset
from kamengsite.accounts import Account, authenticate, create_account
from kamengsite.ratelimit import reset as reset_limits
from kamengsite.tenancy import site_scope
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console, site_id

from mailhelpers import SmtpServer

PASSWORD = "correct horse battery staple"
NEW = "a brand new passphrase 42"


@pytest.fixture
def smtp(monkeypatch):
    server = SmtpServer().start()
    monkeypatch.setenv("KAMENGSITE_SMTP_URL", f"smtp://127.0.0.1:{server.port}")
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    reset_limits()
    yield server
    server.stop()
    jobs.bind(None)


@pytest.fixture
def boss(host):
    account = create_account(site_id("main"), "boss", PASSWORD)
    with site_scope(site_id("main")):
        Account.update(email="boss@example.com").where(Account.id == account.id).execute()
    return account


def ask(client, who):
    page = client.get("/admin/login/forgot")
    return client.post("/admin/login/forgot", data={"csrf_token": csrf_token(page), "who": who})


def link_in(message) -> str:
    body = message.get_body(("plain",)).get_content()
    return re.search(r"http://[^\s]+/admin/login/reset/[^\s]+", body).group(0)


def choose(client, link, password=NEW, again=None):
    path = link.split("localhost", 1)[1]
    page = client.get(path)
    if page.status_code != 200:
        return page
    return client.post(path, data={"csrf_token": csrf_token(page), "new": password, "again": again or password})


def test_the_link_sets_a_new_password_once_and_ends_every_session(host, boss, smtp, client_for):
    signed_in = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)
    client = client_for("main.localhost")
    response = ask(client, "boss")
    assert response.status_code == 302
    assert len(smtp.messages) == 1
    _, recipients, message = smtp.messages[0]
    assert recipients == ["boss@example.com"] and "重设" in message["Subject"]  # in the site's language
    link = link_in(message)

    assert choose(client, link).status_code == 302
    assert authenticate(site_id("main"), "boss", NEW) is not None
    assert authenticate(site_id("main"), "boss", PASSWORD) is None
    assert signed_in.get("/admin/orders").status_code == 302  # the old session is over
    assert choose(client_for("main.localhost"), link, "yet another passphrase").status_code == 400  # used


def test_the_answer_is_the_same_for_unknown_accounts_and_nothing_is_sent(host, boss, smtp, client_for):
    known = ask(client_for("main.localhost"), "boss@example.com")
    unknown = ask(client_for("main.localhost"), "nobody@example.com")
    assert known.status_code == unknown.status_code == 302
    assert known.headers["Location"] == unknown.headers["Location"]
    assert [m[1] for m in smtp.messages] == [["boss@example.com"]]


def test_an_account_without_an_email_gets_nothing(host, smtp, client_for):
    create_account(site_id("main"), "quiet", PASSWORD)
    assert ask(client_for("main.localhost"), "quiet").status_code == 302
    assert smtp.messages == []


def test_a_link_expires_and_a_tampered_one_fails(host, boss, smtp, client_for):
    ask(client_for("main.localhost"), "boss")
    link = link_in(smtp.messages[0][2])
    token = link.rsplit("/", 1)[1]
    instance = host.instance
    assert password_reset.account_for_token(instance, "main", site_id("main"), token) is not None
    assert password_reset.account_for_token(instance, "main", site_id("main"), token, max_age=-1) is None
    assert password_reset.account_for_token(instance, "main", site_id("main"), token[:-2] + "xx") is None
    assert choose(client_for("main.localhost"), link, "short").status_code == 400  # too weak: nothing changes
    assert authenticate(site_id("main"), "boss", PASSWORD) is not None


def test_a_link_of_one_site_is_void_on_another(host, boss, smtp, client_for):
    open_plugin_site(host, "shopa", ())
    ask(client_for("main.localhost"), "boss")
    link = link_in(smtp.messages[0][2])
    path = link.split("localhost", 1)[1]
    assert client_for("shopa.localhost").get(path).status_code == 400


def test_mails_per_account_are_limited(host, boss, smtp, client_for):
    for _ in range(5):
        ask(client_for("main.localhost"), "boss")
    assert len(smtp.messages) == 3


def test_the_login_page_links_to_the_reset(host, client_for):
    page = client_for("main.localhost").get("/admin/login").get_data(as_text=True)
    assert "/admin/login/forgot" in page


def test_an_account_sets_its_own_email_and_a_bad_one_is_refused(host, client_for):
    create_account(site_id("main"), "boss", PASSWORD)
    client = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)
    page = client.get("/admin/account")
    bad = client.post("/admin/account/email", data={"csrf_token": csrf_token(page), "email": "not-an-address"})
    assert bad.status_code == 400 and "not-an-address" in bad.get_data(as_text=True)
    good = client.post("/admin/account/email", data={"csrf_token": csrf_token(page), "email": " Boss@Example.com "})
    assert good.status_code == 302
    with site_scope(site_id("main")):
        assert Account.get(Account.username == "boss").email == "boss@example.com"
