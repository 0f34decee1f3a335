"""The order state machine: creation and validation, payment, delivery, expiry, late and double payments."""

from __future__ import annotations

import datetime
import decimal
import json
import re
from types import SimpleNamespace

import pytest

from kamengsite import orders
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Product, Sku, create_product, storefront_products
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import backend_name, init_database, release_connections
from kamengsite.models import Site, utcnow
from kamengsite.orders import (InvalidOrder, Order, OutOfStock, Payment, PaymentRejected, PaymentResult,
                               create_order, delivered_keys, expire_due, mark_paid)
from kamengsite.tenancy import CrossTenantError, all_sites, site_scope

LATER = datetime.timedelta(hours=1)


class Shop(SimpleNamespace):
    def card_sku(self, n_keys=10, price=1000, prefix="K", **product_fields):
        product = create_product(self.a, f"{prefix} card", price, **product_fields)
        sku = Sku.get(Sku.product == product.id)
        codes = [f"{prefix}-{i:04d}" for i in range(n_keys)]
        if codes:
            import_keys(sku, codes, self.cipher)
        return Sku.get_by_id(sku.id), codes

    def order(self, sku, quantity=1, **kwargs):
        kwargs.setdefault("contact", "buyer@example.com")
        kwargs.setdefault("channel", "alipay")
        return create_order(site_id=kwargs.pop("site_id", self.a), sku_id=sku.id, quantity=quantity, **kwargs)

    def pay(self, order, trade_no, amount=None, channel="alipay", **kwargs):
        return mark_paid(order.order_no, channel=channel, trade_no=trade_no,
                         amount_fen=order.amount_fen if amount is None else amount, **kwargs)


def _open(instance):
    init_database(instance.database_url)
    a, b = Site.create(slug="site-a"), Site.create(slug="site-b")
    return Shop(a=a.id, b=b.id, cipher=CardKeyCipher.from_instance(instance),
                backend=backend_name(instance.database_url))


@pytest.fixture
def local(instance):
    """A SQLite shop with two sites: for logic that is the same on every backend."""
    yield _open(instance)
    release_connections()


@pytest.fixture
def shop(db_instance):
    """The same shop on every backend of the matrix."""
    yield _open(db_instance)
    release_connections()


def reload(order) -> Order:
    with all_sites():
        return Order.get_by_id(order.id)


def snapshot():
    """Everything an order operation may write, to prove that a refused one wrote nothing."""
    with all_sites():
        return {
            "orders": sorted(Order.select(Order.id, Order.status, Order.paid_at, Order.delivered_at, Order.note)
                             .tuples()),
            "payments": sorted(Payment.select(Payment.id, Payment.order, Payment.trade_no, Payment.state).tuples()),
            "keys": sorted(CardKey.select(CardKey.id, CardKey.status, CardKey.order).tuples()),
            "skus": sorted(Sku.select(Sku.id, Sku.stock, Sku.sold).tuples()),
        }


def key_states(sku):
    return sorted(CardKey.select(CardKey.status, CardKey.order).where(CardKey.sku == sku.id).tuples(),
                  key=lambda t: (t[0], t[1] or 0))


# -- creating ------------------------------------------------------------------------------


def test_create_order_prices_in_fen_and_reserves_keys(shop):
    sku, codes = shop.card_sku(10, price=1234)
    before = utcnow()
    order = shop.order(sku, 3, contact="  buyer@example.com ", channel="alipay", channel_profile="m1",
                       buyer_ip="203.0.113.9", fields={"区服": "一区"})

    got = reload(order)
    assert (got.unit_price_fen, got.amount_fen, got.quantity) == (1234, 3702, 3)
    assert type(got.unit_price_fen) is int and type(got.amount_fen) is int
    assert (got.status, got.contact, got.channel, got.channel_profile) == ("created", "buyer@example.com",
                                                                           "alipay", "m1")
    assert json.loads(got.fields) == {"区服": "一区"}
    assert got.site_id == shop.a and got.sku_id == sku.id
    # (MariaDB keeps whole seconds)
    second = datetime.timedelta(seconds=1)
    assert before - second <= got.expires_at - orders.DEFAULT_TTL <= utcnow() + second
    assert re.fullmatch(r"K\d{22}", got.order_no)

    reserved = list(CardKey.select().where(CardKey.status == "reserved").order_by(CardKey.id))
    assert [k.order_id for k in reserved] == [order.id] * 3
    assert [shop.cipher.open(k.sealed, k.sku_id) for k in reserved] == codes[:3]  # FIFO by default
    assert Sku.get_by_id(sku.id).stock == 7

    cheaper = shop.order(sku, 2, unit_price_fen=999)  # a sub-site's own price, decided by the caller
    assert (reload(cheaper).unit_price_fen, reload(cheaper).amount_fen) == (999, 1998)
    assert Sku.get_by_id(sku.id).stock == 5


def test_out_of_stock_writes_nothing(shop):
    sku, _ = shop.card_sku(3)
    shop.order(sku, 2)
    before = snapshot()
    with pytest.raises(OutOfStock):
        shop.order(sku, 2)
    assert snapshot() == before
    shop.order(sku, 1)
    with pytest.raises(OutOfStock):
        shop.order(sku, 1)
    assert Sku.get_by_id(sku.id).stock == 0


@pytest.mark.parametrize("quantity", [0, -1, 6, 1, 2.0, True, "2", None])
def test_quantity_outside_the_products_bounds_is_refused(local, quantity):
    sku, _ = local.card_sku(10, min_qty=2, max_qty=5)
    before = snapshot()
    with pytest.raises(InvalidOrder, match="quantity"):
        local.order(sku, quantity)
    assert snapshot() == before


def test_quantity_bounds_are_inclusive_and_zero_max_means_unlimited(local):
    sku, _ = local.card_sku(10, min_qty=2, max_qty=5)
    assert local.order(sku, 2).quantity == 2
    assert local.order(sku, 5).quantity == 5
    unlimited, _ = local.card_sku(30, prefix="U", max_qty=0)
    assert local.order(unlimited, 25).quantity == 25
    with pytest.raises(InvalidOrder, match="at least 1"):
        local.order(unlimited, 0)


def test_items_not_on_sale_are_refused(local):
    sku, _ = local.card_sku(5)
    before = snapshot()
    Product.update(status="off").where(Product.id == sku.product_id).execute()
    with pytest.raises(InvalidOrder, match="not on sale"):
        local.order(sku)
    Product.update(status="on").where(Product.id == sku.product_id).execute()
    Sku.update(status="off").where(Sku.id == sku.id).execute()
    with pytest.raises(InvalidOrder, match="not on sale"):
        local.order(sku)
    for missing in (SimpleNamespace(id=99999), SimpleNamespace(id="1"), SimpleNamespace(id=None)):
        with pytest.raises(InvalidOrder, match="not on sale"):
            local.order(missing)
    Sku.update(status="on").where(Sku.id == sku.id).execute()
    assert snapshot() == before


@pytest.mark.parametrize("price", [9.99, -1, True, "100", decimal.Decimal(100)])
def test_prices_are_whole_non_negative_fen(local, price):
    sku, _ = local.card_sku(5)
    before = snapshot()
    with pytest.raises(InvalidOrder, match="whole fen"):
        local.order(sku, unit_price_fen=price)
    assert snapshot() == before


def test_free_items_cost_zero_fen(local):
    sku, _ = local.card_sku(2)
    order = local.order(sku, 2, unit_price_fen=0)
    assert reload(order).amount_fen == 0
    assert local.pay(order, "T-FREE", amount=0).status == "delivered"


def test_members_only_items_need_a_member(local):
    sku, _ = local.card_sku(5, members_only=True)
    before = snapshot()
    with pytest.raises(InvalidOrder, match="members only"):
        local.order(sku)
    assert snapshot() == before
    assert reload(local.order(sku, member_id=42)).member_id == 42


def test_per_buyer_limit_counts_what_the_buyer_holds(local):
    sku, _ = local.card_sku(20, per_buyer_limit=2)
    with pytest.raises(InvalidOrder, match="at most 2 per buyer"):
        local.order(sku, 3, member_id=7)
    first = local.order(sku, 1, member_id=7)
    local.order(sku, 1, member_id=7)
    before = snapshot()
    with pytest.raises(InvalidOrder, match="at most 2 per buyer"):
        local.order(sku, 1, member_id=7)
    assert snapshot() == before  # the refused order's stock was given back
    local.order(sku, 2, member_id=8)  # another member

    local.order(sku, 2, contact="guest@example.com")  # guests are told apart by their contact
    with pytest.raises(InvalidOrder):
        local.order(sku, 1, contact="guest@example.com")
    with pytest.raises(InvalidOrder, match="contact"):
        local.order(sku, 1, contact="")

    # Expired orders no longer count; paid ones do.
    local.pay(first, "T-LIMIT")
    assert expire_due(now=utcnow() + LATER) == 3  # member 7's second order, member 8's and the guest's
    local.order(sku, 1, member_id=7)
    with pytest.raises(InvalidOrder):
        local.order(sku, 1, member_id=7)
    # The limit is per site: the same member on another site starts from zero.
    assert create_order(site_id=local.b, sku_id=sku.id, quantity=2, member_id=7, contact="x").quantity == 2


def test_contact_longer_than_its_column_is_refused_and_ip_is_clipped(local):
    sku, _ = local.card_sku(2)
    before = snapshot()
    with pytest.raises(InvalidOrder, match="contact"):
        local.order(sku, contact="x" * 121)
    assert snapshot() == before
    order = local.order(sku, contact="y" * 120, buyer_ip="f" * 80)
    assert len(reload(order).buyer_ip) == 45


def test_order_numbers_are_unique_and_a_taken_number_is_redrawn(local, monkeypatch):
    sku, _ = local.card_sku(10)
    numbers = {local.order(sku).order_no for _ in range(5)}
    assert len(numbers) == 5

    draws = iter(["K00000000000000000000001", "K00000000000000000000001", "K00000000000000000000002"])
    monkeypatch.setattr(orders, "new_order_no", lambda: next(draws))
    first = local.order(sku)
    second = local.order(sku)  # first draw collides with `first`: drawn again, reservation kept
    assert (first.order_no, second.order_no) == ("K00000000000000000000001", "K00000000000000000000002")
    assert Sku.get_by_id(sku.id).stock == 3
    assert CardKey.select().where(CardKey.order == second.id).count() == 1


def test_query_password_is_hashed_and_checked(local):
    sku, _ = local.card_sku(3)
    pepper = b"instance-pepper"
    order = reload(local.order(sku, query_password="s3cret", query_secret=pepper))
    assert order.query_hash.startswith("hmac-sha256$") and "s3cret" not in order.query_hash
    assert order.check_query_password("s3cret", pepper)
    assert not order.check_query_password("wrong", pepper)
    # Without the instance's key the stored hash is useless to a guesser.
    assert not order.check_query_password("s3cret", b"another-instance")
    assert not order.check_query_password("s3cret")
    twin = reload(local.order(sku, query_password="s3cret", query_secret=pepper))
    assert twin.query_hash != order.query_hash  # salted per order
    bare = reload(local.order(sku))
    assert bare.query_hash == "" and not bare.check_query_password("")
    assert not orders.verify_password("x", "garbage")
    assert not orders.verify_password("x", "scrypt$16384$8$1$00$00")


# -- paying ------------------------------------------------------------------------------


def test_payment_delivers_card_keys_once(shop):
    sku, codes = shop.card_sku(5)
    order = shop.order(sku, 2)
    result = shop.pay(order, "T-1")
    assert result == PaymentResult(order.order_no, "delivered")

    got = reload(order)
    assert got.status == "delivered" and got.paid_at and got.delivered_at
    assert delivered_keys(got, shop.cipher) == codes[:2]
    sold = list(CardKey.select().where(CardKey.status == "sold"))
    assert {k.order_id for k in sold} == {order.id} and all(k.sold_at for k in sold)
    with all_sites():
        assert list(Payment.select(Payment.trade_no, Payment.amount_fen, Payment.state).tuples()) == [
            ("T-1", 2000, "applied")]
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (3, 2)

    again = shop.pay(order, "T-1")  # the same notification, again
    assert again == PaymentResult(order.order_no, "delivered", duplicate=True)
    assert Payment.select().count() == 1
    assert CardKey.select().where(CardKey.status == "sold").count() == 2
    assert Sku.get_by_id(sku.id).sold == 2


def test_second_payment_of_a_paid_order_is_owed_back(shop):
    sku, codes = shop.card_sku(5)
    order = shop.order(sku, 1)
    shop.pay(order, "T-FIRST")
    result = shop.pay(order, "T-SECOND")
    assert result == PaymentResult(order.order_no, "delivered", refund_due=True)
    assert shop.pay(order, "T-SECOND") == PaymentResult(order.order_no, "delivered", duplicate=True, refund_due=True)
    with all_sites():
        states = dict(Payment.select(Payment.trade_no, Payment.state).tuples())
    assert states == {"T-FIRST": "applied", "T-SECOND": "refund_due"}
    assert delivered_keys(reload(order), shop.cipher) == codes[:1]  # delivered once
    assert Sku.get_by_id(sku.id).sold == 1


def test_non_card_products_are_paid_and_wait_for_fulfilment(shop):
    product = create_product(shop.a, "话费代充", 5000, kind="topup")
    sku = Sku.get(Sku.product == product.id)
    with pytest.raises(OutOfStock):  # a counter, set by the operator
        create_order(site_id=shop.a, sku_id=sku.id, quantity=1, contact="c")
    Sku.update(stock=3).where(Sku.id == sku.id).execute()
    order = create_order(site_id=shop.a, sku_id=sku.id, quantity=2, contact="c", fields={"phone": "13800000000"})
    assert shop.pay(order, "T-TOPUP", channel="wxpay").status == "paid"
    got = reload(order)
    assert got.status == "paid" and got.delivered_at is None
    assert delivered_keys(got, shop.cipher) == []
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (1, 2)


def test_rejected_payments_write_nothing(shop):
    sku, _ = shop.card_sku(5)
    order = shop.order(sku, 2, channel="alipay", channel_profile="merchant-1")
    other = shop.order(sku, 1, channel="alipay")
    shop.pay(other, "T-TAKEN")
    before = snapshot()

    cases = [
        dict(amount_fen=1999), dict(amount_fen=2001), dict(amount_fen=0), dict(amount_fen=-2000),
        dict(amount_fen=2000.0), dict(amount_fen="2000"), dict(amount_fen=None), dict(amount_fen=True),
        dict(order_no="K-NO-SUCH-ORDER"),
        dict(channel="wxpay"),  # the order was created for alipay
        dict(channel_profile="merchant-2"),  # another merchant account of alipay
        dict(channel_profile=None),  # a notification that names no account cannot complete it
        dict(trade_no="T-TAKEN"),  # already paid another order
        dict(trade_no=""), dict(trade_no="   "), dict(trade_no="x" * 65), dict(trade_no=12345),
        dict(channel=""),
    ]
    for case in cases:
        kwargs = dict(order_no=order.order_no, channel="alipay", trade_no="T-GOOD", amount_fen=2000,
                      channel_profile="merchant-1")
        kwargs.update(case)
        with pytest.raises(PaymentRejected):
            mark_paid(kwargs.pop("order_no"), **kwargs)
        assert snapshot() == before, case

    # And the genuine notification still goes through afterwards.
    assert mark_paid(order.order_no, channel="alipay", trade_no="T-GOOD", amount_fen=2000,
                     channel_profile="merchant-1").status == "delivered"
    assert shop.pay(order, "T-" + "9" * 62, channel_profile="merchant-1").refund_due  # 64 characters is fine


def test_an_order_without_a_channel_accepts_any_channel(local):
    sku, _ = local.card_sku(2)
    order = local.order(sku, channel="")
    assert local.pay(order, "T-ANY", channel="epay").status == "delivered"


def test_payment_from_inside_another_sites_scope_still_pays_the_right_order(local):
    sku, _ = local.card_sku(2)
    order = local.order(sku)
    with site_scope(local.b):  # a notification arriving on site B's domain
        assert local.pay(order, "T-SCOPE").status == "delivered"
    assert reload(order).status == "delivered"


# -- expiry ------------------------------------------------------------------------------


def test_expiry_releases_keys_and_stock(shop):
    sku, _ = shop.card_sku(5)
    due = shop.order(sku, 2)
    paid = shop.order(sku, 1)
    shop.pay(paid, "T-PAID")
    fresh = shop.order(sku, 1, ttl=datetime.timedelta(hours=2))
    assert Sku.get_by_id(sku.id).stock == 1

    assert expire_due() == 0  # nothing is due yet
    assert expire_due(now=utcnow() + LATER) == 1
    assert [reload(o).status for o in (due, paid, fresh)] == ["expired", "delivered", "created"]
    assert CardKey.select().where(CardKey.order == due.id).count() == 0
    assert key_states(sku) == sorted([("available", None)] * 3 + [("reserved", fresh.id), ("sold", paid.id)],
                                     key=lambda t: (t[0], t[1] or 0))
    assert Sku.get_by_id(sku.id).stock == 3
    assert expire_due(now=utcnow() + LATER) == 0  # released once
    assert Sku.get_by_id(sku.id).stock == 3


def test_expire_due_honours_its_limit(local):
    sku, _ = local.card_sku(10)
    for _ in range(5):
        local.order(sku)
    assert expire_due(now=utcnow() + LATER, limit=2) == 2
    assert expire_due(now=utcnow() + LATER, limit=2) == 2
    assert expire_due(now=utcnow() + LATER) == 1
    assert Sku.get_by_id(sku.id).stock == 10


def test_late_payment_re_reserves_when_stock_allows(shop):
    sku, codes = shop.card_sku(3)
    order = shop.order(sku, 2)
    expire_due(now=utcnow() + LATER)
    taker = shop.order(sku, 1)  # someone else takes the first released key meanwhile
    assert shop.pay(order, "T-LATE") == PaymentResult(order.order_no, "delivered")
    got = reload(order)
    assert got.status == "delivered" and got.paid_at
    assert sorted(delivered_keys(got, shop.cipher)) == sorted(codes[1:])
    assert CardKey.select().where(CardKey.order == taker.id).count() == 1
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (0, 2)
    with all_sites():
        assert Payment.get(Payment.trade_no == "T-LATE").state == "applied"


def test_late_payment_without_stock_is_owed_back_never_lost(shop):
    sku, _ = shop.card_sku(2)
    order = shop.order(sku, 2)
    expire_due(now=utcnow() + LATER)
    shop.pay(shop.order(sku, 1), "T-OTHER")  # the stock is gone
    keys_before = key_states(sku)

    result = shop.pay(order, "T-TOO-LATE")
    assert result == PaymentResult(order.order_no, "refund_pending", refund_due=True)
    got = reload(order)
    assert got.status == "refund_pending" and "expiry" in got.note
    with all_sites():
        payment = Payment.get(Payment.trade_no == "T-TOO-LATE")
    assert (payment.order_id, payment.state, payment.amount_fen) == (order.id, "refund_due", 2000)
    assert key_states(sku) == keys_before  # no key moved
    assert Sku.get_by_id(sku.id).stock == 1
    assert delivered_keys(got, shop.cipher) == []

    repeat = shop.pay(order, "T-TOO-LATE")
    assert repeat == PaymentResult(order.order_no, "refund_pending", duplicate=True, refund_due=True)
    assert Payment.select().where(Payment.order == order.id).count() == 1


def test_late_payment_when_the_sku_was_taken_off_sale_is_owed_back(local):
    sku, _ = local.card_sku(3)
    order = local.order(sku, 1)
    expire_due(now=utcnow() + LATER)
    Sku.update(status="off").where(Sku.id == sku.id).execute()
    assert local.pay(order, "T-OFF").status == "refund_pending"
    assert Sku.get_by_id(sku.id).stock == 3


def test_late_payment_when_the_counter_is_ahead_of_the_keys_keeps_the_payment(local):
    sku, _ = local.card_sku(2)
    order = local.order(sku, 1)
    expire_due(now=utcnow() + LATER)
    CardKey.update(status="void").execute()  # the operator voided the keys; the counter still says 2

    result = local.pay(order, "T-GHOST")
    assert result.status == "refund_pending" and result.refund_due
    with all_sites():
        assert Payment.get(Payment.trade_no == "T-GHOST").state == "refund_due"
    assert "ahead of its keys" in reload(order).note
    assert Sku.get_by_id(sku.id).stock == 2  # the re-reservation was rolled back, the payment was not
    assert CardKey.select().where(CardKey.status == "void").count() == 2


# -- delivery modes ------------------------------------------------------------------------


def test_random_delivery_only_picks_available_keys(shop):
    sku, codes = shop.card_sku(30, delivery_order="random")
    held = shop.order(sku, 3)  # reserved keys
    shop.pay(shop.order(sku, 3), "T-SOLD")  # sold keys
    voided = [k.id for k in CardKey.select(CardKey.id).where(CardKey.status == "available").order_by(CardKey.id)
              .limit(4)]
    CardKey.update(status="void").where(CardKey.id.in_(voided)).execute()
    Sku.update(stock=Sku.stock - 4).where(Sku.id == sku.id).execute()
    untouchable = {k.id for k in CardKey.select().where(CardKey.status != "available")}

    bought = []
    for i in range(10):
        order = shop.order(sku, 2)
        shop.pay(order, f"T-R{i}")
        bought.append(order.id)
    taken = [k.id for k in CardKey.select().where(CardKey.order.in_(bought))]
    assert len(taken) == len(set(taken)) == 20
    assert not untouchable & set(taken)
    assert CardKey.select().where(CardKey.order == held.id).count() == 3
    assert Sku.get_by_id(sku.id).stock == 0
    with pytest.raises(OutOfStock):
        shop.order(sku, 1)
    with all_sites():
        delivered = [c for o in Order.select().where(Order.status == "delivered") for c in
                     delivered_keys(o, shop.cipher)]
    assert len(delivered) == len(set(delivered)) == 23


def test_random_delivery_is_not_fifo_and_wraps_around(local):
    sku, codes = local.card_sku(200, delivery_order="random")
    firsts = []
    for i in range(8):
        order = local.order(sku, 1)
        firsts.append(CardKey.get(CardKey.order == order.id).id)
    assert firsts != sorted(firsts) or firsts[0] > 8  # FIFO would be 1, 2, 3, ...

    small, _ = local.card_sku(5, prefix="W", delivery_order="random", max_qty=10)
    order = local.order(small, 5)  # every key, whatever the random start: must wrap around
    assert CardKey.select().where(CardKey.order == order.id).count() == 5
    expire_due(now=utcnow() + LATER)
    for _ in range(5):  # and again from other random starts
        order = local.order(small, 5)
        assert CardKey.select().where(CardKey.order == order.id).count() == 5
        expire_due(now=utcnow() + LATER)


def test_loop_key_is_delivered_to_many_orders_up_to_its_counter(shop):
    sku, codes = shop.card_sku(1, prefix="LOOP", loop_key=True)
    Sku.update(stock=4).where(Sku.id == sku.id).execute()

    first = shop.order(sku, 1)
    second = shop.order(sku, 2)
    shop.pay(first, "T-L1")
    shop.pay(second, "T-L2")
    assert delivered_keys(reload(first), shop.cipher) == codes
    assert delivered_keys(reload(second), shop.cipher) == codes * 2
    held = shop.order(sku, 1)
    with pytest.raises(OutOfStock):
        shop.order(sku, 1)
    expire_due(now=utcnow() + LATER)  # the held unit comes back to the counter
    assert reload(held).status == "expired"
    third = shop.order(sku, 1)
    shop.pay(third, "T-L3")
    with pytest.raises(OutOfStock):
        shop.order(sku, 1)

    key = CardKey.get(CardKey.sku == sku.id)
    assert (key.status, key.order_id) == ("available", None)
    after = Sku.get_by_id(sku.id)
    assert (after.stock, after.sold) == (0, 4)


def test_delivered_keys_only_for_delivered_orders(local):
    sku, _ = local.card_sku(4)
    created = local.order(sku, 1)
    paid = local.order(sku, 1)
    local.pay(paid, "T-D")
    assert delivered_keys(reload(created), local.cipher) == []
    assert delivered_keys(reload(paid), local.cipher) == ["K-0001"]


# -- sites ------------------------------------------------------------------------------


def test_an_order_of_site_a_is_invisible_to_site_b(local):
    sku, _ = local.card_sku(4)
    order = local.order(sku, 1, site_id=local.a)

    with site_scope(local.b):
        assert Order.get_or_none(Order.order_no == order.order_no) is None
        assert Order.select().count() == 0
        assert Order.update(status="cancelled").where(Order.id == order.id).execute() == 0
        assert Order.delete().where(Order.id == order.id).execute() == 0
        with pytest.raises(CrossTenantError):
            create_order(site_id=local.a, sku_id=sku.id, quantity=1, contact="c")
    with site_scope(local.a):
        assert Order.get(Order.order_no == order.order_no).status == "created"
    with pytest.raises(CrossTenantError):
        Order.select().count()  # no scope at all
    b_order = local.order(sku, 1, site_id=local.b)  # site B sells the same catalogue
    with site_scope(local.b):
        assert [o.id for o in Order.select()] == [b_order.id]
    with all_sites():
        assert Order.select().count() == 2


# -- catalogue ------------------------------------------------------------------------------


def test_create_product_validates_prices_kinds_and_delivery_order(local):
    with pytest.raises(ValueError, match="whole fen"):
        create_product(local.a, "float", 9.9)
    with pytest.raises(ValueError, match="whole fen"):
        create_product(local.a, "bad sku", 100, skus=[("ok", 100), ("bad", -1)])
    with pytest.raises(ValueError, match="kind"):
        create_product(local.a, "kind", 100, kind="physical")
    with pytest.raises(ValueError, match="delivery_order"):
        create_product(local.a, "typo", 100, delivery_order="randon")
    with pytest.raises(ValueError, match="max_qty"):
        create_product(local.a, "bounds", 100, min_qty=5, max_qty=2)
    assert Product.select().count() == 0 and Sku.select().count() == 0  # nothing half-created

    product = create_product(local.a, "multi", 100, skus=[("small", 100), ("big", 900)])
    assert [(s.name, s.price_fen, s.sort) for s in Sku.select().order_by(Sku.sort)] == [("small", 100, 0),
                                                                                       ("big", 900, 1)]
    listed = storefront_products(local.a)
    assert [(p["id"], p["price_fen"], p["stock"]) for p in listed] == [(product.id, 100, 0)]


def test_keys_voided_under_a_reservation_owe_the_money_instead_of_failing(local):
    sku, _ = local.card_sku(3)
    order = local.order(sku, 2)
    with all_sites():
        held = [k.id for k in CardKey.select().where(CardKey.order == order.id)]
        CardKey.update(status="void").where(CardKey.id == held[0]).execute()  # an operator voids one
    result = local.pay(order, "T-VOIDED")
    assert (result.status, result.refund_due) == ("refund_pending", True)
    with all_sites():
        assert reload(order).status == "refund_pending"
        assert Payment.get(Payment.trade_no == "T-VOIDED").state == "refund_due"
        # Nothing was delivered; the surviving key went back on sale with its unit of stock.
        assert CardKey.select().where(CardKey.status == "sold").count() == 0
        assert CardKey.get_by_id(held[1]).status == "available"
        assert Sku.get_by_id(sku.id).stock == CardKey.select().where(
            (CardKey.sku == sku.id) & (CardKey.status == "available")).count()
