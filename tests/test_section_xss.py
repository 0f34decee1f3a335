"""XSS payloads in every setting type of every section type of every theme render inert.

For each theme and page, a layout holding every section type allowed there gets payloads in
every setting (section and block settings alike). Each value is either refused by validation
(then the problem names that section, block and setting) or, written to the site folder behind
the editor's back, rendered inert: the page is parsed with ``html.parser`` and must have no
script element, no ``on…`` attribute, no ``javascript:`` (or ``data:``/``vbscript:``) URL and no
style that was broken out of.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from kamengsite import layouts
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Category, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.instance import PROJECT_ROOT
from kamengsite.models import Site

from conftest import SiteClient

THEMES = ("light", "dark", "business")
TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
SCRIPT = "<script>alert(1)</script>"
BREAKOUT = '"><img src=x onerror=alert(1)>'
STYLE_BREAKOUT = "</style><script>alert(1)</script>"
#: Two rounds of payloads per setting type: the second has values that pass validation where any can.
PAYLOADS = {
    "text": (SCRIPT + BREAKOUT, STYLE_BREAKOUT + "' onmouseover='alert(1)"),
    "textarea": (SCRIPT + BREAKOUT, STYLE_BREAKOUT + "\n" + BREAKOUT),
    "richtext": ('<p>ok</p><img src=x onerror=alert(1)><a href="javascript:alert(1)">x</a>' + SCRIPT,
                 '<p onclick="alert(1)">ok</p><a href="data:text/html,<script>alert(1)</script>">y</a>'
                 '<style>body{}</style><iframe src="javascript:alert(1)"></iframe>'),
    "url": ("javascript:alert(1)", "/ok?a=1&b=2#top"),
    "image": ("javascript:alert(1)", "https://example.com/x.png"),
    "color": (STYLE_BREAKOUT, "#fff;}" + STYLE_BREAKOUT),
    "number": (SCRIPT, "1;alert(1)"),
    "range": (SCRIPT, "1;alert(1)"),
    "select": (SCRIPT + BREAKOUT, "javascript:alert(1)"),
    "checkbox": (SCRIPT, "true"),
    "product": (SCRIPT, "1 or 1=1"),
    "category": (SCRIPT, "1 or 1=1"),
}
DANGEROUS_URL = re.compile(r"^(javascript|vbscript|data):", re.I)
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "srcset", "poster", "data", "xlink:href", "background"}


def payload(spec: dict, round_: int):
    return PAYLOADS[spec["type"]][round_]


class Inertness(HTMLParser):
    """Everything in a page that could run script."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.sections: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag, attrs):
        self.in_style = self.in_style or tag == "style"
        if tag in ("script", "iframe", "object", "embed", "base"):
            self.found.append(f"<{tag}> element")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=…> handler")
            if name in URL_ATTRIBUTES and DANGEROUS_URL.match(re.sub(r"[\s\x00-\x1f]", "", value)):
                self.found.append(f"<{tag} {name}={value!r}> URL")
            if name == "style" and re.search(r"javascript:|expression\(|[<>\"]|url\((?!'[^'<>\"]*'\))", value, re.I):
                self.found.append(f"<{tag} style={value!r}>")
            if name == "data-section-id":
                self.sections.append(value)

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False

    def handle_data(self, data):
        if self.in_style and re.search(r"javascript:|expression\(|@import|<", data, re.I):
            self.found.append(f"<style> content {data[:60]!r}")


def dangers(html: str) -> tuple[list[str], list[str]]:
    parser = Inertness()
    parser.feed(html)
    parser.close()
    return parser.found, parser.sections


def hostile_section(stype, round_: int) -> dict:
    placed = {"type": stype.type, "settings": {s["id"]: payload(s, round_) for s in stype.settings}}
    if stype.blocks:
        placed["blocks"] = {f"b_{kind}": {"type": kind, "settings": {s["id"]: payload(s, round_)
                                                                     for s in spec["settings"]}}
                            for kind, spec in stype.blocks.items()}
        placed["block_order"] = list(placed["blocks"])
    return placed


def hostile_layout(theme, page: str, round_: int) -> dict:
    """The theme's default for ``page`` plus one section of every type allowed there, all settings hostile."""
    data = layouts.layout_data(theme.layouts[page])
    main = layouts.MAIN_SECTIONS.get(page)
    for kind, stype in sorted(theme.section_types.items()):
        if page in stype.pages and kind != main:
            data["sections"][f"x_{kind}"] = hostile_section(stype, round_)
            data["order"].append(f"x_{kind}")
    return data


#: A test-only section type with one setting of every type, each printed where it could do harm
#: (text, attributes, a link, an inline style, an image): shipped sections need not use every type.
EVERY_TYPE_SCHEMA = {
    "name": "每种设置", "pages": list(layouts.PAGES),
    "settings": [{"type": "select", "id": "select", "options": [{"value": "a", "label": "A"}]},
                 {"type": "range", "id": "range", "min": 0, "max": 10},
                 *({"type": kind, "id": kind} for kind in layouts.SETTING_TYPES if kind not in ("select", "range"))],
}
EVERY_TYPE_HTML = """{% set s = section.settings %}
<div class="every" title="{{ s.text }}" data-n="{{ s.number }}" data-r="{{ s.range }}" data-p="{{ s.product }}"
     data-c="{{ s.category }}" data-s="{{ s.select }}" data-b="{{ s.checkbox }}"
     style="color:{{ s.color }};background-image:url('{{ s.image }}')">
  <a href="{{ s.url or '#' }}">{{ s.text }}</a><p>{{ s.textarea }}</p><div>{{ s.richtext|safe }}</div>
  <img src="{{ s.image or '/static/banner.svg' }}" alt="{{ s.text }}">
</div>
"""


@pytest.fixture
def host(host_factory, tmp_path):
    """A host on a copy of the shipped themes, each with the ``every_type`` section added."""
    themes = tmp_path / "themes"
    shutil.copytree(PROJECT_ROOT / "themes", themes)
    for name in THEMES:
        (themes / name / "sections").mkdir(exist_ok=True)
        (themes / name / "sections" / "every_type.json").write_text(json.dumps(EVERY_TYPE_SCHEMA), encoding="utf-8")
        (themes / name / "sections" / "every_type.html").write_text(EVERY_TYPE_HTML, encoding="utf-8")
    built = host_factory("xss", themes_dir=str(themes))
    assert not built.themes.errors, built.themes.errors
    return built


@pytest.fixture
def shop(host):
    main = Site.get(Site.slug == "main")
    games = Category.create(site=main, name="游戏点卡")
    card = create_product(main, "安全测试月卡", 1500, category=games)
    import_keys(card.skus[0], ["SAFE-0001", "SAFE-0002"], CardKeyCipher.from_instance(host.instance))
    return {"host": host, "card": card, "games": games}


def page_paths(host, card, games) -> dict:
    """A path showing each page type; the client has placed an unpaid and a paid order."""
    client = SiteClient(host, "main.localhost")
    paths = {}
    for page in ("checkout", "order"):
        form = client.get(f"/p/{card.id}")
        placed = client.post(f"/p/{card.id}", data={
            "csrf_token": TOKEN.search(form.get_data(as_text=True)).group(1), "sku": card.skus[0].id,
            "quantity": 1, "contact": "buyer@example.com", "query_password": "pass1234"})
        paths[page] = placed.headers["Location"]
    shown = client.get(paths["order"]).get_data(as_text=True)
    client.post(paths["order"] + "/demo-pay", data={"csrf_token": TOKEN.search(shown).group(1)})
    paths.update({"home": "/", "category": f"/c/{games.id}", "product": f"/p/{card.id}", "lookup": "/lookup",
                  "member": "/member/login", "custom/x": "/pages/x"})
    return client, paths


@pytest.mark.parametrize("round_", [0, 1])
@pytest.mark.parametrize("theme_name", THEMES)
def test_hostile_values_in_every_setting_render_inert(shop, theme_name, round_):
    host = shop["host"]
    host.registry.update("main", theme=theme_name)
    theme = host.themes.get(theme_name)
    folder = host.registry.folder("main")
    layouts.create_custom_page(folder, "x", "安全页", theme=theme)
    client, paths = page_paths(host, shop["card"], shop["games"])
    covered = set()
    for key, path in paths.items():
        kind = layouts.page_type(key)
        data = hostile_layout(theme, kind, round_)
        if kind == "custom":
            data["title"] = SCRIPT + BREAKOUT
        # every refused value is named: its section, block and setting
        refused = {(p.section, p.block, p.setting) for p in layouts.validate_layout(theme, key, data)}
        for sid, placed in data["sections"].items():
            if not sid.startswith("x_"):
                continue
            stype = theme.section_types[placed["type"]]
            specs = [(None, s) for s in stype.settings] + [
                (bid, s) for bid, b in placed.get("blocks", {}).items() for s in stype.blocks[b["type"]]["settings"]]
            for bid, spec in specs:
                value = payload(spec, round_)
                try:
                    layouts.clean_value(spec, value)
                    fits = True
                except ValueError:
                    fits = False
                assert ((sid, bid, spec["id"]) in refused) == (not fits), (theme_name, key, sid, bid, spec)
                covered.add(spec["type"])
        # ... and written behind the editor's back, it renders inert
        path_file = layouts.layout_path(folder, key)
        path_file.parent.mkdir(parents=True, exist_ok=True)
        path_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        response = client.get(path)
        assert response.status_code == 200, (theme_name, key, response.status_code)
        html = response.get_data(as_text=True)
        found, sections = dangers(html)
        assert found == [], (theme_name, key, found)
        assert any(s.startswith("x_") for s in sections), (theme_name, key)  # the hostile sections did render
        if round_ == 0 and "x_announcement" in data["sections"]:
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # text is escaped, not dropped
    assert covered == set(layouts.SETTING_TYPES)  # every setting type was tried


@pytest.mark.parametrize("theme_name", THEMES)
def test_hostile_theme_settings_render_inert(shop, theme_name):
    host = shop["host"]
    host.registry.update("main", theme=theme_name)
    folder = host.registry.folder("main")
    theme = host.themes.get(theme_name)
    values = {spec["id"]: payload(spec, 0) for spec in theme.settings_schema}
    problems = []
    try:
        layouts.save_theme_settings(folder, values, theme=theme)
    except layouts.ConfigError as exc:
        problems.append(exc)
    assert problems and "settings." in str(problems[0].key)  # refused, naming a setting
    (folder / layouts.THEME_SETTINGS_FILE).write_text(json.dumps(values), encoding="utf-8")
    html = SiteClient(host, "main.localhost").get("/").get_data(as_text=True)
    assert dangers(html)[0] == [] and "安全测试月卡" in html
