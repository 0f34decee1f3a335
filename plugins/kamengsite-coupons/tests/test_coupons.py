"""Coupon codes: every rule, with numbers by hand (see coupons_helpers: the shop sells at 10800, cost 9000;
the second product at 3240, cost 2700)."""

from __future__ import annotations

import pytest

from coupons_helpers import SHOP_COST, SHOP_PRICE, buy, checkout_for, expire, hours, make_shop, place
from kamengsite import ledger, members, orders
from kamengsite.checkout import CheckoutRefused
from kamengsite.db import init_database, release_connections
from kamengsite.tenancy import all_sites
from kamengsite_coupons import SETTINGS_SCHEMA, checkout_inputs, rules
from kamengsite_coupons.models import Coupon, CouponUse

SECOND_PRICE, SECOND_COST = 3240, 2700


@pytest.fixture
def shop(instance):
    init_database(instance.database_url)
    yield make_shop()
    release_connections()


def coupon(site, code="SAVE5", kind="fixed", value=500, **rules_):
    return rules.create_coupon(site, code, kind, value, **rules_)


def used(coupon_id) -> int:
    with all_sites():
        return Coupon.get_by_id(coupon_id).used


def refused(site, sku, quantity=1, **kwargs) -> str:
    with pytest.raises(CheckoutRefused) as exc:
        buy(site, sku, quantity, **kwargs)
    return str(exc.value)


def order_count() -> int:
    with all_sites():
        return orders.Order.select().count()


# -- money off ------------------------------------------------------------------------------------


def test_a_fixed_coupon_takes_its_fen_off_and_counts_one_use(shop):
    c = coupon(shop.shop)
    order = buy(shop.shop, shop.sku, code="save5")  # codes are case-insensitive
    assert (order.unit_price_fen, order.discount_fen, order.goods_fen, order.amount_fen) == \
        (SHOP_PRICE, 500, SHOP_PRICE - 500, SHOP_PRICE - 500)
    assert used(c.id) == 1
    with all_sites():
        use = CouponUse.get(CouponUse.order_id == order.id)
    assert (use.coupon_id, use.discount_fen, use.contact, use.released) == (c.id, 500, "buyer@example.com", False)


def test_a_percent_coupon_rounds_its_discount_down(shop):
    coupon(shop.shop, "P1555", "percent", 1555)  # 15.55 % of 3240 = 503.82
    order = buy(shop.shop, shop.second_sku, code="P1555")
    assert order.discount_fen == 503 and order.goods_fen == SECOND_PRICE - 503
    coupon(shop.shop, "CAPPED", "percent", 1500, max_discount_fen=300)  # 15 % of 3240 = 486, capped at 300
    assert buy(shop.shop, shop.second_sku, code="CAPPED").discount_fen == 300


def test_a_discount_never_takes_the_price_below_the_sites_cost(shop):
    coupon(shop.shop, "BIG", value=5000)
    coupon(shop.shop, "NINETY", "percent", 9000)
    for code in ("BIG", "NINETY"):
        order = buy(shop.shop, shop.sku, 2, code=code)
        assert order.discount_fen == 2 * (SHOP_PRICE - SHOP_COST)  # only the seller's margin is spent
        assert order.goods_fen == 2 * SHOP_COST


def test_a_coupon_at_the_floor_already_is_refused_with_a_reason(shop):
    coupon(shop.shop, "AA", value=SHOP_PRICE - SHOP_COST, stackable=True)
    coupon(shop.shop, "BB", value=100)
    assert buy(shop.shop, shop.sku, code="AA").goods_fen == SHOP_COST
    checkout = checkout_for(shop.shop, shop.sku, code="BB")
    checkout.take_off(SHOP_PRICE - SHOP_COST, source="other", label="x")  # another plugin got there first
    assert rules.coupon_problem(rules.find_coupon(shop.shop, "BB"), checkout) == \
        "This product is already at its lowest price; no coupon can be used"


# -- why a code cannot be used ---------------------------------------------------------------------


def test_unknown_disabled_and_out_of_window_codes_are_refused_with_their_reason(shop):
    assert "No such coupon code" in refused(shop.shop, shop.sku, code="NOPE")
    c = coupon(shop.shop, "OFF")
    with all_sites():
        Coupon.update(active=False).where(Coupon.id == c.id).execute()
    assert refused(shop.shop, shop.sku, code="OFF") == "This coupon has been disabled"
    coupon(shop.shop, "LATER", starts_at=hours(2))
    assert "not valid yet" in refused(shop.shop, shop.sku, code="LATER")
    coupon(shop.shop, "OLD", starts_at=hours(-5), ends_at=hours(-1))
    assert refused(shop.shop, shop.sku, code="OLD") == "This coupon has expired"
    coupon(shop.shop, "NOW", starts_at=hours(-1), ends_at=hours(1))
    assert buy(shop.shop, shop.sku, code="NOW").discount_fen == 500
    assert order_count() == 1  # refused checkouts left no order


def test_a_code_on_another_site_does_not_exist_here(shop):
    coupon(shop.main, "MAINONLY")
    assert "No such coupon code" in refused(shop.shop, shop.sku, code="MAINONLY")
    assert buy(shop.main, shop.sku, code="MAINONLY").discount_fen == 500


def test_minimum_spend_counts_the_goods_at_the_coupon_stage(shop):
    coupon(shop.shop, "MAN200", value=2000, min_spend_fen=20000)  # 满 200 减 20
    assert refused(shop.shop, shop.sku, code="MAN200") == "Minimum spend not reached: usable from ¥200"
    assert buy(shop.shop, shop.sku, 2, code="MAN200").discount_fen == 2000  # 21600 ≥ 20000


def test_product_and_category_scope(shop):
    coupon(shop.shop, "WEEK", product_ids=[shop.second.id])
    assert refused(shop.shop, shop.sku, code="WEEK") == "This coupon does not apply to this product"
    assert buy(shop.shop, shop.second_sku, code="WEEK").discount_fen == 500
    coupon(shop.shop, "GAMES", category_ids=[shop.games])
    assert refused(shop.shop, shop.second_sku, code="GAMES") == "This coupon does not apply to this product"
    assert buy(shop.shop, shop.sku, code="GAMES").discount_fen == 500


def test_members_only(shop):
    member = members.register(shop.shop, "m@example.com", "secret-pass-1")
    coupon(shop.shop, "VIP", members_only=True)
    assert refused(shop.shop, shop.sku, code="VIP") == "This coupon is for members only; please sign in"
    assert buy(shop.shop, shop.sku, code="VIP", member_id=member.id).discount_fen == 500


def test_the_total_limit_is_checked_when_pricing_and_taken_atomically_when_ordering(shop):
    c = coupon(shop.shop, "TWO", total_limit=2)
    buy(shop.shop, shop.sku, code="TWO", contact="a@x")
    buy(shop.shop, shop.sku, code="TWO", contact="b@x")
    assert refused(shop.shop, shop.sku, code="TWO", contact="c@x") == "This coupon has run out"
    assert used(c.id) == 2
    # Two buyers priced while one use was left: the second to order is refused, not given the discount.
    last = coupon(shop.shop, "LAST", total_limit=1)
    first, second = (checkout_for(shop.shop, shop.sku, code="LAST", contact=c_) for c_ in ("d@x", "e@x"))
    assert first.discount_fen == second.discount_fen == 500
    place(first)
    before = order_count()
    with pytest.raises(CheckoutRefused, match="This coupon has run out"):
        place(second)
    assert order_count() == before and used(last.id) == 1


def test_the_per_member_limit_counts_members_and_guests_by_contact(shop):
    a = members.register(shop.shop, "a@example.com", "secret-pass-1")
    b = members.register(shop.shop, "b@example.com", "secret-pass-1")
    c = coupon(shop.shop, "ONCE", per_member_limit=1)
    buy(shop.shop, shop.sku, code="ONCE", member_id=a.id)
    assert refused(shop.shop, shop.sku, code="ONCE", member_id=a.id) == \
        "This coupon can be used 1 time per customer, and you have used it"
    buy(shop.shop, shop.sku, code="ONCE", member_id=b.id)
    buy(shop.shop, shop.sku, code="ONCE", contact="guest@x")
    assert "used 1 time per customer" in refused(shop.shop, shop.sku, code="ONCE", contact="guest@x")
    assert used(c.id) == 3
    # Priced twice before either order: the database refuses the second use.
    twice = coupon(shop.shop, "TWICE", per_member_limit=1)
    m = members.register(shop.shop, "m@example.com", "secret-pass-1")
    first, second = (checkout_for(shop.shop, shop.sku, code="TWICE", member_id=m.id) for _ in range(2))
    place(first)
    with pytest.raises(CheckoutRefused, match="used 1 time per customer"):
        place(second)
    assert used(twice.id) == 1


def test_a_preview_never_refuses_and_writes_nothing(shop):
    c = coupon(shop.shop, "PRE", min_spend_fen=50000)
    checkout = checkout_for(shop.shop, shop.sku, code="PRE", preview=True)
    assert rules.refusal(checkout) is None  # the product page shows the price, not an error
    checkout = checkout_for(shop.shop, shop.sku, code="nope", preview=True)
    assert rules.refusal(checkout) is None
    assert used(c.id) == 0 and order_count() == 0


# -- giving uses back -----------------------------------------------------------------------------


def test_an_expired_order_gives_its_use_back_exactly_once_and_a_late_payment_takes_it_again(shop):
    c = coupon(shop.shop, "BACK", total_limit=1)
    order = buy(shop.shop, shop.sku, code="BACK")
    assert used(c.id) == 1
    assert refused(shop.shop, shop.sku, code="BACK", contact="other@x") == "This coupon has run out"
    assert expire(order) == 1
    assert used(c.id) == 0
    with all_sites():
        assert CouponUse.get(CouponUse.order_id == order.id).released
        assert rules.release(order) is False  # a second time gives nothing back
    assert expire(order) == 0 and used(c.id) == 0
    other = buy(shop.shop, shop.sku, code="BACK", contact="other@x")  # the use is free again
    assert other.discount_fen == 500 and used(c.id) == 1
    # The expired order is paid late at its frozen price: its use is counted again, once.
    with all_sites():
        assert rules.retake(order) is True and rules.retake(order) is False
    assert used(c.id) == 2


def test_an_order_without_a_coupon_expires_without_touching_coupons(shop):
    c = coupon(shop.shop, "UNUSED")
    order = buy(shop.shop, shop.sku)
    assert order.discount_fen == 0
    assert expire(order) == 1 and used(c.id) == 0


# -- the money --------------------------------------------------------------------------------------


def test_a_paid_coupon_order_splits_out_of_the_sellers_margin(shop):
    coupon(shop.shop, "SPLIT", value=700)
    order = buy(shop.shop, shop.sku, 2, code="SPLIT")
    assert order.goods_fen == 2 * SHOP_PRICE - 700 and order.amount_fen == order.goods_fen
    result = orders.mark_paid(order.order_no, channel="epay", trade_no="T-SPLIT", amount_fen=order.amount_fen,
                              channel_profile="main")
    assert result.status in ("paid", "delivered")
    frozen = ledger.balance(ledger.account("site_frozen", site=shop.shop))
    assert frozen == order.goods_fen - 2 * SHOP_COST == 2900  # the seller's margin, less the coupon
    assert ledger.balance(ledger.account("platform_revenue")) == 2 * SHOP_COST  # the platform's cost untouched
    assert ledger.check() == []


# -- settings and inputs --------------------------------------------------------------------------


def test_the_buy_form_asks_for_a_code_unless_switched_off(shop):
    from types import SimpleNamespace

    asked = checkout_inputs(SimpleNamespace(settings={}, config_file="site.toml"))
    assert [(i.name, i.label) for i in asked] == [("coupon", "Coupon code")]
    off = SimpleNamespace(settings={"coupons": {"coupon_field": False}}, config_file="site.toml")
    assert checkout_inputs(off) == []
    assert SETTINGS_SCHEMA["properties"]["show_flash_banner"]["default"] is True


def test_owner_rules_are_checked(shop):
    with pytest.raises(ValueError, match="already exists"):
        coupon(shop.shop, "DUP")
        coupon(shop.shop, "dup")
    with pytest.raises(ValueError, match="100%"):
        coupon(shop.shop, "FULL", "percent", 10000)
    with pytest.raises(ValueError, match="end time"):
        coupon(shop.shop, "BACKWARDS", starts_at=hours(2), ends_at=hours(1))
    with pytest.raises(ValueError, match="A coupon code is"):
        coupon(shop.shop, "有空格 的码")
