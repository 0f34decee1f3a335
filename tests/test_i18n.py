"""Languages: complete catalogs, no untranslatable text, the locale of a request, formatting."""

from __future__ import annotations

import datetime
import os
import textwrap

import pytest
from babel.messages.mofile import read_mo

from kamengsite import i18n
from kamengsite.catalogs import (Package, extract, hardcoded, missing, packages, shadowed_gettext, untranslatable,
                                 update)
from kamengsite.pagecache import page_key

PACKAGES = packages()


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
@pytest.mark.parametrize("locale", i18n.LOCALES)
def test_every_string_is_translated(package, locale):
    """An interface string missing from (or empty, or fuzzy in) a catalog fails here, named with its file."""
    assert missing(package, locale) == []


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_interface_text_is_written_in_chinese_in_code(package):
    """Chinese in a Python string or a template can't be translated: it belongs in the zh_CN catalog."""
    assert untranslatable(package) == []


# -- the tools themselves -------------------------------------------------------------


@pytest.fixture
def tiny_package(tmp_path):
    folder = tmp_path / "kamengsite_tiny"
    (folder / "templates").mkdir(parents=True)
    (folder / "__init__.py").write_text('from kamengsite.i18n import _\n\ndef title():\n    return _("Top up")\n')
    (folder / "templates" / "page.html").write_text('<h1>{{ _("%(n)s keys left", n=3) }}</h1>\n')
    return Package("kamengsite_tiny", folder)


def test_update_adds_new_strings_and_check_reports_them_until_translated(tiny_package):
    counts = update(tiny_package)
    assert counts == {"zh_CN": 2, "en": 0}  # English is the source: its catalog is filled at once
    gaps = missing(tiny_package, "zh_CN")
    assert len(gaps) == 2 and any("'Top up'" in gap and "__init__.py" in gap for gap in gaps)
    assert missing(tiny_package, "en") == []

    po = tiny_package.po("zh_CN")
    text = po.read_text(encoding="utf-8")
    text = text.replace('msgid "Top up"\nmsgstr ""', 'msgid "Top up"\nmsgstr "充值"')
    po.write_text(text, encoding="utf-8")
    assert [gap for gap in missing(tiny_package, "zh_CN") if "Top up" in gap] == []
    assert len(missing(tiny_package, "zh_CN")) == 1

    update(tiny_package)  # a second update keeps the translation and compiles it
    mo = po.with_suffix(".mo")
    with open(mo, "rb") as fh:
        assert read_mo(fh).get("Top up").string == "充值"


def test_a_fuzzy_translation_counts_as_missing(tiny_package):
    update(tiny_package)
    po = tiny_package.po("zh_CN")
    text = po.read_text(encoding="utf-8").replace('msgid "Top up"\nmsgstr ""', '#, fuzzy\nmsgid "Top up"\nmsgstr "充值"')
    po.write_text(text, encoding="utf-8")
    assert any("Top up" in gap for gap in missing(tiny_package, "zh_CN"))


def test_scan_finds_chinese_in_strings_and_templates_but_not_in_docstrings_or_comments(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(textwrap.dedent('''\
        """模块说明：文档不算。"""
        # 注释也不算
        def f():
            """函数文档"""
            label = "商品"
            name = "简体中文"  # i18n: keep
            return label
        '''), encoding="utf-8")
    assert [row for row, _ in hardcoded(source)] == [5]
    page = tmp_path / "page.html"
    page.write_text('{# 注释 #}\n<p>{{ _("Products") }}</p>\n<p>订单</p>\n<b>中文</b>{# i18n: keep #}\n', encoding="utf-8")
    assert [row for row, _ in hardcoded(page)] == [3]


def test_a_stale_catalog_is_recompiled_and_a_read_only_one_compiles_elsewhere(tmp_path, monkeypatch):
    folder = tmp_path / "translations"
    po = folder / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid "Orders"\nmsgstr "订单"\n', encoding="utf-8")
    (po.parent / "extra.po").write_text('msgid "Keys"\nmsgstr "卡密"\n', encoding="utf-8")
    assert i18n.compile_catalogs(folder) == folder
    mo = po.with_suffix(".mo")
    with open(mo, "rb") as fh:
        catalog = read_mo(fh)
    assert catalog.get("Orders").string == "订单" and catalog.get("Keys").string == "卡密"  # every .po merged

    po.write_text('msgid "Orders"\nmsgstr "全部订单"\n', encoding="utf-8")
    later = mo.stat().st_mtime + 5
    os.utime(po, (later, later))
    i18n.compile_catalogs(folder)
    with open(mo, "rb") as fh:
        assert read_mo(fh).get("Orders").string == "全部订单"

    mo.unlink()
    real_access = os.access
    monkeypatch.setattr(i18n.os, "access", lambda path, mode: False if path == po.parent else real_access(path, mode))
    target = i18n.compile_catalogs(folder)  # an installed, read-only package
    assert not mo.exists()
    assert target != folder and (target / "zh_Hans_CN" / "LC_MESSAGES" / "messages.mo").exists()


# -- JSON schemas: section types and theme settings ------------------------------------------

SECTION_SCHEMA = """{
  "name": "Countdown",
  "pages": ["home"],
  "settings": [
    {"type": "text", "id": "heading", "label": "Countdown heading", "default": "距离活动结束",
     "info": "Shown above the clock"},
    {"type": "select", "id": "size", "label": "Size", "default": "large",
     "options": [{"value": "small", "label": "Small"}, {"value": "large", "label": "Large"}]}
  ],
  "blocks": [{"type": "step", "name": "Step", "settings": [{"type": "text", "id": "label", "label": "Step text"}]}],
  "presets": [{"name": "Sale countdown", "settings": {"heading": "限时特惠"},
               "blocks": [{"type": "step", "settings": {"label": "第一步"}}]}]
}
"""
THEME_JSON = """{
  "name": "tiny", "version": "1.0",
  "label": {"zh_CN": "小主题", "en": "Tiny"},
  "settings_schema": [{"name": "Colours", "settings": [
    {"type": "color", "id": "accent", "label": "Accent colour", "default": "#123456"}]}]
}
"""


@pytest.fixture
def tiny_theme(tmp_path):
    folder = tmp_path / "tiny"
    (folder / "sections").mkdir(parents=True)
    (folder / "templates").mkdir()
    (folder / "theme.json").write_text(THEME_JSON, encoding="utf-8")
    (folder / "sections" / "countdown.json").write_text(SECTION_SCHEMA, encoding="utf-8")
    (folder / "templates" / "home.json").write_text('{"sections": {"a": {"type": "countdown", "settings": '
                                                    '{"heading": "模板内容"}}}, "order": ["a"]}', encoding="utf-8")
    return Package("theme-tiny", folder)


def test_the_words_of_json_schemas_are_extracted_but_not_their_content(tiny_theme):
    catalog = extract(tiny_theme)
    found = {message.id: message.locations for message in catalog if message.id}
    assert set(found) == {"Countdown", "Countdown heading", "Shown above the clock", "Size", "Small", "Large", "Step",
                          "Step text", "Sale countdown", "Colours", "Accent colour"}
    assert found["Countdown heading"] == [("sections/countdown.json", 5)]  # file and line, like any string
    assert found["Large"] == [("sections/countdown.json", 8)]
    assert found["Accent colour"] == [("theme.json", 5)]
    # Until translated, `kamengsite i18n check` lists them with where they are.
    update(tiny_theme)
    gaps = missing(tiny_theme, "zh_CN")
    assert "'Sale countdown' (sections/countdown.json:11)" in gaps and len(gaps) == 11
    assert missing(tiny_theme, "en") == []


def test_the_host_section_schemas_are_extracted_and_translated():
    host = next(p for p in PACKAGES if p.name == "kamengsite")
    catalog = extract(host)
    assert ("templates/sections/announcement.json", 2) in catalog.get("Announcement bar").locations
    assert catalog.get("Background colour") is not None and catalog.get("全场自动发货，24 小时客服在线") is None
    gaps = [gap for locale in i18n.LOCALES for gap in missing(host, locale) if ".json:" in gap]
    assert gaps == []


def test_scan_finds_chinese_in_the_words_of_a_schema_but_not_in_its_content(tiny_theme):
    schema = tiny_theme.folder / "sections" / "countdown.json"
    assert hardcoded(schema) == []  # Chinese defaults and presets' settings are the owner's starting content
    schema.write_text(SECTION_SCHEMA.replace('"label": "Size"', '"label": "字号"')
                      .replace('"name": "Step"', '"name": "步骤"'), encoding="utf-8")
    assert hardcoded(schema) == [(7, "字号"), (10, "步骤")]
    manifest = tiny_theme.folder / "theme.json"
    assert hardcoded(manifest) == []  # its label names the theme in each language
    manifest.write_text(THEME_JSON.replace('"Colours"', '"颜色"'), encoding="utf-8")
    assert hardcoded(manifest) == [(4, "颜色")]
    assert hardcoded(tiny_theme.folder / "templates" / "home.json") == []  # a layout: content only
    found = untranslatable(tiny_theme)
    assert any(line.endswith("countdown.json:7: 字号") for line in found) and len(found) == 3


# -- the language of a request ----------------------------------------------------------


def _main_app(host):
    return host.app_for("main")


def test_the_site_locale_is_the_default_and_the_visitor_can_switch(host):
    app = _main_app(host)
    with app.test_request_context("/"):
        assert i18n.current_locale() == "zh_CN"
    with app.test_request_context("/?lang=en"):
        assert i18n.current_locale() == "en"
    with app.test_request_context("/?lang=xx"):
        assert i18n.current_locale() == "zh_CN"  # an unknown language is ignored
    with app.test_request_context("/", headers={"Cookie": "ks_lang=en"}):
        assert i18n.current_locale() == "en"
    with app.test_request_context("/", headers={"Accept-Language": "en-US,en;q=0.9"}):
        assert i18n.current_locale() == "zh_CN"  # the owner's language, until the visitor switches


def test_the_visitor_choice_is_kept_in_a_cookie(host, client_for):
    client = client_for("main.localhost")
    response = client.get("/?lang=en")
    assert "ks_lang=en" in response.headers.get("Set-Cookie", "")
    assert client.get_cookie("ks_lang", domain="main.localhost").value == "en"
    client.get("/?lang=zh_CN")
    assert client.get_cookie("ks_lang", domain="main.localhost").value == "zh_CN"


def test_a_site_can_speak_english_by_default(host, site_files):
    host.registry.create("intl", template="shop")
    site_files.edit("intl", locale="en")
    app = host.app_for("intl")
    with app.test_request_context("/"):
        assert i18n.current_locale() == "en"
    with app.test_request_context("/", headers={"Cookie": "ks_lang=zh_CN"}):
        assert i18n.current_locale() == "zh_CN"


def test_the_page_cache_keeps_each_language_apart(host):
    app = _main_app(host)
    environ = {"HTTP_HOST": "main.localhost", "wsgi.url_scheme": "http"}
    chinese = page_key(app, environ, "storefront.home", {}, "home")
    english = page_key(app, {**environ, "HTTP_COOKIE": "ks_lang=en"}, "storefront.home", {}, "home")
    assert chinese != english
    assert page_key(app, {**environ, "HTTP_COOKIE": "ks_lang=zh_CN"}, "storefront.home", {}, "home") == chinese


def test_chosen_locale_reads_only_its_own_cookie():
    assert i18n.chosen_locale("a=1; ks_lang=en; b=2", "zh_CN") == "en"
    assert i18n.chosen_locale("xks_lang=en", "zh_CN") == "zh_CN"
    assert i18n.chosen_locale("ks_lang=fr", "en") == "en"
    assert i18n.chosen_locale(None, "bogus") == "zh_CN"


# -- formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize("lang, money, when", [
    ("zh_CN", "123456.78", "2026-01-01 20:05"),
    ("en", "123,456.78", "1 Jan 2026, 20:05"),
])
def test_money_and_dates_follow_the_language_and_the_site_timezone(host, lang, money, when):
    app = _main_app(host)
    with app.test_request_context(f"/?lang={lang}"):
        assert i18n.format_money(12345678) == money
        assert i18n.format_money(-5) == ("-0.05" if lang == "zh_CN" else "-0.05")
        # stored in UTC, shown in Asia/Shanghai (UTC+8)
        assert i18n.format_when(datetime.datetime(2026, 1, 1, 12, 5)) == when
        assert i18n.format_when(None) == ""


def test_site_timezone_is_validated(host, site_files):
    from kamengsite.errors import ConfigError

    host.registry.create("tz", template="shop")
    site_files.edit("tz", timezone="Europe/Berlin")
    assert host.registry.load("tz").timezone == "Europe/Berlin"
    site_files.edit("tz", timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="timezone"):
        host.registry.load("tz")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_function_hides_gettext_behind_a_local_underscore(package):
    found = [f"{path}:{line} {name}" for path in sorted(package.folder.rglob("*.py")) if "/tests/" not in str(path)
             for line, name in shadowed_gettext(path)]
    assert found == []


def test_the_shadow_check_finds_a_loop_variable(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text('from kamengsite.i18n import _\n\ndef f(rows):\n    for _ in rows:\n        pass\n'
                      '    return _("Done")\n\ndef g(rows):\n    firsts = [a for a, _ in rows]\n'
                      '    return _("Fine %(n)s", n=len(firsts))\n', encoding="utf-8")
    assert shadowed_gettext(source) == [(3, "f")]  # g's "_" is the comprehension's own


def test_an_order_refused_in_a_request_says_why_in_the_buyers_language(host):
    from kamengsite.catalog import Product, create_product
    from kamengsite.models import Site
    from kamengsite.orders import InvalidOrder, create_order

    main = Site.get(Site.slug == "main")
    product = create_product(main, "下架的卡", 1000)
    Product.update(status="off").where(Product.id == product.id).execute()
    app = _main_app(host)
    for lang, reason in (("zh_CN", "该商品未上架"), ("en", "this item is not on sale")):
        with app.test_request_context(f"/?lang={lang}"):
            with pytest.raises(InvalidOrder) as refused:
                create_order(site_id=main.id, sku_id=product.skus[0].id, quantity=1, contact="a@example.com")
            assert str(refused.value) == reason


def test_the_closed_page_speaks_the_sites_language_or_the_visitors(host, client_for):
    host.registry.create("shut", template="shop", name="<b>关门小店</b>")
    host.registry.update("shut", enabled=False)
    chinese = client_for("shut.localhost").get("/")
    assert chinese.status_code == 503
    page = chinese.get_data(as_text=True)
    assert "暂停营业" in page and "&lt;b&gt;关门小店&lt;/b&gt;" in page and "<b>" not in page
    client = client_for("shut.localhost")
    client.set_cookie("ks_lang", "en", domain="shut.localhost")
    english = client.get("/").get_data(as_text=True)
    assert "is closed for now" in english and "暂停营业" not in english and '<html lang="en">' in english
