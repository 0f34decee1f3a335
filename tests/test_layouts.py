"""Theme sections and JSON page layouts (kamengsite/layouts.py): validation, owner content, rendering, caching."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest

from kamengsite import layouts
from kamengsite.catalog import Category, create_product
from kamengsite.errors import ConfigError
from kamengsite.host import Host
from kamengsite.instance import PROJECT_ROOT
from kamengsite.models import Site
from kamengsite.themes import ThemeRegistry, load_theme

from conftest import SiteClient

THEMES = ("light", "dark", "business")


def section_ids(html: str) -> list[str]:
    return re.findall(r'data-section-id="([^"]+)"', html)


@pytest.fixture
def themes_dir(tmp_path):
    """A copy of the shipped themes that a test may change (a theme author's upgrade)."""
    target = tmp_path / "themes"
    shutil.copytree(PROJECT_ROOT / "themes", target)
    return target


@pytest.fixture
def shop(host_factory, themes_dir):
    """The main site of a host on the copied themes, with two products in a category."""
    host = host_factory("layouts", themes_dir=str(themes_dir))
    main = Site.get(Site.slug == "main")
    games = Category.create(site=main, name="游戏点卡")
    create_product(main, "测试月卡", 1500, category=games)
    create_product(main, "测试周卡", 500)
    return host


def folder(host, slug="main"):
    return host.registry.folder(slug)


def page(host, path="/", slug="main"):
    response = SiteClient(host, f"{slug}.localhost").get(path)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def theme_of(host, slug="main"):
    return host.themes.get(host.registry.load(slug).theme)


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def home_default(theme_name="light") -> dict:
    return json.loads((PROJECT_ROOT / "themes" / theme_name / "templates" / "home.json").read_text(encoding="utf-8"))


# -- validation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def light():
    return load_theme(PROJECT_ROOT / "themes" / "light")


@pytest.mark.parametrize("section, setting, value", [
    ("announcement", "background", "red"),
    ("announcement", "background", "#fff"),
    ("announcement", "link", "javascript:alert(1)"),
    ("announcement", "link", "//evil.example/x"),
    ("announcement", "text", 42),
    ("announcement", "text", "两行\n文字"),
    ("products", "count", 0),
    ("products", "count", 51),
    ("products", "count", 2.5),
    ("products", "count", "12"),
    ("products", "category", "3"),
    ("products", "category", True),
    ("products", "show_price", "yes"),
    ("hero", "align", "justify"),
    ("hero", "image", "data:image/svg+xml,<svg onload=alert(1)>"),
])
def test_a_bad_value_is_reported_with_file_section_and_setting(light, section, setting, value):
    data = home_default()
    data["sections"][section]["settings"][setting] = value
    problems = layouts.validate_layout(light, "home", data)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert (problem.file, problem.section, problem.setting) == ("layouts/home.json", section, setting)
    assert problem.type == data["sections"][section]["type"]
    message = str(problem.error())
    assert "layouts/home.json" in message and f"sections.{section}.settings.{setting}" in message


def test_layout_shape_and_structure_problems(light):
    assert layouts.validate_layout(light, "home", home_default()) == []
    data = home_default()
    data["sections"]["x"] = {"type": "no_such_section"}
    data["order"].append("x")
    data["order"].append("ghost")
    data["sections"]["features"]["blocks"]["b"] = {"type": "nope", "settings": {}}
    data["sections"]["features"]["block_order"].append("b")
    data["sections"]["announcement"]["settings"]["typo"] = "?"
    found = {(p.section, p.block, p.setting): p.reason for p in layouts.validate_layout(light, "home", data)}
    assert "no section of this type" in found[("x", None, None)]
    assert "does not exist" in found[("ghost", None, None)]
    assert "no block type" in found[("features", "b", None)]
    assert "not a setting" in found[("announcement", None, "typo")]
    # a section meant for another page, and too many blocks
    data = home_default()
    data["sections"]["main"] = {"type": "main_product"}
    data["order"].append("main")
    blocks = data["sections"]["features"]["blocks"]
    for i in range(7):
        blocks[f"extra{i}"] = {"type": "feature", "settings": {}}
    data["sections"]["features"]["block_order"] = list(blocks)
    reasons = [str(p) for p in layouts.validate_layout(light, "home", data)]
    assert any("cannot be placed on the 'home' page" in r for r in reasons)
    assert any("more than 6 blocks" in r for r in reasons)
    # the file's shape
    problems = layouts.validate_layout(light, "home", {"sections": [], "order": "x"})
    assert problems and problems[0].file == "layouts/home.json"


@pytest.mark.parametrize("schema, key", [
    ({"name": "坏", "settings": [{"type": "range", "id": "n", "max": 5}]}, "settings[0]:n"),
    ({"name": "坏", "settings": [{"type": "select", "id": "mode"}]}, "settings[0]:mode"),
    ({"name": "坏", "settings": [{"type": "color", "id": "bg", "default": "blue"}]}, "settings[0]:bg"),
    ({"name": "坏", "settings": [{"type": "text", "id": "a"}, {"type": "text", "id": "a"}]}, "settings[1]:a"),
    ({"name": "坏", "settings": [{"type": "colour", "id": "bg"}]}, "settings.0.type"),
    ({"settings": []}, None),
    ({"name": "坏", "blocks": [{"type": "b", "name": "B", "settings": [{"type": "url", "id": "u", "default": "ftp://x"}]}]},
     "blocks[0].settings[0]:u"),
    ({"name": "坏", "settings": [{"type": "number", "id": "n", "max": 3}], "presets": [{"name": "p", "settings": {"n": 9}}]},
     "presets[0]"),
])
def test_a_bad_section_schema_names_the_file_and_the_setting(tmp_path, schema, key):
    path = tmp_path / "widget.json"
    write_json(path, schema)
    with pytest.raises(ConfigError) as caught:
        layouts.load_section_type(path)
    assert caught.value.path == str(path)
    assert caught.value.key == key


def test_a_broken_theme_is_not_offered_and_the_others_serve(shop, themes_dir):
    neon = themes_dir / "neon"
    shutil.copytree(themes_dir / "light", neon)
    manifest = json.loads((neon / "theme.json").read_text(encoding="utf-8"))
    (neon / "theme.json").write_text(json.dumps(dict(manifest, name="neon")), encoding="utf-8")
    write_json(neon / "sections" / "glow.json", {"name": "发光", "settings": [{"type": "range", "id": "size"}]})
    registry = ThemeRegistry(themes_dir)
    assert "neon" in registry.errors and "neon" not in registry.names()
    assert "glow.json" in str(registry.errors["neon"]) and "size" in str(registry.errors["neon"])
    assert set(THEMES) <= set(registry.names())
    # a broken default layout also keeps a theme out
    home = json.loads((neon / "templates" / "home.json").read_text(encoding="utf-8"))
    (neon / "sections" / "glow.json").unlink()
    home["sections"]["announcement"]["settings"]["background"] = "not-a-colour"
    write_json(neon / "templates" / "home.json", home)
    registry.scan()
    assert "home.json" in str(registry.errors["neon"]) and "background" in str(registry.errors["neon"])
    assert "15.00" in page(shop)


def test_a_theme_broken_after_loading_keeps_serving_its_last_good_version(shop, themes_dir):
    assert "测试月卡" in page(shop)
    home = themes_dir / "light" / "templates" / "home.json"
    write_json(home, {"sections": {"x": {"type": "gone"}}, "order": ["x"]})
    shop.themes.scan()
    assert "light" in shop.themes.errors and "light" not in shop.themes.names()
    assert shop.themes.has("light")  # the last good version: sites using it keep serving
    assert "测试月卡" in page(shop)


# -- owner content ---------------------------------------------------------------------------------


def test_the_owner_layout_reorders_hides_and_changes_text(shop):
    theme = theme_of(shop)
    # the "plugins" section is left out while no plugin offers a section (no empty wrappers)
    assert section_ids(page(shop)) == ["announcement", "hero", "categories", "products", "features", "about"]
    data = home_default()
    data["order"] = ["products", "announcement", "hero", "features", "about", "plugins"]  # categories removed
    data["sections"]["hero"]["disabled"] = True
    data["sections"]["announcement"]["settings"]["text"] = "店主的新公告"
    data["sections"]["products"]["settings"].update(heading="本周特价", show_price=False)
    del data["sections"]["categories"]
    layouts.save_layout(folder(shop), "home", data, theme=theme, publish=True)
    html = page(shop)
    assert section_ids(html) == ["products", "announcement", "features", "about"]
    assert "店主的新公告" in html and "本周特价" in html and "热门商品" not in html
    assert "测试月卡" in html and "15.00" not in html  # prices hidden by the owner


def test_a_draft_is_not_shown_until_published(shop):
    theme = theme_of(shop)
    data = home_default()
    data["sections"]["announcement"]["settings"]["text"] = "草稿公告"
    draft = layouts.save_layout(folder(shop), "home", data, theme=theme, publish=False)
    assert draft.name == "home.draft.json" and "草稿公告" not in page(shop)
    layouts.save_layout(folder(shop), "home", data, theme=theme, publish=True)
    assert "草稿公告" in page(shop) and not draft.exists()


def test_an_invalid_layout_is_refused_and_nothing_is_written(shop):
    data = home_default()
    data["sections"]["products"]["settings"]["count"] = 500
    with pytest.raises(ConfigError) as caught:
        layouts.save_layout(folder(shop), "home", data, theme=theme_of(shop), publish=True)
    assert "products" in str(caught.value) and "count" in str(caught.value)
    assert not layouts.layout_path(folder(shop), "home").exists()


def test_the_category_list_and_a_category_grid(shop):
    html = page(shop)
    games = Category.get(Category.name == "游戏点卡")
    assert "游戏点卡" in html
    filtered = page(shop, f"/?category={games.id}")
    assert "测试月卡" in filtered and "测试周卡" not in filtered
    data = home_default()
    data["sections"]["products"]["settings"]["category"] = games.id
    layouts.save_layout(folder(shop), "home", data, theme=theme_of(shop), publish=True)
    html = page(shop)
    assert "测试月卡" in html and "测试周卡" not in html


def test_theme_settings_come_from_the_site_folder(shop):
    assert "--accent:#0f62fe" in page(shop)
    layouts.save_theme_settings(folder(shop), {"accent": "#ff0066", "font": "serif"}, theme=theme_of(shop))
    html = page(shop)
    assert "--accent:#ff0066" in html and "Songti SC" in html
    with pytest.raises(ConfigError) as caught:
        layouts.save_theme_settings(folder(shop), {"accent": "red"}, theme=theme_of(shop))
    assert caught.value.key == "settings.accent"


def test_owner_content_survives_a_theme_upgrade(shop, themes_dir, caplog):
    light = themes_dir / "light"
    # v1 of the theme has its own "notice" section; the owner uses it and changes the texts.
    write_json(light / "sections" / "notice.json", {"name": "通知", "settings": [{"type": "text", "id": "text"}]})
    (light / "sections" / "notice.html").write_text("<p class=notice>{{ section.settings.text }}</p>", encoding="utf-8")
    shop.themes.scan()
    data = home_default()
    data["sections"]["announcement"]["settings"]["text"] = "店主公告"
    data["sections"]["about"]["settings"]["content"] = "<p>店主介绍</p>"
    data["sections"]["note"] = {"type": "notice", "settings": {"text": "店主通知"}}
    data["order"].insert(0, "note")
    layouts.save_layout(folder(shop), "home", data, theme=theme_of(shop), publish=True)
    layouts.save_theme_settings(folder(shop), {"accent": "#123456"}, theme=theme_of(shop))
    html = page(shop)
    assert "店主公告" in html and "店主通知" in html and "#123456" in html

    # v2: "notice" removed, a new section type, a new setting (with a default) on the announcement,
    # the product count's range narrowed below the owner's value, a new theme-wide setting.
    (light / "sections" / "notice.json").unlink()
    (light / "sections" / "notice.html").unlink()
    write_json(light / "sections" / "countdown.json", {"name": "倒计时", "settings": [{"type": "text", "id": "label"}]})
    (light / "sections" / "countdown.html").write_text("<p>{{ section.settings.label }}</p>", encoding="utf-8")
    announcement = json.loads((layouts.HOST_SECTIONS / "announcement.json").read_text(encoding="utf-8"))
    announcement["settings"].append({"type": "select", "id": "size", "label": "字号", "default": "large",
                                     "options": [{"value": "small", "label": "小"}, {"value": "large", "label": "大"}]})
    write_json(light / "sections" / "announcement.json", announcement)
    (light / "sections" / "announcement.html").write_text(
        '<div class="announcement size-{{ section.settings.size }}">{{ section.settings.text }}</div>', encoding="utf-8")
    grid = json.loads((layouts.HOST_SECTIONS / "product_grid.json").read_text(encoding="utf-8"))
    grid["settings"][1].update(max=10, default=8)
    write_json(light / "sections" / "product_grid.json", grid)
    shutil.copy(layouts.HOST_SECTIONS / "product_grid.html", light / "sections" / "product_grid.html")
    theme_home = json.loads((light / "templates" / "home.json").read_text(encoding="utf-8"))
    theme_home["sections"]["products"]["settings"]["count"] = 8  # the owner's stored 24 no longer fits
    write_json(light / "templates" / "home.json", theme_home)
    manifest = json.loads((light / "theme.json").read_text(encoding="utf-8"))
    manifest["version"] = "2.0.0"
    manifest["settings_schema"][0]["settings"].append({"type": "color", "id": "border", "default": "#dddddd"})
    write_json(light / "theme.json", manifest)
    stored = layouts.layout_path(folder(shop), "home").read_bytes()

    upgraded = Host(shop.instance)  # the next deploy
    assert upgraded.themes.get("light").version == "2.0.0" and not upgraded.themes.errors
    with caplog.at_level(logging.WARNING, logger="kamengsite.layouts"):
        html = page(upgraded)
    assert "店主公告" in html and "size-large" in html  # the new setting's default
    assert "店主介绍" in html and "#123456" in html
    assert "店主通知" not in html and "note" not in section_ids(html)  # its type is gone: skipped, not dropped
    assert "测试月卡" in html  # the grid shows, at the default count
    assert layouts.layout_path(folder(shop), "home").read_bytes() == stored  # nothing rewritten
    problems = layouts.layout_problems(upgraded.app_for("main"))
    by_place = {(p.section, p.setting): p for p in problems}
    assert set(by_place) == {("note", None), ("products", "count")}, problems
    assert "no section of this type" in by_place[("note", None)].reason and by_place[("note", None)].fix
    assert by_place[("products", "count")].file.endswith("layouts/home.json")
    assert "note" in caplog.text  # logged as well


# -- safety --------------------------------------------------------------------------------------

XSS = '"><script>alert(1)</script><img src=x onerror=alert(1)>'


def assert_inert(html):
    """No script element, no event-handler attribute, no javascript: link, no style broken out of."""
    lower = html.lower()
    assert "<script" not in lower and "<img" not in lower
    assert not re.search(r"<[^>]*\son\w+\s*=", lower), re.search(r"<[^>]*\son\w+\s*=", lower)
    assert not re.search(r"(href|src)\s*=\s*[\"']?\s*javascript:", lower)
    assert lower.count("</style>") == lower.count("<style")


def test_xss_in_every_setting_type_renders_inert(shop):
    theme = theme_of(shop)
    data = home_default()
    s = data["sections"]
    s["announcement"]["settings"].update(text=XSS, link="javascript:alert(1)", background=XSS, color="#fff;}</style>")
    s["hero"]["settings"].update(heading=XSS, subheading=XSS, image="x' onerror='alert(1)", button_text=XSS,
                                 button_link='/" onmouseover="alert(1)', align=XSS)
    s["products"]["settings"].update(heading=XSS, count=XSS, category=XSS, show_price=XSS)
    s["about"]["settings"].update(heading=XSS, content=f'<p>ok</p>{XSS}<a href="javascript:alert(1)">x</a>')
    s["features"]["blocks"]["fast"]["settings"].update(icon=XSS, title=XSS, body=XSS)
    s["plugins"]["settings"]["section"] = XSS
    # every refused value is named on save ...
    refused = {(p.section, p.setting) for p in layouts.validate_layout(theme, "home", data)}
    assert refused == {("announcement", "link"), ("announcement", "background"), ("announcement", "color"),
                       ("hero", "image"), ("hero", "button_link"), ("hero", "align"), ("products", "count"),
                       ("products", "category"), ("products", "show_price"), ("plugins", "section")}
    # ... and a file written behind the editor's back renders inert: escaped, defaulted or sanitized
    write_json(layouts.layout_path(folder(shop), "home"), data)
    write_json(folder(shop) / layouts.THEME_SETTINGS_FILE, {"accent": "#000;}</style><script>x</script>", "font": XSS})
    html = page(shop)
    assert_inert(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # text, textarea: escaped
    assert "<p>ok</p>" in html  # rich text keeps its harmless markup
    assert "测试月卡" in html and "--accent:#0f62fe" in html


# -- rendering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("theme", THEMES)
def test_every_theme_renders_home_and_product_pages(shop, theme):
    shop.registry.update("main", theme=theme)
    html = page(shop)
    assert f"theme-{theme}" in html and "测试月卡" in html and "15.00" in html
    assert section_ids(html) == [s for s in home_default(theme)["order"] if s != "plugins"]
    product = Site.get(Site.slug == "main").id and create_product(Site.get(Site.slug == "main"), "详情测试", 990)
    detail = page(shop, f"/p/{product.id}")
    assert "详情测试" in detail and "9.90" in detail and "立即购买" in detail
    assert "购买保障" in detail and detail.index("立即购买") < detail.index("购买保障")  # after the buy form
    for kind, stype in theme_of(shop).section_types.items():  # every preset is a valid section
        for preset in stype.presets:
            placed = {"type": kind, "settings": preset.get("settings", {}),
                      "blocks": {f"b{i}": b for i, b in enumerate(preset.get("blocks", []))}}
            placed["block_order"] = list(placed["blocks"])
            problems = layouts.validate_layout(theme_of(shop), stype.pages[0], {"sections": {"s": placed}, "order": ["s"]})
            assert problems == [], (kind, problems)


def test_the_layout_is_not_read_again_per_request(shop, monkeypatch):
    layouts.save_layout(folder(shop), "home", home_default(), theme=theme_of(shop), publish=True)
    reads = []
    real = layouts.read_json
    monkeypatch.setattr(layouts, "read_json", lambda path: reads.append(path) or real(path))
    for _ in range(3):
        assert "测试月卡" in page(shop)
    assert [p.name for p in reads] == ["home.json"]  # once, not once per request
    data = home_default()
    data["sections"]["announcement"]["settings"]["text"] = "发布后的公告"
    layouts.save_layout(folder(shop), "home", data, theme=theme_of(shop), publish=True)
    assert "发布后的公告" in page(shop)  # publishing invalidates at once
    assert "发布后的公告" in page(shop)
    assert [p.name for p in reads] == ["home.json", "home.json"]


def test_render_one_section_alone_for_an_editor(shop):
    app = shop.app_for("main")
    data = home_default()
    data["sections"]["announcement"]["settings"]["text"] = "预览中的公告"
    from kamengsite.storefront import render_section

    with app.test_request_context("/", base_url="http://main.localhost"):
        html = render_section(app, "home", "announcement", data)
        published = render_section(app, "home", "products")
    assert section_ids(html) == ["announcement"] and "预览中的公告" in html
    assert section_ids(published) == ["products"] and "测试月卡" in published
    described = theme_of(shop).section_types["features"].describe()
    assert described["max_blocks"] == 6 and described["presets"] and described["blocks"][0]["type"] == "feature"


def test_the_owner_arranges_sections_around_the_buy_form(shop):
    product = create_product(Site.get(Site.slug == "main"), "详情测试", 990)
    data = json.loads((PROJECT_ROOT / "themes" / "light" / "templates" / "product.json").read_text(encoding="utf-8"))
    data["sections"]["intro"] = {"type": "rich_text", "settings": {"heading": "购买须知", "content": "<p>先看说明</p>"}}
    data["order"] = ["intro", "main", "trust"]
    data["sections"]["trust"]["disabled"] = True
    layouts.save_layout(folder(shop), "product", data, theme=theme_of(shop), publish=True)
    detail = page(shop, f"/p/{product.id}")
    assert detail.index("购买须知") < detail.index("立即购买") and "购买保障" not in detail
    data["sections"]["hero"] = {"type": "hero"}  # a home-only section
    data["order"].append("hero")
    assert [p.section for p in layouts.validate_layout(theme_of(shop), "product", data)] == ["hero"]


class Widgets:
    from kamengsite.hookspecs import hookimpl

    @hookimpl
    def theme_sections(self, site):
        from markupsafe import Markup

        from kamengsite.sections import Section

        return [Section("w_one", "一号", lambda ctx: Markup("<i>组件一</i>")),
                Section("w_two", "二号", lambda ctx: Markup("<i>组件二</i>"))]


def test_a_plugin_section_shows_the_chosen_plugin_section(shop):
    shop.plugins.register(Widgets(), name="widgets")
    shop.plugins.core.add("widgets")
    html = page(shop)
    assert "组件一" in html and "组件二" in html  # the default: every offered section
    data = home_default()
    data["sections"]["plugins"]["settings"]["section"] = "w_two"
    layouts.save_layout(folder(shop), "home", data, theme=theme_of(shop), publish=True)
    html = page(shop)
    assert "组件二" in html and "组件一" not in html


def test_owner_content_on_every_page_survives_a_theme_upgrade(shop, themes_dir, caplog):
    """An upgrade that removes a section type, renames and removes settings and changes defaults."""
    shop.registry.update("main", theme="business")
    theme = theme_of(shop)
    site = folder(shop)
    games = Category.get(Category.name == "游戏点卡")
    category = layouts.layout_data(theme.layouts["category"])
    category["sections"]["table"] = {"type": "wholesale_table", "settings": {"heading": "店主价目表"}}
    category["sections"]["contact"]["settings"] = {"heading": "店主客服", "qq": "123456", "hours": "全天营业"}
    category["order"] = ["contact", "main", "table", "trust"]
    layouts.save_layout(site, "category", category, theme=theme, publish=True)
    layouts.create_custom_page(site, "about", "关于本店", theme=theme)
    custom = layouts.layout_data(theme.layouts["custom"])
    custom.update(title="关于本店")
    custom["sections"]["content"]["settings"]["content"] = "<p>店主的介绍</p>"
    layouts.save_layout(site, "custom/about", custom, theme=theme, publish=True)
    before = page(shop, f"/c/{games.id}")
    assert "店主价目表" in before and "123456" in before and "全天营业" in before
    stored = {p: p.read_bytes() for p in (site / "layouts").rglob("*.json")}

    # v2 of the theme: wholesale_table is gone; the contact section's "qq" is renamed "qq_number",
    # "hours" removed, the "wechat" default changed; its default layouts follow (they must stay valid).
    business = themes_dir / "business"
    for name in ("wholesale_table.json", "wholesale_table.html"):
        (business / "sections" / name).unlink()
    contact = json.loads((layouts.HOST_SECTIONS / "contact.json").read_text(encoding="utf-8"))
    contact["settings"] = [s for s in contact["settings"] if s["id"] != "hours"]
    for spec in contact["settings"]:
        if spec["id"] == "qq":
            spec["id"] = "qq_number"
        if spec["id"] == "wechat":
            spec["default"] = "新默认微信"
    contact["presets"] = [{"name": "联系客服", "settings": {"qq_number": "10000"}}]
    write_json(business / "sections" / "contact.json", contact)
    (business / "sections" / "contact.html").write_text(
        '<p class="contact">{{ section.settings.heading }}|{{ section.settings.qq_number }}|'
        '{{ section.settings.wechat }}</p>', encoding="utf-8")
    for path in (business / "templates").glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        for sid, placed in list(data["sections"].items()):
            if placed["type"] == "wholesale_table":
                placed.update(type="product_grid", settings={"heading": placed["settings"].get("heading", "")})
            if placed["type"] == "contact":
                settings = placed["settings"]
                settings.pop("hours", None)
                if "qq" in settings:
                    settings["qq_number"] = settings.pop("qq")
        write_json(path, data)
    manifest = json.loads((business / "theme.json").read_text(encoding="utf-8"))
    write_json(business / "theme.json", dict(manifest, version="2.0.0"))

    upgraded = Host(shop.instance)  # the next deploy
    assert upgraded.themes.get("business").version == "2.0.0" and not upgraded.themes.errors
    with caplog.at_level(logging.WARNING, logger="kamengsite.layouts"):
        html = page(upgraded, f"/c/{games.id}")
    assert "店主客服" in html and "新默认微信" in html  # the owner's text kept; an unset setting takes the new default
    assert "123456" not in html and "全天营业" not in html  # values of settings the theme no longer has
    assert "店主价目表" not in html and "table" not in section_ids(html)  # its type is gone: skipped
    assert section_ids(html) == ["contact", "main", "trust"] and "测试月卡" in html
    assert "店主的介绍" in page(upgraded, "/pages/about")
    assert {p: p.read_bytes() for p in (site / "layouts").rglob("*.json")} == stored  # nothing rewritten or dropped
    problems = layouts.layout_problems(upgraded.app_for("main"))
    by_place = {(p.file.rsplit("/", 1)[-1], p.section, p.setting): p for p in problems}
    assert set(by_place) == {("category.json", "table", None), ("category.json", "contact", "qq"),
                             ("category.json", "contact", "hours")}, problems
    assert all(p.fix for p in problems)
    assert "no section of this type" in by_place[("category.json", "table", None)].reason
    assert "renamed or removed" in by_place[("category.json", "contact", "qq")].reason
    assert "table" in caplog.text


def test_theme_check_lists_what_to_fix(cli):
    assert cli("init").exit_code == 0
    checked = cli("theme", "check")
    assert checked.exit_code == 0, checked.output
    assert "no problems" in checked.output
    listed = cli("theme", "list")
    assert listed.exit_code == 0 and "清爽明亮" in listed.output and "business" in listed.output
    data = home_default()
    data["sections"]["products"]["settings"]["count"] = 500
    data["sections"]["ghost"] = {"type": "no_such_type"}
    data["order"].append("ghost")
    write_json(cli.instance_path / "sites" / "main" / "layouts" / "home.json", data)
    checked = cli("theme", "check", "--site", "main")
    assert checked.exit_code == 1
    lines = checked.output.splitlines()
    count = next(line for line in lines if "'count'" in line)
    assert "layouts/home.json" in count and "section 'products'" in count and "default is used" in count
    assert any("'ghost'" in line and "no section of this type" in line for line in lines)
    assert cli("theme", "check", "--site", "nosuch").exit_code == 1


def test_mapping_a_schemas_words_leaves_ids_defaults_and_presets_content_alone():
    """What the editor translates for display (``map_section_words``): a copy, its words only."""
    theme = load_theme(PROJECT_ROOT / "themes" / "dark")
    features = theme.section_types["features"]
    before = json.dumps(features.describe(), sort_keys=True)
    shown = layouts.map_section_words(features.describe(), lambda text: f"<{text}>")
    assert json.dumps(features.describe(), sort_keys=True) == before  # the loaded schema is unchanged
    assert shown["name"] == "<Service guarantees>" and shown["presets"][0]["name"] == "<Service guarantees>"
    assert shown["type"] == "features" and shown["max_blocks"] == features.max_blocks
    block = shown["blocks"][0]
    assert block["type"] == "feature" and block["name"] == "<Guarantee>"
    assert [(s["id"], s["label"], s.get("default")) for s in block["settings"]][:2] == [
        ("icon", "<Icon (one character or emoji)>", "✓"), ("title", "<Heading>", "自动发货")]
    assert shown["presets"][0]["blocks"] == list(features.presets[0]["blocks"])  # content, as written
    hero = layouts.map_section_words(theme.section_types["hero"].describe(), str.upper)
    align = next(s for s in hero["settings"] if s["id"] == "align")
    assert align["options"] == [{"value": "left", "label": "LEFT"}, {"value": "center", "label": "CENTRED"}]
    groups = layouts.map_settings_groups(theme.settings_groups, str.upper)
    assert groups[0]["name"] == "COLOURS" and groups[0]["settings"][0]["id"] == "accent"
    assert theme.settings_groups[0]["name"] == "Colours"
