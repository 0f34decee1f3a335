"""The storefront in a real browser (Chromium via Playwright): a purchase end to end, and phone widths.

These are the harness the theme editor's browser tests build on: a live server for the
``host`` fixture, and ``page`` / ``phone_page`` from tests/browser/conftest.py.
"""

from __future__ import annotations

import re

import pytest

from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site

#: One sub-site per shipped theme, from the site templates under sites/ (their site.toml names the theme).
THEME_SITES = {"light": "shop", "dark": "gaming", "business": "wholesale"}


@pytest.fixture
def catalogue(host):
    """Two products on the main catalogue, one with two SKUs and three card keys on the first."""
    main = Site.get(Site.slug == host.instance.main_site)
    cipher = CardKeyCipher.from_instance(host.instance)
    card = create_product(main, "浏览器测试月卡", 1500, max_qty=5,
                          skus=[("月卡", 1500), ("季卡", 4000)])
    import_keys(card.skus[1], [f"BROWSER-{i:04d}" for i in range(3)], cipher)
    other = create_product(main, "另一张点卡", 800)
    import_keys(other.skus[0], ["OTHER-0001"], cipher)
    return card


def test_buy_pay_and_see_the_key_in_a_real_browser(live_server, page, catalogue):
    page.goto(live_server.url("main"))
    page.get_by_role("link", name="浏览器测试月卡").click()
    page.wait_for_url(re.compile(rf"/p/{catalogue.id}$"))
    assert page.locator("h1").inner_text() == "浏览器测试月卡"

    page.get_by_role("radio", name=re.compile("季卡")).check()
    page.get_by_label("联系方式").fill("buyer@example.com")
    page.get_by_label("查询密码").fill("pass1234")
    page.get_by_role("button", name="立即购买").click()

    page.wait_for_url(re.compile(r"/order/[^/]+$"))
    status = page.locator(".status")
    assert "待支付" in status.inner_text()
    assert "40.00" in page.locator("article").inner_text()  # the 季卡 SKU's price, not the 月卡's

    page.get_by_role("button", name=re.compile("模拟支付")).click()
    page.wait_for_load_state()
    assert "已发货" in status.inner_text()
    key = page.locator("details.keys code").first
    assert not key.is_visible()  # masked until the buyer asks for it
    page.locator("details.keys summary").click()
    assert key.is_visible()
    assert re.fullmatch(r"BROWSER-\d{4}", key.inner_text())
    assert page.js_errors == []


@pytest.mark.parametrize("theme", sorted(THEME_SITES))
def test_home_page_fits_a_phone_screen(theme, host, live_server, phone_page, catalogue):
    slug = THEME_SITES[theme]
    site = host.registry.create(f"{slug}1", template=slug)
    assert site.theme == theme
    response = phone_page.goto(live_server.url(f"{slug}1"))
    assert response.status == 200
    assert "浏览器测试月卡" in phone_page.content()
    # Compare with the screen, not innerWidth: a mobile Chromium zooms out to fit a page wider than the
    # screen (innerWidth grows with it), and lays out a page without <meta name=viewport> 980px wide.
    screen = phone_page.viewport_size["width"]
    assert screen == 375
    width = phone_page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= screen, f"theme {theme}: home page is {width}px wide on a {screen}px phone"
