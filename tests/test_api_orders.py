"""Orders through the reseller API: created, paid from the wallet and delivered in one call;
idempotent by out_trade_no (even under concurrent identical requests, on every database);
insufficient balance leaves nothing reserved; cancelling refunds once; no oversell under races."""

from __future__ import annotations

import collections
import json
import threading

import pytest

from kamengsite import ledger, members
from kamengsite.api import routes
from kamengsite.api.models import ApiOrder
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.checkout import CheckoutRefused
from kamengsite.catalog import Product, Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import database, is_sqlite
from kamengsite.hookspecs import hookimpl
from kamengsite.models import Site
from kamengsite.orders import Order, Payment
from kamengsite.refunds import Refund
from kamengsite.tenancy import all_sites
from kamengsite.testing import ApiClient, SiteClient

from test_api import PASSWORD, PRICE_FEN, SHOP1, ApiShop, data, error


@pytest.fixture
def shop(host):
    return ApiShop(host, wallet_fen=10_000)


def order_body(shop, out_trade_no="A1", quantity=1, **extra):
    return {"out_trade_no": out_trade_no, "sku_id": shop.sku.id, "quantity": quantity, **extra}


def wallet_debits(order_no) -> list:
    return list(ledger.LedgerTxn.select().where((ledger.LedgerTxn.kind == "wallet_pay")
                                                & (ledger.LedgerTxn.reference == order_no)))


def key_statuses(sku_id) -> collections.Counter:
    with all_sites():
        return collections.Counter(k.status for k in CardKey.select().where(CardKey.sku == sku_id))


def stock_of(sku_id) -> int:
    return Sku.get_by_id(sku_id).stock


def order_rows() -> list:
    with all_sites():
        return list(Order.select())


def topup_product(shop, **fields):
    main = Site.get(Site.slug == shop.host.instance.main_site)
    product = create_product(main, "QQ top-up", 1000, kind="topup",
                             topup_fields=json.dumps([{"name": "account", "label": "QQ number", "pattern": "[0-9]{5,12}"}]),
                             **fields)
    Sku.update(stock=50).where(Sku.product == product.id).execute()
    return product, Sku.get(Sku.product == product.id)


# -- create → delivered -----------------------------------------------------------------------------


def test_an_order_is_paid_from_the_wallet_and_delivered_with_keys_from_stock(shop):
    order = data(shop.api.post("/api/v1/orders", order_body(shop, quantity=2)))
    assert order["status"] == "delivered" and order["out_trade_no"] == "A1"
    assert (order["product_id"], order["sku_id"], order["quantity"]) == (shop.product.id, shop.sku.id, 2)
    assert (order["unit_price_fen"], order["amount_fen"]) == (PRICE_FEN, 2 * PRICE_FEN)
    assert len(order["keys"]) == 2 and all(k.startswith("CODE-") for k in order["keys"])
    assert order["created_at"].endswith("Z") and order["paid_at"].endswith("Z") and order["delivered_at"].endswith("Z")
    assert shop.wallet() == 10_000 - 2 * PRICE_FEN
    assert len(wallet_debits(order["order_no"])) == 1
    assert stock_of(shop.sku.id) == 18 and key_statuses(shop.sku.id) == {"available": 18, "sold": 2}
    with all_sites():
        row = Order.get(Order.order_no == order["order_no"])
    assert (row.member_id, row.channel, row.contact, row.site_id) == (shop.member.id, "balance",
                                                                      "reseller@example.com", shop.site_id)
    assert shop.channel_shop.counter.orders == [(order["order_no"], "shop1")]  # order_delivered ran once

    again = data(shop.api.get("/api/v1/orders/A1"))
    assert again == order


def test_the_same_out_trade_no_returns_the_same_order_and_debits_once(shop):
    first = data(shop.api.post("/api/v1/orders", order_body(shop)))
    second = data(shop.api.post("/api/v1/orders", order_body(shop)))
    assert second == first
    assert len(order_rows()) == 1 and len(wallet_debits(first["order_no"])) == 1
    assert shop.wallet() == 10_000 - PRICE_FEN and stock_of(shop.sku.id) == 19


def test_the_same_out_trade_no_for_another_order_is_a_conflict(shop):
    data(shop.api.post("/api/v1/orders", order_body(shop)))
    error(shop.api.post("/api/v1/orders", order_body(shop, quantity=2)), 409, "idempotency_conflict")
    assert len(order_rows()) == 1 and shop.wallet() == 10_000 - PRICE_FEN


def test_out_trade_nos_are_per_key(shop):
    other = members.register(shop.site_id, "second@example.com", PASSWORD)
    members.credit_wallet(shop.site_id, other.id, 5_000, "opening-second")
    theirs = shop.client_for(other)
    mine = data(shop.api.post("/api/v1/orders", order_body(shop)))
    their_order = data(theirs.post("/api/v1/orders", order_body(shop)))
    assert mine["order_no"] != their_order["order_no"]
    assert data(shop.api.get("/api/v1/orders/A1"))["order_no"] == mine["order_no"]
    assert data(theirs.get("/api/v1/orders/A1"))["order_no"] == their_order["order_no"]
    assert shop.wallet(other) == 5_000 - PRICE_FEN


def test_an_unknown_order_is_not_found(shop):
    error(shop.api.get("/api/v1/orders/NOPE"), 404, "not_found")
    error(shop.api.post("/api/v1/orders/NOPE/cancel"), 404, "not_found")


# -- refusals leave nothing behind ---------------------------------------------------------------


def test_insufficient_balance_is_402_and_gives_stock_and_keys_back(host):
    shop = ApiShop(host, wallet_fen=PRICE_FEN - 1)
    error(shop.api.post("/api/v1/orders", order_body(shop)), 402, "insufficient_balance")
    assert stock_of(shop.sku.id) == 20 and key_statuses(shop.sku.id) == {"available": 20}
    assert [o.status for o in order_rows()] == ["cancelled"]
    with all_sites():
        assert Payment.select().count() == 0 and ApiOrder.select().count() == 0
    assert shop.wallet() == PRICE_FEN - 1
    error(shop.api.get("/api/v1/orders/A1"), 404, "not_found")

    members.credit_wallet(shop.site_id, shop.member.id, 1, "topup-1")  # the same out_trade_no, retried later
    order = data(shop.api.post("/api/v1/orders", order_body(shop)))
    assert order["status"] == "delivered" and shop.wallet() == 0
    assert stock_of(shop.sku.id) == 19


def test_a_sku_not_on_sale_here_and_too_little_stock_are_refused(shop):
    error(shop.api.post("/api/v1/orders", {"out_trade_no": "X", "sku_id": 999999, "quantity": 1}), 409, "not_on_sale")
    Product.update(status="off").where(Product.id == shop.product.id).execute()
    error(shop.api.post("/api/v1/orders", order_body(shop)), 409, "not_on_sale")
    Product.update(status="on", max_qty=50).where(Product.id == shop.product.id).execute()
    error(shop.api.post("/api/v1/orders", order_body(shop, quantity=21)), 409, "out_of_stock")
    error(shop.api.post("/api/v1/orders", order_body(shop, quantity=0)), 400, "invalid_request")
    assert order_rows() == [] and shop.wallet() == 10_000


def test_a_quantity_outside_the_products_limits_is_invalid(shop):
    error(shop.api.post("/api/v1/orders", order_body(shop, quantity=6)), 400, "invalid_request")  # max_qty 5
    assert order_rows() == []


def test_a_private_callback_url_is_refused_and_a_public_one_kept(shop, monkeypatch):
    from kamengsite import outbound

    monkeypatch.setattr(outbound, "resolve", lambda host: ["93.184.216.34"] if host == "example.com" else ["10.0.0.8"])
    for url in ("http://127.0.0.1/cb", "http://10.0.0.8/cb", "ftp://example.com/cb", "http://internal.corp/cb"):
        error(shop.api.post("/api/v1/orders", order_body(shop, callback_url=url)), 400, "callback_url_refused")
    order = data(shop.api.post("/api/v1/orders", order_body(shop, callback_url="https://example.com/cb?x=1")))
    with all_sites():
        assert ApiOrder.get(ApiOrder.out_trade_no == "A1").callback_url == "https://example.com/cb?x=1"
    assert order["status"] == "delivered"


def test_a_topup_order_needs_its_fields(shop):
    product, sku = topup_product(shop)
    body = {"out_trade_no": "T1", "sku_id": sku.id, "quantity": 1}
    error(shop.api.post("/api/v1/orders", body), 400, "invalid_request")
    error(shop.api.post("/api/v1/orders", dict(body, fields={"account": "abc"})), 400, "invalid_request")
    order = data(shop.api.post("/api/v1/orders", dict(body, fields={"account": "123456"})))
    assert order["status"] == "paid" and order["keys"] == []
    with all_sites():
        assert Order.get(Order.order_no == order["order_no"]).field_values == {"account": "123456"}


# -- cancelling -----------------------------------------------------------------------------------


def test_a_paid_undelivered_order_is_cancelled_and_refunded_once(shop):
    product, sku = topup_product(shop)
    body = {"out_trade_no": "T1", "sku_id": sku.id, "quantity": 2, "fields": {"account": "123456"}}
    order = data(shop.api.post("/api/v1/orders", body))
    assert order["status"] == "paid" and shop.wallet() == 10_000 - 2000
    cancelled = data(shop.api.post("/api/v1/orders/T1/cancel"))
    assert cancelled["status"] == "refunded" and cancelled["order_no"] == order["order_no"]
    assert shop.wallet() == 10_000
    error(shop.api.post("/api/v1/orders/T1/cancel"), 409, "not_cancellable")
    assert shop.wallet() == 10_000
    with all_sites():
        assert Refund.select().count() == 1
    assert data(shop.api.post("/api/v1/orders", body))["status"] == "refunded"  # the same order, not a new one
    assert shop.wallet() == 10_000


def test_delivered_and_upstream_orders_are_not_cancellable(shop):
    data(shop.api.post("/api/v1/orders", order_body(shop)))
    error(shop.api.post("/api/v1/orders/A1/cancel"), 409, "not_cancellable")
    product, sku = topup_product(shop, supplier="some-upstream")
    body = {"out_trade_no": "U1", "sku_id": sku.id, "quantity": 1, "fields": {"account": "123456"}}
    assert data(shop.api.post("/api/v1/orders", body))["status"] == "paid"
    error(shop.api.post("/api/v1/orders/U1/cancel"), 409, "not_cancellable")
    assert shop.wallet() == 10_000 - PRICE_FEN - 1000
    with all_sites():
        assert Refund.select().count() == 0


def test_concurrent_cancels_refund_once(shop):
    product, sku = topup_product(shop)
    data(shop.api.post("/api/v1/orders", {"out_trade_no": "T1", "sku_id": sku.id, "quantity": 1,
                                          "fields": {"account": "123456"}}))
    results = _together(lambda n: _api_call(shop.host, shop.api, "POST", "/api/v1/orders/T1/cancel"), 4)
    assert sorted(status for status, _ in results).count(200) >= 1
    assert {payload.get("error", {}).get("code") for status, payload in results if status != 200} <= {"not_cancellable"}
    assert shop.wallet() == 10_000
    with all_sites():
        assert Refund.select().count() == 1


# -- races, on every database ----------------------------------------------------------------------


def _api_call(host, api: ApiClient, method: str, path: str, body=None):
    """One signed call from a thread of its own (its own test client); (status, JSON)."""
    client = ApiClient(SiteClient(host, SHOP1), api.app_key, api.secret)
    try:
        response = client.post(path, body) if method == "POST" else client.get(path)
        return response.status_code, json.loads(response.data)
    finally:
        if not is_sqlite() and not database.is_closed():
            database.close()


def _together(call, n: int) -> list:
    """``call(i)`` for i in range(n), each in its own thread, released at once."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [], errors
    return results


def test_identical_concurrent_creates_make_one_order_and_one_debit(db_host, monkeypatch):
    shop = ApiShop(db_host, wallet_fen=10_000)
    body = order_body(shop, out_trade_no="SAME-1")
    # Every request skips the quick "already there?" lookup, so all 8 race into creating the order
    # and the database's unique (key, out_trade_no) alone must turn 7 of them into repeats.
    real_lookup, real_repeat, local, repeats = routes._api_order, routes._repeat, threading.local(), []

    def lookup_skipping_the_first(out_trade_no):
        if not getattr(local, "skipped", False):
            local.skipped = True
            return None
        return real_lookup(out_trade_no)

    def counted_repeat(existing, wanted):
        repeats.append(wanted.out_trade_no)
        return real_repeat(existing, wanted)

    monkeypatch.setattr(routes, "_api_order", lookup_skipping_the_first)
    monkeypatch.setattr(routes, "_repeat", counted_repeat)
    results = _together(lambda i: _api_call(db_host, shop.api, "POST", "/api/v1/orders", body), 8)
    monkeypatch.undo()
    assert {status for status, _ in results} == {200}, results
    assert repeats == ["SAME-1"] * 7
    order_nos = {payload["data"]["order_no"] for _, payload in results}
    assert len(order_nos) == 1
    order_no = order_nos.pop()
    with all_sites():
        assert [o.order_no for o in Order.select()] == [order_no]
        assert Payment.select().count() == 1
        assert ApiOrder.select().count() == 1
    assert len(wallet_debits(order_no)) == 1
    assert shop.wallet() == 10_000 - PRICE_FEN
    assert stock_of(shop.sku.id) == 19 and key_statuses(shop.sku.id) == {"available": 19, "sold": 1}
    final = data(shop.api.get("/api/v1/orders/SAME-1"))
    assert final["status"] == "delivered" and len(final["keys"]) == 1


def test_different_creates_racing_for_the_last_keys_never_oversell(db_host):
    shop = ApiShop(db_host, wallet_fen=100_000, keys_in_stock=3)
    results = _together(lambda i: _api_call(db_host, shop.api, "POST", "/api/v1/orders",
                                            order_body(shop, out_trade_no=f"R-{i}")), 8)
    outcomes = collections.Counter(
        "ok" if status == 200 else payload["error"]["code"] for status, payload in results)
    assert outcomes == {"ok": 3, "out_of_stock": 5}, results
    delivered = [payload["data"] for status, payload in results if status == 200]
    assert {o["status"] for o in delivered} == {"delivered"}
    keys = [k for o in delivered for k in o["keys"]]
    assert len(keys) == len(set(keys)) == 3
    assert shop.wallet() == 100_000 - 3 * PRICE_FEN
    assert stock_of(shop.sku.id) == 0 and key_statuses(shop.sku.id) == {"sold": 3}
    with all_sites():
        assert Order.select().count() == 3 and Payment.select().count() == 3


def test_a_new_key_import_after_a_sellout_sells_again(shop):
    cipher = CardKeyCipher.from_instance(shop.host.instance)
    Sku.update(stock=0).where(Sku.id == shop.sku.id).execute()
    CardKey.update(status="void").where(CardKey.sku == shop.sku.id).execute()
    error(shop.api.post("/api/v1/orders", order_body(shop)), 409, "out_of_stock")
    import_keys(Sku.get_by_id(shop.sku.id), ["NEW-0001"], cipher)
    assert data(shop.api.post("/api/v1/orders", order_body(shop)))["keys"] == ["NEW-0001"]


# -- the shop's plugins take part as in the storefront ----------------------------------------------


class Reserving:
    """A test plugin whose ``order_reserving`` records the checkout, refuses, or crashes."""

    def __init__(self, mode="record"):
        self.mode, self.seen = mode, []

    @hookimpl
    def order_reserving(self, order, checkout):
        self.seen.append((order.order_no, checkout.member_id, checkout.quantity))
        if self.mode == "refuse":
            raise CheckoutRefused("the plugin says no")
        if self.mode == "crash":
            raise RuntimeError("plugin bug")


def test_the_plugins_reserve_inside_the_order_with_the_keys_member(host):
    plugin = Reserving()
    shop = ApiShop(host, plugins=[("test-reserving", plugin)])
    order = data(shop.api.post("/api/v1/orders", order_body(shop, quantity=2)))
    assert plugin.seen == [(order["order_no"], shop.member.id, 2)]


@pytest.mark.parametrize("mode, status, code", [("refuse", 400, "invalid_request"), ("crash", 500, "internal_error")])
def test_a_plugin_refusing_or_failing_leaves_nothing_behind(host, mode, status, code):
    shop = ApiShop(host, plugins=[("test-reserving", Reserving(mode))])
    error(shop.api.post("/api/v1/orders", order_body(shop)), status, code)
    assert order_rows() == [] and stock_of(shop.sku.id) == 20 and key_statuses(shop.sku.id) == {"available": 20}
    with all_sites():
        assert ApiOrder.select().count() == 0
    assert shop.wallet() == 100_000
