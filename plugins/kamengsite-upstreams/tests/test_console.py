"""The 上游对接 console page: adding an upstream (secrets sealed, never shown), mapping a product,
who may use it, and that it exists on the main site only."""

from __future__ import annotations

import json

import pytest
from upstream_fakes import KamengsiteShop

from kamengsite.accounts import Account, create_account
from kamengsite.catalog import Product, Sku
from kamengsite.models import Site
from kamengsite.tenancy import site_scope
from kamengsite.testing import csrf_token, open_plugin_site, sign_in_console, site_id
from kamengsite_upstreams import connector_for
from kamengsite_upstreams.models import Upstream, UpstreamLink

MAIN = "main.localhost"
PASSWORD = "correct horse battery staple"


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def shop():
    fake = KamengsiteShop()
    yield fake
    fake.close()


@pytest.fixture
def console(host, client_for, monkeypatch):
    monkeypatch.setenv("KAMENGSITE_API_ALLOW_LOOPBACK", "1")
    host.registry.update(host.instance.main_site, plugins=["upstreams"])
    create_account(site_id("main"), "boss", PASSWORD)
    return sign_in_console(client_for(MAIN), "boss", PASSWORD)


def add_upstream(console, shop, name="Upstream A"):
    page = console.get("/admin/upstreams/")
    return console.post("/admin/upstreams/", data={
        "csrf_token": csrf_token(page), "name": name, "protocol": "kamengsite",
        "setting_kamengsite_base_url": shop.url, "setting_kamengsite_app_key": shop.APP_KEY,
        "setting_kamengsite_secret": shop.SECRET})


def test_the_operator_adds_an_upstream_whose_secret_is_sealed_and_never_shown(host, console, shop):
    page = console.get("/admin/upstreams/")
    assert page.status_code == 200
    nav = text(page).split("<nav", 1)[1].split("</nav>", 1)[0]
    assert 'href="/admin/upstreams/"' in nav and "上游对接" in nav  # in the console menu, in Chinese by default
    assert "添加上游" in text(page) and "异次元 acg-faka" in text(page)
    assert "Add an upstream" in text(console.get("/admin/upstreams/?lang=en"))
    assert add_upstream(console, shop).status_code == 302
    upstream = Upstream.get()
    stored = json.loads(upstream.settings)
    assert stored["app_key"] == shop.APP_KEY and stored["base_url"] == shop.url
    assert shop.SECRET not in upstream.settings and stored["secret"]
    listing = text(console.get("/admin/upstreams/"))
    assert shop.SECRET not in listing and stored["secret"] not in listing and "Upstream A" in listing
    assert connector_for(upstream, host.instance).settings["secret"] == shop.SECRET  # opened only to connect
    tested = console.post(f"/admin/upstreams/{upstream.id}/test", data={"csrf_token": csrf_token(console.get(
        "/admin/upstreams/"))})
    assert tested.status_code == 302 and "Upstream shop" in text(console.get("/admin/upstreams/"))


def test_an_upstream_without_its_secret_or_csrf_token_is_not_added(console, shop):
    page = console.get("/admin/upstreams/")
    missing = console.post("/admin/upstreams/", data={
        "csrf_token": csrf_token(page), "name": "No secret", "protocol": "kamengsite",
        "setting_kamengsite_base_url": shop.url, "setting_kamengsite_app_key": shop.APP_KEY})
    assert missing.status_code == 200
    no_token = console.post("/admin/upstreams/", data={
        "name": "No token", "protocol": "kamengsite", "setting_kamengsite_base_url": shop.url,
        "setting_kamengsite_app_key": shop.APP_KEY, "setting_kamengsite_secret": shop.SECRET})
    assert no_token.status_code in (200, 400)
    assert Upstream.select().count() == 0


def test_mapping_an_upstream_item_creates_a_supplied_product_and_its_link(host, console, shop):
    add_upstream(console, shop)
    upstream = Upstream.get()
    browse = console.get(f"/admin/upstreams/{upstream.id}/products")
    assert browse.status_code == 200 and 'data-ref="11"' in text(browse) and "Game card" in text(browse)
    mapped = console.post(f"/admin/upstreams/{upstream.id}/products", data={
        "csrf_token": csrf_token(browse), "ref": "11", "rule": "percent", "value": "15", "fallback": 0,
        "fallback_ref": ""})
    assert mapped.status_code == 302, text(mapped)
    link = UpstreamLink.get()
    product = Product.get_by_id(link.product_id)
    sku = Sku.get_by_id(link.sku_id)
    assert (product.supplier, product.kind, product.name) == ("upstreams", "card", "Game card · 10 yuan")
    assert product.site_id == Site.get(Site.slug == "main").id
    assert (link.ref, link.rule, link.rule_value, link.cost_fen) == ("11", "percent", 1500, 950)
    assert (sku.price_fen, sku.stock) == (1093, 5)  # 950 × 1.15 = 1092.5 → 1093
    listing = text(console.get("/admin/upstreams/"))
    assert f'id="link-{link.id}"' in listing
    unknown = console.post(f"/admin/upstreams/{upstream.id}/products", data={
        "csrf_token": csrf_token(browse), "ref": "404", "rule": "margin", "value": "1", "fallback": 0})
    assert unknown.status_code == 200 and UpstreamLink.select().count() == 1


def test_sync_now_from_the_page_follows_the_upstream(console, shop):
    add_upstream(console, shop)
    upstream = Upstream.get()
    browse = console.get(f"/admin/upstreams/{upstream.id}/products")
    console.post(f"/admin/upstreams/{upstream.id}/products", data={
        "csrf_token": csrf_token(browse), "ref": "21", "rule": "margin", "value": "1.50", "fallback": 0})
    shop.products[1]["skus"][0].update(price_fen=600, stock=42)
    page = console.get("/admin/upstreams/")
    console.post("/admin/upstreams/sync", data={"csrf_token": csrf_token(page)})
    sku = Sku.get_by_id(UpstreamLink.get().sku_id)
    assert (sku.price_fen, sku.stock) == (750, 42)
    shop.fail_with = (503, "unavailable")
    console.post("/admin/upstreams/sync", data={"csrf_token": csrf_token(page)})
    listing = text(console.get("/admin/upstreams/"))
    assert f'id="upstream-{upstream.id}" data-status="active" data-failures="1"' in listing
    assert "HTTP 503" in listing


@pytest.mark.parametrize("areas, status", [("orders", 403), ("orders,catalogue", 200)])
def test_staff_need_the_catalogue_area(host, client_for, areas, status):
    host.registry.update(host.instance.main_site, plugins=["upstreams"])
    main = site_id("main")
    create_account(main, "clerk", PASSWORD, role="staff")
    with site_scope(main):
        Account.update(permissions=areas).where(Account.username == "clerk").execute()
    clerk = sign_in_console(client_for(MAIN), "clerk", PASSWORD)
    assert clerk.get("/admin/upstreams/").status_code == status
    token = csrf_token(clerk.get("/admin/orders"))
    assert (clerk.post("/admin/upstreams/sync", data={"csrf_token": token}).status_code == 403) is (status == 403)


def test_a_sub_site_console_has_no_upstreams_page(host, client_for):
    host.registry.update(host.instance.main_site, plugins=["upstreams"])
    shop1 = open_plugin_site(host, "shop1", ["upstreams"])
    create_account(shop1, "owner", PASSWORD)
    anonymous = client_for("shop1.localhost")
    assert anonymous.get("/admin/upstreams/").status_code == 404
    owner = sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)
    assert owner.get("/admin/upstreams/").status_code == 404
    assert "/admin/upstreams/" not in text(owner.get("/admin/orders"))


def test_editing_settings_keeps_a_secret_left_empty_and_reseals_a_new_one(host, console, shop):
    add_upstream(console, shop)
    upstream = Upstream.get()
    sealed = json.loads(upstream.settings)["secret"]
    page = console.get("/admin/upstreams/")
    assert f'value="{shop.APP_KEY}"' in text(page)  # the non-secret settings are shown back
    saved = console.post(f"/admin/upstreams/{upstream.id}/settings", data={
        "csrf_token": csrf_token(page), "setting_kamengsite_base_url": shop.url,
        "setting_kamengsite_app_key": "ak_other", "setting_kamengsite_secret": ""})
    assert saved.status_code == 302
    stored = json.loads(Upstream.get_by_id(upstream.id).settings)
    assert stored["app_key"] == "ak_other" and stored["secret"] == sealed
    console.post(f"/admin/upstreams/{upstream.id}/settings", data={
        "csrf_token": csrf_token(page), "setting_kamengsite_base_url": shop.url,
        "setting_kamengsite_app_key": shop.APP_KEY, "setting_kamengsite_secret": "brand-new-secret"})
    fresh = Upstream.get_by_id(upstream.id)
    assert "brand-new-secret" not in fresh.settings and json.loads(fresh.settings)["secret"] != sealed
    assert connector_for(fresh, host.instance).settings["secret"] == "brand-new-secret"
    assert "brand-new-secret" not in text(console.get("/admin/upstreams/"))
    refused = console.post(f"/admin/upstreams/{upstream.id}/settings", data={
        "setting_kamengsite_base_url": "http://evil.example", "setting_kamengsite_app_key": "x"})
    assert refused.status_code == 400  # no CSRF token
    assert json.loads(Upstream.get_by_id(upstream.id).settings)["base_url"] == shop.url


@pytest.mark.parametrize("rule, typed, stored", [("percent", "15", 1500), ("percent", "12.5%", 1250),
                                                 ("percent", "0", 0), ("margin", "2.50", 250), ("margin", "3", 300)])
def test_the_markup_is_stored_as_fen_or_basis_points(rule, typed, stored):
    from kamengsite_upstreams import parse_rule_value

    assert parse_rule_value(rule, typed) == stored


@pytest.mark.parametrize("rule, typed", [("percent", "abc"), ("percent", "NaN"), ("percent", "sNaN"),
                                         ("percent", "-1"), ("percent", "0.001"), ("margin", "-1"),
                                         ("margin", "1.234")])
def test_a_markup_that_is_not_one_is_refused(rule, typed):
    from kamengsite_upstreams import parse_rule_value

    with pytest.raises(ValueError):
        parse_rule_value(rule, typed)
