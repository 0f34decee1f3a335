"""Flash sales (秒杀), new-customer prices (新人专享) and quantity tiers (批发价), including the cap under
concurrency on every backend of the matrix."""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from coupons_helpers import SHOP_COST, SHOP_PRICE, buy, checkout_for, expire, hours, make_shop, place
from kamengsite import members, orders
from kamengsite.checkout import CheckoutRefused
from kamengsite.db import database, init_database, release_connections
from kamengsite.tenancy import acting_for, all_sites
from kamengsite_coupons import rules
from kamengsite_coupons.models import Coupon, CouponUse, FlashSale, FlashSaleUse

FLASH = 9500
RACERS = 20
CAP = 5


@pytest.fixture
def shop(instance):
    init_database(instance.database_url)
    yield make_shop()
    release_connections()


@pytest.fixture
def db_shop(db_instance):
    init_database(db_instance.database_url)
    yield make_shop()
    release_connections()


def sale(shop, cap=CAP, price=FLASH, **kwargs):
    kwargs.setdefault("starts_at", hours(-1))
    kwargs.setdefault("ends_at", hours(1))
    return rules.create_flash_sale(shop.shop, shop.sku, price, cap, kwargs.pop("starts_at"), kwargs.pop("ends_at"),
                                   **kwargs)


def sold(sale_id) -> int:
    with all_sites():
        return FlashSale.get_by_id(sale_id).sold


# -- flash sales ------------------------------------------------------------------------------------


def test_the_flash_price_runs_only_inside_its_window(shop):
    sale(shop, starts_at=hours(1), ends_at=hours(2))
    assert buy(shop.shop, shop.sku).unit_price_fen == SHOP_PRICE
    s = sale(shop)
    order = buy(shop.shop, shop.sku, 2)
    assert (order.unit_price_fen, order.goods_fen) == (FLASH, 2 * FLASH)
    assert sold(s.id) == 2
    checkout = checkout_for(shop.shop, shop.sku, preview=True)
    assert [(line.label, line.saved_fen) for line in checkout.lines] == [("Flash sale price", SHOP_PRICE - FLASH)]


def test_a_flash_price_below_cost_stops_at_the_sites_cost(shop):
    sale(shop, price=100)
    assert buy(shop.shop, shop.sku).unit_price_fen == SHOP_COST


def test_fewer_units_left_than_asked_is_refused_and_sold_out_is_back_to_the_normal_price(shop):
    s = sale(shop, cap=3)
    buy(shop.shop, shop.sku, 2)
    with pytest.raises(CheckoutRefused, match="Only 1 left"):
        buy(shop.shop, shop.sku, 2)
    buy(shop.shop, shop.sku, 1)
    assert sold(s.id) == 3
    after = buy(shop.shop, shop.sku, 1)  # the sale is over: the product page shows the normal price again
    assert after.unit_price_fen == SHOP_PRICE and sold(s.id) == 3


def test_a_buyer_who_saw_the_flash_price_is_refused_when_it_sold_out_meanwhile(shop):
    s = sale(shop, cap=1)
    first, second = checkout_for(shop.shop, shop.sku, contact="a@x"), checkout_for(shop.shop, shop.sku, contact="b@x")
    assert first.unit_price_fen == second.unit_price_fen == FLASH
    place(first)
    with pytest.raises(CheckoutRefused, match="The flash sale is sold out"):
        place(second)  # refused, not silently charged the normal price
    with all_sites():
        assert orders.Order.select().count() == 1
    assert sold(s.id) == 1


def test_the_per_member_limit_of_a_flash_sale(shop):
    m = members.register(shop.shop, "m@example.com", "secret-pass-1")
    s = sale(shop, per_member_limit=2)
    buy(shop.shop, shop.sku, 2, member_id=m.id)
    with pytest.raises(CheckoutRefused, match="limit: 2 per customer"):
        buy(shop.shop, shop.sku, 1, member_id=m.id)
    # A guest priced three times before ordering: the database refuses the third unit.
    first, second, third = (checkout_for(shop.shop, shop.sku, 1, contact="g@x") for _ in range(3))
    assert third.unit_price_fen == FLASH
    place(first)
    place(second)
    with pytest.raises(CheckoutRefused, match="limit: 2 per customer"):
        place(third)
    assert sold(s.id) == 4


def test_an_expired_flash_order_gives_its_units_back_once(shop):
    s = sale(shop, cap=2)
    order = buy(shop.shop, shop.sku, 2)
    assert sold(s.id) == 2
    assert expire(order) == 1 and sold(s.id) == 0
    with all_sites():
        assert FlashSaleUse.get(FlashSaleUse.order_id == order.id).released
        assert rules.release(order) is False
    assert sold(s.id) == 0
    assert buy(shop.shop, shop.sku, 2).unit_price_fen == FLASH


def test_a_non_stackable_coupon_is_refused_on_a_flash_price_and_a_stackable_one_applies(shop):
    sale(shop)
    rules.create_coupon(shop.shop, "SOLO", "fixed", 200)
    rules.create_coupon(shop.shop, "STACK", "fixed", 200, stackable=True)
    with pytest.raises(CheckoutRefused, match="cannot be combined with a flash sale"):
        buy(shop.shop, shop.sku, code="SOLO")
    order = buy(shop.shop, shop.sku, code="STACK")
    assert (order.unit_price_fen, order.discount_fen, order.goods_fen) == (FLASH, 200, FLASH - 200)


# -- new-customer prices ----------------------------------------------------------------------------


def test_the_newcomer_price_is_for_a_members_first_order_only(shop):
    rules.set_newcomer_price(shop.shop, shop.sku, 9900)
    new = members.register(shop.shop, "new@example.com", "secret-pass-1")
    assert buy(shop.shop, shop.sku).unit_price_fen == SHOP_PRICE  # guests: no newcomer price
    first = buy(shop.shop, shop.sku, member_id=new.id)
    assert first.unit_price_fen == 9900
    assert buy(shop.shop, shop.sku, member_id=new.id).unit_price_fen == SHOP_PRICE  # an open order counts
    # Priced twice as a newcomer before either order: the second is refused.
    other = members.register(shop.shop, "other@example.com", "secret-pass-1")
    a, b = (checkout_for(shop.shop, shop.sku, member_id=other.id) for _ in range(2))
    assert a.unit_price_fen == b.unit_price_fen == 9900
    place(a)
    with pytest.raises(CheckoutRefused, match="first order"):
        place(b)
    # An order that expired unpaid does not use the newcomer price up.
    late = members.register(shop.shop, "late@example.com", "secret-pass-1")
    expire(buy(shop.shop, shop.sku, member_id=late.id))
    assert buy(shop.shop, shop.sku, member_id=late.id).unit_price_fen == 9900


def test_newcomer_and_flash_prices_do_not_add_up_the_lower_one_wins(shop):
    rules.set_newcomer_price(shop.shop, shop.sku, 9200)
    s = sale(shop)
    m = members.register(shop.shop, "m@example.com", "secret-pass-1")
    order = buy(shop.shop, shop.sku, member_id=m.id)
    assert order.unit_price_fen == 9200 and sold(s.id) == 0  # the flash sale's units were not taken


# -- quantity tiers ---------------------------------------------------------------------------------


def test_the_best_tier_reached_applies_and_never_below_cost(shop):
    rules.set_tier(shop.shop, shop.sku, 3, 10000)
    rules.set_tier(shop.shop, shop.sku, 5, 9500)
    assert buy(shop.shop, shop.sku, 2).unit_price_fen == SHOP_PRICE
    assert buy(shop.shop, shop.sku, 3).unit_price_fen == 10000
    assert buy(shop.shop, shop.sku, 7).unit_price_fen == 9500
    rules.set_tier(shop.shop, shop.sku, 10, 5000)
    assert buy(shop.shop, shop.sku, 10).unit_price_fen == SHOP_COST
    rules.set_tier(shop.shop, shop.sku, 5, 9800)  # set again: replaced, not added
    assert buy(shop.shop, shop.sku, 5).unit_price_fen == 9800
    with pytest.raises(ValueError):
        rules.set_tier(shop.shop, shop.sku, 1, 100)


# -- concurrency, on every backend ------------------------------------------------------------------


def _race(fn, n):
    gate = threading.Event()

    def gated(i):
        gate.wait()
        try:
            return fn(i)
        finally:
            database.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(gated, i) for i in range(n)]
        gate.set()
        return [f.result() for f in futures]


@pytest.mark.slow
def test_20_buyers_race_for_a_flash_sale_of_5_and_exactly_5_get_the_price(db_shop):
    shop = db_shop
    s = sale(shop)

    def one(i):
        try:
            order = buy(shop.shop, shop.sku, contact=f"b{i}@example.com")
        except CheckoutRefused as exc:
            return ("refused", str(exc))
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            return ("error", f"{type(exc).__name__}: {exc}")
        return ("flash" if order.unit_price_fen == FLASH else "normal", order.unit_price_fen)

    results = _race(one, RACERS)
    outcomes = collections.Counter(r[0] for r in results)
    assert outcomes["error"] == 0, [r for r in results if r[0] == "error"][:3]
    assert outcomes["flash"] == CAP
    assert {r[1] for r in results if r[0] == "refused"} <= {"The flash sale is sold out"}
    assert {r[1] for r in results if r[0] == "normal"} <= {SHOP_PRICE}
    assert outcomes["flash"] + outcomes["refused"] + outcomes["normal"] == RACERS
    with all_sites():
        assert orders.Order.select().where(orders.Order.unit_price_fen == FLASH).count() == CAP
        assert FlashSaleUse.select().where(FlashSaleUse.sale == s.id).count() == CAP
        assert orders.Order.select().count() == CAP + outcomes["normal"]  # refused buyers left nothing
    assert sold(s.id) == CAP


def _reserve_race(shop, notes, contact=lambda i: f"r{i}@x", member_id=None):
    """``reserve`` alone, with no SKU row lock in front of it (as ``create_order`` has): RACERS at once."""

    def one(i):
        order = SimpleNamespace(id=10_000 + i, site_id=shop.shop, quantity=1, member_id=member_id, contact=contact(i))
        checkout = SimpleNamespace(notes={"coupons": notes})
        for attempt in range(20):
            try:
                with acting_for(shop.shop), database.atomic():
                    rules.reserve(order, checkout)
                return "ok"
            except CheckoutRefused as exc:
                return str(exc)
            except Exception as exc:  # noqa: BLE001 - a deadlock is retried, as orders.create_order does
                if "deadlock" not in str(exc).lower() and "locked" not in str(exc).lower():
                    return f"error {type(exc).__name__}: {exc}"
        return "gave up"

    return collections.Counter(_race(one, RACERS))


@pytest.mark.slow
def test_the_flash_cap_holds_in_the_database_alone(db_shop):
    s = sale(db_shop)
    assert _reserve_race(db_shop, {"flash_sale_id": s.id}) == {"ok": CAP, "The flash sale is sold out": RACERS - CAP}
    with all_sites():
        assert FlashSaleUse.select().count() == CAP
    assert sold(s.id) == CAP


@pytest.mark.slow
def test_the_coupon_total_limit_holds_in_the_database_alone(db_shop):
    c = rules.create_coupon(db_shop.shop, "FIVE", "fixed", 100, total_limit=CAP)
    results = _reserve_race(db_shop, {"coupon_id": c.id, "coupon_discount": 100})
    assert results == {"ok": CAP, "This coupon has run out": RACERS - CAP}
    with all_sites():
        assert Coupon.get_by_id(c.id).used == CAP
        assert CouponUse.select().where(CouponUse.coupon == c.id).count() == CAP


@pytest.mark.slow
def test_the_per_member_limit_holds_in_the_database_alone(db_shop):
    c = rules.create_coupon(db_shop.shop, "TWOEACH", "fixed", 100, per_member_limit=2)
    results = _reserve_race(db_shop, {"coupon_id": c.id, "coupon_discount": 100}, contact=lambda i: "same@x")
    assert results == {"ok": 2, "This coupon can be used 2 times per customer, and you have used them all": RACERS - 2}
    with all_sites():
        assert Coupon.get_by_id(c.id).used == 2
        assert CouponUse.select().where(CouponUse.coupon == c.id).count() == 2


def test_a_sale_or_coupon_switched_off_between_pricing_and_ordering_is_refused_with_its_reason(shop):
    s = sale(shop)
    c = rules.create_coupon(shop.shop, "GONE", "fixed", 100, stackable=True)
    flash_checkout = checkout_for(shop.shop, shop.sku)
    coupon_checkout = checkout_for(shop.shop, shop.second_sku, code="GONE")
    with all_sites():
        FlashSale.update(active=False).where(FlashSale.id == s.id).execute()
        Coupon.update(active=False).where(Coupon.id == c.id).execute()
    with pytest.raises(CheckoutRefused, match="The flash sale has ended"):
        place(flash_checkout)
    with pytest.raises(CheckoutRefused, match="This coupon has been disabled"):
        place(coupon_checkout)
    with all_sites():
        assert orders.Order.select().count() == 0
