"""店铺设置 (kamengsite/admin_settings.py): name, tagline, logo, language and time zone of a site."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kamengsite.accounts import create_account
from kamengsite.testing import csrf_token, form_errors, open_plugin_site, sign_in_console, site_id

PASSWORD = "correct horse battery staple"


def png_bytes(color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 20), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def owner(host, client_for):
    open_plugin_site(host, "shopa", ())
    create_account(site_id("shopa"), "owner", PASSWORD)
    return sign_in_console(client_for("shopa.localhost"), "owner", PASSWORD)


def save(client, **fields):
    page = client.get("/admin/settings/")
    data = {"csrf_token": csrf_token(page), "name": "新店名", "tagline": "", "locale": "zh_CN",
            "timezone": "Asia/Shanghai", **fields}
    return client.post("/admin/settings/", data=data, content_type="multipart/form-data")


def test_the_owner_renames_the_shop_and_sets_a_logo(host, owner, client_for):
    response = save(owner, name="星辰游戏小铺", tagline="秒发货", logo=(io.BytesIO(png_bytes()), "logo.png"))
    assert response.status_code == 302, form_errors(owner.get("/admin/settings/"))
    config = host.registry.load("shopa")
    assert config.name == "星辰游戏小铺" and config.tagline == "秒发货"
    assert config.logo.startswith("/assets/") and config.logo.endswith(".png")
    storefront = client_for("shopa.localhost")
    assert "星辰游戏小铺" in storefront.get("/").get_data(as_text=True)
    image = storefront.get(config.logo)
    assert image.status_code == 200 and image.mimetype == "image/png"
    # other sites are untouched
    assert host.registry.load("main").name != "星辰游戏小铺"

    assert save(owner, name="星辰游戏小铺", remove_logo="y").status_code == 302
    assert host.registry.load("shopa").logo == ""


def test_language_and_time_zone(host, owner):
    assert save(owner, locale="en", timezone="Europe/Berlin").status_code == 302
    config = host.registry.load("shopa")
    assert config.locale == "en" and config.timezone == "Europe/Berlin"
    page = owner.get("/admin/settings/").get_data(as_text=True)
    assert "Shop settings" in page  # the console follows the shop's language now


def test_bad_input_is_named_and_nothing_is_lost(host, owner):
    response = save(owner, name="留着的店名", timezone="Mars/Olympus")
    assert response.status_code == 400
    assert "留着的店名" in response.get_data(as_text=True)
    assert any("时区" in e for e in form_errors(response))
    response = save(owner, name="留着的店名", logo=(io.BytesIO(b"<svg onload=alert(1)>"), "logo.png"))
    assert response.status_code == 400 and form_errors(response)
    assert host.registry.load("shopa").name != "留着的店名"


def test_staff_without_design_cannot_change_settings(host, owner, client_for):
    from kamengsite.accounts import Account
    from kamengsite.tenancy import site_scope

    create_account(site_id("shopa"), "clerk", PASSWORD, role="staff")
    with site_scope(site_id("shopa")):
        Account.update(permissions="orders").where(Account.username == "clerk").execute()
    clerk = sign_in_console(client_for("shopa.localhost"), "clerk", PASSWORD)
    assert clerk.get("/admin/settings/").status_code == 403


def test_the_logo_cannot_be_deleted_while_in_use(host, owner):
    from kamengsite import assets

    save(owner, name="有 Logo 的店", logo=(io.BytesIO(png_bytes((1, 2, 3))), "logo.png"))
    name = host.registry.load("shopa").logo.rsplit("/", 1)[1]
    assert "site.toml" in assets.images_in_use(host.registry.folder("shopa"))[name]
