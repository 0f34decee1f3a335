"""The reseller API (kamengsite/api/routes.py): the signature, every reading endpoint, the caller's
prices, JSON errors under /api, rate limits, the docs page and the signing example of docs/api.md."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from kamengsite import members
from kamengsite.api import keys, routes, signing
from kamengsite.api.errors import CODES
from kamengsite.catalog import Category, Product, Sku, create_product
from kamengsite.checkout import Checkout
from kamengsite.hookspecs import hookimpl
from kamengsite.models import Site
from kamengsite.pricing import set_rule
from kamengsite.testing import ApiClient, SiteClient, open_channel_shop

PASSWORD = "correct horse battery staple"
PRICE_FEN = 1500
SHOP1 = "shop1.localhost"
DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


# -- a shop with a reseller ----------------------------------------------------------------------


class ApiShop:
    """shop1 selling the main site's card product (``PRICE_FEN``, ``keys`` keys), a reseller member
    with ``wallet_fen`` in the wallet, and a signed client of the reseller's key."""

    def __init__(self, host, *, wallet_fen=100_000, keys_in_stock=20, plugins=()):
        self.host = host
        for name, plugin in plugins:  # before the first request: the site app is built once
            host.plugins.register(plugin, name=name)
            host.plugins.core.add(name)
        self.channel_shop = open_channel_shop(host, PRICE_FEN, keys=keys_in_stock)
        self.site_id, self.product = self.channel_shop.site_id, self.channel_shop.product
        self.sku = Sku.get(Sku.product == self.product.id)
        self.member = members.register(self.site_id, "reseller@example.com", PASSWORD)
        if wallet_fen:
            members.credit_wallet(self.site_id, self.member.id, wallet_fen, "opening", "开户")
        self.api = self.client_for(self.member)

    def client_for(self, member, site_id=None, host_name=SHOP1) -> ApiClient:
        key, secret = keys.issue_key(site_id or self.site_id, member.id, self.host.instance.secret_key)
        return ApiClient(SiteClient(self.host, host_name), key.app_key, secret)

    @property
    def key(self):
        return keys.find_active(self.api.app_key)

    def wallet(self, member=None) -> int:
        return members.wallet_balance(self.site_id, (member or self.member).id)


@pytest.fixture
def shop(host):
    return ApiShop(host)


def body(response) -> dict:
    assert response.content_type.startswith("application/json"), (response.status_code, response.data[:300])
    return json.loads(response.data)


def data(response):
    payload = body(response)
    assert response.status_code == 200 and payload["ok"] is True, payload
    return payload["data"]


def error(response, status: int, code: str) -> dict:
    payload = body(response)
    assert response.status_code == status, payload
    assert set(payload) == {"ok", "error"} and payload["ok"] is False
    assert set(payload["error"]) == {"code", "message"}
    assert payload["error"]["code"] == code and payload["error"]["message"]
    return payload["error"]


# -- the signature ---------------------------------------------------------------------------------


def test_a_signed_ping_answers_the_site_and_its_time(shop):
    answer = data(shop.api.get("/api/v1/ping"))
    assert answer["site"] == "shop1" and answer["name"]
    assert abs(answer["time"] - time.time()) < 5
    assert shop.key.last_used_at is not None


@pytest.mark.parametrize("dropped", [signing.KEY_HEADER, signing.TIMESTAMP_HEADER, signing.NONCE_HEADER,
                                     signing.SIGNATURE_HEADER])
def test_each_missing_header_is_missing_signature(shop, dropped):
    headers = shop.api.headers("GET", "/api/v1/ping")
    del headers[dropped]
    error(shop.api.client.get("/api/v1/ping", headers=headers), 401, "missing_signature")


def test_no_headers_at_all_is_missing_signature(shop):
    error(SiteClient(shop.host, SHOP1).get("/api/v1/balance"), 401, "missing_signature")


def test_a_wrong_signature_is_refused(shop):
    headers = shop.api.headers("GET", "/api/v1/ping")
    headers[signing.SIGNATURE_HEADER] = "0" * 64
    error(shop.api.client.get("/api/v1/ping", headers=headers), 401, "invalid_signature")


def test_a_wrong_secret_is_refused(shop):
    forged = ApiClient(shop.api.client, shop.api.app_key, "not-the-secret")
    error(forged.get("/api/v1/ping"), 401, "invalid_signature")


def test_the_body_and_the_query_are_signed(shop):
    signed = json.dumps({"out_trade_no": "A1", "sku_id": shop.sku.id, "quantity": 1}).encode()
    headers = shop.api.headers("POST", "/api/v1/orders", signed)
    headers["Content-Type"] = "application/json"
    tampered = signed.replace(b'"quantity": 1', b'"quantity": 2')
    error(shop.api.client.post("/api/v1/orders", data=tampered, headers=headers), 401, "invalid_signature")
    headers = shop.api.headers("GET", f"/api/v1/stock?sku_ids={shop.sku.id}")
    error(shop.api.client.get(f"/api/v1/stock?sku_ids={shop.sku.id + 1}", headers=headers), 401, "invalid_signature")
    assert data(shop.api.get(f"/api/v1/stock?sku_ids={shop.sku.id}"))[0]["sku_id"] == shop.sku.id


def test_unknown_and_revoked_keys_are_invalid_key(shop):
    stranger = ApiClient(shop.api.client, "ks_" + "0" * 24, "whatever")
    error(stranger.get("/api/v1/ping"), 401, "invalid_key")
    assert keys.revoke(shop.site_id, shop.key.id)
    error(shop.api.get("/api/v1/ping"), 401, "invalid_key")


def test_a_key_of_another_site_is_invalid_key_here(shop):
    shop.host.registry.create("shop2", template="gaming")
    shop2 = Site.get(Site.slug == "shop2").id
    other = members.register(shop2, "other@example.com", PASSWORD)
    on_shop2 = shop.client_for(other, site_id=shop2, host_name="shop2.localhost")
    assert data(on_shop2.get("/api/v1/ping"))["site"] == "shop2"
    shop2_key_on_shop1 = ApiClient(SiteClient(shop.host, SHOP1), on_shop2.app_key, on_shop2.secret)
    error(shop2_key_on_shop1.get("/api/v1/ping"), 401, "invalid_key")


# int(time.time()) truncates: +61 could land within 60 s of the server's float clock, so +65.
@pytest.mark.parametrize("offset, accepted", [(-61, False), (65, False), (-55, True), (55, True)])
def test_the_timestamp_must_be_within_sixty_seconds(shop, offset, accepted):
    response = shop.api.get("/api/v1/ping", timestamp=int(time.time()) + offset)
    if accepted:
        assert data(response)["site"] == "shop1"
    else:
        error(response, 401, "timestamp_out_of_window")


def test_a_replayed_nonce_is_refused(shop):
    nonce = "n" * 20
    assert data(shop.api.get("/api/v1/ping", nonce=nonce))
    error(shop.api.get("/api/v1/ping", nonce=nonce), 401, "nonce_replayed")
    error(shop.api.get("/api/v1/balance", nonce=nonce), 401, "nonce_replayed")  # even on another path


def test_a_malformed_nonce_is_refused(shop):
    error(shop.api.get("/api/v1/ping", nonce="short"), 401, "missing_signature")


def test_a_disabled_member_key_is_forbidden(shop):
    members.set_status(shop.site_id, shop.member.id, "disabled")
    error(shop.api.get("/api/v1/ping"), 403, "forbidden")


# -- the worked example of docs/api.md ---------------------------------------------------------------


def _doc_example() -> dict:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- signing-example:begin -->(.*?)<!-- signing-example:end -->", text, re.S)
    assert block, "docs/api.md must keep its signing example between the markers"
    return {"text": block.group(1), "values": dict(re.findall(r"^([a-z_]+): *(.*?) *$", block.group(1), re.M))}


def test_the_signing_example_in_the_docs_is_what_the_code_computes():
    example = _doc_example()
    values = example["values"]
    body_bytes = values["body"].encode("utf-8")
    to_sign = signing.string_to_sign(values["method"], values["path"], values["timestamp"], values["nonce"],
                                     body_bytes)
    shown = re.search(r"```text\n(.*?)\n```", example["text"], re.S).group(1)
    assert shown == to_sign
    assert values["signature"] == signing.signature(values["secret"], values["method"], values["path"],
                                                    values["timestamp"], values["nonce"], body_bytes)
    assert len(values["signature"]) == 64


def test_the_python_client_of_the_docs_signs_like_the_server_checks(shop, tmp_path):
    """The docs' Python client, imported as printed: it reproduces the example and passes the server."""
    import importlib.util

    code = re.search(r"```python\n(import hashlib, hmac, json, secrets.*?)\napi = KamengsiteApi",
                     DOC.read_text(encoding="utf-8"), re.S).group(1)
    (tmp_path / "docs_client.py").write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("docs_client", tmp_path / "docs_client.py")
    docs_client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs_client)
    values = _doc_example()["values"]
    client = docs_client.KamengsiteApi("https://shop1.example.com", values["app_key"], values["secret"])
    headers = client.sign(values["method"], values["path"], values["body"].encode(), values["timestamp"], values["nonce"])
    assert headers[signing.SIGNATURE_HEADER] == values["signature"]
    live = docs_client.KamengsiteApi("http://shop1.localhost", shop.api.app_key, shop.api.secret)
    response = shop.api.client.get("/api/v1/balance", headers=live.sign("GET", "/api/v1/balance", b""))
    assert data(response)["balance_fen"] == 100_000


# -- reading endpoints -----------------------------------------------------------------------------


def test_categories_are_the_visible_ones_of_the_catalogue_sold_here(shop):
    main = Site.get(Site.slug == shop.host.instance.main_site)
    games = Category.create(site=main, name="Games")
    cards = Category.create(site=main, name="Cards", parent=games)
    Category.create(site=main, name="Hidden", visible=False)
    listed = data(shop.api.get("/api/v1/categories"))
    assert {"id": games.id, "name": "Games", "parent_id": None} in listed
    assert {"id": cards.id, "name": "Cards", "parent_id": games.id} in listed
    assert "Hidden" not in {c["name"] for c in listed}


def test_products_list_pages_and_filters_by_category(shop):
    main = Site.get(Site.slug == shop.host.instance.main_site)
    games = Category.create(site=main, name="Games")
    extra = [create_product(main, f"Extra {i}", 900 + i, category=games) for i in range(3)]
    create_product(main, "Off sale", 100, status="off")
    everything = data(shop.api.get("/api/v1/products?per_page=100"))
    names = [p["name"] for p in everything["items"]]
    assert everything["total"] == 4 and sorted(names) == sorted([shop.product.name] + [p.name for p in extra])
    first = data(shop.api.get("/api/v1/products?page=1&per_page=3"))
    second = data(shop.api.get("/api/v1/products?page=2&per_page=3"))
    assert (first["page"], first["per_page"], first["total"]) == (1, 3, 4)
    assert len(first["items"]) == 3 and len(second["items"]) == 1
    assert {p["id"] for p in first["items"]} | {p["id"] for p in second["items"]} == {p["id"] for p in everything["items"]}
    in_games = data(shop.api.get(f"/api/v1/products?category_id={games.id}"))
    assert {p["id"] for p in in_games["items"]} == {p.id for p in extra} and in_games["total"] == 3
    error(shop.api.get("/api/v1/products?per_page=1000"), 400, "invalid_request")
    error(shop.api.get("/api/v1/products?page=abc"), 400, "invalid_request")


def test_a_product_shows_its_skus_price_and_stock(shop):
    found = data(shop.api.get(f"/api/v1/products/{shop.product.id}"))
    assert found == {"id": shop.product.id, "name": shop.product.name, "summary": "", "category_id": None,
                     "kind": "card", "min_qty": 1, "max_qty": 5, "fields": [],
                     "skus": [{"id": shop.sku.id, "name": shop.sku.name, "price_fen": PRICE_FEN, "stock": 20}]}
    error(shop.api.get("/api/v1/products/999999"), 404, "not_found")
    Product.update(status="off").where(Product.id == shop.product.id).execute()
    error(shop.api.get(f"/api/v1/products/{shop.product.id}"), 404, "not_found")


def test_a_topup_product_lists_the_fields_to_fill_in(shop):
    main = Site.get(Site.slug == shop.host.instance.main_site)
    topup = create_product(main, "QQ top-up", 1000, kind="topup",
                           topup_fields=json.dumps([{"name": "account", "label": "QQ number"}]))
    found = data(shop.api.get(f"/api/v1/products/{topup.id}"))
    assert found["kind"] == "topup"
    assert found["fields"] == [{"name": "account", "label": "QQ number", "required": True}]


def test_stock_of_skus_on_sale_here_and_of_others(shop):
    answer = data(shop.api.get(f"/api/v1/stock?sku_ids={shop.sku.id},999999"))
    assert answer == [{"sku_id": shop.sku.id, "stock": 20, "on_sale": True},
                      {"sku_id": 999999, "stock": 0, "on_sale": False}]
    for bad in ("", "abc", "1,,x", ",".join(["1"] * 101)):
        error(shop.api.get(f"/api/v1/stock?sku_ids={bad}"), 400, "invalid_request")


def test_balance_is_the_members_wallet(shop):
    assert data(shop.api.get("/api/v1/balance")) == {"balance_fen": 100_000, "currency": "CNY"}
    members.debit_wallet(shop.site_id, shop.member.id, 2_345, "manual-1")
    assert data(shop.api.get("/api/v1/balance"))["balance_fen"] == 100_000 - 2_345


# -- the caller's price is this site's price for this member -----------------------------------------


class MemberPrice:
    """A test plugin: 3.00 off the unit price for one member (like a member level), nobody else."""

    def __init__(self):
        self.member_id = None

    @hookimpl
    def adjust_price(self, checkout: Checkout, stage):
        if stage == "member" and checkout.member_id is not None and checkout.member_id == self.member_id:
            checkout.offer_unit_price(checkout.list_unit_fen - 300, source="test", label="member price")


def test_the_callers_price_reflects_the_sites_markup_and_the_members_level(host):
    plugin = MemberPrice()
    shop = ApiShop(host, plugins=[("test-member-price", plugin)])
    plugin.member_id = shop.member.id
    set_rule(shop.site_id, "all", markup_percent_bp=2000)  # shop1 sells at +20 %
    listed = PRICE_FEN * 12 // 10
    other = members.register(shop.site_id, "plain@example.com", PASSWORD)
    members.credit_wallet(shop.site_id, other.id, 10_000, "opening-plain")
    plain = shop.client_for(other)

    assert data(plain.get(f"/api/v1/products/{shop.product.id}"))["skus"][0]["price_fen"] == listed
    assert data(shop.api.get(f"/api/v1/products/{shop.product.id}"))["skus"][0]["price_fen"] == listed - 300
    assert data(shop.api.get("/api/v1/products"))["items"][0]["skus"][0]["price_fen"] == listed - 300

    order = data(shop.api.post("/api/v1/orders", {"out_trade_no": "P1", "sku_id": shop.sku.id, "quantity": 2}))
    assert (order["unit_price_fen"], order["amount_fen"]) == (listed - 300, 2 * (listed - 300))
    assert shop.wallet() == 100_000 - 2 * (listed - 300)
    plain_order = data(plain.post("/api/v1/orders", {"out_trade_no": "P1", "sku_id": shop.sku.id, "quantity": 1}))
    assert plain_order["amount_fen"] == listed and plain_order["order_no"] != order["order_no"]


# -- errors are JSON under /api ---------------------------------------------------------------------


def test_unknown_paths_and_methods_under_api_answer_json(shop):
    error(shop.api.get("/api/v1/nothing-here"), 404, "not_found")
    error(shop.api.client.get("/api/whatever"), 404, "not_found")
    error(shop.api.client.delete("/api/v1/ping", headers=shop.api.headers("DELETE", "/api/v1/ping")),
          405, "invalid_request")
    page = SiteClient(shop.host, SHOP1).get("/no-such-page")
    assert page.status_code == 404 and page.content_type.startswith("text/html")  # the shop keeps its page


def test_a_body_that_is_not_a_json_object_is_invalid_request(shop):
    for raw in (b"{not json", b"[1, 2]", b"", "\"text\"".encode(), b"\xff\xfe"):
        headers = shop.api.headers("POST", "/api/v1/orders", raw)
        headers["Content-Type"] = "application/json"
        error(shop.api.client.post("/api/v1/orders", data=raw, headers=headers), 400, "invalid_request")


@pytest.mark.parametrize("order, field", [
    ({"sku_id": 1, "quantity": 1}, "out_trade_no"),
    ({"out_trade_no": "bad no!", "sku_id": 1, "quantity": 1}, "out_trade_no"),
    ({"out_trade_no": "A" * 65, "sku_id": 1, "quantity": 1}, "out_trade_no"),
    ({"out_trade_no": "A1\n", "sku_id": 1, "quantity": 1}, "out_trade_no"),
    ({"out_trade_no": "A1", "sku_id": "1", "quantity": 1}, "sku_id"),
    ({"out_trade_no": "A1", "sku_id": 1, "quantity": 0}, "quantity"),
    ({"out_trade_no": "A1", "sku_id": 1, "quantity": True}, "quantity"),
    ({"out_trade_no": "A1", "sku_id": 1, "quantity": 1, "fields": {"a": 1}}, "fields"),
])
def test_an_invalid_order_request_names_the_field(shop, order, field):
    assert field in error(shop.api.post("/api/v1/orders", order), 400, "invalid_request")["message"]


def test_a_crash_under_api_is_a_json_internal_error(shop, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(members, "wallet_balance", broken)
    shop.host.app_for("shop1").config["PROPAGATE_EXCEPTIONS"] = False
    message = error(shop.api.get("/api/v1/balance"), 500, "internal_error")["message"]
    assert "boom" not in message


# -- rate limits ----------------------------------------------------------------------------------


def test_a_key_over_its_rate_limit_gets_429(shop):
    shop.host.instance.rate_limits["api"] = "3/minute"
    for _ in range(3):
        assert data(shop.api.get("/api/v1/ping"))
    error(shop.api.get("/api/v1/ping"), 429, "rate_limited")
    other = members.register(shop.site_id, "second@example.com", PASSWORD)
    assert data(shop.client_for(other).get("/api/v1/ping"))  # another key has its own allowance


def test_a_client_ip_over_its_limit_gets_429_before_any_signature(shop):
    shop.host.instance.rate_limits["api_ip"] = "2/minute"
    assert data(shop.api.get("/api/v1/ping"))
    error(SiteClient(shop.host, SHOP1).get("/api/v1/ping"), 401, "missing_signature")
    error(SiteClient(shop.host, SHOP1).get("/api/v1/ping"), 429, "rate_limited")
    error(shop.api.get("/api/v1/ping"), 429, "rate_limited")


# -- the description and the docs page ----------------------------------------------------------------


ENDPOINTS = {("get", "/api/v1/ping"), ("get", "/api/v1/categories"), ("get", "/api/v1/products"),
             ("get", "/api/v1/products/{product_id}"), ("get", "/api/v1/stock"), ("post", "/api/v1/orders"),
             ("get", "/api/v1/orders/{out_trade_no}"), ("post", "/api/v1/orders/{out_trade_no}/cancel"),
             ("get", "/api/v1/balance")}


def test_the_openapi_document_is_public_and_describes_every_endpoint(shop):
    response = SiteClient(shop.host, SHOP1).get("/api/openapi.json")
    document = body(response)
    assert response.status_code == 200 and document["openapi"].startswith("3.0")
    assert {(m, p) for p, methods in document["paths"].items() for m in methods} == ENDPOINTS
    headers = {s["name"] for s in document["components"]["securitySchemes"].values()}
    assert headers == {signing.KEY_HEADER, signing.TIMESTAMP_HEADER, signing.NONCE_HEADER, signing.SIGNATURE_HEADER}
    assert set(document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]) \
        == set(CODES)
    assert {"Product", "Order", "Error"} <= set(document["components"]["schemas"])


def test_the_docs_page_shows_the_recipe_every_endpoint_and_every_error_code(shop):
    response = SiteClient(shop.host, SHOP1).get("/api/docs")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.content_type.startswith("text/html")
    for method, path in ENDPOINTS:
        assert path in page
    for code in CODES:
        assert f"<code>{code}</code>" in page
    assert "HMAC-SHA256" in page and signing.SIGNATURE_HEADER in page
    assert "<script" not in page and "http://" not in page.replace("http://localhost", "")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_the_nonce_sweep_is_a_periodic_job():
    registered = {}

    class FakeHuey:
        def periodic_task(self, schedule, name=None):
            def register(fn):
                registered[name] = fn
                return fn

            return register

    routes.register_jobs(FakeHuey(), instance=None)
    assert set(registered) == {"api_sweep_nonces"}


def test_the_member_levels_plugin_prices_the_keys_member(host):
    """The real member_levels plugin, enabled on the site: the key's member gets the level's discount."""
    from kamengsite.cardkeys import import_keys
    from kamengsite.crypto import CardKeyCipher
    from kamengsite.testing import open_plugin_site

    shop = open_plugin_site(host, "shopx", ["member_levels"], settings={
        "member_levels": {"levels": [{"name": "VIP", "min_spend_fen": 0, "discount_bp": 1000}]}})  # +20 %, VIP -10 %
    main = Site.get(Site.slug == host.instance.main_site)
    product = create_product(main, "Card", 1500, max_qty=5)
    sku = Sku.get(Sku.product == product.id)
    import_keys(sku, ["LV-1", "LV-2"], CardKeyCipher.from_instance(host.instance))
    member = members.register(shop, "vip@example.com", PASSWORD)
    members.credit_wallet(shop, member.id, 10_000, "opening-vip")
    key, secret = keys.issue_key(shop, member.id, host.instance.secret_key)
    api = ApiClient(SiteClient(host, "shopx.localhost"), key.app_key, secret)
    vip_price = 1800 - 1800 * 1000 // 10000
    assert data(api.get(f"/api/v1/products/{product.id}"))["skus"][0]["price_fen"] == vip_price
    order = data(api.post("/api/v1/orders", {"out_trade_no": "V1", "sku_id": sku.id, "quantity": 1}))
    assert order["amount_fen"] == vip_price and members.wallet_balance(shop, member.id) == 10_000 - vip_price
