"""会员 in the console (kamengsite/admin_members.py): list, search, disable, and the operator's wallet adjustments."""

from __future__ import annotations

import pytest

from kamengsite import members
from kamengsite.accounts import Account, create_account
from kamengsite.audit import AuditEntry
from kamengsite.tenancy import site_scope
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console, sign_in_member, site_id

PASSWORD = "correct horse battery staple"


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def console(host, client_for):
    create_account(site_id("main"), "boss", PASSWORD)
    return sign_in_console(client_for("main.localhost"), "boss", PASSWORD)


def test_members_are_listed_and_searched(host, console):
    main = site_id("main")
    alice = members.register(main, "alice@example.com", PASSWORD, "小爱")
    members.register(main, "bob@example.com", PASSWORD)
    page = text(console.get("/admin/members/"))
    assert "alice@example.com" in page and "bob@example.com" in page
    page = text(console.get("/admin/members/", query_string={"q": "ALICE"}))
    assert "alice@example.com" in page and "bob@example.com" not in page
    assert "alice@example.com" in text(console.get("/admin/members/", query_string={"q": "小爱"}))
    detail = console.get(f"/admin/members/{alice.id}")
    assert detail.status_code == 200 and "小爱" in text(detail)


def test_disabling_signs_the_member_out_and_enabling_lets_them_back(host, console, client_for):
    main = site_id("main")
    alice = members.register(main, "alice@example.com", PASSWORD)
    buyer = sign_in_member(client_for("main.localhost"), "alice@example.com", PASSWORD)
    assert buyer.get("/member/").status_code == 200
    token = csrf_token(console.get(f"/admin/members/{alice.id}"))
    assert console.post(f"/admin/members/{alice.id}/status",
                        data={"csrf_token": token, "status": "disabled"}).status_code == 302
    assert members.get_member(main, alice.id).status == "disabled"
    assert buyer.get("/member/").status_code == 302  # signed out
    assert members.authenticate(main, "alice@example.com", PASSWORD) is None
    console.post(f"/admin/members/{alice.id}/status", data={"csrf_token": token, "status": "active"})
    assert members.authenticate(main, "alice@example.com", PASSWORD) is not None


def test_the_operator_adjusts_a_wallet_once_per_submitted_form(host, console):
    main = site_id("main")
    alice = members.register(main, "alice@example.com", PASSWORD)
    page = console.get(f"/admin/members/{alice.id}")
    token, reference = csrf_token(page), text(page).split('name="reference" type="hidden" value="')[1].split('"')[0]
    form = {"csrf_token": token, "reference": reference, "amount": "12.50", "memo": "补偿"}
    assert console.post(f"/admin/members/{alice.id}/wallet/credit", data=form).status_code == 302
    assert console.post(f"/admin/members/{alice.id}/wallet/credit", data=form).status_code == 302  # double submit
    assert members.wallet_balance(main, alice.id) == 1250
    too_much = console.post(f"/admin/members/{alice.id}/wallet/debit",
                            data={**form, "reference": "another", "amount": "99"})
    assert too_much.status_code == 400 and "余额不足" in text(too_much)
    assert members.wallet_balance(main, alice.id) == 1250
    bad = console.post(f"/admin/members/{alice.id}/wallet/credit", data={**form, "reference": "x2", "amount": "abc"})
    assert bad.status_code == 400 and "补偿" in text(bad)  # what was typed stays
    with site_scope(main):
        assert AuditEntry.select().where(AuditEntry.action.contains("member")).exists()


def test_sub_sites_see_their_own_members_and_cannot_touch_wallets(host, client_for):
    open_plugin_site(host, "shopa", ())
    shopa, main = site_id("shopa"), site_id("main")
    mine = members.register(shopa, "mine@example.com", PASSWORD)
    theirs = members.register(main, "theirs@example.com", PASSWORD)
    create_account(shopa, "owner", PASSWORD)
    owner = sign_in_console(client_for("shopa.localhost"), "owner", PASSWORD)
    page = text(owner.get("/admin/members/"))
    assert "mine@example.com" in page and "theirs@example.com" not in page
    assert owner.get(f"/admin/members/{theirs.id}").status_code == 404
    detail = owner.get(f"/admin/members/{mine.id}")
    assert 'id="adjust"' not in text(detail)
    token = csrf_token(detail)
    response = owner.post(f"/admin/members/{mine.id}/wallet/credit",
                          data={"csrf_token": token, "reference": "r", "amount": "5", "memo": "x"})
    assert response.status_code == 404 and members.wallet_balance(shopa, mine.id) == 0
    assert owner.post(f"/admin/members/{theirs.id}/status",
                      data={"csrf_token": token, "status": "disabled"}).status_code == 404


def test_staff_need_members_and_money_for_an_adjustment(host, client_for):
    main = site_id("main")
    alice = members.register(main, "alice@example.com", PASSWORD)
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions="members").where(Account.username == "clerk").execute()
    clerk = sign_in_console(client_for("main.localhost"), "clerk", PASSWORD)
    page = clerk.get(f"/admin/members/{alice.id}")
    assert page.status_code == 200 and 'id="adjust"' not in text(page)
    response = clerk.post(f"/admin/members/{alice.id}/wallet/credit",
                          data={"csrf_token": csrf_token(page), "reference": "r", "amount": "5", "memo": "x"})
    assert response.status_code == 403 and members.wallet_balance(main, alice.id) == 0
