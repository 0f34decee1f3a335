"""A new sub-site owner's first session, in a real browser: sign in, rename the shop and give it a
logo, set a markup on everything, switch the theme and publish, then see it all on the storefront.
No page along the way may log a script error or a Content-Security-Policy violation."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from kamengsite.accounts import create_account
from kamengsite.catalog import create_product
from kamengsite.levels import seed_default_levels
from kamengsite.models import Site
from kamengsite.pricing import quote_sku
from kamengsite.testing import site_id

from .conftest import csp_violations

PASSWORD = "correct horse battery staple"
NEW_NAME = "新手的游戏小铺"


@pytest.fixture
def shop(host, live_server):
    seed_default_levels()
    host.registry.create("shop1", template="gaming")
    host.registry.update("shop1", level="silver")
    product = create_product(Site.get(Site.slug == host.instance.main_site), "浏览器测试月卡", 1500)
    create_account(site_id("shop1"), "owner", PASSWORD)
    live_server.product = product
    return live_server


def logo_file(tmp_path):
    path = tmp_path / "logo.png"
    buffer = io.BytesIO()
    Image.new("RGB", (120, 40), (20, 120, 200)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_a_new_owner_brands_prices_and_publishes_the_shop(shop, page, console_errors, tmp_path, host):
    violations = []

    # Sign in.
    page.goto(shop.url("shop1", "/admin/login"))
    page.get_by_label("用户名").fill("owner")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(re.compile(r"/admin/"))
    violations += csp_violations(page)

    # Name and logo.
    page.goto(shop.url("shop1", "/admin/settings/"))
    page.get_by_label("店铺名称").fill(NEW_NAME)
    page.locator("input[type=file][name=logo]").set_input_files(str(logo_file(tmp_path)))
    page.get_by_role("button", name="保存").click()
    page.locator(".flash-ok", has_text="已保存").wait_for()
    assert page.locator("#current-logo").is_visible()
    violations += csp_violations(page)

    # A markup of 25 % on everything.
    page.goto(shop.url("shop1", "/admin/prices"))
    page.locator("#all-percent").fill("25")
    page.locator("#form-all button[type=submit]").click()
    page.locator(".flash-ok").first.wait_for()
    violations += csp_violations(page)

    # Switch from the dark theme to the light one, then publish the home page.
    page.goto(shop.url("shop1", "/admin/theme/themes"))
    page.locator(".theme-card", has=page.locator("code", has_text=re.compile(r"^light$"))).get_by_role(
        "button", name="使用这个主题").click()
    page.locator(".flash-ok").first.wait_for()
    assert host.registry.load("shop1").theme == "light"
    violations += csp_violations(page)
    page.goto(shop.url("shop1", "/admin/theme/?page=home"))
    page.locator("#section-list li").first.wait_for()
    page.get_by_role("button", name="发布").click()
    page.locator(".flash-ok", has_text="已发布").wait_for()
    violations += csp_violations(page)

    # The storefront shows all of it.
    page.goto(shop.url("shop1"))
    assert NEW_NAME in page.title()
    logo = page.locator("header img.logo")
    assert logo.count() == 1 and logo.evaluate("img => img.complete && img.naturalWidth > 0")
    quote = quote_sku(site_id("shop1"), shop.product.skus[0].id)
    shown = page.locator("body").inner_text()
    assert f"{quote.unit_price_fen // 100}.{quote.unit_price_fen % 100:02d}" in shown
    assert quote.unit_price_fen > quote.costs[0][1]  # the markup is on top of the cost
    violations += csp_violations(page)

    assert violations == []
    assert console_errors == []
    assert page.js_errors == []
