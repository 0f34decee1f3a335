"""The audit log (kamengsite/audit.py) and the card-key reveal (kamengsite/admin_orders_keys.py):
automatic entries for console writes, sign-ins and refused writes, no secrets stored, the
searchable page per site, the CLI, and who may reveal whose keys."""

from __future__ import annotations

import datetime
import json
import re
import types

import pytest
from flask import Blueprint, jsonify

from kamengsite import levels, orders, pricing
from kamengsite.accounts import Account, create_account
from kamengsite.audit import AuditEntry, action_name, clean_details, dump_details, record
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import SiteClient, csrf_token, open_plugin_site, sign_in_console, site_id

PASSWORD = "correct horse battery staple"
SECRET = "hunter2-DO-NOT-STORE"


def text(response) -> str:
    return response.get_data(as_text=True)


def entries(slug="main", action=None) -> list[AuditEntry]:
    with site_scope(site_id(slug)):
        query = AuditEntry.select().order_by(AuditEntry.id)
        if action:
            query = query.where(AuditEntry.action == action)
        return list(query)


def all_details() -> str:
    with all_sites():
        return " ".join(e.details + e.target for e in AuditEntry.select())


@pytest.fixture
def main_id(host):
    return site_id("main")


@pytest.fixture
def operator(main_id):
    return create_account(main_id, "boss", PASSWORD)


@pytest.fixture
def console(host, operator):
    return sign_in_console(SiteClient(host, "main.localhost"), "boss", PASSWORD)


@pytest.fixture
def card(main_id):
    return create_product(main_id, "月卡", 1500)


def test_an_operator_s_sign_in_and_sign_out_are_recorded(host, operator):
    client = SiteClient(host, "main.localhost")
    page = client.get("/admin/login")
    failed = client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "Boss",
                                               "password": SECRET})
    assert failed.status_code == 200
    page = client.get("/admin/login")
    assert client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "boss", "password": PASSWORD},
                       environ_base={"REMOTE_ADDR": "203.0.113.7"},
                       headers={"User-Agent": "Mozilla/5.0 " + "x" * 400}).status_code == 302
    home = client.get("/admin/audit/")
    assert client.post("/admin/logout", data={"csrf_token": csrf_token(home)}).status_code == 302

    failure, success, logout = entries()
    assert (failure.action, failure.username, failure.account_id) == ("login.failure", "boss", None)
    assert (success.action, success.account_id, success.status) == ("login.success", operator.id, 302)
    assert (logout.action, logout.account_id, logout.username) == ("logout", operator.id, "boss")
    assert success.ip == "203.0.113.7" and success.user_agent.startswith("Mozilla/5.0 x")
    assert len(success.user_agent) == 255
    assert SECRET not in all_details() and PASSWORD not in all_details()


def test_a_product_edit_is_recorded_with_its_target_and_without_secrets(console, card, operator):
    page = console.get(f"/admin/products/{card.id}/edit")
    sku = card.skus[0]
    data = {"csrf_token": csrf_token(page), "name": "季卡", "category": "0", "kind": "card", "summary": "",
            "description": "", "skus-0-id": str(sku.id), "skus-0-name": "", "skus-0-price": "15",
            "skus-0-status": "on", "more_skus": "", "min_qty": "1", "max_qty": "10", "per_buyer_limit": "0",
            "delivery_order": "fifo", "low_stock_threshold": "0", "status": "on",
            "password": SECRET, "api_key": SECRET, "totp_code": SECRET}
    assert console.post(f"/admin/products/{card.id}/edit", data=data).status_code == 302

    [entry] = entries(action="products.edit")
    assert (entry.target, entry.status, entry.account_id, entry.username) == (f"product:{card.id}", 302,
                                                                             operator.id, "boss")
    details = entry.details_dict()
    assert details["name"] == "季卡"
    assert not {"password", "api_key", "totp_code", "csrf_token"} & set(details)
    assert SECRET not in all_details()


def test_a_key_import_is_recorded_without_the_keys(console, card):
    page = console.get(f"/admin/products/{card.id}/keys")
    response = console.post(f"/admin/products/{card.id}/keys", data={
        "csrf_token": csrf_token(page), "sku": str(card.skus[0].id), "text": "KEY-AAAA-1111\nKEY-BBBB-2222\n"})
    assert response.status_code == 200

    [entry] = entries(action="keys.import")
    assert entry.target == f"product:{card.id}" and entry.details_dict()["text_lines"] == 2
    assert "KEY-AAAA" not in all_details() and "KEY-BBBB" not in all_details()


def test_a_write_without_its_csrf_token_is_recorded_as_refused(console):
    response = console.post("/admin/products/new", data={"name": "偷偷建的商品"})
    assert response.status_code == 400
    [entry] = entries(action="products.create")
    assert entry.status == 400 and entry.refused


def test_reads_and_anonymous_posts_are_not_recorded(host, console):
    console.get("/admin/products")
    console.get("/admin/audit/")
    SiteClient(host, "main.localhost").post("/admin/products/new", data={"name": "x"})  # nobody signed in
    assert entries() == [e for e in entries() if e.action == "login.success"]


def test_a_plugin_toggle_is_recorded(host, console, site_files):
    host.plugins.register(types.SimpleNamespace(), name="demo")
    page = console.get("/admin/plugins/")
    assert console.post("/admin/plugins/demo/toggle", data={"csrf_token": csrf_token(page)}).status_code == 302
    assert "demo" in site_files.read("main").get("plugins", [])
    [entry] = entries(action="plugins.toggle")
    assert entry.target == "name:demo" and entry.status == 302


def test_a_plugin_s_own_console_json_endpoint_is_recorded(host, register_plugin, operator):
    demo = Blueprint("demo_admin", __name__, url_prefix="/admin/demo")

    @demo.post("/save")
    def save():
        return jsonify(ok=True)

    register_plugin(host, lambda app, site: app.register_blueprint(demo), name="demo-console")
    console = sign_in_console(SiteClient(host, "main.localhost"), "boss", PASSWORD)
    token = csrf_token(console.get("/admin/audit/"))
    assert console.post("/admin/demo/save", json={"title": "春节", "secret": SECRET},
                        headers={"X-CSRFToken": token}).status_code == 200
    [entry] = entries(action="demo_admin.save")
    assert entry.details_dict() == {"title": "春节"}


@pytest.fixture
def shop1_owner(host, card):
    host.registry.create("shop1", template="gaming")
    create_account(site_id("shop1"), "owner", PASSWORD)
    return sign_in_console(SiteClient(host, "shop1.localhost"), "owner", PASSWORD)


def test_the_theme_editor_s_draft_and_publish_are_recorded_and_the_preview_is_not(shop1_owner):
    page = shop1_owner.get("/admin/theme/?page=home")
    html = text(page)
    state = json.loads(re.search(r'id="editor-state">(.*?)</script>', html, re.S).group(1))
    token = re.search(r'data-csrf="([^"]+)"', html).group(1)
    layout = state["layout"]
    assert shop1_owner.post("/admin/theme/draft", json={"page": "home", "layout": layout},
                            headers={"X-CSRFToken": token}).status_code == 200
    shop1_owner.post("/admin/theme/render", json={"page": "home", "section": layout["order"][0], "layout": layout},
                     headers={"X-CSRFToken": token})
    assert shop1_owner.post("/admin/theme/publish", data={"csrf_token": csrf_token(page), "page": "home"}
                            ).status_code == 302

    actions = [e.action for e in entries("shop1")]
    assert actions == ["login.success", "theme.save_draft", "theme.publish"]
    draft = entries("shop1", "theme.save_draft")[0]
    assert draft.target == "page:home" and draft.details_dict()["layout"] == "…"
    assert entries("main") == []  # shop1's console writes stay in shop1's log


# -- the page ---------------------------------------------------------------------------------------


def test_each_console_shows_only_its_own_site_s_log(console, shop1_owner):
    with site_scope(site_id("main")):
        record("products.edit", username="boss", target="product:777")
    with site_scope(site_id("shop1")):
        record("site.renew", username="owner", target="site:shop1")
    main_page, shop_page = text(console.get("/admin/audit/")), text(shop1_owner.get("/admin/audit/"))
    assert "product:777" in main_page and "site:shop1" not in main_page
    assert "site:shop1" in shop_page and "product:777" not in shop_page
    assert 'href="/admin/audit/">审计日志</a>' in shop_page  # in the console menu


def test_the_page_filters_by_account_action_dates_and_text(console, main_id):
    old = datetime.datetime(2026, 1, 5, 12, 0)
    with site_scope(main_id):
        record("products.edit", username="alice", target="product:1", details={"name": "月卡"})
        record("products.create", username="bob", target="product:2", details={"name": "季卡"})
        record("plugins.toggle", username="alice", target="name:coupons")
        early = record("order.refund", username="bob", target="order:K123")
        AuditEntry.update(created_at=old).where(AuditEntry.id == early.id).execute()

    def targets(**query):
        html = text(console.get("/admin/audit/", query_string=query))
        return set(re.findall(r"<td>((?:product|name|order):[^<]*)</td>", html))

    assert targets(account="alice") == {"product:1", "name:coupons"}
    assert targets(action="products.") == {"product:1", "product:2"}
    assert targets(since="2026-01-01", until="2026-01-05") == {"order:K123"}
    assert targets(until="2026-01-04") == set()
    # Days are the site's (Asia/Shanghai): 2026-01-05 12:00 UTC is 20:00 there, still the 5th;
    # 2026-01-05 17:00 UTC would be the 6th.
    with site_scope(main_id):
        AuditEntry.update(created_at=datetime.datetime(2026, 1, 5, 17, 0)).where(AuditEntry.id == early.id).execute()
    assert targets(since="2026-01-06", until="2026-01-06") == {"order:K123"}
    assert targets(since="2026-01-05", until="2026-01-05") == set()
    assert targets(q="季卡") == {"product:2"}
    assert targets(q="K123") == {"order:K123"}
    assert "日期格式不对" in text(console.get("/admin/audit/?since=yesterday"))


def test_the_page_is_paginated_newest_first(console, main_id):
    with site_scope(main_id):
        for number in range(55):
            record("products.edit", username="boss", target=f"product:{number}")
    first = text(console.get("/admin/audit/?action=products."))
    assert "product:54" in first and "product:0<" not in first and "下一页" in first
    assert "product:0<" in text(console.get("/admin/audit/?action=products.&page=2"))


def test_the_audit_page_needs_a_signed_in_operator(host):
    assert SiteClient(host, "main.localhost").get("/admin/audit/").status_code == 302


# -- helpers ------------------------------------------------------------------------------------------


def test_secret_fields_are_dropped_and_long_values_cut():
    kept = clean_details({"name": "x" * 500, "Password2": "p", "stripe_secret": "s", "apiKey": "k",
                          "csrf_token": "t", "totp": "123456", "layout": {"a": 1}, "ids": [1, 2]})
    assert set(kept) == {"name", "layout", "ids"} and kept["layout"] == "…" and len(kept["name"]) == 201
    assert len(dump_details({f"f{i}": "y" * 200 for i in range(40)})) <= 4000
    assert json.loads(dump_details({f"f{i}": "y" * 200 for i in range(40)}))["_truncated"] is True


def test_action_names_come_from_the_endpoint():
    assert action_name("admin.product_edit", {"product_id": 1}) == "products.edit"
    assert action_name("admin_money.withdrawal_action", {"withdrawal_id": 3, "action": "pay"}) == "withdrawals.pay"
    assert action_name("admin_theme.publish", {}) == "theme.publish"
    assert action_name("owner.domain_verify", {"claim_id": 2}) == "owner.domain_verify"
    assert action_name(None, None) == "console.unknown"


def test_an_entry_keeps_its_username_when_the_account_is_deleted(main_id, operator):
    with site_scope(main_id):
        record("products.edit", account=operator)
        Account.delete().where(Account.id == operator.id).execute()
        [entry] = AuditEntry.select()
    assert (entry.account_id, entry.username) == (operator.id, "boss")


def test_the_cli_lists_a_site_s_entries(cli, instance, host, main_id):
    with site_scope(main_id):
        record("cardkey.reveal", username="boss", target="order:K1")
        record("products.edit", username="boss", target="product:9")
    result = cli("audit", "list", "--action", "cardkey.", instance_path=instance.path)
    assert result.exit_code == 0, result.output
    assert "order:K1" in result.output and "product:9" not in result.output
    assert "no audit entries" in cli("audit", "list", "--since", "2999-01-01", instance_path=instance.path).output
    assert cli("audit", "list", "--site", "nope", instance_path=instance.path).exit_code != 0


# -- revealing card keys -------------------------------------------------------------------------------


@pytest.fixture
def sold(host, card):
    """Delivered orders of the main catalogue's card: one sold by the main site, one by shop1; shop2 sells too."""
    levels.seed_default_levels()
    import_keys(card.skus[0], ["CARD-KEY-0001", "CARD-KEY-0002", "CARD-KEY-0003"], CardKeyCipher.from_instance(host.instance))
    shops = {slug: open_plugin_site(host, slug, []) for slug in ("shop1", "shop2")}
    for slug in shops:
        create_account(shops[slug], "owner", PASSWORD)
    made = {}
    for slug, sid in (("main", site_id("main")), ("shop1", shops["shop1"])):
        quote = pricing.quote_sku(sid, card.skus[0].id)
        order = orders.create_order(site_id=sid, sku_id=card.skus[0].id, quantity=1, contact="buyer@example.com",
                                    unit_price_fen=quote.unit_price_fen, costs=quote.costs, channel="epay",
                                    channel_profile="main")
        orders.mark_paid(order.order_no, channel="epay", trade_no=f"T-{order.order_no}",
                         amount_fen=order.amount_fen, channel_profile="main")
        made[slug] = order.order_no
    return made


def owner_console(host, slug):
    return sign_in_console(SiteClient(host, f"{slug}.localhost"), "owner", PASSWORD)


def reveal(client, order_no):
    page = client.get(f"/admin/orders/{order_no}/keys")
    assert page.status_code == 200 and "CARD-KEY" not in text(page)  # nothing until the button is pressed
    return client.post(f"/admin/orders/{order_no}/keys", data={"csrf_token": csrf_token(page)})


def test_the_seller_s_owner_reveals_their_order_s_keys_and_it_is_audited(host, sold):
    shop1 = owner_console(host, "shop1")
    response = reveal(shop1, sold["shop1"])
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    shown = re.findall(r"<code>(CARD-KEY-\d+)</code>", text(response))
    assert len(shown) == 1

    [entry] = entries("shop1", "cardkey.reveal")
    with all_sites():
        key_id = CardKey.get(CardKey.order == orders.find_order(sold["shop1"]).id).id
    assert entry.target == f"order:{sold['shop1']}" and entry.username == "owner"
    assert entry.details_dict()["key_ids"] == [key_id]
    assert shown[0] not in all_details()
    assert len([e for e in entries("shop1") if e.action.startswith("cardkey")]) == 1  # not twice


def test_the_catalogue_owner_reveals_a_sub_site_s_order_and_it_lands_in_its_own_log(host, sold, console):
    assert len(re.findall(r"<code>CARD-KEY-\d+</code>", text(reveal(console, sold["shop1"])))) == 1
    assert [e.target for e in entries("main", "cardkey.reveal")] == [f"order:{sold['shop1']}"]
    assert entries("shop1", "cardkey.reveal") == []


def test_another_site_s_owner_cannot_reveal_or_even_see_an_order(host, sold):
    shop2 = owner_console(host, "shop2")
    token = csrf_token(shop2.get("/admin/audit/"))
    for order_no in (sold["shop1"], sold["main"], "NO-SUCH-ORDER"):
        assert shop2.get(f"/admin/orders/{order_no}/keys").status_code == 404
        response = shop2.post(f"/admin/orders/{order_no}/keys", data={"csrf_token": token})
        assert response.status_code == 404 and "CARD-KEY" not in text(response)
    shop1 = owner_console(host, "shop1")  # a sub-site never sees the main site's own orders either
    assert shop1.get(f"/admin/orders/{sold['main']}/keys").status_code == 404
    assert [e.status for e in entries("shop2", "cardkey.reveal")] == [404, 404, 404]  # refused, recorded


def test_a_reveal_without_its_csrf_token_shows_nothing(host, sold):
    shop1 = owner_console(host, "shop1")
    response = shop1.post(f"/admin/orders/{sold['shop1']}/keys", data={})
    assert response.status_code == 400 and "CARD-KEY" not in text(response)
    assert [e.status for e in entries("shop1", "cardkey.reveal")] == [400]


def test_no_reveal_without_its_audit_entry(host, sold, monkeypatch):
    from kamengsite import audit

    def broken(*args, **kwargs):
        raise RuntimeError("database down")

    shop1 = owner_console(host, "shop1")
    page = shop1.get(f"/admin/orders/{sold['shop1']}/keys")
    monkeypatch.setattr(audit, "record", broken)
    response = shop1.post(f"/admin/orders/{sold['shop1']}/keys", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 500 and "CARD-KEY" not in text(response)


def test_the_order_number_box_opens_the_order_s_page(console, sold):
    response = console.get("/admin/orders/keys", query_string={"order_no": sold["main"]})
    assert response.status_code == 302 and response.headers["Location"] == f"/admin/orders/{sold['main']}/keys"


def test_every_site_has_the_audit_table(main_id):
    assert Site.get_by_id(main_id) and AuditEntry._meta.table_name == "audit_entry"


@pytest.mark.databases
def test_search_filters_on_every_database(db_host):
    from kamengsite.audit import search

    main = site_id("main")
    with site_scope(main):
        record("products.edit", username="alice", target="product:1", details={"name": "月卡 100%_off"})
        record("products.create", username="bob", target="product:2", details={"name": "季卡"})
        early = record("order.refund", username="bob", target="order:K123")
        AuditEntry.update(created_at=datetime.datetime(2026, 1, 5, 23, 59)).where(AuditEntry.id == early.id).execute()

        def found(**filters):
            return [e.target for e in search(**filters)]

        assert found(account="Alice") == ["product:1"]
        assert found(action="products.") == ["product:2", "product:1"]  # newest first
        assert found(since=datetime.date(2026, 1, 5), until=datetime.date(2026, 1, 5)) == ["order:K123"]
        assert found(text="100%_") == ["product:1"] and found(text="0%x") == []  # wildcards are literal
        assert found(text="季卡") == ["product:2"]
    with site_scope(site_id("main") + 1000):
        assert list(search()) == []


def test_the_ip_is_the_client_s_behind_a_trusted_proxy(host_factory):
    proxied = host_factory("proxied", trusted_proxies=1)
    create_account(site_id("main"), "boss", PASSWORD)
    client = SiteClient(proxied, "main.localhost")
    page = client.get("/admin/login")
    client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "boss", "password": "wrong-password"},
                headers={"X-Forwarded-For": "198.51.100.9"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert [e.ip for e in entries()] == ["198.51.100.9"]


def test_an_upload_over_the_limit_is_recorded_as_refused_without_its_content(console, card, host):
    import io

    host.app_for("main").config["ADMIN_MAX_UPLOAD"] = 64 * 1024
    page = console.get(f"/admin/products/{card.id}/keys")
    body = b"".join(b"BIG-KEY-%06d\n" % i for i in range(20_000))
    response = console.post(f"/admin/products/{card.id}/keys", content_type="multipart/form-data", data={
        "csrf_token": csrf_token(page), "sku": str(card.skus[0].id), "file": (io.BytesIO(body), "keys.txt")})
    assert response.status_code == 413
    [entry] = entries(action="keys.import")
    assert entry.status == 413 and entry.refused and "BIG-KEY" not in all_details()


def test_two_step_sign_in_and_account_security_writes_store_no_codes_or_passwords(host, console, operator,
                                                                                 monkeypatch):
    import pyotp

    from kamengsite import account_security as security

    clock = {"step": 60_000_000}
    monkeypatch.setattr(security, "_step", lambda now=None: clock["step"])

    def code(secret):
        return pyotp.TOTP(secret).at(clock["step"] * security.TOTP_INTERVAL)

    page = console.get("/admin/account")
    console.post("/admin/account/2fa/start", data={"csrf_token": csrf_token(page)})
    setup = console.get("/admin/account/2fa/setup")
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', text(setup)).group(1)
    assert console.post("/admin/account/2fa/setup", data={"csrf_token": csrf_token(setup),
                                                          "code": code(secret)}).status_code == 200
    page = console.get("/admin/account")
    console.post("/admin/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                  "new": SECRET + "-new", "again": SECRET + "-new"})

    setup_code = code(secret)
    clock["step"] += 10  # a later code: the one used for the setup is spent
    client = SiteClient(host, "main.localhost")
    page = client.get("/admin/login")
    assert client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": "boss",
                                             "password": SECRET + "-new"}).status_code == 302
    page = client.get("/admin/login/code")
    wrong = str((int(code(secret)) + 1) % 1_000_000).zfill(6)
    client.post("/admin/login/code", data={"csrf_token": csrf_token(page), "code": wrong})
    assert client.post("/admin/login/code", data={"csrf_token": csrf_token(page),
                                                  "code": code(secret)}).status_code == 302

    actions = [(e.action, e.account_id) for e in entries()]
    assert actions[-3:] == [("login.password_ok", operator.id), ("login.failure", operator.id),
                            ("login.success", operator.id)]
    assert {"account.two_factor_start", "account.two_factor_setup", "account.change_password"} <= {
        a for a, _ in actions}
    stored = all_details()
    assert SECRET not in stored and PASSWORD not in stored and code(secret) not in stored and secret not in stored
    assert setup_code not in stored


def test_the_audit_page_in_english(console, main_id):
    with site_scope(main_id):
        record("products.edit", username="alice", target="product:1", details={"name": "月卡", "price": "1"},
               status=403)
    assert "<h1>审计日志</h1>" in text(console.get("/admin/audit/"))
    html = text(console.get("/admin/audit/?lang=en"))
    assert "<h1>Audit log</h1>" in html and "<th>Target</th>" in html and "Refused 403" in html
    assert "name=月卡; price=1" in html  # the content stays as it was written
    for chinese in ("审计日志", "对象", "被拒绝", "第 1 页", "记录永久保留"):
        assert chinese not in html
    assert "Invalid date" in text(console.get("/admin/audit/?since=yesterday"))
