"""The recommendations plugin: recently viewed and bought-together, from one site's own views and orders.

``shopx`` and ``shopy`` are silver sub-sites selling main's goods at +20 % over their cost: a
1000-fen card costs them 900 and shows as ¥10.80 there (never main's ¥10.00).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from markupsafe import Markup

from kamengsite import levels as site_levels
from kamengsite import members, orders, pricing
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import open_plugin_site, sign_in_member, site_id
from kamengsite_recommend import (SESSION_VISITOR, render_bought_together, render_recently_viewed, settings,
                                  theme_sections)
from kamengsite_recommend import data
from kamengsite_recommend.data import ProductView

PASSWORD = "secret-pass-1"


@pytest.fixture
def host(db_host):
    """Every test here runs on each database of the matrix (``client_for`` follows this host too)."""
    return db_host


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def _shop(host, slug="shopx", plugins=("recommendations",), settings=None) -> int:
    return open_plugin_site(host, slug, plugins, settings=settings)


@pytest.fixture
def goods(host):
    """Five main-site cards, 1000 fen each (¥10.80 on the sub-sites)."""
    site_levels.seed_default_levels()
    main = Site.get(Site.slug == "main")
    cipher = CardKeyCipher.from_instance(host.instance)
    made = []
    for i, name in enumerate(["甲卡", "乙卡", "丙卡", "丁卡", "<script>alert(1)</script>卡"]):
        card = create_product(main, name, 1000)
        import_keys(card.skus[0], [f"R{i}-{k}" for k in range(20)], cipher)
        made.append(card)
    return made


@contextmanager
def _page(host, slug, visitor_token=None, member_id=None):
    """A request of ``slug``'s app, as a guest with ``visitor_token`` in the session (or a member)."""
    app = host.app_for(slug)
    with app.test_request_context("/", headers={"Host": f"{slug}.localhost"}), site_scope(site_id(slug)):
        from flask import g, session

        if visitor_token is not None:
            session[SESSION_VISITOR] = visitor_token
        if member_id is not None:
            from kamengsite.members import get_member

            g.kamengsite_member = get_member(site_id(slug), member_id)  # see member_routes' request cache
        yield


def _names(html) -> list[str]:
    return re.findall(r'<h3><a href="/p/\d+">(.*?)</a></h3>', str(html))


def _paid(site_id, product, member_id=None, contact="buyer@example.com"):
    sku = product.skus[0].id
    quote = pricing.quote_sku(site_id, sku)
    order = orders.create_order(site_id=site_id, sku_id=sku, quantity=1, contact=contact,
                                unit_price_fen=quote.unit_price_fen, costs=quote.costs, member_id=member_id)
    orders.mark_paid(order.order_no, channel="demo", trade_no=f"T-{order.order_no}", amount_fen=order.amount_fen)
    return order


# -- recording views ----------------------------------------------------------------------


def test_views_are_kept_newest_first_deduplicated_and_capped(host, goods):
    shop = _shop(host)
    a, b, c = (g.id for g in goods[:3])
    for product_id in (a, b, c, a):
        data.record_view(shop, "gT1", product_id)
    assert data.recent_views(shop, "gT1") == [a, c, b]  # a viewed again: first, once
    for product_id in range(1, 30):  # ids of products that may not exist are not the point here
        if product_id in {g.id for g in goods}:
            data.record_view(shop, "gT1", product_id, keep=3)
    with all_sites():
        assert ProductView.select().where(ProductView.visitor == "gT1").count() == 3


def test_viewing_product_pages_records_them_for_that_visitor_only(host, client_for, goods):
    shop = _shop(host)
    alice, bob = client_for("shopx.localhost"), client_for("shopx.localhost")
    for card in (goods[0], goods[1], goods[0]):
        assert alice.get(f"/p/{card.id}").status_code == 200
    bob.get(f"/p/{goods[2].id}")
    assert alice.get("/p/999999").status_code == 404  # not recorded
    with all_sites():
        rows = list(ProductView.select().where(ProductView.site == shop).order_by(ProductView.id))
    visitors = {r.visitor for r in rows}
    assert len(visitors) == 2 and all(v.startswith("g") for v in visitors)
    mine = next(r.visitor for r in rows if r.product_id == goods[1].id)
    assert data.recent_views(shop, mine) == [goods[0].id, goods[1].id]

    home = alice.get("/").get_data(as_text=True)
    if "plugin-section" not in home:
        pytest.skip("the storefront does not render theme sections yet")
    section = home.split('data-section="recently_viewed"', 1)[1]
    assert _names(section)[:2] == ["甲卡", "乙卡"] and "丙卡" not in section  # bob's view is not alice's
    assert "¥10.80" in section
    page = alice.get(f"/p/{goods[1].id}").get_data(as_text=True)  # the page's own product is left out
    assert _names(page.split('data-section="recently_viewed"', 1)[1]) == ["甲卡"]


def test_a_members_views_follow_the_member(host, client_for, goods):
    shop = _shop(host)
    member = members.register(shop, "a@example.com", PASSWORD)
    client = client_for("shopx.localhost")
    sign_in_member(client, "a@example.com", PASSWORD)
    client.get(f"/p/{goods[3].id}")
    assert data.recent_views(shop, f"m{member.id}") == [goods[3].id]
    with _page(host, "shopx", member_id=member.id):
        assert _names(render_recently_viewed({"page": "home", "product": None})) == ["丁卡"]


def test_the_recently_viewed_section_lists_this_visitors_products_newest_first(host, goods):
    shop = _shop(host)
    for card in goods[:4]:
        data.record_view(shop, "gMINE", card.id)
    data.record_view(shop, "gOTHER", goods[4].id)
    with _page(host, "shopx", "MINE"):
        html = render_recently_viewed({"page": "home", "product": None})
        assert isinstance(html, Markup)
        assert _names(html) == ["丁卡", "丙卡", "乙卡", "甲卡"] and html.count("¥10.80") == 4
        on_product = render_recently_viewed({"page": "product", "product": SimpleNamespace(id=goods[3].id)})
        assert _names(on_product) == ["丙卡", "乙卡", "甲卡"]
    with _page(host, "shopx", "NOBODY"):
        assert render_recently_viewed({"page": "home", "product": None}) == ""
    with _page(host, "shopx"):  # no visitor token at all
        assert render_recently_viewed({"page": "home", "product": None}) == ""


def test_the_count_setting_and_hidden_or_off_sale_products(host, goods):
    shop = _shop(host, settings={"recommendations": {"recent_count": 2}})
    pricing.set_rule(shop, "product", goods[2].id, hidden=True)  # the owner hides 丙卡
    pricing.set_rule(shop, "product", goods[1].id, rename="乙卡·特价")
    for card in goods[:4]:
        data.record_view(shop, "gMINE", card.id)
    goods[3].status = "off"
    goods[3].save()
    with _page(host, "shopx", "MINE"):
        assert _names(render_recently_viewed({"page": "home", "product": None})) == ["乙卡·特价", "甲卡"]


def test_product_names_are_escaped(host, goods):
    shop = _shop(host)
    data.record_view(shop, "gMINE", goods[4].id)
    with _page(host, "shopx", "MINE"):
        html = str(render_recently_viewed({"page": "home", "product": None}))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;卡" in html


# -- bought together --------------------------------------------------------------------


def test_bought_together_ranks_by_buyers_from_real_paid_orders(host, goods):
    shop = _shop(host)
    m1 = members.register(shop, "m1@example.com", PASSWORD)
    m2 = members.register(shop, "m2@example.com", PASSWORD)
    a, b, c, d, e = goods
    # buyers of a: m1 (also b, c), m2 (also b, b again), a guest (also b and c by the same contact)
    for product in (a, b, c):
        _paid(shop, product, m1.id)
    for product in (a, b, b):
        _paid(shop, product, m2.id)
    for product in (a, b, c):
        _paid(shop, product, None, contact="guest@example.com")
    _paid(shop, d, None, contact="someone@example.com")  # not a buyer of a
    unpaid_sku = e.skus[0].id
    orders.create_order(site_id=shop, sku_id=unpaid_sku, quantity=1, contact="m1@example.com", member_id=m1.id,
                        unit_price_fen=1080, costs=pricing.quote_sku(shop, unpaid_sku).costs)  # never paid
    assert data.bought_together_query(shop, a.id) == [(b.id, 3), (c.id, 2)]
    assert data.bought_together_query(shop, d.id) == []
    with _page(host, "shopx"):
        html = render_bought_together({"page": "product", "product": SimpleNamespace(id=a.id)})
        assert _names(html) == ["乙卡", "丙卡"] and "买了它的人还买了" in html
        assert render_bought_together({"page": "product", "product": SimpleNamespace(id=d.id)}) == ""


def test_a_refunded_order_no_longer_counts(host, goods):
    from kamengsite import refunds

    shop = _shop(host)
    m1 = members.register(shop, "m1@example.com", PASSWORD)
    _paid(shop, goods[0], m1.id)
    together = _paid(shop, goods[1], m1.id)
    assert data.bought_together_query(shop, goods[0].id) == [(goods[1].id, 1)]
    refunds.refund_order(together.order_no, to="manual")
    assert data.bought_together_query(shop, goods[0].id) == []


def test_bought_together_is_cached_for_a_while(host, goods):
    shop = _shop(host)
    m1 = members.register(shop, "m1@example.com", PASSWORD)
    _paid(shop, goods[0], m1.id)
    assert data.bought_together(shop, goods[0].id, now=100.0) == []
    _paid(shop, goods[1], m1.id)
    assert data.bought_together(shop, goods[0].id, now=100.0 + data.TOGETHER_TTL - 1) == []  # still cached
    assert data.bought_together(shop, goods[0].id, now=100.0 + data.TOGETHER_TTL + 1) == [(goods[1].id, 1)]


# -- tenant isolation -------------------------------------------------------------------


def test_views_and_orders_of_one_site_never_show_on_another(host, goods):
    shop = _shop(host)
    other = _shop(host, "shopy")
    on_x = members.register(shop, "m@example.com", PASSWORD)
    on_y = members.register(other, "m@example.com", PASSWORD)
    for product in goods[:3]:
        _paid(shop, product, on_x.id)
        _paid(shop, product, None, contact="guest@example.com")
        data.record_view(shop, "gSAME", product.id)
    data.record_view(shop, f"m{on_y.id}", goods[0].id)  # even a colliding member key of the other site
    _paid(other, goods[0], None, contact="guest@example.com")  # the same guest buys a on shopy too
    assert data.bought_together_query(other, goods[0].id) == []  # what they bought on shopx stays there
    assert data.recent_views(other, "gSAME") == []
    with _page(host, "shopy", "SAME"):
        assert render_recently_viewed({"page": "home", "product": None}) == ""
        assert render_bought_together({"page": "product", "product": SimpleNamespace(id=goods[0].id)}) == ""
    with _page(host, "shopy", member_id=on_y.id):
        assert render_recently_viewed({"page": "home", "product": None}) == ""
    # the same data on its own site
    assert [p for p, _ in data.bought_together_query(shop, goods[0].id)] == [goods[1].id, goods[2].id]
    with _page(host, "shopx", "SAME"):
        assert _names(render_recently_viewed({"page": "home", "product": None})) == ["丙卡", "乙卡", "甲卡"]


def test_a_site_without_the_plugin_records_nothing(host, client_for, goods):
    _shop(host, "plain", plugins=())
    client_for("plain.localhost").get(f"/p/{goods[0].id}")
    with all_sites():
        assert ProductView.select().count() == 0


def test_sections_and_settings():
    sections = {s.name: s for s in theme_sections(None)}
    assert sections["recently_viewed"].pages == ("home", "product") and sections["bought_together"].pages == ("product",)
    bad = SimpleNamespace(slug="x", config_file="x", settings={"recommendations": {"recent_count": 99}})
    assert settings(bad) == {"recent_count": 6, "together_count": 4}
    good = SimpleNamespace(slug="x", config_file="x", settings={"recommendations": {"together_count": 2}})
    assert settings(good) == {"recent_count": 6, "together_count": 2}


def test_concurrent_views_of_one_visitor_keep_one_row_per_product(host, goods):
    from concurrent.futures import ThreadPoolExecutor

    shop = _shop(host)
    ids = [g.id for g in goods]

    def view(i):
        data.record_view(shop, "gBUSY", ids[i % len(ids)], keep=3)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(view, range(40)))
    seen = data.recent_views(shop, "gBUSY")
    assert len(seen) == len(set(seen)) and 1 <= len(seen) <= 3 + 8  # trims race too, but never duplicate
    data.record_view(shop, "gBUSY", ids[0], keep=3)
    assert len(data.recent_views(shop, "gBUSY")) == 3 and data.recent_views(shop, "gBUSY")[0] == ids[0]


# -- languages ------------------------------------------------------------------------------


def test_the_sections_speak_english_on_request(host, goods):
    shop = _shop(host)
    data.record_view(shop, "gMINE", goods[0].id)
    app = host.app_for("shopx")
    for query, heading, other in (("", "<h2>最近浏览</h2>", "Recently viewed"),
                                  ("?lang=en", "<h2>Recently viewed</h2>", "最近浏览")):
        with app.test_request_context("/" + query, headers={"Host": "shopx.localhost"}), site_scope(shop):
            from flask import session

            session[SESSION_VISITOR] = "MINE"
            html = str(render_recently_viewed({"page": "home", "product": None}))
            assert heading in html and other not in html and _names(html) == ["甲卡"]  # product names are content
    labels = {s.name: str(s.label) for s in theme_sections(None)}  # outside a request: the English text
    assert labels == {"recently_viewed": "Recently viewed", "bought_together": "Bought together"}
