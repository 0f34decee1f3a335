"""Orders of goods an upstream supplies (``product.supplier``), and cancelling an unpaid order at once."""

from __future__ import annotations

import pytest

from kamengsite import orders
from kamengsite.cardkeys import CardKey
from kamengsite.catalog import Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import backend_name, init_database, release_connections
from kamengsite.models import Site
from kamengsite.orders import Order, create_order, deliver_supplied, delivered_keys, mark_paid
from kamengsite.tenancy import all_sites
from kamengsite.testing import at_once


@pytest.fixture
def shop(db_instance):
    init_database(db_instance.database_url)
    site = Site.create(slug="main")
    product = create_product(site.id, "Upstream card", 1200, supplier="upstreams")
    sku = Sku.get(Sku.product == product.id)
    Sku.update(stock=5).where(Sku.id == sku.id).execute()
    yield site, Sku.get_by_id(sku.id), CardKeyCipher.from_instance(db_instance), backend_name(db_instance.database_url)
    release_connections()


def _paid_order(site, sku, quantity=2):
    order = create_order(site_id=site.id, sku_id=sku.id, quantity=quantity, contact="r@example.com", channel="demo")
    result = mark_paid(order.order_no, channel="demo", trade_no=f"T-{order.order_no}", amount_fen=order.amount_fen)
    return order, result


def _reload(order):
    with all_sites():
        return Order.get_by_id(order.id)


def test_a_supplied_order_takes_stock_but_no_key_rows_and_waits_paid(shop):
    site, sku, _cipher, _backend = shop
    order, result = _paid_order(site, sku)
    assert result.status == "paid" and _reload(order).status == "paid"
    assert Sku.get_by_id(sku.id).stock == 3 and Sku.get_by_id(sku.id).sold == 2
    assert CardKey.select().where(CardKey.order == order.id).count() == 0


def test_deliver_supplied_seals_the_upstream_keys_and_delivers_once(shop):
    site, sku, cipher, _backend = shop
    order, _ = _paid_order(site, sku)
    assert deliver_supplied(order.order_no, "upstreams", ["UP-1", "UP-2"], cipher) is True
    assert deliver_supplied(order.order_no, "upstreams", ["UP-3", "UP-4"], cipher) is False
    delivered = _reload(order)
    assert delivered.status == "delivered" and delivered.delivered_at is not None
    assert delivered_keys(delivered, cipher) == ["UP-1", "UP-2"]
    stored = CardKey.select().where(CardKey.order == order.id)
    assert {k.status for k in stored} == {"sold"} and all(b"UP-" not in bytes(k.sealed) for k in stored)


def test_deliver_supplied_refuses_goods_that_do_not_fit(shop):
    site, sku, cipher, _backend = shop
    order, _ = _paid_order(site, sku)
    with pytest.raises(orders.OrderError, match="needs 2 keys"):
        deliver_supplied(order.order_no, "upstreams", ["ONLY-ONE"], cipher)
    with pytest.raises(orders.OrderError, match="empty key"):
        deliver_supplied(order.order_no, "upstreams", ["A", "  "], cipher)
    with pytest.raises(orders.OrderError, match="not supplied by"):
        deliver_supplied(order.order_no, "someone-else", ["A", "B"], cipher)
    assert _reload(order).status == "paid"


def test_an_upstream_may_sell_one_loop_key_to_many_orders(shop):
    site, sku, cipher, _backend = shop
    first, _ = _paid_order(site, sku, quantity=1)
    second, _ = _paid_order(site, sku, quantity=1)
    assert deliver_supplied(first.order_no, "upstreams", ["SAME"], cipher)
    assert deliver_supplied(second.order_no, "upstreams", ["SAME"], cipher)


def test_a_refunded_order_is_not_delivered_afterwards(shop):
    site, sku, cipher, _backend = shop
    order, _ = _paid_order(site, sku)
    with all_sites():
        Order.update(status="refunded").where(Order.id == order.id).execute()
    assert deliver_supplied(order.order_no, "upstreams", ["A", "B"], cipher) is False
    assert CardKey.select().where(CardKey.order == order.id).count() == 0


@pytest.mark.databases
def test_concurrent_upstream_answers_deliver_exactly_once(shop):
    site, sku, cipher, backend = shop
    order, _ = _paid_order(site, sku)
    results, errors = at_once(lambda n: deliver_supplied(order.order_no, "upstreams", [f"R{n}-a", f"R{n}-b"], cipher), 4)
    assert errors == []
    assert sorted(results) == [False, False, False, True], backend
    assert CardKey.select().where(CardKey.order == order.id).count() == 2


def test_cancel_unpaid_gives_the_stock_back_once(shop):
    site, sku, _cipher, _backend = shop
    order = create_order(site_id=site.id, sku_id=sku.id, quantity=3, contact="r@example.com", channel="balance")
    assert Sku.get_by_id(sku.id).stock == 2
    assert orders.cancel_unpaid(order.order_no) is True
    assert orders.cancel_unpaid(order.order_no) is False
    assert _reload(order).status == "cancelled" and Sku.get_by_id(sku.id).stock == 5
    paid, _ = _paid_order(site, sku, quantity=1)
    assert orders.cancel_unpaid(paid.order_no) is False and _reload(paid).status == "paid"

