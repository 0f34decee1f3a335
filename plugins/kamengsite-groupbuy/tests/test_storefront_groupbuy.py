"""The group-buy plugin through the site: the owner's console, the product page, the share page, the demo payment."""

from __future__ import annotations

import re

import pytest

from kamengsite import orders
from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console
from kamengsite_groupbuy import groups
from kamengsite_groupbuy.groups import Group, GroupOffer

MAIN = "main.localhost"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def site(host):
    host.registry.update(host.instance.main_site, plugins=["groupbuy"])
    main = Site.get(Site.slug == host.instance.main_site)
    product = create_product(main, "拼团月卡", 10000)
    import_keys(product.skus[0], [f"S-{i}" for i in range(10)], CardKeyCipher.from_instance(host.instance))
    create_account(main.id, "boss", PASSWORD)
    return main, product


def _text(response) -> str:
    return response.get_data(as_text=True)


def _login(client):
    sign_in_console(client, "boss", PASSWORD)


def _buy(client, product, groupbuy: str, contact: str):
    page = client.get(f"/p/{product.id}?groupbuy={groupbuy}")
    assert f'value="{groupbuy}"' in _text(page)  # the form carries the group from the link
    response = client.post(f"/p/{product.id}", data={
        "csrf_token": csrf_token(page), "sku": product.skus[0].id, "quantity": 1, "contact": contact,
        "query_password": "pass1234", "groupbuy": groupbuy})
    assert response.status_code == 302, _text(response)
    return response.headers["Location"].rsplit("/", 1)[1]


def _demo_pay(client, order_no):
    page = client.get(f"/order/{order_no}")
    client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf_token(page)})


def _order(order_no):
    with all_sites():
        return orders.find_order(order_no)


def test_the_owner_creates_an_offer_and_buyers_fill_the_group_through_the_storefront(site, client_for):
    main, product = site
    console = client_for(MAIN)
    assert console.get("/admin/groupbuy/").status_code == 302  # signed out: to the login page
    _login(console)
    page = console.get("/admin/groupbuy/")
    assert "拼团" in _text(page) and 'href="/admin/groupbuy/"' in _text(page)  # in the console menu
    created = console.post("/admin/groupbuy/", data={
        "csrf_token": csrf_token(page), "sku": product.skus[0].id, "group_size": 2, "group_price": "60",
        "window_minutes": 60, "starts_at": "", "ends_at": ""})
    assert created.status_code == 302, _text(created)
    with all_sites():
        offer = GroupOffer.get()
    assert (offer.group_size, offer.group_price_fen, offer.window_minutes, offer.site_id) == (2, 6000, 60, main.id)
    refused = console.post("/admin/groupbuy/", data={"sku": product.skus[0].id, "group_size": 2,
                                                      "group_price": "60", "window_minutes": 60})
    assert refused.status_code in (200, 400)  # no CSRF token: nothing saved
    with all_sites():
        assert GroupOffer.select().count() == 1

    leader = client_for(MAIN)
    product_page = _text(leader.get(f"/p/{product.id}"))
    assert "拼团价 ¥60.00，2 人成团" in product_page and f"groupbuy=start:{offer.id}" in product_page
    first = _buy(leader, product, f"start:{offer.id}", "leader@example.com")
    assert _order(first).amount_fen == 6000 and _order(first).hold == "groupbuy"
    _demo_pay(leader, first)
    assert _order(first).status == "paid"
    assert "S-" not in _text(leader.get(f"/order/{first}"))  # no key before the group fills
    group_id = groups.group_of_order(_order(first).id).group_id

    share = client_for(MAIN).get(f"/groupbuy/{group_id}")
    assert share.status_code == 200
    assert "还差 1 人" in _text(share) and f"groupbuy=join:{group_id}" in _text(share)
    assert "还差 1 人" in _text(client_for(MAIN).get(f"/p/{product.id}"))  # listed on the product page

    joiner = client_for(MAIN)
    second = _buy(joiner, product, f"join:{group_id}", "joiner@example.com")
    _demo_pay(joiner, second)
    with all_sites():
        assert Group.get_by_id(group_id).status == "filled"
    assert _order(first).status == "delivered" and _order(second).status == "delivered"
    assert "S-" in _text(joiner.get(f"/order/{second}"))
    assert "已成团" in _text(client_for(MAIN).get(f"/groupbuy/{group_id}"))

    late = client_for(MAIN)
    page = late.get(f"/p/{product.id}?groupbuy=join:{group_id}")
    response = late.post(f"/p/{product.id}", data={
        "csrf_token": csrf_token(page), "sku": product.skus[0].id, "quantity": 1, "contact": "late@example.com",
        "query_password": "pass1234", "groupbuy": f"join:{group_id}"})
    assert response.status_code == 200 and "该团已结束" in _text(response)
    assert Sku.get_by_id(product.skus[0].id).stock == 8

    listing = _text(console.get("/admin/groupbuy/"))
    assert re.search(rf'id="group-{group_id}" data-status="filled"', listing)


def test_a_plain_purchase_is_untouched_and_the_share_page_of_another_site_is_a_404(site, client_for, host):
    main, product = site
    groups.create_offer(main.id, product.skus[0].id, group_size=2, group_price_fen=6000, window_minutes=60)
    buyer = client_for(MAIN)
    page = buyer.get(f"/p/{product.id}")
    response = buyer.post(f"/p/{product.id}", data={
        "csrf_token": csrf_token(page), "sku": product.skus[0].id, "quantity": 1, "contact": "plain@example.com",
        "query_password": "pass1234", "groupbuy": ""})
    order_no = response.headers["Location"].rsplit("/", 1)[1]
    assert _order(order_no).amount_fen == 10000 and _order(order_no).hold == ""
    assert client_for(MAIN).get("/groupbuy/12345").status_code == 404


def test_the_owner_turns_an_offer_off_and_back_on(site, client_for):
    main, product = site
    offer = groups.create_offer(main.id, product.skus[0].id, group_size=3, group_price_fen=7000, window_minutes=30)
    console = client_for(MAIN)
    _login(console)
    assert console.post(f"/admin/groupbuy/offers/{offer.id}/toggle").status_code == 400  # no CSRF token
    page = console.get("/admin/groupbuy/")
    assert f'id="offer-{offer.id}"' in _text(page)
    assert console.post(f"/admin/groupbuy/offers/{offer.id}/toggle",
                        data={"csrf_token": csrf_token(page)}).status_code == 302
    with all_sites():
        assert GroupOffer.get_by_id(offer.id).active is False
    assert "拼团价" not in _text(client_for(MAIN).get(f"/p/{product.id}"))
    console.post(f"/admin/groupbuy/offers/{offer.id}/toggle", data={"csrf_token": csrf_token(page)})
    assert "拼团价 ¥70.00，3 人成团" in _text(client_for(MAIN).get(f"/p/{product.id}"))


def test_a_sub_site_cannot_offer_a_group_price_below_its_cost(site, host):
    from kamengsite import levels

    main, product = site
    levels.seed_default_levels()
    shop = open_plugin_site(host, "shopx", ["groupbuy"], markup_bp=None)  # silver: cost 9000 of a 10000 product
    with pytest.raises(groups.OfferError, match="cannot be below this site's cost"):
        groups.create_offer(shop, product.skus[0].id, group_size=2, group_price_fen=8999, window_minutes=30)
    offer = groups.create_offer(shop, product.skus[0].id, group_size=2, group_price_fen=9500, window_minutes=30)
    assert offer.site_id == shop
    with pytest.raises(groups.OfferError, match="group size"):
        groups.create_offer(shop, product.skus[0].id, group_size=51, group_price_fen=9500, window_minutes=30)


def test_the_sweep_command(cli):
    assert cli("init").exit_code == 0
    result = cli("groupbuy-sweep")
    assert result.exit_code == 0, result.output
    assert "filled 0, failed 0, settled 0" in result.output


def test_the_console_product_section_and_share_page_speak_english_on_request(site, client_for):
    main, product = site
    offer = groups.create_offer(main.id, product.skus[0].id, group_size=3, group_price_fen=7000, window_minutes=90)
    console = client_for(MAIN)
    _login(console)
    chinese = _text(console.get("/admin/groupbuy/"))
    assert "<h1>拼团</h1>" in chinese and "Group buys" not in chinese
    english = _text(console.get("/admin/groupbuy/?lang=en"))
    assert "<h1>Group buys</h1>" in english and "New group-buy offer" in english and "Time to fill" in english
    assert "新建拼团活动" not in english and "成团时限" not in english
    assert "Group price ¥70.00, groups of 3" in _text(client_for(MAIN).get(f"/p/{product.id}?lang=en"))
    leader = client_for(MAIN)
    first = _buy(leader, product, f"start:{offer.id}", "leader@example.com")
    _demo_pay(leader, first)
    group_id = groups.group_of_order(_order(first).id).group_id
    chinese = _text(client_for(MAIN).get(f"/groupbuy/{group_id}"))
    assert "还差 2 人" in chinese and "拼团中" in chinese and "1 joined" not in chinese
    share = _text(client_for(MAIN).get(f"/groupbuy/{group_id}?lang=en"))
    assert "1 joined (1 paid), 2 more needed" in share and "Group open" in share and "Join now" in share
    assert "还差" not in share and "拼团中" not in share and "立即参团" not in share
