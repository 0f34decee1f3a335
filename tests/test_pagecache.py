"""The storefront's page cache: anonymous home and category pages, invalidated exactly.

Every change below is written the way another process would write it: straight to the
database (through the models, outside any request of the site) or to the site folder. Nothing
tells the cache; the next GET must show the change because the page's key moved.
"""

from __future__ import annotations

import datetime
import json
import re

import pytest
from markupsafe import Markup

from kamengsite import layouts, pagecache
from kamengsite.accounts import create_account
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Category, Product, Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.csp import csp_nonce
from kamengsite.db import database
from kamengsite.hookspecs import hookimpl
from kamengsite.levels import get_level, save_level, seed_default_levels, set_tier_price
from kamengsite.members import register
from kamengsite.models import Site
from kamengsite.orders import create_order, expire_due
from kamengsite.pricing import delete_rule, quote_sku, set_rule
from kamengsite.testing import SiteClient, sign_in_console, sign_in_member, site_id
from kamengsite.themes import format_fen

PASSWORD = "correct horse battery staple"


class Shop:
    """Sub-site shop1 (light theme, silver level, +20 %) selling two main-site products."""

    def __init__(self, host):
        self.host = host
        seed_default_levels()
        main = Site.get(Site.slug == "main")
        self.games = Category.create(site=main, name="游戏点卡")
        self.card = create_product(main, "测试月卡", 1500, category=self.games)
        self.gift = create_product(main, "礼品卡", 5000, category=self.games)
        self.cipher = CardKeyCipher.from_instance(host.instance)
        import_keys(self.card.skus[0], ["CARD-1", "CARD-2"], self.cipher)
        host.registry.create("shop1", template="shop")
        host.registry.update("shop1", level="silver")
        self.site_id = site_id("shop1")
        set_rule(self.site_id, "all", markup_percent_bp=2000)
        self.folder = host.registry.folder("shop1")
        self.theme = host.themes.get(host.registry.load("shop1").theme)
        self.publish_home()

    def publish_home(self, **hero):
        """The theme's home with a grid showing prices and stock (and the hero's ``hero`` settings)."""
        data = json.loads((self.theme.path / "templates" / "home.json").read_text(encoding="utf-8"))
        for section in data["sections"].values():
            if section["type"] == "product_grid":
                section["settings"].update(show_price=True, show_stock=True, count=50)
            if section["type"] == "hero":
                section["settings"].update(hero)
        layouts.save_layout(self.folder, "home", data, theme=self.theme, publish=True)

    def get(self, path="/", host_name="shop1.localhost", client=None):
        """A fresh anonymous visitor's GET (or ``client``'s): (html, X-Page-Cache)."""
        response = (client or SiteClient(self.host, host_name)).get(path)
        assert response.status_code == 200, response.status_code
        return response.get_data(as_text=True), response.headers.get("X-Page-Cache")

    def cached(self, path="/"):
        """The page once it is in the cache (the second GET is a hit)."""
        self.get(path)
        html, state = self.get(path)
        assert state == "hit"
        self.last = html
        return html

    def price(self, product) -> str:
        return "¥" + format_fen(quote_sku(self.site_id, product.skus[0].id).unit_price_fen)

    def order(self, quantity=1):
        return create_order(site_id=self.site_id, sku_id=self.card.skus[0].id, quantity=quantity,
                            contact="buyer@example.com", query_password="pass1234")


@pytest.fixture
def shop(host):
    pagecache.PAGES.clear()
    return Shop(host)


@pytest.fixture
def db_shop(db_host):
    pagecache.PAGES.clear()
    return Shop(db_host)


def stock_of(html: str, name: str) -> str:
    found = re.search(re.escape(name) + r"</a></h3>.*?库存 (\d+)", html, re.S)
    return found.group(1) if found else None


# -- served from the cache ------------------------------------------------------------------


def test_a_second_anonymous_get_is_served_from_the_cache(shop, monkeypatch):
    first, state = shop.get()
    assert state == "miss" and "测试月卡" in first
    renders, queries = [], []
    monkeypatch.setattr(layouts, "render_layout_sections",
                        lambda *a, **k: renders.append(1) or pytest.fail("rendered again"))
    real_execute = database.obj.execute_sql
    monkeypatch.setattr(database.obj, "execute_sql", lambda sql, *a, **k: queries.append(sql) or real_execute(sql, *a, **k))
    second, state = shop.get()
    assert state == "hit" and second == first and renders == []
    assert len(queries) == 1 and "catalog_epoch" in queries[0]  # one query: the catalogue stamp


def test_a_hit_has_the_headers_of_the_page(shop):
    miss = SiteClient(shop.host, "shop1.localhost").get("/")
    hit = SiteClient(shop.host, "shop1.localhost").get("/")
    assert hit.headers["X-Page-Cache"] == "hit"
    for name in ("Content-Type", "Vary", "Content-Security-Policy"):
        assert hit.headers[name] == miss.headers[name]
    assert int(hit.headers["Content-Length"]) == len(hit.get_data())


def test_the_category_page_is_cached_per_category(shop):
    other = Category.create(site=Site.get(Site.slug == "main"), name="会员充值")
    create_product(Site.get(Site.slug == "main"), "视频会员", 2000, category=other)
    games = shop.cached(f"/c/{shop.games.id}")
    videos = shop.cached(f"/c/{other.id}")
    assert "测试月卡" in games and "视频会员" not in games
    assert "视频会员" in videos and "测试月卡" not in videos


def test_a_query_string_is_its_own_page_and_still_runs_the_request_hooks(shop):
    plain = shop.cached("/")
    html, state = shop.get("/?utm=x")
    assert state == "miss" and html == plain
    assert shop.get("/?utm=x")[1] == "hit"


# -- invalidation: each change shows on the next GET ------------------------------------------


def _rename_product(shop):
    Product.update(name="改名月卡").where(Product.id == shop.card.id).execute()
    return lambda html: "改名月卡" in html and "测试月卡" not in html


def _base_price(shop):
    before = shop.price(shop.card)
    Sku.update(price_fen=2500).where(Sku.id == shop.card.skus[0].id).execute()
    after = shop.price(shop.card)
    return lambda html: before != after and after in html and before not in html


def _site_markup(shop):
    before = shop.price(shop.card)
    set_rule(shop.site_id, "all", markup_percent_bp=5000)
    after = shop.price(shop.card)
    return lambda html: before != after and after in html and before not in html


def _hide_product(shop):
    set_rule(shop.site_id, "product", shop.gift.id, hidden=True)
    return lambda html: "礼品卡" not in html and "测试月卡" in html


def _rename_for_the_site(shop):
    set_rule(shop.site_id, "product", shop.card.id, rename="本站月卡")
    return lambda html: "本站月卡" in html and "测试月卡" not in html


def _delete_a_rule(shop):
    set_rule(shop.site_id, "product", shop.card.id, markup_percent_bp=9000)
    shop.cached()
    before = shop.price(shop.card)
    delete_rule(shop.site_id, "product", shop.card.id)  # a delete leaves no revision behind
    after = shop.price(shop.card)
    return lambda html: before != after and after in html


def _level_cost(shop):
    before = shop.price(shop.card)
    save_level(**{**_level_values("silver"), "cost_percent_bp": 3000})
    after = shop.price(shop.card)
    return lambda html: before != after and after in html


def _tier_price(shop):
    before = shop.price(shop.card)
    set_tier_price(get_level("silver"), shop.card.skus[0].id, 4000)
    after = shop.price(shop.card)
    return lambda html: before != after and after in html


def _tier_price_replaced(shop):
    set_tier_price(get_level("silver"), shop.card.skus[0].id, 4000)
    shop.cached()
    set_tier_price(get_level("silver"), shop.card.skus[0].id, 6000)  # delete + insert: maybe the same id
    after = shop.price(shop.card)
    return lambda html: after in html


def _import_keys(shop):
    import_keys(shop.card.skus[0], ["CARD-3", "CARD-4", "CARD-5"], shop.cipher)
    return lambda html: stock_of(html, "测试月卡") == "5"


def _sell_the_last_key(shop):
    shop.order(quantity=2)
    return lambda html: stock_of(html, "测试月卡") == "0"


def _expire_an_order(shop):
    shop.order(quantity=2)
    shop.cached()
    assert expire_due(now=datetime.datetime.utcnow() + datetime.timedelta(days=1)) == 1
    return lambda html: stock_of(html, "测试月卡") == "2"


def _product_off_sale(shop):
    Product.update(status="off").where(Product.id == shop.gift.id).execute()
    return lambda html: "礼品卡" not in html


def _category_renamed(shop):
    Category.update(name="点卡专区").where(Category.id == shop.games.id).execute()
    return lambda html: "点卡专区" in html


def _new_product(shop):
    create_product(Site.get(Site.slug == "main"), "新品上架", 800, category=shop.games)
    return lambda html: "新品上架" in html


def _level_values(code):
    level = get_level(code)
    return {name: getattr(level, name) for name in level._meta.fields if name not in ("id", "created_at", "rev")}


DATABASE_CHANGES = [_rename_product, _base_price, _site_markup, _hide_product, _rename_for_the_site, _delete_a_rule,
                    _level_cost, _tier_price, _tier_price_replaced, _import_keys, _sell_the_last_key, _expire_an_order,
                    _product_off_sale, _category_renamed, _new_product]


@pytest.mark.databases
@pytest.mark.parametrize("change", DATABASE_CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_a_database_change_shows_on_the_next_get(db_shop, change):
    db_shop.cached()
    shows = change(db_shop)  # some changes set the stage first, then cache the page again
    assert not shows(db_shop.last)  # the change is visible on the page at all
    html, state = db_shop.get()
    assert state == "miss" and shows(html)
    assert db_shop.get() == (html, "hit")  # and is cached in turn


def _publish_a_layout(shop):
    shop.publish_home(heading="新的横幅标题")
    return lambda html: "新的横幅标题" in html


def _theme_settings(shop):
    layouts.save_theme_settings(shop.folder, {"accent": "#ab1234"}, theme=shop.theme)
    return lambda html: "#ab1234" in html


def _switch_theme(shop):
    shop.host.registry.update("shop1", theme="dark")
    return lambda html: "theme-dark" in html


def _rename_the_site(shop):
    shop.host.registry.update("shop1", name="改名小店")
    return lambda html: "改名小店" in html


@pytest.mark.parametrize("change", [_publish_a_layout, _theme_settings, _switch_theme, _rename_the_site],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_site_folder_change_shows_on_the_next_get(shop, change):
    shop.cached()
    shows = change(shop)
    assert not shows(shop.last)
    html, state = shop.get()
    assert state == "miss" and shows(html)


def test_an_order_moves_only_its_own_sku_revision(shop):
    """No new shared row in the order's transaction: only the SKU row it already updates."""
    revisions = lambda: dict(Sku.select(Sku.id, Sku.rev).tuples())  # noqa: E731
    epoch = lambda: pagecache.CatalogEpoch.get_by_id(1).deletes  # noqa: E731
    main_id = site_id("main")
    before, epoch_before, stamp = revisions(), epoch(), pagecache.catalog_stamp(shop.site_id, main_id)
    shop.order()
    after = revisions()
    card_sku = shop.card.skus[0].id
    assert after[card_sku] > before[card_sku]
    assert {k: v for k, v in after.items() if k != card_sku} == {k: v for k, v in before.items() if k != card_sku}
    assert epoch() == epoch_before and pagecache.catalog_stamp(shop.site_id, main_id) != stamp


def test_deletes_are_counted_and_revisions_grow_on_save(shop):
    epoch = lambda: pagecache.CatalogEpoch.get_by_id(1).deletes  # noqa: E731
    product = Product.get_by_id(shop.card.id)
    rev = product.rev
    product.name = "保存一次"
    product.save()
    assert Product.get_by_id(product.id).rev == rev + 1
    before = epoch()
    assert delete_rule(shop.site_id, "product", 999999) is False and epoch() == before  # nothing deleted
    set_rule(shop.site_id, "product", shop.card.id, hidden=True)
    assert delete_rule(shop.site_id, "product", shop.card.id) and epoch() == before + 1


# -- never served from or stored into the cache -----------------------------------------------


def test_a_signed_in_member_is_never_served_or_stored(shop):
    shop.cached()
    register(shop.site_id, "m@example.com", PASSWORD)
    member = sign_in_member(SiteClient(shop.host, "shop1.localhost"), "m@example.com", PASSWORD)
    stored = len(pagecache.PAGES)
    for _ in range(2):
        html, state = shop.get(client=member)
        assert state is None and "我的账户" in html and "登录</a>" not in html
    assert len(pagecache.PAGES) == stored


def test_the_draft_preview_is_never_served_or_stored(shop):
    published = shop.cached()
    data = json.loads(layouts.layout_path(shop.folder, "home").read_text(encoding="utf-8"))
    hero = next(sid for sid, s in data["sections"].items() if s["type"] == "hero")
    data["sections"][hero]["settings"]["heading"] = "草稿横幅"
    layouts.save_layout(shop.folder, "home", data, theme=shop.theme, publish=False)
    create_account(shop.site_id, "owner", PASSWORD)
    owner = sign_in_console(SiteClient(shop.host, "shop1.localhost"), "owner", PASSWORD)
    stored = len(pagecache.PAGES)
    draft = owner.get("/?_preview=draft")
    assert "草稿横幅" in draft.get_data(as_text=True) and "X-Page-Cache" not in draft.headers
    anonymous, state = shop.get("/?_preview=draft")
    assert state is None and "草稿横幅" not in anonymous
    assert len(pagecache.PAGES) == stored
    assert shop.get() == (published, "hit")


def test_a_page_that_used_the_nonce_is_never_stored(shop):
    class InlineScript:
        @hookimpl
        def theme_sections(self, site):
            from kamengsite.sections import Section

            return [Section("inline", "内联", lambda ctx: Markup(f'<script nonce="{csp_nonce()}">1</script>'))]

    shop.host.plugins.register(InlineScript(), name="inline-script")
    shop.host.plugins.core.add("inline-script")
    data = json.loads((shop.theme.path / "templates" / "home.json").read_text(encoding="utf-8"))
    layouts.save_layout(shop.folder, "home", data, theme=shop.theme, publish=True)  # has the plugin section
    for _ in range(2):
        response = SiteClient(shop.host, "shop1.localhost").get("/")
        nonce = re.search(r'<script nonce="([^"]+)"', response.get_data(as_text=True)).group(1)
        assert "X-Page-Cache" not in response.headers
        assert f"'nonce-{nonce}'" in response.headers["Content-Security-Policy"]


def test_one_site_never_gets_another_sites_page(shop):
    shop.host.registry.create("shop2", template="shop")
    shop.host.registry.update("shop2", name="二号店", level="silver")
    set_rule(site_id("shop2"), "all", markup_percent_bp=9000)
    one = shop.cached()
    shop.get(host_name="shop2.localhost")
    html, state = shop.get(host_name="shop2.localhost")
    assert state == "hit" and "二号店" in html and html != one
    price_two = "¥" + format_fen(quote_sku(site_id("shop2"), shop.card.skus[0].id).unit_price_fen)
    assert price_two in html and price_two not in one


# -- the cache itself ----------------------------------------------------------------------


def test_the_cache_keeps_to_its_memory_bound():
    cache = pagecache.PageCache(max_bytes=64 * 1024, ttl=60)
    page = b"x" * 4000
    for i in range(100):
        cache.put(i, page, [])
        assert cache.bytes <= cache.max_bytes
    assert 0 < len(cache) < 100 and cache.get(0) is None and cache.get(99) is not None
    cache.put("huge", b"x" * (cache.max_bytes // 8 + 1), [])  # never one page for an eighth of the cache
    assert cache.get("huge") is None


def test_the_least_recently_used_page_goes_first():
    cache = pagecache.PageCache(max_bytes=10 * (1000 + pagecache._ENTRY_OVERHEAD), ttl=60)
    keys = "abcdefghij"
    for key in keys:
        cache.put(key, b"x" * 1000, [])
    assert len(cache) == 10 and cache.get("a") is not None  # a is now the most recent
    cache.put("k", b"x" * 1000, [])
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acdefghijk")


def test_an_entry_expires_after_the_ttl(monkeypatch):
    cache = pagecache.PageCache(ttl=10)
    now = [1000.0]
    monkeypatch.setattr(pagecache.time, "monotonic", lambda: now[0])
    cache.put("k", b"page", [])
    now[0] += 9
    assert cache.get("k") is not None
    now[0] += 2
    assert cache.get("k") is None


def test_the_bound_holds_when_serving_many_pages(shop, monkeypatch):
    small = pagecache.PageCache(max_bytes=40 * 1024, ttl=60)
    monkeypatch.setattr(pagecache, "PAGES", small)
    for i in range(30):
        shop.get(f"/?page={i}")
    assert small.bytes <= small.max_bytes and 0 < len(small) < 30
