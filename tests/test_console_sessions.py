"""Console sessions (kamengsite/account_security.py): listed, ended one by one or all others, password change."""

from __future__ import annotations

import re

import pytest

from kamengsite import account_security as security
from kamengsite.accounts import create_account, end_sessions
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite.testing import form_errors as errors, csrf_token

PASSWORD = "correct horse battery staple"
MAIN = "main.localhost"


def text(response) -> str:
    return response.get_data(as_text=True)



@pytest.fixture
def main_site(host):
    return Site.get(Site.slug == "main")


@pytest.fixture
def operator(main_site):
    return create_account(main_site.id, "boss", PASSWORD)


def signed_in(client_for, username="boss", host_name=MAIN, agent="TestBrowser/1"):
    client = client_for(host_name)
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": username,
                                                 "password": PASSWORD}, headers={"User-Agent": agent})
    assert response.status_code == 302, text(response)
    return client


def session_ids(page) -> list[str]:
    return re.findall(r'/admin/account/sessions/([0-9a-f]{64})/end', text(page))


def test_each_login_is_a_listed_session_and_the_current_one_is_marked(client_for, operator):
    first = signed_in(client_for, agent="FirstBrowser/1")
    signed_in(client_for, agent="SecondBrowser/2")
    page = first.get("/admin/account")
    html = text(page)
    assert "FirstBrowser/1" in html and "SecondBrowser/2" in html
    assert html.count("当前会话") == 1
    assert len(session_ids(page)) == 1  # only the other one has an end button
    with all_sites():
        rows = list(security.ConsoleSession.select())
    assert len(rows) == 2 and all(len(row.id) == 64 for row in rows)


def test_ending_a_session_signs_that_browser_out(client_for, operator):
    mine = signed_in(client_for)
    other = signed_in(client_for)
    page = mine.get("/admin/account")
    [other_id] = session_ids(page)
    response = mine.post(f"/admin/account/sessions/{other_id}/end", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 302
    assert other.get("/admin/").status_code == 302  # signed out
    assert other.get("/admin/account").status_code == 302
    assert mine.get("/admin/").status_code == 200


def test_end_others_keeps_the_current_session(client_for, operator):
    mine = signed_in(client_for)
    others = [signed_in(client_for) for _ in range(2)]
    page = mine.get("/admin/account")
    mine.post("/admin/account/sessions/end-others", data={"csrf_token": csrf_token(page)})
    assert mine.get("/admin/").status_code == 200
    assert [client.get("/admin/").status_code for client in others] == [302, 302]
    assert session_ids(mine.get("/admin/account")) == []


def test_end_sessions_still_signs_out_everywhere(client_for, operator, main_site):
    clients = [signed_in(client_for) for _ in range(2)]
    end_sessions(main_site.id, operator.id)
    assert [client.get("/admin/").status_code for client in clients] == [302, 302]
    with all_sites():
        assert not security.ConsoleSession.select().exists()


def test_logout_ends_only_this_session(client_for, operator):
    mine = signed_in(client_for)
    other = signed_in(client_for)
    mine.post("/admin/logout", data={"csrf_token": csrf_token(mine.get("/admin/"))})
    assert mine.get("/admin/").status_code == 302
    assert other.get("/admin/").status_code == 200


def test_last_seen_is_written_at_most_once_a_minute(client_for, operator, monkeypatch):
    import datetime

    from kamengsite.models import utcnow

    client = signed_in(client_for)
    with all_sites():
        first = security.ConsoleSession.get().last_seen_at
    client.get("/admin/")
    with all_sites():
        assert security.ConsoleSession.get().last_seen_at == first
    later = utcnow() + datetime.timedelta(minutes=2)
    monkeypatch.setattr(security, "utcnow", lambda: later)
    client.get("/admin/")
    with all_sites():
        assert security.ConsoleSession.get().last_seen_at == later


def test_another_accounts_session_cannot_be_ended(client_for, operator, main_site):
    create_account(main_site.id, "clerk", PASSWORD)
    victim = signed_in(client_for, "clerk")
    with all_sites():
        victim_id = security.ConsoleSession.get(security.ConsoleSession.account != operator.id).id
    mine = signed_in(client_for)
    page = mine.get("/admin/account")
    assert mine.post(f"/admin/account/sessions/{victim_id}/end", data={"csrf_token": csrf_token(page)}).status_code == 404
    mine.post("/admin/account/sessions/end-others", data={"csrf_token": csrf_token(page)})
    assert victim.get("/admin/").status_code == 200


def test_changing_the_password_needs_the_current_one_and_ends_other_sessions(client_for, operator):
    mine = signed_in(client_for)
    other = signed_in(client_for)
    page = mine.get("/admin/account")
    new = "a brand new passphrase"
    response = mine.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": "wrong!",
                                                          "new": new, "again": new})
    assert "当前密码不正确" in errors(response)
    response = mine.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                          "new": "short", "again": "short"})
    assert any("新密码需" in e for e in errors(response))
    response = mine.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                          "new": new, "again": new + "x"})
    assert "两次输入的新密码不一致" in errors(response)
    assert other.get("/admin/").status_code == 200  # nothing changed yet
    response = mine.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                          "new": new, "again": new})
    assert response.status_code == 302
    assert mine.get("/admin/").status_code == 200
    assert other.get("/admin/").status_code == 302
    fresh = client_for(MAIN)
    page = fresh.get("/admin/login")
    assert fresh.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "boss",
                                            "password": new}).status_code == 302


def test_site_isolation(host, client_for, operator):
    """An account of site A cannot sign in on site B, and its cookie is useless there."""
    host.registry.create("shop1", template="gaming")
    shop_id = Site.get(Site.slug == "shop1").id
    create_account(shop_id, "owner", PASSWORD)
    shop = client_for("shop1.localhost")
    page = shop.get("/admin/login")
    response = shop.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "boss",
                                               "password": PASSWORD})
    assert "用户名或密码错误" in errors(response)
    main = signed_in(client_for)
    stolen = client_for("shop1.localhost")
    stolen.set_cookie("ks_session", domain="shop1.localhost", value=main.get_cookie("ks_session", domain=MAIN).value)
    assert stolen.get("/admin/account").status_code == 302
    # The owner of shop1 sees only shop1's sessions and cannot end the main site's.
    owner = signed_in(client_for, "owner", "shop1.localhost")
    page = owner.get("/admin/account")
    assert session_ids(page) == []
    with all_sites():
        main_row = security.ConsoleSession.get(security.ConsoleSession.site != shop_id).id
    owner.post(f"/admin/account/sessions/{main_row}/end", data={"csrf_token": csrf_token(page)})
    assert main.get("/admin/").status_code == 200
    # Failures on shop1 do not lock the main site's "boss".
    for _ in range(6):
        from kamengsite import ratelimit

        ratelimit.reset()
        page = shop.get("/admin/login")
        shop.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "boss", "password": "nope"})
    assert security.failure_count(shop_id, "boss") == 5
    assert security.locked_until(operator.site_id, "boss", None) is None


def test_a_cookie_without_a_session_row_is_signed_out(client_for, operator):
    client = signed_in(client_for)
    with all_sites():
        security.ConsoleSession.delete().execute()
    assert client.get("/admin/").status_code == 302


def test_the_sessions_panel_and_password_errors_in_english(client_for, operator):
    client = signed_in(client_for)
    assert "登录会话" in text(client.get("/admin/account"))
    page = client.get("/admin/account?lang=en")
    html = text(page)
    assert "Sign-in sessions" in html and "Last active" in html and html.count("This session") == 1
    assert "登录会话" not in html and "当前会话" not in html and "（UTC）" not in html
    response = client.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": "nope nope nope",
                                                             "new": "short", "again": "other"})
    assert any(e.startswith("The new password needs") for e in errors(response))
    assert "The two new passwords do not match" in errors(response)
    response = client.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": "nope nope nope",
                                                             "new": "a new long password", "again": "a new long password"})
    assert errors(response) == ["The current password is wrong"]
