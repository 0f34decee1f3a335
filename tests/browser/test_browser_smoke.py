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


#: The narrowest phone the themes support (the issue: responsive from 360px to desktop).
NARROW_PHONE = {"width": 360, "height": 740}


def assert_fits(page, theme, what):
    # Compare with the screen, not innerWidth: a mobile Chromium zooms out to fit a page wider than the
    # screen (innerWidth grows with it), and lays out a page without <meta name=viewport> 980px wide.
    screen = page.viewport_size["width"]
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= screen, f"theme {theme}: {what} is {width}px wide on a {screen}px phone"


@pytest.mark.parametrize("theme", sorted(THEME_SITES))
def test_home_page_fits_a_phone_screen(theme, host, live_server, phone_page, catalogue):
    slug = THEME_SITES[theme]
    site = host.registry.create(f"{slug}1", template=slug)
    assert site.theme == theme
    response = phone_page.goto(live_server.url(f"{slug}1"))
    assert response.status == 200
    assert "浏览器测试月卡" in phone_page.content()
    assert phone_page.viewport_size["width"] == 375
    assert_fits(phone_page, theme, "home page")


@pytest.mark.parametrize("theme", sorted(THEME_SITES))
def test_every_page_fits_a_narrow_phone(theme, host, live_server, browser, catalogue):
    """Each page of each theme, walked as a buyer does on a 360px phone: nothing wider than the screen."""
    from kamengsite import layouts
    from kamengsite.catalog import Category

    slug = f"{THEME_SITES[theme]}2"
    site = host.registry.create(slug, template=THEME_SITES[theme])
    assert site.theme == theme
    games = Category.create(site=Site.get(Site.slug == "main"), name="手机测试分类")
    catalogue.category = games
    catalogue.save()
    layouts.create_custom_page(host.registry.folder(slug), "help", "购物帮助与售后说明", theme=host.themes.get(theme))
    context = browser.new_context(locale="zh-CN", viewport=NARROW_PHONE, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        def visit(path, what, text):
            response = page.goto(live_server.url(slug, path))
            assert response.status == 200, (theme, path, response.status)
            assert text in page.content(), (theme, path, text)
            assert_fits(page, theme, what)

        visit("/", "home page", "浏览器测试月卡")
        visit(f"/c/{games.id}", "category page", "手机测试分类")
        visit(f"/p/{catalogue.id}", "product page", "立即购买")
        page.get_by_role("radio", name=re.compile("季卡")).check()
        page.get_by_label("联系方式").fill("phone@example.com")
        page.get_by_label("查询密码").fill("pass1234")
        page.get_by_role("button", name="立即购买").click()
        page.wait_for_url(re.compile(r"/order/[^/]+$"))
        assert "待支付" in page.content()
        assert_fits(page, theme, "checkout page")
        page.get_by_role("button", name=re.compile("模拟支付")).click()
        page.wait_for_load_state()
        assert "已发货" in page.content()
        page.locator("details.keys summary").click()  # the revealed keys must fit too
        assert_fits(page, theme, "order page with its keys")
        visit("/lookup", "lookup page", "查询密码")
        visit("/member/login", "login page", "会员登录")
        visit("/member/register", "register page", "注册会员")
        page.get_by_label("邮箱").fill("phone-member@example.com")
        page.get_by_label("密码（至少").fill("member-pass-1")
        page.get_by_label("再次输入密码").fill("member-pass-1")
        page.get_by_role("button", name="注册").click()
        page.wait_for_url(re.compile(r"/member/$"))
        assert_fits(page, theme, "account page")
        visit("/pages/help", "custom page", "购物帮助与售后说明")
    finally:
        context.close()
