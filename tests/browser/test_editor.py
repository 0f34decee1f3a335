"""The page editor in a real browser: drag a section with the mouse, edit a setting, publish, undo, restore.

A sub-site owner signs in to their own console on ``shop1.localhost`` (the dark theme's default
home: announcement, hero, categories, products, …), works in ``/admin/theme/`` and checks the
storefront after each step. The editor page must run without a CSP violation or a script error.
"""

from __future__ import annotations

import re

import pytest

from kamengsite.accounts import create_account
from kamengsite.catalog import create_product
from kamengsite.models import Site
from kamengsite.testing import site_id

from .conftest import csp_violations

PASSWORD = "correct horse battery staple"
NEW_TEXT = "浏览器里写的公告"


@pytest.fixture
def shop(host, live_server):
    host.registry.create("shop1", template="gaming")
    create_product(Site.get(Site.slug == host.instance.main_site), "浏览器测试月卡", 1500)
    create_account(site_id("shop1"), "owner", PASSWORD)
    return live_server


def sign_in(page, server):
    page.goto(server.url("shop1", "/admin/login"))
    page.get_by_label("用户名").fill("owner")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(re.compile(r"/admin/$"))


def open_editor(page, server):
    page.goto(server.url("shop1", "/admin/theme/?page=home"))
    page.locator("#section-list li").first.wait_for()
    page.frame_locator("#preview").locator("[data-section-id]").first.wait_for()


def section_order(page) -> list[str]:
    return page.locator("#section-list > li").evaluate_all("items => items.map(li => li.dataset.id)")


def storefront_order(page, server) -> list[str]:
    page.goto(server.url("shop1"))
    return page.locator("[data-section-id]").evaluate_all("nodes => nodes.map(n => n.dataset.sectionId)")


def wait_saved(page):
    page.locator("#status", has_text="草稿已保存").wait_for()


def drag(page, source, target):
    """A real mouse drag: press on ``source``, move in small steps onto the top edge of ``target``, release."""
    start, end = source.bounding_box(), target.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    steps = 12
    for i in range(1, steps + 1):
        page.mouse.move(start["x"] + start["width"] / 2,
                        start["y"] + (end["y"] + 4 - start["y"]) * i / steps)
        page.wait_for_timeout(30)
    page.mouse.up()


def test_drag_edit_publish_undo_and_restore(shop, page, console_errors):
    sign_in(page, shop)
    open_editor(page, shop)
    before = section_order(page)
    assert before.index("hero") < before.index("products")

    # Drag "热门商品" (products) above the banner (hero) by its handle, with the mouse.
    drag(page, page.locator("li[data-id=products] .handle"), page.locator("li[data-id=hero]"))
    wait_saved(page)
    order = section_order(page)
    assert order.index("products") < order.index("hero"), order

    # Edit the announcement's text in its settings form: the preview re-renders that section.
    page.locator("li[data-id=announcement] .toggle").click()
    page.get_by_label("公告文字").fill(NEW_TEXT)
    wait_saved(page)
    preview = page.frame_locator("#preview")
    preview.locator("[data-section-id=announcement]").filter(has_text=NEW_TEXT).wait_for()

    # Phone-sized preview.
    page.get_by_role("button", name="手机").click()
    assert page.locator("#preview").bounding_box()["width"] == pytest.approx(390, abs=1)
    assert page.get_by_role("button", name="手机").get_attribute("aria-pressed") == "true"
    page.get_by_role("button", name="电脑").click()
    assert page.locator("#preview").bounding_box()["width"] > 390

    # Nothing is public before publishing.
    editor_violations = csp_violations(page)
    public = storefront_order(page, shop)
    assert public.index("hero") < public.index("products")
    assert NEW_TEXT not in page.content()

    open_editor(page, shop)
    page.get_by_role("button", name="发布").click()
    page.locator(".flash-ok", has_text="已发布").wait_for()
    editor_violations += csp_violations(page)
    public = storefront_order(page, shop)
    assert public.index("products") < public.index("hero"), public
    assert NEW_TEXT in page.locator("[data-section-id=announcement]").inner_text()

    # A wrong step, undone with Ctrl+Z (focus outside any text field).
    open_editor(page, shop)
    page.locator("li[data-id=announcement] .toggle").click()
    page.get_by_label("公告文字").fill("写错了的公告")
    wait_saved(page)
    page.locator("#sections-heading").click()
    page.keyboard.press("Control+z")
    page.locator(".flash-ok", has_text="已撤销").wait_for()
    page.locator("li[data-id=announcement] .toggle").click()
    assert page.get_by_label("公告文字").input_value() == NEW_TEXT
    editor_violations += csp_violations(page)

    # Restore the version shown before the first publish (the theme's default): published again.
    versions = page.locator("ol.versions > li")
    assert versions.count() == 2
    versions.last.get_by_role("button", name=re.compile("^恢复")).click()
    page.locator(".flash-ok", has_text="已恢复").wait_for()
    assert page.locator("ol.versions > li").count() == 3  # the restore is a version too: it can be undone
    editor_violations += csp_violations(page)
    public = storefront_order(page, shop)
    assert public.index("hero") < public.index("products"), public
    assert NEW_TEXT not in page.content()

    assert editor_violations == []
    assert console_errors == []
    assert page.js_errors == []


def test_keyboard_reordering_and_adding_a_section(shop, page, console_errors):
    sign_in(page, shop)
    open_editor(page, shop)
    # Move "products" up with its button, keyboard only.
    up = page.get_by_role("button", name=re.compile(r"^上移 商品列表"))
    up.focus()
    page.keyboard.press("Enter")
    wait_saved(page)
    order = section_order(page)
    assert order.index("products") == order.index("categories") - 1
    # Add an announcement bar from its preset: it appears last and in the preview.
    page.get_by_label("添加区块").select_option(label="公告栏")
    page.get_by_role("button", name="添加区块").click()
    wait_saved(page)
    added = section_order(page)[-1]
    assert added.startswith("announcement_")
    page.frame_locator("#preview").locator(f"[data-section-id={added}]").wait_for()
    assert csp_violations(page) == []
    assert console_errors == []
    assert page.js_errors == []


def test_upload_an_image_for_a_banner_and_publish_it(shop, page, console_errors, tmp_path):
    from PIL import Image

    picture = tmp_path / "banner.png"
    Image.new("RGB", (320, 120), (20, 120, 220)).save(picture)
    sign_in(page, shop)
    open_editor(page, shop)

    # Add an image banner, upload a picture through its file input: the URL lands in the field.
    page.get_by_label("添加区块").select_option(label="图片横幅")
    page.get_by_role("button", name="添加区块").click()
    wait_saved(page)
    banner = page.locator("#section-list > li").last
    banner_id = banner.get_attribute("data-id")
    assert banner_id.startswith("image_banner_")
    banner.get_by_label("上传图片").set_input_files(str(picture))
    banner.locator(".upload-status", has_text="已上传").wait_for()
    url = banner.get_by_label("图片地址").input_value()
    assert re.fullmatch(r"/assets/[0-9a-f]{16}\.png", url), url
    preview = page.frame_locator("#preview")
    preview.locator(f"[data-section-id={banner_id}] img[src='{url}']").wait_for()

    # The hero's background picks the same image from the uploaded ones.
    hero = page.locator("li[data-id=hero]")
    hero.locator(".toggle").click()
    hero = page.locator("li[data-id=hero]")
    hero.get_by_role("button", name="选择已上传的图片").click()
    hero.get_by_role("button", name=re.compile("^使用图片 1")).click()
    assert hero.get_by_label("背景图片地址").input_value() == url
    wait_saved(page)

    page.get_by_role("button", name="发布").click()
    page.locator(".flash-ok", has_text="已发布").wait_for()
    editor_violations = csp_violations(page)

    # A visitor's page shows it: the image's request answers 200 and it has a width.
    answers = []
    page.on("response", lambda r: answers.append((r.url, r.status)) if "/assets/" in r.url else None)
    page.goto(shop.url("shop1"))
    image = page.locator(f"[data-section-id={banner_id}] img")
    assert image.get_attribute("src") == url
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => img.naturalWidth") == 320
    assert (shop.url("shop1", url), 200) in answers
    assert url in (page.locator("[data-section-id=hero] .hero").get_attribute("style") or "")
    assert editor_violations + csp_violations(page) == []
    assert console_errors == []
    assert page.js_errors == []
