"""The member levels plugin: levels from real paid spend, discounts in the checkout pipeline, grants.

Numbers by hand: ``shopx`` is a silver sub-site selling main's 10000-fen card at +20 % → 10800,
its cost (the floor) 9000. The default levels: 普通会员 0 / 银卡 10000 (2 %) / 金卡 50000 (5 %)
/ 钻石 200000 (8 %). A 金卡 member pays 10800 − 10800 × 500 // 10000 = 10800 − 540 = 10260.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kamengsite import levels as site_levels
from kamengsite import members, orders, pricing, refunds
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.checkout import Checkout
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console, sign_in_member
from kamengsite_memberlevels import adjust_price, order_paid, order_refunded
from kamengsite_memberlevels import levels
from kamengsite_memberlevels.levels import Config, Level, MemberLevel

PASSWORD = "secret-pass-1"
DEFAULT = Config("spend", tuple(Level(**lv) for lv in levels.DEFAULT_LEVELS))


@pytest.fixture
def host(db_host):
    """Every test here runs on each database of the matrix (``client_for`` follows this host too)."""
    return db_host


def _shop(host, slug="shopx", plugins=("member_levels",), settings=None) -> int:
    return open_plugin_site(host, slug, plugins, settings=settings)


@pytest.fixture
def product(host):
    site_levels.seed_default_levels()
    card = create_product(Site.get(Site.slug == "main"), "等级测试卡", 10000, max_qty=10)
    import_keys(card.skus[0], [f"L-{i}" for i in range(30)], CardKeyCipher.from_instance(host.instance))
    return card


def _paid(site_id, product, member_id, quantity=1, contact="buyer@example.com") -> orders.Order:
    """A paid order of ``quantity`` units at the site's price (goods_fen = 10800 × quantity on shopx)."""
    sku = product.skus[0].id
    quote = pricing.quote_sku(site_id, sku)
    order = orders.create_order(site_id=site_id, sku_id=sku, quantity=quantity, contact=contact,
                                unit_price_fen=quote.unit_price_fen, costs=quote.costs, member_id=member_id)
    orders.mark_paid(order.order_no, channel="demo", trade_no=f"T-{order.order_no}", amount_fen=order.amount_fen)
    with all_sites():
        return orders.find_order(order.order_no)


def _config(host, slug="shopx") -> Config:
    return levels.load_config(host.registry.load(slug))


def _checkout(host, site_id, member_id, unit=10800, floor=9000, quantity=1, slug="shopx") -> Checkout:
    return Checkout(site_id=site_id, site=host.registry.load(slug), product=SimpleNamespace(id=1, name="x"), sku_id=1,
                    quantity=quantity, list_unit_fen=unit, floor_unit_fen=floor, member_id=member_id)



# -- levels from spend --------------------------------------------------------------------


@pytest.mark.parametrize("spend, expected", [
    (0, "普通会员"), (9999, "普通会员"), (10000, "银卡"), (49999, "银卡"), (50000, "金卡"),
    (199999, "金卡"), (200000, "钻石"), (10**9, "钻石"),
])
def test_the_level_is_the_highest_threshold_reached_and_a_threshold_reached_exactly_counts(spend, expected):
    assert levels.standing_of(DEFAULT, spend).level.name == expected


def test_the_next_level_and_what_is_missing_to_reach_it():
    now = levels.standing_of(DEFAULT, 12345)
    assert (now.level.name, now.next_level.name, now.to_next_fen) == ("银卡", "金卡", 50000 - 12345)
    top = levels.standing_of(DEFAULT, 200000)
    assert top.next_level is None and top.to_next_fen == 0


def test_below_every_threshold_there_is_no_level():
    config = Config("spend", (Level("银卡", 10000, 200),))
    assert levels.standing_of(config, 9999).level is None
    assert levels.standing_of(config, 10000).level.name == "银卡"


def test_spend_counts_paid_orders_of_this_member_on_this_site_only(host, product):
    shop = _shop(host)
    other = _shop(host, "shopy")
    a = members.register(shop, "a@example.com", PASSWORD)
    b = members.register(shop, "b@example.com", PASSWORD)
    a_on_other = members.register(other, "a@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=4)  # 43200
    _paid(shop, product, b.id)
    _paid(other, product, a_on_other.id, quantity=5)  # 54000 on shopy: not shopx's business
    sku = product.skus[0].id
    unpaid = orders.create_order(site_id=shop, sku_id=sku, quantity=1, contact="a@example.com",
                                 unit_price_fen=10800, costs=pricing.quote_sku(shop, sku).costs, member_id=a.id)
    assert unpaid.status == "created"
    assert levels.spend_of(shop, a.id) == 43200
    assert levels.spends(shop, [a.id, b.id, 999999]) == {a.id: 43200, b.id: 10800, 999999: 0}
    assert levels.standing(_config(host), shop, a.id).level.name == "银卡"
    assert levels.spend_of(other, a_on_other.id) == 54000
    assert levels.standing(_config(host, "shopy"), other, a_on_other.id).level.name == "金卡"


def test_payment_and_refund_refresh_the_cached_level(host, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    site = host.registry.load("shopx")
    first = _paid(shop, product, a.id, quantity=4)
    order_paid(first, site)
    with all_sites():
        row = MemberLevel.get(MemberLevel.member == a.id)
    assert (row.site_id, row.spend_fen, row.level) == (shop, 43200, "银卡")
    second = _paid(shop, product, a.id, quantity=1)  # 54000: 金卡
    order_paid(second, site)
    with all_sites():
        assert MemberLevel.get(MemberLevel.member == a.id).level == "金卡"

    refund = refunds.refund_order(second.order_no, to="manual")
    with all_sites():
        refunded = orders.find_order(second.order_no)
    order_refunded(refunded, refund, site)
    with all_sites():
        row = MemberLevel.get(MemberLevel.member == a.id)
    assert (row.spend_fen, row.level) == (43200, "银卡")  # the refund lowered the spend, and the level
    assert levels.spend_of(shop, a.id) == 43200


def test_a_guest_order_refreshes_nothing(host, product):
    shop = _shop(host)
    order_paid(_paid(shop, product, None), host.registry.load("shopx"))
    with all_sites():
        assert MemberLevel.select().count() == 0


# -- the discount in the pipeline ------------------------------------------------------


def test_a_members_level_discount_is_offered_at_the_member_stage_only(host, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=5)  # 54000: 金卡, 5 %
    checkout = _checkout(host, shop, a.id, quantity=2)
    adjust_price(checkout, "quantity")
    adjust_price(checkout, "promotion")
    assert checkout.unit_price_fen == 10800 and checkout.lines == []
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10260 and checkout.goods_fen == 20520
    assert [(line.source, line.label, line.saved_fen) for line in checkout.lines] == [("member_levels", "金卡 price", 1080)]  # no request: English


def test_the_discount_rounds_in_the_sellers_favour(host, product):
    shop = _shop(host, settings={"member_levels": {"levels": [{"name": "VIP", "min_spend_fen": 0, "discount_bp": 333}]}})
    a = members.register(shop, "a@example.com", PASSWORD)
    checkout = _checkout(host, shop, a.id, unit=9999, floor=0)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 9999 - 9999 * 333 // 10000 == 9667  # 332.96 off → 332


def test_the_discount_never_goes_below_the_sellers_cost(host, product):
    shop = _shop(host, settings={"member_levels": {"levels": [{"name": "员工", "min_spend_fen": 0, "discount_bp": 5000}]}})
    a = members.register(shop, "a@example.com", PASSWORD)
    checkout = _checkout(host, shop, a.id)  # 50 % off 10800 would be 5400; the cost is 9000
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 9000 and checkout.lines[0].saved_fen == 1800


def test_a_guest_gets_no_discount(host, product):
    shop = _shop(host, settings={"member_levels": {"levels": [{"name": "人人", "min_spend_fen": 0, "discount_bp": 1000}]}})
    checkout = _checkout(host, shop, None)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10800 and checkout.lines == []


def test_a_level_without_a_discount_changes_nothing(host, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)  # 普通会员: 0 bp
    checkout = _checkout(host, shop, a.id)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10800 and checkout.lines == []


def test_spend_on_another_site_earns_no_discount_here(host, product):
    shop = _shop(host)
    other = _shop(host, "shopy")
    here = members.register(shop, "a@example.com", PASSWORD)
    there = members.register(other, "a@example.com", PASSWORD)
    _paid(other, product, there.id, quantity=10)
    _paid(other, product, there.id, quantity=10)  # 216000 on shopy: 钻石 there
    checkout = _checkout(host, shop, here.id)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10800  # 普通会员 on shopx
    checkout = _checkout(host, other, there.id, slug="shopy")
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10800 - 864


def test_wrong_settings_give_no_discounts(host, product, caplog):
    shop = _shop(host, settings={"member_levels": {"levels": [
        {"name": "甲", "min_spend_fen": 0, "discount_bp": 500}, {"name": "甲", "min_spend_fen": 10, "discount_bp": 900}]}})
    a = members.register(shop, "a@example.com", PASSWORD)
    checkout = _checkout(host, shop, a.id)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10800
    assert "member levels disabled" in caplog.text
    too_much = SimpleNamespace(slug="x", config_file="x", settings={"member_levels": {"levels": [
        {"name": "甲", "min_spend_fen": 0, "discount_bp": 5001}]}})
    assert levels.load_config(too_much).levels == ()


# -- the owner's grant -----------------------------------------------------------------


def test_the_owners_grant_wins_over_spend_and_clearing_it_goes_back_to_spend(host, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    config = _config(host)
    _paid(shop, product, a.id, quantity=5)  # 金卡 by spend
    assert levels.grant(config, shop, a.id, "钻石").level.name == "钻石"
    checkout = _checkout(host, shop, a.id)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 10800 - 864 and checkout.lines[0].label == "钻石 price"
    now = levels.grant(config, shop, a.id, "银卡")  # the owner may also set a lower level
    assert (now.level.name, now.granted, now.next_level) == ("银卡", True, None)
    assert levels.grant(config, shop, a.id, "").level.name == "金卡"
    with pytest.raises(ValueError):
        levels.grant(config, shop, a.id, "黑卡")


def test_a_grant_never_reaches_a_member_of_another_site(host, product):
    shop = _shop(host)
    other = _shop(host, "shopy")
    there = members.register(other, "b@example.com", PASSWORD)
    with pytest.raises(ValueError):
        levels.grant(_config(host), shop, there.id, "钻石")
    with all_sites():
        assert MemberLevel.select().count() == 0


def test_bought_levels_are_granted_only(host, product):
    shop = _shop(host, settings={"member_levels": {"basis": "bought", "levels": [
        {"name": "普通", "min_spend_fen": 0, "discount_bp": 0},
        {"name": "VIP", "min_spend_fen": 0, "discount_bp": 1000, "price_fen": 9900}]}})
    a = members.register(shop, "a@example.com", PASSWORD)
    config = _config(host)
    _paid(shop, product, a.id, quantity=5)
    assert levels.standing(config, shop, a.id).level.name == "普通"  # spend does not matter
    levels.grant(config, shop, a.id, "VIP")
    checkout = _checkout(host, shop, a.id)
    adjust_price(checkout, "member")
    assert checkout.unit_price_fen == 9720


# -- pages ------------------------------------------------------------------------------


def test_the_member_page_shows_level_spend_and_next_level(host, client_for, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=2)  # 21600: 银卡
    client = client_for("shopx.localhost")
    assert client.get("/member/level").status_code == 302
    sign_in_member(client, "a@example.com", PASSWORD)
    response = client.get("/member/level")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert '<strong id="member-level">银卡</strong>' in page and "9.8 折" in page
    assert '<span class="price" id="member-spend">¥216.00</span>' in page
    assert "再消费 <strong>¥284.00</strong> 即可升级为「金卡」（9.5 折）" in page
    assert "钻石" in page and "9.2 折" in page
    assert 'href="/member/level"' in client.get("/member/").get_data(as_text=True)  # linked from the account page


def test_a_site_without_the_plugin_has_no_level_page(host, client_for, product):
    _shop(host, "plain", plugins=())
    assert client_for("plain.localhost").get("/member/level").status_code == 404
    assert client_for("plain.localhost").get("/admin/member-levels/").status_code == 404


def test_a_member_buys_at_the_level_price_through_the_storefront(host, client_for, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=5)  # 金卡
    client = client_for("shopx.localhost")
    sign_in_member(client, "a@example.com", PASSWORD)
    page = client.get(f"/p/{product.id}")
    if "list-price" not in page.get_data(as_text=True):
        pytest.skip("the storefront's checkout pipeline has not landed")
    assert "¥102.60" in page.get_data(as_text=True) and "金卡价" in page.get_data(as_text=True)
    response = client.post(f"/p/{product.id}", data={
        "csrf_token": csrf_token(page), "sku": product.skus[0].id, "quantity": 1,
        "contact": "a@example.com", "query_password": "pass1234"})
    assert response.status_code == 302, response.get_data(as_text=True)
    order_no = response.headers["Location"].rsplit("/", 1)[1]
    with all_sites():
        order = orders.find_order(order_no)
    assert (order.unit_price_fen, order.goods_fen, order.member_id) == (10260, 10260, a.id)
    client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(client.get(f"/order/{order_no}"))})
    with all_sites():
        assert orders.find_order(order_no).status == "delivered"
        row = MemberLevel.get(MemberLevel.member == a.id)  # order_paid refreshed the cache
    assert (row.spend_fen, row.level) == (54000 + 10260, "金卡")
    guest = client_for("shopx.localhost")
    assert "¥102.60" not in guest.get(f"/p/{product.id}").get_data(as_text=True)


def _operator(client_for, site_id, slug):
    from kamengsite.accounts import create_account

    create_account(site_id, f"owner-{slug}", PASSWORD)
    return sign_in_console(client_for(f"{slug}.localhost"), f"owner-{slug}", PASSWORD)


def test_the_owner_lists_members_and_grants_a_level(host, client_for, product):
    shop = _shop(host)
    other = _shop(host, "shopy")
    a = members.register(shop, "a<b>@example.com", PASSWORD)
    stranger = members.register(other, "s@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=2)
    assert client_for("shopx.localhost").get("/admin/member-levels/").status_code == 302  # signed out
    client = _operator(client_for, shop, "shopx")
    page = client.get("/admin/member-levels/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "a&lt;b&gt;@example.com" in html and "¥216.00" in html and "s@example.com" not in html
    token = csrf_token(page)
    assert client.post("/admin/member-levels/grant", data={"member_id": a.id, "level": "钻石"}).status_code == 400  # no CSRF
    response = client.post("/admin/member-levels/grant", data={"csrf_token": token, "member_id": a.id, "level": "钻石"})
    assert response.status_code == 302
    assert levels.standing(_config(host), shop, a.id).level.name == "钻石"
    # another site's member: not found here, nothing written
    response = client.post("/admin/member-levels/grant", data={"csrf_token": token, "member_id": stranger.id,
                                                               "level": "钻石"})
    assert response.status_code == 404
    assert levels.grants(other, [stranger.id]) == {}
    # an unknown level is refused by the form
    client.post("/admin/member-levels/grant", data={"csrf_token": token, "member_id": a.id, "level": "黑卡"})
    assert levels.standing(_config(host), shop, a.id).level.name == "钻石"


def test_templates_of_the_site_know_the_plugin_is_on_and_the_menu_names_the_console(host, product):
    from flask import render_template_string

    from kamengsite_memberlevels import admin_menu

    _shop(host)
    _shop(host, "plain", plugins=())
    for slug, expected in (("shopx", "True"), ("plain", "")):
        with host.app_for(slug).test_request_context("/", headers={"Host": f"{slug}.localhost"}):
            assert render_template_string("{{ member_levels_enabled or '' }}") == expected
    assert [(str(label), endpoint) for label, endpoint in admin_menu(None)] == [("Member levels", "member_levels.index")]
    with host.app_for("shopx").test_request_context("/", headers={"Host": "shopx.localhost"}):
        from flask import url_for

        assert url_for("member_levels.index") == "/admin/member-levels/"
        assert url_for("member_level.page") == "/member/level"


def test_concurrent_refreshes_and_grants_keep_one_row_per_member(host, product):
    from concurrent.futures import ThreadPoolExecutor

    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=5)
    config = _config(host)

    def work(i):
        if i % 4 == 0:
            return levels.grant(config, shop, a.id, "钻石").level.name
        return levels.refresh(config, shop, a.id).spend_fen

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(24)))
    assert results.count("钻石") == 6 and results.count(54000) == 18
    with all_sites():
        rows = list(MemberLevel.select())
    assert [(r.member_id, r.granted_level, r.spend_fen, r.level) for r in rows] == [(a.id, "钻石", 54000, "钻石")]


# -- languages ------------------------------------------------------------------------------


def test_the_level_pages_speak_english_on_request(host, client_for, product):
    shop = _shop(host)
    a = members.register(shop, "a@example.com", PASSWORD)
    _paid(shop, product, a.id, quantity=2)  # 21600: 银卡
    client = client_for("shopx.localhost")
    sign_in_member(client, "a@example.com", PASSWORD)
    assert "<h1>会员等级</h1>" in client.get("/member/level").get_data(as_text=True)
    page = client.get("/member/level?lang=en").get_data(as_text=True)
    assert "<h1>Member level</h1>" in page and "Current level:" in page and "98% of the price" in page
    assert "Spend <strong>¥284.00</strong> more to reach “金卡” (95% of the price)" in page  # level names are the owner's
    assert "当前等级" not in page and "折" not in page and "返回我的账户" not in page

    console = _operator(client_for, shop, "shopx")
    assert "<h1>会员等级</h1>" in console.get("/admin/member-levels/").get_data(as_text=True)
    admin_page = console.get("/admin/member-levels/?lang=en").get_data(as_text=True)
    assert "<h1>Member levels</h1>" in admin_page and "Search by email" in admin_page
    assert "98% of the price (2% off)" in admin_page and "Automatic (by the rules)" in admin_page
    assert "会员等级" not in admin_page and "按邮箱搜索" not in admin_page
