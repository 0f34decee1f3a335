"""Through the storefront and the owner's console: a coupon code on the buy form, the flash-sale
section, and ``/admin/coupons/``. ``shopx`` is a silver sub-site (cost 9000 of 10000, +20 % → 10800)."""

from __future__ import annotations

import datetime
import re

import pytest

from kamengsite import levels, orders
from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import all_sites
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console, sign_in_member
from kamengsite_coupons import rules
from kamengsite_coupons.models import Coupon, FlashSale, NewcomerPrice, QuantityTier

PASSWORD = "secret-pass-1"
HOST = "shopx.localhost"


@pytest.fixture
def product(host):
    levels.seed_default_levels()
    card = create_product(Site.get(Site.slug == "main"), "优惠测试卡", 10000)
    import_keys(card.skus[0], [f"C-{i}" for i in range(10)], CardKeyCipher.from_instance(host.instance))
    return card


def _shop(host, plugins=("coupons",), settings=None) -> int:
    return open_plugin_site(host, "shopx", plugins, settings=settings)


def _post_buy(client, product, code):
    page = client.get(f"/p/{product.id}")
    assert 'name="coupon"' in page.get_data(as_text=True)
    return client.post(f"/p/{product.id}", data={"csrf_token": csrf_token(page), "sku": product.skus[0].id,
                                                 "quantity": 1, "contact": "buyer@example.com",
                                                 "query_password": "pass1234", "coupon": code})


def test_a_buyer_pays_less_with_a_code_and_sees_why_a_wrong_one_is_refused(host, client_for, product):
    shop = _shop(host)
    rules.create_coupon(shop, "HELLO", "fixed", 800)
    client = client_for(HOST)
    response = _post_buy(client, product, "hello")
    assert response.status_code == 302, response.get_data(as_text=True)
    order_no = response.headers["Location"].rsplit("/", 1)[1]
    with all_sites():
        order = orders.find_order(order_no)
        assert Coupon.get(Coupon.code == "HELLO").used == 1
    assert (order.unit_price_fen, order.discount_fen, order.amount_fen) == (10800, 800, 10000)

    refused = _post_buy(client_for(HOST), product, "WRONG")
    page = refused.get_data(as_text=True)
    assert refused.status_code == 200 and "优惠码不存在" in page
    with all_sites():
        assert orders.Order.select().count() == 1


def test_a_site_without_the_plugin_has_no_code_field_and_ignores_its_coupons(host, client_for, product):
    shop = _shop(host, plugins=())
    rules.create_coupon(shop, "HELLO", "fixed", 800)
    page = client_for(HOST).get(f"/p/{product.id}").get_data(as_text=True)
    assert 'name="coupon"' not in page


def test_the_flash_section_shows_running_sales_unless_switched_off(host, client_for, product, site_files):
    shop = _shop(host)
    now = utcnow()
    rules.create_flash_sale(shop, product.skus[0].id, 9500, 3, now - datetime.timedelta(hours=1),
                            now + datetime.timedelta(hours=1))
    home = client_for(HOST).get("/").get_data(as_text=True)
    assert "限时秒杀" in home and "秒杀价 ¥95.00" in home and "剩 3 件" in home
    product_page = client_for(HOST).get(f"/p/{product.id}").get_data(as_text=True)
    assert "秒杀价" in product_page and "95.00" in product_page
    site_files.edit("shopx", settings={"coupons": {"show_flash_banner": False}})
    assert "限时秒杀" not in client_for(HOST).get("/").get_data(as_text=True)


# -- the owner's console ------------------------------------------------------------------------


def _owner(host, client_for, shop):
    create_account(shop, "owner", PASSWORD)
    return sign_in_console(client_for(HOST), "owner", PASSWORD)


def test_the_owner_creates_and_disables_promotions_in_the_console(host, client_for, product):
    shop = _shop(host)
    assert client_for(HOST).get("/admin/coupons/").status_code == 302  # signed out: to the login page
    client = _owner(host, client_for, shop)
    page = client.get("/admin/coupons/")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "优惠营销" in text
    assert f'value="{product.skus[0].id}"' in text and "成本 ¥90" in text  # the site's own cost shown
    token = csrf_token(page)
    sku = product.skus[0].id
    r = client.post("/admin/coupons/coupon", data={"csrf_token": token, "c-code": "new10", "c-kind": "percent",
                                                   "c-value": "10", "c-min_spend": "50", "c-total_limit": "100",
                                                   "c-per_member_limit": "1", "c-ends_at": "2099-01-01 00:00"})
    assert r.status_code == 302, r.get_data(as_text=True)
    with all_sites():
        c = Coupon.get(Coupon.code == "NEW10")
    assert (c.site_id, c.kind, c.value, c.min_spend_fen, c.total_limit, c.per_member_limit) == \
        (shop, "percent", 1000, 5000, 100, 1)
    assert c.ends_at == datetime.datetime(2098, 12, 31, 16, 0)  # typed in the shop's time zone (UTC+8), stored in UTC
    bad = client.post("/admin/coupons/coupon", data={"csrf_token": token, "c-code": "x", "c-kind": "fixed",
                                                     "c-value": "5"})
    assert bad.status_code == 400 and "优惠码为" in bad.get_data(as_text=True)
    assert client.post("/admin/coupons/coupon", data={"c-code": "NOCSRF", "c-kind": "fixed",
                                                      "c-value": "5"}).status_code == 400
    r = client.post("/admin/coupons/flash", data={"csrf_token": token, "f-sku": sku, "f-price": "95", "f-cap": "5",
                                                  "f-starts_at": "2026-01-01 00:00", "f-ends_at": "2099-01-01 00:00"})
    assert r.status_code == 302, r.get_data(as_text=True)
    r = client.post("/admin/coupons/newcomer", data={"csrf_token": token, "n-sku": sku, "n-price": "99"})
    assert r.status_code == 302
    r = client.post("/admin/coupons/tier", data={"csrf_token": token, "t-sku": sku, "t-min_qty": "5", "t-price": "100"})
    assert r.status_code == 302
    with all_sites():
        sale = FlashSale.get()
        assert (sale.site_id, sale.sku_id, sale.price_fen, sale.cap) == (shop, sku, 9500, 5)
        assert NewcomerPrice.get().price_fen == 9900 and QuantityTier.get().min_qty == 5
    listing = client.get("/admin/coupons/").get_data(as_text=True)
    assert "NEW10" in listing and "0 / 5" in listing
    r = client.post(f"/admin/coupons/coupon/{c.id}/off", data={"csrf_token": token})
    assert r.status_code == 302
    with all_sites():
        assert not Coupon.get_by_id(c.id).active
    assert client.post(f"/admin/coupons/coupon/{c.id}/off", data={}).status_code == 400  # no token


def test_an_owner_cannot_touch_another_sites_promotions(host, client_for, product):
    shop = _shop(host)
    main = Site.get(Site.slug == "main").id
    theirs = rules.create_coupon(main, "MAINS", "fixed", 100)
    client = _owner(host, client_for, shop)
    token = csrf_token(client.get("/admin/coupons/"))
    assert client.post(f"/admin/coupons/coupon/{theirs.id}/off", data={"csrf_token": token}).status_code == 404
    with all_sites():
        assert Coupon.get_by_id(theirs.id).active
    assert "MAINS" not in client.get("/admin/coupons/").get_data(as_text=True)


def test_the_console_menu_links_the_page(host, client_for, product):
    shop = _shop(host)
    client = _owner(host, client_for, shop)
    text = client.get("/admin/coupons/").get_data(as_text=True)
    assert re.search(r'<a href="/admin/coupons/">优惠营销</a>', text)


def test_the_expiry_job_gives_a_storefront_orders_coupon_back(host, client_for, product):
    from kamengsite import hooks

    shop = _shop(host)
    rules.create_coupon(shop, "BACK", "fixed", 800, total_limit=1)
    response = _post_buy(client_for(HOST), product, "BACK")
    assert response.status_code == 302
    with all_sites():
        assert Coupon.get(Coupon.code == "BACK").used == 1
        orders.Order.update(expires_at=utcnow() - datetime.timedelta(minutes=1)).execute()
    assert orders.expire_due(expiring=hooks.expiring_callback()) == 1  # what the job runs, outside any request
    with all_sites():
        assert Coupon.get(Coupon.code == "BACK").used == 0
    again = _post_buy(client_for(HOST), product, "BACK")
    assert again.status_code == 302  # the use is free again


def test_a_signed_in_newcomer_sees_and_pays_the_newcomer_price(host, client_for, product):
    from kamengsite import members

    shop = _shop(host)
    rules.set_newcomer_price(shop, product.skus[0].id, 9900)
    members.register(shop, "new@example.com", PASSWORD)
    client = client_for(HOST)
    sign_in_member(client, "new@example.com", PASSWORD)  # asserts the 302
    text = client.get(f"/p/{product.id}").get_data(as_text=True)
    assert "新人专享价" in text and "99.00" in text
    assert "新人专享价" not in client_for(HOST).get(f"/p/{product.id}").get_data(as_text=True)  # guests
    response = _post_buy(client, product, "")
    assert response.status_code == 302
    with all_sites():
        order = orders.find_order(response.headers["Location"].rsplit("/", 1)[1])
    assert order.unit_price_fen == 9900 and order.member_id is not None


def test_a_late_payment_of_an_expired_coupon_order_counts_its_use_again(host, client_for, product):
    from kamengsite import hooks

    shop = _shop(host)
    rules.create_coupon(shop, "LATE", "fixed", 800)
    order_no = _post_buy(client_for(HOST), product, "LATE").headers["Location"].rsplit("/", 1)[1]
    with all_sites():
        orders.Order.update(expires_at=utcnow() - datetime.timedelta(minutes=1)).execute()
    assert orders.expire_due(expiring=hooks.expiring_callback()) == 1
    with all_sites():
        assert Coupon.get(Coupon.code == "LATE").used == 0
        order = orders.find_order(order_no)
    result = orders.mark_paid(order_no, channel=order.channel, trade_no="T-LATE", amount_fen=order.amount_fen,
                              channel_profile=order.channel_profile)
    assert result.status in ("paid", "delivered") and order.amount_fen == 10000  # paid at its frozen price
    hooks.notify("order_paid", order)  # what the payment routes call after recording it
    hooks.notify("order_paid", order)  # (a second call changes nothing)
    with all_sites():
        assert Coupon.get(Coupon.code == "LATE").used == 1


# -- languages ----------------------------------------------------------------------------------


def test_the_console_page_and_the_flash_section_speak_english_on_request(host, client_for, product):
    shop = _shop(host)
    now = utcnow()
    rules.create_coupon(shop, "LANG5", "percent", 500, max_discount_fen=300, min_spend_fen=1000, members_only=True)
    rules.create_flash_sale(shop, product.skus[0].id, 9500, 3, now - datetime.timedelta(hours=1),
                            now + datetime.timedelta(hours=1))
    client = _owner(host, client_for, shop)
    chinese = client.get("/admin/coupons/").get_data(as_text=True)
    assert "<h1>优惠营销</h1>" in chinese and "Promotions" not in chinese and "减 5%" in chinese
    english = client.get("/admin/coupons/?lang=en").get_data(as_text=True)
    assert "<h1>Promotions</h1>" in english and "优惠营销" not in english
    assert "New coupon code" in english and "新建优惠码" not in english
    assert "5% off (at most ¥3)" in english and "Members-only code" in english and "Wholesale minimum" in english
    home = client_for(HOST).get("/?lang=en").get_data(as_text=True)
    assert "<h2>Flash sales</h2>" in home and "Flash sale price ¥95.00" in home and "3 units left" in home
    assert "限时秒杀" not in home and "秒杀价" not in home
    refused = _post_buy(client_for(HOST), product, "WRONG")  # a new client: Chinese by default
    assert "优惠码不存在" in refused.get_data(as_text=True)
    english_client = client_for(HOST)
    english_client.get("/?lang=en")  # the choice is kept in a cookie
    page = _post_buy(english_client, product, "WRONG").get_data(as_text=True)
    assert "No such coupon code" in page and "优惠码不存在" not in page
