"""Site members (kamengsite/members.py, member_routes.py): register, sign in and out, sessions,
CSRF, rate limits, per-site isolation, and the wallet (operator adjustments, statement)."""

from __future__ import annotations

import re
import time

import pytest

from kamengsite.testing import form_errors as errors

from kamengsite import ledger, members
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.member_routes import current_member
from kamengsite.members import Member, MemberError
from kamengsite.models import Site
from kamengsite.orders import Order
from kamengsite.tenancy import all_sites, site_scope

from conftest import SiteClient

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
PASSWORD = "correct horse battery staple"
SHOP1, SHOP2 = "shop1.localhost", "shop2.localhost"


def token(response) -> str:
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def text(response) -> str:
    return response.get_data(as_text=True)



@pytest.fixture
def sites(host):
    """Two sub-sites; returns {slug: site id}."""
    host.registry.create("shop1", template="gaming")
    host.registry.create("shop2", template="wholesale")
    return {slug: Site.get(Site.slug == slug).id for slug in ("main", "shop1", "shop2")}


@pytest.fixture
def alice(sites):
    return members.register(sites["shop1"], "alice@example.com", PASSWORD, "爱丽丝")


def register(client, email="bob@example.com", password=PASSWORD, confirm=None, display_name="", next_url=None):
    url = "/member/register" + (f"?next={next_url}" if next_url else "")
    page = client.get(url)
    return client.post(url, data={"csrf_token": token(page), "email": email, "display_name": display_name,
                                  "password": password, "confirm": password if confirm is None else confirm})


def login(client, email="alice@example.com", password=PASSWORD, next_url=None):
    url = "/member/login" + (f"?next={next_url}" if next_url else "")
    page = client.get(url)
    return client.post(url, data={"csrf_token": token(page), "email": email, "password": password})


def signed_in(client) -> bool:
    response = client.get("/member/")
    assert response.status_code in (200, 302)
    return response.status_code == 200


# -- registering and authenticating ---------------------------------------------------------


def test_register_normalises_the_email_and_stores_only_a_scrypt_hash(sites):
    member = members.register(sites["shop1"], "  Alice@Example.COM ", PASSWORD)
    assert member.email == "alice@example.com"
    assert member.display_name == "alice"  # defaults to the address's local part
    assert member.password_hash.startswith("scrypt$") and PASSWORD not in member.password_hash
    assert (member.status, member.session_version, member.site_id) == ("active", 1, sites["shop1"])
    assert PASSWORD not in repr(member) and member.password_hash not in repr(member)


@pytest.mark.parametrize("email, password, field, message", [
    ("not-an-email", PASSWORD, "email", "Please enter a valid email address"),  # outside a request: the English source
    ("a@b", PASSWORD, "email", "Please enter a valid email address"),
    ("x" * 250 + "@example.com", PASSWORD, "email", "Please enter a valid email address"),
    ("carol@example.com", "short", "password", members.PASSWORD_RULE),
    ("carol@example.com", " padded password ", "password", members.PASSWORD_RULE),
    ("carol@example.com", "x" * 300, "password", members.PASSWORD_RULE),
])
def test_register_refuses_bad_emails_and_weak_passwords(sites, email, password, field, message):
    with pytest.raises(MemberError) as refused:
        members.register(sites["shop1"], email, password)
    assert (refused.value.field, str(refused.value)) == (field, message)
    with all_sites():
        assert Member.select().count() == 0


def test_an_email_registers_once_per_site_whatever_its_case(sites, alice):
    with pytest.raises(MemberError) as refused:
        members.register(sites["shop1"], "ALICE@example.com ", "another long password")
    assert refused.value.field == "email" and "already registered" in str(refused.value)
    other = members.register(sites["shop2"], "alice@example.com", "another long password")  # another site: its own
    assert other.id != alice.id and other.site_id == sites["shop2"]


def test_authenticate_checks_the_password_status_and_site(sites, alice):
    site = sites["shop1"]
    assert members.authenticate(site, " ALICE@example.com", PASSWORD).id == alice.id
    with all_sites():
        assert Member.get_by_id(alice.id).last_login_at is not None
    assert members.authenticate(site, "alice@example.com", "wrong password!") is None
    assert members.authenticate(site, "nobody@example.com", PASSWORD) is None
    assert members.authenticate(site, "x" * 300, PASSWORD) is None
    assert members.authenticate(sites["shop2"], "alice@example.com", PASSWORD) is None
    members.set_status(site, alice.id, "disabled")
    assert members.authenticate(site, "alice@example.com", PASSWORD) is None


def test_unknown_and_known_emails_cost_the_same(sites, alice, monkeypatch):
    calls = []
    real = members.accounts.verify_password
    monkeypatch.setattr(members.accounts, "verify_password",
                        lambda pw, stored: calls.append(stored) or real(pw, stored))
    members.authenticate(sites["shop1"], "nobody@example.com", PASSWORD)
    members.authenticate(sites["shop1"], "alice@example.com", "wrong password!")
    assert len(calls) == 2 and all(c.startswith("scrypt$") for c in calls)  # a scrypt check either way


# -- the pages -------------------------------------------------------------------------------------


def test_register_signs_in_and_the_account_page_shows_the_member(sites, client_for):
    client = client_for(SHOP1)
    assert "登录" in text(client.get("/")) and "我的账户" not in text(client.get("/"))
    response = register(client, "Bob@Example.com", display_name="小鲍")
    assert response.status_code == 302 and response.headers["Location"] == "/member/"
    page = client.get("/member/")
    assert page.status_code == 200
    assert "小鲍" in text(page) and "bob@example.com" in text(page) and "¥0.00" in text(page)
    assert "我的账户" in text(client.get("/"))  # the theme's navigation
    with all_sites():
        assert [(m.email, m.site_id) for m in Member.select()] == [("bob@example.com", sites["shop1"])]


def test_a_failed_registration_says_why_and_keeps_what_was_typed(sites, alice, client_for):
    client = client_for(SHOP1)
    cases = [
        (dict(email="bob@example", display_name="小鲍"), "请输入有效的邮箱地址"),
        (dict(email="bob@example.com", display_name="小鲍", password="short"), "密码需 10 到 256 位，且首尾不能有空格"),
        (dict(email="bob@example.com", display_name="小鲍", confirm="something else entirely"), "两次输入的密码不一致"),
        (dict(email="ALICE@example.com", display_name="小鲍"), "该邮箱已注册，请直接登录"),
        (dict(email="bob@example.com", display_name="名" * 40), "昵称最多 32 个字"),
    ]
    for fields, message in cases:
        response = register(client, **fields)
        assert response.status_code == 200, fields
        assert message in errors(response), (fields, errors(response))
        assert f'value="{fields["email"]}"' in text(response)
        assert f'value="{fields["display_name"]}"' in text(response)
    with all_sites():
        assert [m.email for m in Member.select()] == ["alice@example.com"]
    assert not signed_in(client)


def test_login_and_logout(sites, alice, client_for):
    client = client_for(SHOP1)
    assert client.get("/member/").headers["Location"].startswith("/member/login")
    response = login(client, " Alice@Example.com ")
    assert response.status_code == 302 and response.headers["Location"] == "/member/"
    assert "爱丽丝" in text(client.get("/member/"))
    out = client.post("/member/logout", data={"csrf_token": token(client.get("/member/"))})
    assert out.status_code == 302 and out.headers["Location"] == "/"
    assert not signed_in(client)


def test_a_wrong_password_is_refused_and_the_email_kept(sites, alice, client_for):
    client = client_for(SHOP1)
    for email, password in (("alice@example.com", "wrong password!"), ("nobody@example.com", PASSWORD)):
        response = login(client, email, password)
        assert response.status_code == 200
        assert "邮箱或密码错误" in errors(response)
        assert f'value="{email}"' in text(response)
        assert not signed_in(client)
    assert "请输入密码" in errors(client.post("/member/login", data={
        "csrf_token": token(client.get("/member/login")), "email": "alice@example.com", "password": ""}))


def test_login_goes_back_to_the_page_asked_for_but_never_off_the_site(sites, alice, client_for):
    assert login(client_for(SHOP1), next_url="/p/1").headers["Location"] == "/p/1"
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        assert login(client_for(SHOP1), next_url=target).headers["Location"] == "/member/", target


def test_login_starts_a_fresh_session_but_keeps_the_guest_orders(sites, alice, client_for, host):
    product = create_product(Site.get(Site.slug == "main"), "测试月卡", 1500)
    import_keys(product.skus[0], ["CODE-0001"], CardKeyCipher.from_instance(host.instance))
    client = client_for(SHOP1)
    page = client.get(f"/p/{product.id}")
    created = client.post(f"/p/{product.id}", data={"csrf_token": token(page), "sku": product.skus[0].id,
                                                    "quantity": 1, "contact": "a@b.cd", "query_password": "pass1234"})
    order_path = created.headers["Location"]
    client.post(order_path + "/demo-pay", data={"csrf_token": token(client.get(order_path))})
    before = token(client.get("/member/login"))
    login(client)
    assert token(client.get("/member/")) != before  # the session (and its CSRF secret) was replaced
    assert "CODE-0001" in text(client.get(order_path))  # the guest's own order is still its own


def test_logout_ends_every_copy_of_the_session(sites, alice, client_for):
    client = client_for(SHOP1)
    login(client)
    stolen = client_for(SHOP1)
    stolen.set_cookie("ks_session", domain=SHOP1, value=client.get_cookie("ks_session", domain=SHOP1).value)
    assert signed_in(stolen)
    client.post("/member/logout", data={"csrf_token": token(client.get("/member/"))})
    assert not signed_in(stolen)


def test_ending_sessions_or_disabling_signs_the_member_out_on_the_next_request(sites, alice, client_for):
    client = client_for(SHOP1)
    login(client)
    members.end_sessions(sites["shop1"], alice.id)
    assert not signed_in(client)
    login(client)
    assert signed_in(client)
    members.set_status(sites["shop1"], alice.id, "disabled")
    assert not signed_in(client)
    assert "邮箱或密码错误" in errors(login(client))


def test_member_sessions_expire(sites, alice, client_for, monkeypatch):
    from kamengsite import member_routes

    client = client_for(SHOP1)
    login(client)
    assert signed_in(client)
    now = time.time()
    monkeypatch.setattr(member_routes, "_now", lambda: now + member_routes.SESSION_DAYS * 86400 + 1)
    assert not signed_in(client)


def test_writes_without_the_csrf_token_are_refused(sites, alice, client_for):
    client = client_for(SHOP1)
    form = {"email": "bob@example.com", "password": PASSWORD, "confirm": PASSWORD}
    for forged in ({}, {"csrf_token": "forged"}):
        assert client.post("/member/register", data={**form, **forged}).status_code == 400
        assert client.post("/member/login", data={"email": "alice@example.com", "password": PASSWORD,
                                                  **forged}).status_code == 400
    with all_sites():
        assert [m.email for m in Member.select()] == ["alice@example.com"]
        assert Member.get_by_id(alice.id).last_login_at is None
    assert not signed_in(client)
    login(client)
    assert client.post("/member/logout").status_code == 400
    assert signed_in(client)


def test_login_and_register_are_rate_limited_per_site(sites, alice, client_for):
    client = client_for(SHOP1)
    csrf = token(client.get("/member/login"))
    codes = [client.post("/member/login", data={"csrf_token": csrf, "email": "alice@example.com",
                                                "password": "wrong password!"}).status_code for _ in range(11)]
    assert codes[:10] == [200] * 10 and codes[10] == 429
    assert client.post("/member/login", data={"csrf_token": csrf, "email": "alice@example.com",
                                              "password": PASSWORD}).status_code == 429
    assert not signed_in(client)
    csrf = token(client.get("/member/register"))
    codes = [client.post("/member/register", data={"csrf_token": csrf, "email": "bad"}).status_code for _ in range(6)]
    assert codes[:5] == [200] * 5 and codes[5] == 429
    assert login(client_for(SHOP2), "alice@example.com").status_code == 200  # shop2's allowance is its own


def test_member_pages_are_not_cached(sites, alice, client_for):
    client = client_for(SHOP1)
    login(client)
    assert client.get("/member/").headers["Cache-Control"] == "no-store"


# -- isolation between sites ----------------------------------------------------------------------


def test_a_member_of_one_site_does_not_exist_on_another(sites, alice, client_for):
    other = client_for(SHOP2)
    assert "邮箱或密码错误" in errors(login(other))
    assert not signed_in(other)
    for slug in ("shop2", "main"):
        assert members.get_member(sites[slug], alice.id) is None
        assert members.find_member(sites[slug], "alice@example.com") is None
        with site_scope(sites[slug]):
            assert Member.select().count() == 0
        with pytest.raises(MemberError):
            members.wallet_balance(sites[slug], alice.id)
        with pytest.raises(MemberError):
            members.wallet_history(sites[slug], alice.id)
        with pytest.raises(MemberError):
            members.credit_wallet(sites[slug], alice.id, 100, f"into-{slug}")
    assert ledger.LedgerAccount.select().count() == 0  # nothing was opened for the refused calls


def test_a_session_naming_another_sites_member_is_refused(host, sites, alice, client_for):
    """Even a validly signed shop2 session that names alice (a shop1 member) signs nobody in."""
    app = host.app_for("shop2")
    serializer = app.session_interface.get_signing_serializer(app)
    cookie = serializer.dumps({"member": {"id": alice.id, "v": alice.session_version, "t": time.time()}})
    client = client_for(SHOP2)
    client.set_cookie("ks_session", cookie, domain=SHOP2)
    assert not signed_in(client)
    with app.test_request_context("/", headers={"Host": SHOP2}), site_scope(sites["shop2"]):
        from flask import session

        session["member"] = {"id": alice.id, "v": alice.session_version, "t": time.time()}
        assert current_member() is None
    shop1 = host.app_for("shop1")
    with shop1.test_request_context("/", headers={"Host": SHOP1}), site_scope(sites["shop1"]):
        from flask import session

        session["member"] = {"id": alice.id, "v": alice.session_version, "t": time.time()}
        assert current_member().id == alice.id  # the same session data on its own site


def test_a_cookie_of_one_site_is_void_on_another(sites, alice, client_for):
    client = client_for(SHOP1)
    login(client)
    other = client_for(SHOP2)
    other.set_cookie("ks_session", client.get_cookie("ks_session", domain=SHOP1).value, domain=SHOP2)
    assert not signed_in(other)


# -- the wallet ------------------------------------------------------------------------------------


def test_wallet_credit_debit_and_history(host, sites, alice):
    site = sites["shop1"]
    assert members.wallet_balance(site, alice.id) == 0 and members.wallet_history(site, alice.id) == []
    first = members.credit_wallet(site, alice.id, 1000, "topup-1", "线下转账")
    assert members.credit_wallet(site, alice.id, 1000, "topup-1", "线下转账").id == first.id  # once per reference
    members.debit_wallet(site, alice.id, 300, "fix-1", "更正")
    assert members.wallet_balance(site, alice.id) == 700
    with pytest.raises(ledger.InsufficientFunds):
        members.debit_wallet(site, alice.id, 701, "fix-2")
    assert members.wallet_balance(site, alice.id) == 700 and ledger.find("adjustment", "fix-2") is None
    history = members.wallet_history(site, alice.id)
    assert [(e.amount_fen, e.balance_after_fen, e.kind, e.reference, e.memo) for e in history] == [
        (-300, 700, "adjustment", "fix-1", "更正"), (1000, 1000, "adjustment", "topup-1", "线下转账")]
    assert ledger.balance(ledger.account("platform_revenue")) == -700  # the other side of each adjustment
    assert ledger.check() == []


def test_wallet_amounts_are_whole_positive_fen_and_references_not_reused(sites, alice):
    site = sites["shop1"]
    bob = members.register(site, "bob@example.com", PASSWORD)
    for amount in (0, -5, 1.5, "100", True):
        with pytest.raises(ValueError):
            members.credit_wallet(site, alice.id, amount, "bad")
    members.credit_wallet(site, alice.id, 500, "gift-1")
    with pytest.raises(MemberError):
        members.credit_wallet(site, bob.id, 500, "gift-1")  # alice's reference: not silently "done" for bob
    with pytest.raises(MemberError):
        members.debit_wallet(site, alice.id, 500, "gift-1")  # the same reference the other way
    assert (members.wallet_balance(site, alice.id), members.wallet_balance(site, bob.id)) == (500, 0)


def test_the_account_page_shows_my_orders_and_my_wallet_only(host, sites, alice, client_for):
    site = sites["shop1"]
    product = create_product(Site.get(Site.slug == "main"), "会员专享卡", 1500, members_only=True)
    import_keys(product.skus[0], ["CODE-A", "CODE-B"], CardKeyCipher.from_instance(host.instance))
    members.credit_wallet(site, alice.id, 2500, "welcome", "新人礼金")

    def buy(client):
        page = client.get(f"/p/{product.id}")
        return client.post(f"/p/{product.id}", data={"csrf_token": token(page), "sku": product.skus[0].id,
                                                      "quantity": 1, "contact": "a@b.cd", "query_password": "pass1234"})

    guest = buy(client_for(SHOP1))
    assert guest.status_code == 200 and "无法下单" in text(guest)  # members only
    client = client_for(SHOP1)
    login(client)
    created = buy(client)
    assert created.status_code == 302
    order_no = created.headers["Location"].rsplit("/", 1)[1]
    with all_sites():
        assert Order.get(Order.order_no == order_no).member_id == alice.id
    client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": token(client.get(f"/order/{order_no}"))})
    page = text(client.get("/member/"))
    assert order_no in page and "会员专享卡" in page and "已发货" in page
    assert "25.00" in page and "新人礼金" in page

    # Another browser of alice's opens the order with its keys through the account page.
    laptop = client_for(SHOP1)
    login(laptop)
    assert "CODE-" not in text(laptop.get(f"/order/{order_no}"))
    opened = laptop.get(f"/member/order/{order_no}")
    assert opened.status_code == 302 and opened.headers["Location"] == f"/order/{order_no}"
    assert "CODE-A" in text(laptop.get(f"/order/{order_no}"))

    # Bob sees neither alice's order nor her money, and cannot open her order.
    bob = client_for(SHOP1)
    register(bob, "bob@example.com")
    page = text(bob.get("/member/"))
    assert order_no not in page and "新人礼金" not in page and "¥0.00" in page
    assert bob.get(f"/member/order/{order_no}").status_code == 404
    assert "CODE-" not in text(bob.get(f"/order/{order_no}"))
    assert client_for(SHOP1).get(f"/member/order/{order_no}").status_code == 302  # a guest: off to sign in


def test_members_on_every_database(db_host):
    db_host.registry.create("shop1", template="gaming")
    site = Site.get(Site.slug == "shop1").id
    client = SiteClient(db_host, SHOP1)
    assert register(client, "Dora@Example.com").status_code == 302
    dora = members.find_member(site, "dora@example.com")
    assert signed_in(client)
    with pytest.raises(MemberError):
        members.register(site, "dora@example.com", PASSWORD)
    members.credit_wallet(site, dora.id, 1234, "db-1")
    with pytest.raises(ledger.InsufficientFunds):
        members.debit_wallet(site, dora.id, 1235, "db-2")
    members.debit_wallet(site, dora.id, 234, "db-3")
    assert members.wallet_balance(site, dora.id) == 1000
    assert "10.00" in text(client.get("/member/"))
    members.end_sessions(site, dora.id)
    assert not signed_in(client)
    assert ledger.check() == []


# -- the operator's CLI: kamengsite member … ----------------------------------------------------


def test_member_cli_credits_debits_and_lists_wallets(cli):
    from kamengsite.db import init_database
    from kamengsite.instance import Instance

    assert cli("init").exit_code == 0
    instance = Instance.load(cli.instance_path)
    init_database(instance.database_url)
    members.register(Site.get(Site.slug == "main").id, "buyer@example.com", "a long enough password")
    credit = cli("member", "credit", "--site", "main", "buyer@example.com", "12.50", "--reference", "gift-1")
    assert credit.exit_code == 0 and "wallet now 12.50" in credit.output
    again = cli("member", "credit", "--site", "main", "buyer@example.com", "12.50", "--reference", "gift-1")
    assert again.exit_code == 0 and "wallet now 12.50" in again.output  # same reference: nothing more
    short = cli("member", "debit", "--site", "main", "buyer@example.com", "20", "--reference", "take-1")
    assert short.exit_code == 1 and "holds less than 20" in short.output
    assert cli("member", "debit", "--site", "main", "buyer@example.com", "2.5", "--reference", "take-2").exit_code == 0
    listing = cli("member", "list", "--site", "main")
    assert "buyer@example.com" in listing.output and "10.00" in listing.output
    bad = cli("member", "credit", "--site", "main", "buyer@example.com", "1.234", "--reference", "x")
    assert bad.exit_code == 1 and "amount" in bad.output
    nobody = cli("member", "credit", "--site", "main", "who@example.com", "1", "--reference", "y")
    assert nobody.exit_code == 1 and "no member 'who@example.com'" in nobody.output


def test_member_pages_are_chinese_by_default_and_english_on_request(sites, alice, client_for):
    client = client_for(SHOP1)
    assert "会员登录" in text(client.get("/member/login"))
    page = client.get("/member/login?lang=en")
    assert "Member sign-in" in text(page) and "会员登录" not in text(page)
    assert errors(login(client, password="wrong password!")) == ["Wrong email or password"]
    refused = register(client, "bob@example.com", password="short")
    assert errors(refused) == ["The password must be 10 to 256 characters, with no spaces at either end"]
    assert login(client).status_code == 302
    account = text(client.get("/member/"))
    assert "My account" in account and "My orders" in account and "¥0.00" in account
    assert "我的账户" not in account and "<h2>余额</h2>" not in account and "<h2>Balance</h2>" in account
