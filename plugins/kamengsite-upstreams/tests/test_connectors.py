"""The three connectors against fake upstream shops on 127.0.0.1 that check their signatures."""

from __future__ import annotations

import pytest
from upstream_fakes import AcgFakaShop, DujiaoShop, KamengsiteShop, closed_port_url

from kamengsite_upstreams.connectors import UNLIMITED_STOCK, UpstreamError, yuan_to_fen
from kamengsite_upstreams.connectors.acgfaka import AcgFakaConnector, signature
from kamengsite_upstreams.connectors.dujiao import DujiaoConnector
from kamengsite_upstreams.connectors.kamengsite import KamengsiteConnector


# -- money -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, fen", [("12.50", 1250), ("12.5", 1250), (12, 1200), ("0.01", 1), (9.9, 990),
                                        ("12.500", 1250), ("0", 0), (" 3.20 ", 320)])
def test_yuan_text_becomes_exact_fen(value, fen):
    assert yuan_to_fen(value) == fen


@pytest.mark.parametrize("value", ["12.345", "-1", "-0.01", "abc", "", None, True, "NaN", "Infinity", 0.1 + 0.2,
                                   "1e-3"])
def test_unreadable_or_inexact_prices_are_refused(value):
    with pytest.raises(UpstreamError):
        yuan_to_fen(value)


# -- kamengsite API v1 -------------------------------------------------------------------------


@pytest.fixture
def ks_shop():
    shop = KamengsiteShop()
    yield shop
    shop.close()


def _ks(shop, secret=KamengsiteShop.SECRET):
    return KamengsiteConnector({"base_url": shop.url, "app_key": shop.APP_KEY, "secret": secret},
                               allow_loopback=True)


def test_kamengsite_lists_one_product_per_sku_with_the_callers_price(ks_shop):
    products = {p.ref: p for p in _ks(ks_shop).products()}
    assert sorted(products) == ["11", "12", "21"]
    assert (products["11"].name, products["11"].price_fen, products["11"].stock) == ("Game card · 10 yuan", 950, 5)
    assert products["21"].kind == "topup" and products["21"].fields[0]["name"] == "account"
    stock = _ks(ks_shop).stock(["11", "21", "999"])
    assert set(stock) == {"11", "21"} and stock["21"].stock == 100
    assert all(path.startswith("/api/v1/products") for _, path, _, _ in ks_shop.server.requests)


def test_kamengsite_places_delivered_and_pending_orders_and_queries_them(ks_shop):
    connector = _ks(ks_shop)
    delivered = connector.place_order("11", 2, "KS-ORDER-1", {})
    assert delivered.state == "delivered" and delivered.keys == ["KEY-1-0", "KEY-1-1"]
    assert delivered.upstream_order_no == "UP0001"
    pending = connector.place_order("21", 1, "KS-ORDER-2", {"account": "me@example.com"})
    assert pending.state == "pending" and pending.keys == []
    assert connector.query_order("KS-ORDER-2").state == "pending"
    ks_shop.orders["KS-ORDER-2"].update(status="delivered", keys=["TOPUP-DONE"])
    assert connector.query_order("KS-ORDER-2").keys == ["TOPUP-DONE"]
    ks_shop.orders["KS-ORDER-2"]["status"] = "refunded"
    assert connector.query_order("KS-ORDER-2").state == "failed"
    assert connector.query_order("NEVER-PLACED") is None


def test_kamengsite_orders_are_idempotent_on_out_trade_no(ks_shop):
    connector = _ks(ks_shop)
    assert KamengsiteConnector.idempotent is True
    first = connector.place_order("11", 1, "SAME-KEY-1", {})
    again = connector.place_order("11", 1, "SAME-KEY-1", {})
    assert (again.upstream_order_no, again.keys) == (first.upstream_order_no, first.keys)
    assert ks_shop.created == 1
    with pytest.raises(UpstreamError) as conflict:
        connector.place_order("11", 2, "SAME-KEY-1", {})
    assert "idempotency_conflict" in str(conflict.value) and not conflict.value.retryable


def test_kamengsite_refusals_are_final_and_overload_is_retryable(ks_shop):
    with pytest.raises(UpstreamError) as bad:
        _ks(ks_shop, secret="wrong-secret").products()
    assert "invalid_signature" in str(bad.value) and not bad.value.retryable
    with pytest.raises(UpstreamError) as poor:
        _ks(ks_shop).place_order("12", 60, "TOO-DEAR-1", {})
    assert "insufficient_balance" in str(poor.value) and not poor.value.retryable
    ks_shop.fail_with = (429, "rate_limited")
    with pytest.raises(UpstreamError) as limited:
        _ks(ks_shop).products()
    assert limited.value.retryable
    ks_shop.fail_with = (503, "unavailable")
    with pytest.raises(UpstreamError) as down:
        _ks(ks_shop).products()
    assert down.value.retryable


@pytest.mark.parametrize("cls, settings", [
    (KamengsiteConnector, {"app_key": "k", "secret": "s"}),
    (AcgFakaConnector, {"app_id": "1", "app_key": "k"}),
    (DujiaoConnector, {"api_key": "k", "api_secret": "s"}),
])
def test_a_transport_failure_is_retryable(cls, settings):
    connector = cls({"base_url": closed_port_url(), **settings}, allow_loopback=True)
    with pytest.raises(UpstreamError) as failed:
        connector.products()
    assert failed.value.retryable


@pytest.mark.parametrize("cls, settings", [
    (KamengsiteConnector, {"app_key": "k", "secret": "s"}),
    (DujiaoConnector, {"api_key": "k", "api_secret": "s"}),
])
def test_loopback_upstreams_are_refused_without_the_test_switch(cls, settings):
    connector = cls({"base_url": "http://127.0.0.1:9", **settings})
    with pytest.raises(UpstreamError) as refused:
        connector.products()
    assert not refused.value.retryable and "refused" in str(refused.value)


# -- acg-faka ------------------------------------------------------------------------------------


@pytest.fixture
def acg_shop():
    shop = AcgFakaShop()
    yield shop
    shop.close()


def _acg(shop, key=AcgFakaShop.APP_KEY):
    return AcgFakaConnector({"base_url": shop.url, "app_id": shop.APP_ID, "app_key": key}, allow_loopback=True)


def test_acgfaka_signature_matches_its_generate_signature():
    data = {"app_id": "1001", "race": "", "num": "2", "shared_code": "AB"}
    expected = __import__("hashlib").md5(b"app_id=1001&num=2&shared_code=AB&key=K").hexdigest()
    assert signature(data, "K") == expected


def test_acgfaka_lists_commodities_and_their_kinds(acg_shop):
    connector = _acg(acg_shop)
    assert connector.ping()["name"] == "ACG shop"
    products = {p.ref: p for p in connector.products()}
    assert sorted(products) == ["NFX1", "RCH3", "VIP2|Month", "VIP2|Year"]
    assert products["NFX1"].price_fen == 2550 and products["NFX1"].kind == "card"
    assert products["VIP2|Month"].price_fen == 1850 and products["VIP2|Year"].price_fen == 18000
    assert products["RCH3"].kind == "topup" and products["RCH3"].fields[0]["name"] == "qq"
    assert all("app_key=" not in body.decode() for _, _, _, body in acg_shop.server.requests)  # the secret stays home
    stock = connector.stock(["NFX1", "VIP2|Year", "GONE"])
    assert set(stock) == {"NFX1", "VIP2|Year"} and stock["VIP2|Year"].stock == 9 and stock["VIP2|Year"].price_fen == 18000


def test_acgfaka_orders_delivered_pending_failed_and_queried(acg_shop):
    connector = _acg(acg_shop)
    assert AcgFakaConnector.idempotent is False
    delivered = connector.place_order("VIP2|Month", 2, "ACG-1", {})
    assert delivered.state == "delivered" and len(delivered.keys) == 2 and delivered.keys[0].startswith("VIP2-Month-")
    assert acg_shop.trades["ACG-1"]["fields"]["race"] == "Month"
    pending = connector.place_order("RCH3", 1, "ACG-2", {"qq": "12345"})
    assert pending.state == "pending" and pending.upstream_order_no
    assert acg_shop.trades["ACG-2"]["fields"]["qq"] == "12345"
    with pytest.raises(UpstreamError) as none_left:
        connector.place_order("NFX1", 50, "ACG-3", {})
    assert "库存不足" in str(none_left.value) and not none_left.value.retryable
    with pytest.raises(UpstreamError) as repeated:
        connector.place_order("VIP2|Month", 2, "ACG-1", {})
    assert not repeated.value.retryable
    found = connector.query_order("ACG-1", delivered.upstream_order_no)
    assert found.state == "delivered" and found.keys == delivered.keys
    assert connector.query_order("ACG-1") is None  # acg-faka looks orders up by its own trade number
    acg_shop.trades["ACG-2"]["secret"] = "CARD-LATE"
    assert connector.query_order("ACG-2", pending.upstream_order_no).keys == ["CARD-LATE"]


def test_acgfaka_wrong_key_is_refused(acg_shop):
    with pytest.raises(UpstreamError) as wrong:
        _acg(acg_shop, key="not-the-key").products()
    assert "密钥错误" in str(wrong.value) and not wrong.value.retryable


# -- dujiao-next --------------------------------------------------------------------------------


@pytest.fixture
def dj_shop():
    shop = DujiaoShop()
    yield shop
    shop.close()


def _dj(shop, secret=DujiaoShop.API_SECRET):
    return DujiaoConnector({"base_url": shop.url, "api_key": shop.API_KEY, "api_secret": secret},
                           allow_loopback=True)


def test_dujiao_lists_every_page_of_skus(dj_shop):
    connector = _dj(dj_shop)
    assert connector.ping()["name"] == "DJ shop"
    products = {p.ref: p for p in connector.products()}
    assert len(products) == 60  # two pages of 50
    assert products["101"].stock == UNLIMITED_STOCK and products["102"].stock == 2
    assert products["101"].price_fen == 790 and products["101"].name == "商品1" and products["101"].kind == "card"
    assert products["102"].kind == "topup" and products["102"].fields[0]["name"] == "account"
    pages = [path for _, path, _, _ in dj_shop.server.requests if "/products" in path]
    assert pages == ["/api/v1/upstream/products?page=1&page_size=50", "/api/v1/upstream/products?page=2&page_size=50"]


def test_dujiao_orders_are_pending_then_delivered_and_idempotent(dj_shop):
    connector = _dj(dj_shop)
    assert DujiaoConnector.idempotent is True
    placed = connector.place_order("101", 1, "DJ-ORDER-1", {})
    assert placed.state == "pending" and placed.upstream_order_no == "501"
    again = connector.place_order("101", 1, "DJ-ORDER-1", {})
    assert again.upstream_order_no == "501" and len(dj_shop.orders) == 1
    assert connector.query_order("DJ-ORDER-1", "501").state == "pending"
    dj_shop.deliver(501, ["DJ-KEY-A"])
    done = connector.query_order("DJ-ORDER-1", "501")
    assert done.state == "delivered" and done.keys == ["DJ-KEY-A"]
    assert connector.query_order("DJ-ORDER-1", "999") is None
    assert connector.query_order("DJ-ORDER-1") is None
    topup = connector.place_order("102", 1, "DJ-ORDER-2", {"account": "u1"})
    request = [body for _, path, _, body in dj_shop.server.requests if path.endswith("/orders")][-1]
    assert b'"manual_form_data":{"account":"u1"}' in request and topup.state == "pending"


def test_dujiao_failed_payment_and_bad_signature(dj_shop):
    dj_shop.balance_fen = 100
    failed = _dj(dj_shop).place_order("101", 1, "DJ-POOR-1", {})
    assert failed.state == "failed" and "insufficient balance" in failed.message
    with pytest.raises(UpstreamError) as bad:
        _dj(dj_shop, secret="wrong").products()
    assert "unauthorized" in str(bad.value) and not bad.value.retryable
