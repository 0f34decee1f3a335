"""Every shipped theme renders every storefront page from its JSON layout (kamengsite/layouts.py PAGES).

For each theme × page, on a site with products: the page answers 200, its own content is there,
each section of its layout is rendered in its wrapper (``data-section-id``), the page's own content
sits inside its ``main_<page>`` section, and nothing was logged about a section or an undefined
template variable.
"""

from __future__ import annotations

import logging
import re
from html.parser import HTMLParser

import jinja2
import pytest

from kamengsite import layouts
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Category, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site

from conftest import SiteClient

THEMES = ("light", "dark", "business")
TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
UNDEFINED_LOG = "kamengsite.tests.undefined"


def section_ids(html: str) -> list[str]:
    return re.findall(r'data-section-id="([^"]+)"', html)


def token(response) -> str:
    return TOKEN.search(response.get_data(as_text=True)).group(1)


class SectionText(HTMLParser):
    """The text inside each ``data-section-id`` wrapper (sections nest only as main → page content)."""

    def __init__(self):
        super().__init__()
        self.stack: list = []  # (section id or None) per open <section>
        self.text: dict = {}

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.stack.append(dict(attrs).get("data-section-id"))

    def handle_endtag(self, tag):
        if tag == "section" and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for sid in self.stack:
            if sid:
                self.text[sid] = self.text.get(sid, "") + data


def text_of_sections(html: str) -> dict:
    parser = SectionText()
    parser.feed(html)
    return parser.text


@pytest.fixture
def store(host):
    """The main site with a category of two products (keys on one) and a product outside it."""
    main = Site.get(Site.slug == "main")
    games = Category.create(site=main, name="游戏点卡")
    card = create_product(main, "页面测试月卡", 1500, category=games, max_qty=5)
    create_product(main, "页面测试季卡", 4000, category=games)
    create_product(main, "分类外的软件", 990)
    import_keys(card.skus[0], [f"PAGE-{i:04d}" for i in range(3)], CardKeyCipher.from_instance(host.instance))
    return {"host": host, "card": card, "games": games}


@pytest.fixture
def undefined_log(host):
    """Log every use of an undefined template variable (jinja2's default is silent) while the test runs."""
    logger = logging.getLogger(UNDEFINED_LOG)
    envs = [host.themes.environment(name) for name in THEMES]
    previous = [env.undefined for env in envs]
    for env in envs:
        env.undefined = jinja2.make_logging_undefined(logger, jinja2.Undefined)
    yield
    for env, undefined in zip(envs, previous):
        env.undefined = undefined


def expected_sections(theme, page: str) -> list[str]:
    """The layout's shown sections; a plugin section shows nothing (and no wrapper) without plugins."""
    return [s.id for s in theme.layouts[page].shown() if s.type != "plugin"]


def buy(client, card) -> str:
    form = client.get(f"/p/{card.id}")
    placed = client.post(f"/p/{card.id}", data={"csrf_token": token(form), "sku": card.skus[0].id, "quantity": 1,
                                                 "contact": "buyer@example.com", "query_password": "pass1234"})
    assert placed.status_code == 302, placed.get_data(as_text=True)
    return placed.headers["Location"]


@pytest.mark.parametrize("theme_name", THEMES)
def test_every_theme_renders_every_page(store, theme_name, caplog, undefined_log):
    host, card, games = store["host"], store["card"], store["games"]
    host.registry.update("main", theme=theme_name)
    theme = host.themes.get(theme_name)
    layouts.create_custom_page(host.registry.folder("main"), "about-us", "关于我们", theme=theme)
    client = SiteClient(host, "main.localhost")
    seen = {}

    def visit(page, path, *must_show):
        response = client.get(path)
        assert response.status_code == 200, (theme_name, path, response.status_code)
        html = response.get_data(as_text=True)
        assert f"theme-{theme_name}" in html
        assert section_ids(html) == expected_sections(theme, page), (theme_name, path)
        main = theme.layouts[page].main()
        inside = text_of_sections(html).get(main.id, "") if main is not None else html
        for text in must_show:  # the page's own content, inside its main_<page> section
            assert text in inside, (theme_name, path, text)
        seen[path] = html
        return html

    with caplog.at_level(logging.INFO):
        home = visit("home", "/", "页面测试月卡", "15.00")
        assert f'href="/c/{games.id}"' in home  # the category list links the category page
        category = visit("category", f"/c/{games.id}", "游戏点卡", "页面测试月卡", "页面测试季卡", "40.00")
        assert "分类外的软件" not in text_of_sections(category)[theme.layouts["category"].main().id]
        visit("product", f"/p/{card.id}", "页面测试月卡", "立即购买")
        order_path = buy(client, card)
        checkout = visit("checkout", order_path, "待支付", "模拟支付")
        assert "PAGE-" not in checkout
        paid = client.post(order_path + "/demo-pay", data={"csrf_token": token(client.get(order_path))})
        assert paid.status_code == 302
        order = visit("order", order_path, "已发货")
        assert re.search(r"<code>PAGE-\d{4}</code>", order)  # the buyer's key
        visit("lookup", "/lookup", "订单查询", "查询密码")
        visit("member", "/member/login", "会员登录", "密码")
        register = client.get("/member/register")
        visit("member", "/member/register", "注册会员", "再次输入密码")
        joined = client.post("/member/register", data={"csrf_token": token(register), "email": "m@example.com",
                                                       "password": "member-pass-1", "confirm": "member-pass-1"})
        assert joined.status_code == 302
        visit("member", "/member/", "我的账户", "我的订单", "余额")
        visit("custom", "/pages/about-us", "关于我们")
    assert "<title>关于我们" in seen["/pages/about-us"]
    for path, html in seen.items():  # the host's shared styles first, the theme's after them
        links = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
        assert links[:2] == ["/_kamengsite/sections.css", "/static/theme.css"], (theme_name, path, links)
    shared = client.get("/_kamengsite/sections.css")
    assert shared.status_code == 200 and shared.mimetype == "text/css" and b".faq-item" in shared.data
    noisy = [r for r in caplog.records if r.name == UNDEFINED_LOG or
             (r.name.startswith("kamengsite") and r.levelno >= logging.WARNING)]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_a_category_page_is_only_for_a_shown_category_of_this_site(store, host_factory):
    host, games = store["host"], store["games"]
    client = SiteClient(host, "main.localhost")
    hidden = Category.create(site=Site.get(Site.slug == "main"), name="隐藏分类", visible=False)
    assert client.get(f"/c/{hidden.id}").status_code == 404
    assert client.get("/c/999999").status_code == 404
    # a category of another site's own goods is not this site's
    host.registry.create("shop1", template="shop")
    other = Category.create(site=Site.get(Site.slug == "shop1"), name="别家的分类")
    assert client.get(f"/c/{other.id}").status_code == 404
    # a sub-site lists the main catalogue's category in its own prices
    sub = SiteClient(host, "shop1.localhost")
    home = sub.get("/").get_data(as_text=True)
    page = sub.get(f"/c/{games.id}")
    assert page.status_code == 200
    prices = set(re.findall(r"¥(\d+\.\d\d)", page.get_data(as_text=True)))
    assert prices and prices <= set(re.findall(r"¥(\d+\.\d\d)", home))  # the same prices as its home page


def test_custom_pages_are_created_listed_served_and_deleted(store):
    host = store["host"]
    folder = host.registry.folder("main")
    theme = host.themes.get("light")
    client = SiteClient(host, "main.localhost")
    assert client.get("/pages/faq").status_code == 404  # nothing stored: no page
    layouts.create_custom_page(folder, "faq", "购物须知", theme=theme)
    assert layouts.custom_pages(folder) == [("faq", "购物须知")]
    assert layouts.layout_path(folder, "custom/faq") == folder / "layouts" / "custom" / "faq.json"
    for handle, title in (("faq", "另一个"), ("Bad_Handle", "x"), ("-x", "x"), ("a" * 41, "x"), ("ok", ""),
                          ("ok2", "两行\n标题")):
        with pytest.raises(layouts.ConfigError):
            layouts.create_custom_page(folder, handle, title, theme=theme)
    html = client.get("/pages/faq").get_data(as_text=True)
    assert "购物须知" in html
    data = layouts.layout_data(host.themes.get("light").layouts["custom"])
    data["title"] = "购物须知（新）"
    data["sections"]["content"]["settings"]["content"] = "<p>先看这里</p>"
    layouts.save_layout(folder, "custom/faq", data, theme=theme, publish=False)
    assert "先看这里" not in client.get("/pages/faq").get_data(as_text=True)  # a draft is not shown
    layouts.save_layout(folder, "custom/faq", data, theme=theme, publish=True)
    html = client.get("/pages/faq").get_data(as_text=True)
    assert "先看这里" in html and "购物须知（新）" in html
    assert layouts.custom_pages(folder) == [("faq", "购物须知（新）")]
    assert layouts.delete_custom_page(folder, "faq") and not layouts.delete_custom_page(folder, "faq")
    assert client.get("/pages/faq").status_code == 404 and layouts.custom_pages(folder) == []
    assert client.get("/pages/..%2Fhome").status_code == 404
    with pytest.raises(ValueError):
        layouts.layout_path(folder, "custom/../home")
    for key in ("custom", "custom/Bad", "custom/../home", "nosuch"):  # not page keys: refused, nothing written
        assert layouts.validate_layout(theme, key, data), key
    data["title"] = "两行\n标题"
    assert [p.reason.split(":")[0] for p in layouts.validate_layout(theme, "custom/faq", data)] == ["title"]


def test_the_draft_is_shown_only_to_a_draft_preview(store):
    """Contract 2: ``g.layout_draft`` (set by the editor for its preview) shows drafts; nothing else does."""
    from flask import g

    host = store["host"]
    folder = host.registry.folder("main")
    theme = host.themes.get("light")
    app = host.app_for("main")
    data = layouts.layout_data(theme.layouts["lookup"])
    data["sections"]["faq"]["settings"]["heading"] = "草稿里的帮助"
    layouts.save_layout(folder, "lookup", data, theme=theme, publish=False)
    previewing = []

    @app.before_request
    def preview():  # what the editor's blueprint does for its preview requests
        g.layout_draft = bool(previewing)

    client = SiteClient(host, "main.localhost")
    assert "草稿里的帮助" not in client.get("/lookup").get_data(as_text=True)
    previewing.append(True)
    assert "草稿里的帮助" in client.get("/lookup").get_data(as_text=True)
    store_ = layouts.site_layouts(app)
    assert store_.layout("lookup", draft=True).get("faq").settings["heading"] == "草稿里的帮助"
    assert store_.layout("lookup").get("faq").settings["heading"] != "草稿里的帮助"


def test_the_stamp_changes_on_publish_and_theme_settings(store):
    host = store["host"]
    folder = host.registry.folder("main")
    theme = host.themes.get("light")
    site = layouts.site_layouts(host.app_for("main"))
    first = site.stamp("category")
    assert site.stamp("category") == first and hash(first) is not None
    layouts.save_layout(folder, "category", layouts.layout_data(theme.layouts["category"]), theme=theme,
                        publish=False)
    assert site.stamp("category") == first  # a draft changes nothing anyone sees
    layouts.save_layout(folder, "category", layouts.layout_data(theme.layouts["category"]), theme=theme,
                        publish=True)
    published = site.stamp("category")
    assert published != first and site.stamp("home") != published
    layouts.save_theme_settings(folder, {"accent": "#123456"}, theme=theme)
    assert site.stamp("category") != published


def test_a_page_without_its_main_section_is_refused(store):
    theme = store["host"].themes.get("light")
    data = layouts.layout_data(theme.layouts["order"])
    del data["sections"]["main"]
    data["order"].remove("main")
    problems = layouts.validate_layout(theme, "order", data)
    assert [p.type for p in problems] == ["main_order"] and "main_order" in problems[0].fix
    data = layouts.layout_data(theme.layouts["order"])
    data["sections"]["main2"] = {"type": "main_order"}
    data["order"].append("main2")
    assert [p.section for p in layouts.validate_layout(theme, "order", data)] == ["main2"]
    data = layouts.layout_data(theme.layouts["order"])
    data["sections"]["buy"] = {"type": "main_product"}  # another page's own content
    data["order"].append("buy")
    assert [p.section for p in layouts.validate_layout(theme, "order", data)] == ["buy"]


@pytest.mark.parametrize("theme_name", THEMES)
def test_the_category_page_and_its_sections_in_english(store, theme_name):
    host, games = store["host"], store["games"]
    host.registry.update("main", theme=theme_name)
    client = SiteClient(host, "main.localhost")
    chinese = client.get(f"/c/{games.id}").get_data(as_text=True)
    assert "库存" in chinese and "in stock" not in chinese and "Skip to main content" not in chinese
    english = client.get(f"/c/{games.id}?lang=en").get_data(as_text=True)
    assert "Skip to main content" in english and "Order lookup" in english
    assert "跳到主要内容" not in english and "订单查询" not in english and "已售罄" not in english
    assert "页面测试月卡" in english  # product names are content
    assert ("3 in stock" in english) or (theme_name == "business" and "Unit price" in english)
