"""The console's page editor (/admin/theme/): drafts, publishing, who may edit, one-section preview, themes.

The editor's JSON requests are sent as its script sends them (``X-CSRFToken`` header); the
other writes are forms with the page's CSRF token. After each write the test looks at the
files in the site folder and at the storefront, as a visitor sees it.
"""

from __future__ import annotations

import json
import re

import pytest

from kamengsite import layout_history, layouts
from kamengsite.accounts import create_account
from kamengsite.catalog import Category, create_product
from kamengsite.models import Site
from kamengsite.testing import SiteClient, csrf_token, sign_in_console, site_id

PASSWORD = "correct horse battery staple"
STATE_RE = re.compile(r'<script type="application/json" id="editor-state">(.*?)</script>', re.S)


def section_ids(html: str) -> list[str]:
    return re.findall(r'data-section-id="([^"]+)"', html)


class Editor:
    """A signed-in console client on one site, with the editor's state and tokens."""

    def __init__(self, host, slug, username):
        self.host, self.slug = host, slug
        self.client = sign_in_console(SiteClient(host, f"{slug}.localhost"), username, PASSWORD)
        self.folder = host.registry.folder(slug)

    def open(self, page="home"):
        response = self.client.get(f"/admin/theme/?page={page}")
        assert response.status_code == 200, response.status_code
        html = response.get_data(as_text=True)
        self.csrf = re.search(r'data-csrf="([^"]+)"', html).group(1)
        self.form_token = csrf_token(response)
        return json.loads(STATE_RE.search(html).group(1))

    def draft(self, layout, page="home", token=None):
        return self.client.post("/admin/theme/draft", json={"page": page, "layout": layout},
                                headers={"X-CSRFToken": token or self.csrf})

    def form(self, action, **fields):
        return self.client.post(f"/admin/theme/{action}", data={"csrf_token": self.form_token, **fields})

    def storefront(self, path="/"):
        response = SiteClient(self.host, f"{self.slug}.localhost").get(path)  # a visitor, not the owner
        assert response.status_code == 200
        return response.get_data(as_text=True)


@pytest.fixture
def catalogue(host):
    main = Site.get(Site.slug == "main")
    games = Category.create(site=main, name="游戏点卡")
    create_product(main, "测试月卡", 1500, category=games)
    return games


@pytest.fixture
def owner(host, catalogue):
    """The owner of sub-site shop1 (dark theme), signed in to its console."""
    host.registry.create("shop1", template="gaming")
    create_account(site_id("shop1"), "owner", PASSWORD)
    return Editor(host, "shop1", "owner")


def layout_files(folder) -> dict:
    root = folder / "layouts"
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".keep"}


def test_owner_edits_the_draft_and_publishes_it(owner):
    state = owner.open()
    layout = state["layout"]
    assert layout["order"][:4] == ["announcement", "hero", "categories", "products"]
    before = owner.storefront()

    # Each step is one save of the whole draft, as the editor does after every change.
    layout["order"].remove("products")
    layout["order"].insert(0, "products")  # 热门商品 above the banner
    assert owner.draft(layout).status_code == 200
    preset = state["types"]["announcement"]["presets"][0]
    layout["sections"]["notice_1"] = {"type": "announcement", "settings": dict(preset.get("settings", {}),
                                                                             text="限时九折", background="#ff6600")}
    layout["order"].append("notice_1")
    assert owner.draft(layout).status_code == 200
    layout["sections"]["categories"]["disabled"] = True
    assert owner.draft(layout).status_code == 200
    del layout["sections"]["about"]
    layout["order"].remove("about")
    assert owner.draft(layout).status_code == 200
    first_block = layout["sections"]["features"]["block_order"][0]
    layout["sections"]["features"]["blocks"][first_block]["settings"]["title"] = "闪电发货"
    layout["sections"]["announcement"]["settings"]["text"] = "新的公告文字"
    answer = owner.draft(layout)
    assert answer.status_code == 200 and answer.get_json()["undo_depth"] == 5

    assert layouts.layout_path(owner.folder, "home", draft=True).is_file()
    assert owner.storefront() == before  # visitors still see the published page

    assert owner.form("publish", page="home").status_code == 302
    html = owner.storefront()
    shown = section_ids(html)
    assert shown.index("products") < shown.index("hero")
    assert shown[-1] == "notice_1" and "限时九折" in html and "background:#ff6600" in html
    assert "categories" not in shown and "about" not in shown
    assert "闪电发货" in html and "新的公告文字" in html
    assert not layouts.layout_path(owner.folder, "home", draft=True).exists()
    assert json.loads(layouts.layout_path(owner.folder, "home").read_text(encoding="utf-8")) == layout


def test_a_value_that_does_not_fit_is_refused_naming_section_and_setting(owner):
    layout = owner.open()["layout"]
    layout["sections"]["announcement"]["settings"]["background"] = "red"
    answer = owner.draft(layout)
    assert answer.status_code == 400
    body = answer.get_json()
    assert (body["section"], body["setting"], body["block"]) == ("announcement", "background", None)
    assert "公告栏" in body["error"] and "背景颜色" in body["error"] and "#rrggbb" in body["error"]
    assert layout_files(owner.folder) == {}

    layout = owner.open()["layout"]
    block = layout["sections"]["features"]["block_order"][1]
    layout["sections"]["features"]["blocks"][block]["settings"]["title"] = "x" * 501
    body = owner.draft(layout).get_json()
    assert (body["section"], body["block"], body["setting"]) == ("features", block, "title")
    layout["sections"]["hero"]["type"] = "no_such_section"
    assert owner.draft(layout).status_code == 400
    assert owner.draft({"sections": [], "order": "x"}).status_code == 400
    assert owner.client.post("/admin/theme/draft", json={"page": "../site", "layout": layout},
                             headers={"X-CSRFToken": owner.csrf}).status_code == 404
    assert layout_files(owner.folder) == {}


def test_strangers_cannot_write(host, owner, client_for):
    layout = owner.open()["layout"]
    layout["sections"]["announcement"]["settings"]["text"] = "不该出现"

    # Wrong or missing CSRF token, signed in: refused.
    assert owner.draft(layout, token="wrong").status_code == 400
    assert owner.client.post("/admin/theme/draft", json={"page": "home", "layout": layout}).status_code == 400
    assert owner.client.post("/admin/theme/publish", data={"page": "home"}).status_code == 400

    # Anonymous, even with a valid token of its own session.
    anonymous = client_for("shop1.localhost")
    token = csrf_token(anonymous.get("/lookup"))
    assert anonymous.post("/admin/theme/draft", json={"page": "home", "layout": layout},
                          headers={"X-CSRFToken": token}).status_code == 401
    assert anonymous.post("/admin/theme/publish", data={"csrf_token": token, "page": "home"}).status_code == 302
    assert anonymous.get("/admin/theme/").status_code == 302

    # The owner of another site, with that site's session cookie sent to shop1.
    host.registry.create("shop2", template="shop")
    create_account(site_id("shop2"), "owner2", PASSWORD)
    other = Editor(host, "shop2", "owner2")
    other.open()
    cookie = other.client.get_cookie("ks_session", domain="shop2.localhost").value
    intruder = client_for("shop1.localhost")
    intruder.set_cookie("ks_session", cookie, domain="shop1.localhost")
    assert intruder.get("/admin/theme/").status_code == 302
    assert intruder.post("/admin/theme/draft", json={"page": "home", "layout": layout},
                         headers={"X-CSRFToken": other.csrf}).status_code in (400, 401)
    assert intruder.post("/admin/theme/publish", data={"csrf_token": other.form_token, "page": "home"}).status_code \
        in (302, 400)
    assert layout_files(owner.folder) == {}
    assert "不该出现" not in owner.storefront()


def test_the_main_site_operator_edits_the_main_site(host, catalogue):
    create_account(site_id("main"), "boss", PASSWORD)
    editor = Editor(host, "main", "boss")
    layout = editor.open()["layout"]
    layout["sections"]["announcement"]["settings"]["text"] = "主站公告"
    assert editor.draft(layout).status_code == 200
    assert editor.form("publish", page="home").status_code == 302
    assert "主站公告" in editor.storefront()
    assert layouts.layout_path(host.registry.folder("main"), "home").is_file()


def test_one_section_is_rendered_from_the_candidate_layout(owner):
    layout = owner.open()["layout"]
    layout["sections"]["announcement"]["settings"]["text"] = "预览中的公告"
    response = owner.client.post("/admin/theme/render", headers={"X-CSRFToken": owner.csrf},
                                 json={"page": "home", "layout": layout, "section": "announcement"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.startswith('<section id="section-announcement"') and html.rstrip().endswith("</section>")
    assert section_ids(html) == ["announcement"]
    assert "预览中的公告" in html
    assert layout_files(owner.folder) == {}  # a preview writes nothing

    product = owner.open("product")["layout"]
    assert owner.client.post("/admin/theme/render", headers={"X-CSRFToken": owner.csrf},
                             json={"page": "product", "layout": product,
                                   "section": product["order"][0]}).status_code == 200


def test_the_draft_is_previewed_by_the_owner_only(owner, client_for):
    layout = owner.open()["layout"]
    layout["sections"]["announcement"]["settings"]["text"] = "草稿里的公告"
    assert owner.draft(layout).status_code == 200
    mine = owner.client.get("/?_preview=draft")
    assert "草稿里的公告" in mine.get_data(as_text=True)
    assert mine.headers["Cache-Control"] == "no-store"
    assert "草稿里的公告" not in owner.client.get("/").get_data(as_text=True)
    stranger = client_for("shop1.localhost").get("/?_preview=draft")
    assert "草稿里的公告" not in stranger.get_data(as_text=True)


def test_undo_discard_and_restore(owner):
    layout = owner.open()["layout"]
    for text in ("第一版", "第二版"):
        layout["sections"]["announcement"]["settings"]["text"] = text
        assert owner.draft(layout).status_code == 200
    assert owner.form("undo", page="home").status_code == 302
    assert layout_history.draft(owner.folder, "home")["sections"]["announcement"]["settings"]["text"] == "第一版"
    assert owner.form("discard", page="home").status_code == 302
    assert layout_history.draft(owner.folder, "home") is None
    assert owner.form("undo", page="home").status_code == 302  # a discard can be undone too
    assert layout_history.draft(owner.folder, "home")["sections"]["announcement"]["settings"]["text"] == "第一版"

    assert owner.form("publish", page="home").status_code == 302
    assert "第一版" in owner.storefront()
    default = layout_history.versions(owner.folder, "home")[-1]
    assert owner.form("restore", page="home", version=default.id).status_code == 302
    assert "第一版" not in owner.storefront()
    assert owner.form("restore", page="home", version="../../site").status_code == 404


def test_editor_pages_allow_only_their_own_scripts(owner):
    response = owner.client.get("/admin/theme/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy and "frame-src 'self'" in policy
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert 'src="/admin/theme/assets/' in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"\son[a-z]+\s*=", html)
    script = owner.client.get("/admin/theme/assets/Sortable.min.js").get_data(as_text=True)
    assert "MIT License" in script and "Sortable" in script
    for path in ("/admin/theme/themes", "/admin/theme/settings"):
        assert "script-src 'self'" in owner.client.get(path).headers["Content-Security-Policy"]


def test_switching_theme_keeps_the_content_and_lists_what_does_not_fit(host, catalogue):
    host.registry.create("bulk1", template="wholesale")  # the business theme: a wholesale_table on home
    create_account(site_id("bulk1"), "owner", PASSWORD)
    editor = Editor(host, "bulk1", "owner")
    layout = editor.open()["layout"]
    layout["sections"]["announcement"]["settings"]["text"] = "批发公告"
    assert editor.draft(layout).status_code == 200
    assert editor.form("publish", page="home").status_code == 302
    published = layouts.layout_path(editor.folder, "home").read_bytes()

    page = editor.client.get("/admin/theme/themes").get_data(as_text=True)
    assert "清爽明亮" in page and "暗夜电竞" in page
    assert editor.form("themes/switch", theme="light").status_code == 302
    assert host.registry.load("bulk1").theme == "light"
    page = editor.client.get("/admin/theme/themes").get_data(as_text=True)
    assert "wholesale_table" in page and "换回原主题即恢复" in page
    assert layouts.layout_path(editor.folder, "home").read_bytes() == published  # nothing deleted
    html = editor.storefront()
    assert "批发公告" in html and "products" not in section_ids(html)
    # The editor opens what still fits; the stored file is unchanged until the owner publishes.
    assert "products" not in editor.open()["layout"]["sections"]

    assert editor.form("themes/switch", theme="business").status_code == 302
    assert "wholesale_table" not in editor.client.get("/admin/theme/themes").get_data(as_text=True)
    assert "products" in section_ids(editor.storefront())
    assert editor.form("themes/switch", theme="no-such").status_code == 404


def test_theme_settings_form_is_validated(owner):
    page = owner.client.get("/admin/theme/settings")
    assert page.status_code == 200 and 'name="accent"' in page.get_data(as_text=True)
    token = csrf_token(page)
    fields = {"csrf_token": token, "accent": "red", "background": "#000000", "text": "#ffffff", "card": "#111111",
              "font": "serif"}
    refused = owner.client.post("/admin/theme/settings", data=fields)
    assert refused.status_code == 200 and "#rrggbb" in refused.get_data(as_text=True)
    assert not (owner.folder / layouts.THEME_SETTINGS_FILE).exists()
    assert owner.client.post("/admin/theme/settings", data=dict(fields, font="comic")).status_code == 200
    assert owner.client.post("/admin/theme/settings", data=dict(fields, accent="#ff0000")).status_code == 302
    stored = json.loads((owner.folder / layouts.THEME_SETTINGS_FILE).read_text(encoding="utf-8"))
    assert stored["accent"] == "#ff0000" and stored["font"] == "serif"


def test_custom_pages_are_created_edited_and_deleted(owner):
    owner.open()
    assert owner.form("pages", handle="about-us", title="关于我们").status_code == 302
    state = owner.open("custom/about-us")
    assert state["page"] == "custom/about-us" and state["preview"].startswith("/pages/about-us")
    assert "关于我们" in owner.storefront("/pages/about-us")
    layout = state["layout"]
    assert layout["title"] == "关于我们"
    layout["title"] = "关于本店"
    assert owner.draft(layout, page="custom/about-us").status_code == 200
    assert owner.form("publish", page="custom/about-us").status_code == 302
    assert "关于本店" in owner.storefront("/pages/about-us")
    assert dict(layouts.custom_pages(owner.folder))["about-us"] == "关于本店"
    assert owner.form("pages", handle="about-us", title="重复").status_code == 302  # refused with a message
    assert owner.form("pages", handle="Bad Handle", title="x").status_code == 302
    assert [h for h, _ in layouts.custom_pages(owner.folder)] == ["about-us"]
    assert owner.form("pages/delete", page="custom/about-us").status_code == 302
    assert layouts.custom_pages(owner.folder) == []
    assert owner.client.get("/admin/theme/?page=custom/about-us").status_code == 404
    assert owner.form("pages/delete", page="home").status_code == 404


def test_the_menu_links_the_editor(owner):
    html = owner.client.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/theme/"' in html and 'href="/admin/theme/themes"' in html


def test_every_page_opens_in_the_editor(owner):
    for key in layouts.page_keys(owner.folder):
        state = owner.open(key)
        assert state["page"] == key
        assert state["types"] and all(layouts.page_type(key) in t["pages"] for t in state["types"].values())
        assert owner.draft(state["layout"], page=key).status_code == 200, key
    assert owner.client.get("/admin/theme/?page=custom").status_code == 404
    assert owner.client.get("/admin/theme/?page=nope").status_code == 404


MESSAGES_RE = re.compile(r'<script type="application/json" id="editor-messages">(.*?)</script>', re.S)


def test_the_editor_speaks_chinese_by_default_and_english_on_request(owner):
    html = owner.client.get("/admin/theme/").get_data(as_text=True)
    assert "<h1>页面编辑" in html and ">发布</button>" in html and "Page editor" not in html
    assert json.loads(MESSAGES_RE.search(html).group(1))["saved"] == "草稿已保存"

    html = owner.client.get("/admin/theme/?lang=en").get_data(as_text=True)
    assert "<h1>Page editor" in html and ">Publish</button>" in html and "Add a section" in html
    for chinese in ("页面编辑", "发布", "添加区块", "历史版本", "首页", "店铺预览"):
        assert chinese not in html, chinese
    messages = json.loads(MESSAGES_RE.search(html).group(1))  # editor.js takes its words from here
    assert messages["saved"] == "Draft saved" and messages["section_deleted"] == "Section “{name}” deleted (this can be undone)"
    assert not re.search(r"[\u4e00-\u9fff]", json.dumps(messages, ensure_ascii=False))

    layout = owner.open()["layout"]  # the editor's fetch()es carry the cookie: its answers are English too
    layout["sections"]["announcement"]["settings"]["background"] = "red"
    error = owner.draft(layout).get_json()["error"]
    assert "Must be a colour in #rrggbb form" in error and "(announcement)" in error and "须为" not in error

    for path, english, chinese in (("/admin/theme/themes", "Content the current theme cannot show yet", "当前主题暂不能"),
                                   ("/admin/theme/settings", "Site appearance", "全站外观")):
        page = owner.client.get(path).get_data(as_text=True)
        assert english in page and chinese not in page, path
    owner.form("publish", page="home")
    flashed = owner.client.get("/admin/theme/").get_data(as_text=True)
    assert "Published: the shop now shows the new layout" in flashed and "已发布" not in flashed
    assert "(theme default)" in flashed and "（主题默认）" not in flashed  # the earlier version's author


def _state(client, query):
    html = client.get(f"/admin/theme/?{query}").get_data(as_text=True)
    return json.loads(STATE_RE.search(html).group(1))


def test_section_schemas_are_shown_in_the_page_language(owner):
    """The schemas are written in English; the editor shows their words in the page's language
    (names, labels, infos, options, blocks, presets), while defaults and presets' content stay as written."""
    for lang, words in (("zh_CN", {"name": "公告栏", "label": "背景颜色",
                                   "info": "https:// 开头的网址，或以 / 开头的本站路径", "option": "靠左", "block": "保障项",
                                   "block_label": "图标（一个字或表情）",
                                   "preset": "热门商品", "product_grid": "商品列表"}),
                        ("en", {"name": "Announcement bar", "label": "Background colour",
                                "info": "An address starting with https://, or a path on this site starting with /",
                                "option": "Left", "block": "Guarantee", "block_label": "Icon (one character or emoji)",
                                "preset": "Popular products", "product_grid": "Product list"})):
        types = _state(owner.client, f"page=home&lang={lang}")["types"]
        announcement = types["announcement"]
        assert announcement["name"] == words["name"] and announcement["presets"][0]["name"] == words["name"]
        settings = {s["id"]: s for s in announcement["settings"]}
        assert settings["background"]["label"] == words["label"] and settings["link"]["info"] == words["info"]
        assert settings["text"]["default"] == "全场自动发货，24 小时客服在线"  # content: never translated
        align = next(s for s in types["hero"]["settings"] if s["id"] == "align")
        assert [o["value"] for o in align["options"]] == ["left", "center"]
        assert align["options"][0]["label"] == words["option"]
        block = types["features"]["blocks"][0]
        assert block["type"] == "feature" and block["name"] == words["block"]
        assert block["settings"][0]["label"] == words["block_label"]
        assert types["features"]["presets"][0]["blocks"][0]["settings"]["title"] == "自动发货"
        assert types["product_grid"]["name"] == words["product_grid"]
        assert types["product_grid"]["presets"][0]["name"] == words["preset"]
    # editor.js builds the section list, the settings forms and the add-section list from these types:
    # in English, none of their words is Chinese, on any page.
    for key in layouts.page_keys(owner.folder):
        for kind, schema in _state(owner.client, f"page={key}&lang=en")["types"].items():
            chinese = [w for w in layouts.schema_words(schema) if re.search(r"[\u4e00-\u9fff]", w)]
            assert chinese == [], (key, kind, chinese)
    english = _state(owner.client, "page=product")["types"]  # the ks_lang cookie keeps the visitor's choice
    assert english["main_product"]["name"] == "Product details and purchase"
    assert _state(owner.client, "page=product&lang=zh_CN")["types"]["main_product"]["name"] == "商品详情与购买"


def test_a_refused_value_names_the_section_and_setting_in_the_page_language(owner):
    layout = owner.open()["layout"]
    layout["sections"]["announcement"]["settings"]["background"] = "red"
    error = owner.draft(layout).get_json()["error"]
    assert "“公告栏”" in error and "“背景颜色”" in error
    block = layout["sections"]["features"]["block_order"][0]
    layout["sections"]["announcement"]["settings"]["background"] = "#ffffff"
    layout["sections"]["features"]["blocks"][block]["settings"]["title"] = "x" * 501
    error = owner.draft(layout).get_json()["error"]
    assert "“服务保障”" in error and "“标题”" in error

    owner.client.get("/admin/theme/?lang=en")  # the choice is kept in a cookie: the editor's requests follow it
    error = owner.draft(layout).get_json()["error"]
    assert "“Service guarantees”" in error and "“Heading”" in error and "服务保障" not in error
    layout["sections"]["features"]["blocks"][block]["settings"]["title"] = "闪电发货"
    layout["sections"]["announcement"]["settings"]["background"] = "red"
    error = owner.draft(layout).get_json()["error"]
    assert "Section “Announcement bar” (announcement)" in error and "Setting “Background colour” (background)" in error
    assert layout_files(owner.folder) == {}


def test_theme_settings_are_labelled_in_the_page_language(owner):
    chinese = owner.client.get("/admin/theme/settings").get_data(as_text=True)
    for words in ("<h2>颜色</h2>", "<h2>字体</h2>", ">主色（按钮、价格、链接）</label>", ">黑体（无衬线）</option>"):
        assert words in chinese, words
    english = owner.client.get("/admin/theme/settings?lang=en").get_data(as_text=True)
    for words in ("<h2>Colours</h2>", "<h2>Font</h2>", ">Accent colour (buttons, prices, links)</label>",
                  ">Sans-serif (Hei)</option>", 'value="serif"'):
        assert words in english, words
    form = english.split('class="editor-page">', 1)[1].split("</form>", 1)[0]
    assert not re.search(r"[\u4e00-\u9fff]", form)
    # The form still posts ids: a save in English stores the same values.
    fields = {"csrf_token": csrf_token(owner.client.get("/admin/theme/settings?lang=en")), "accent": "#ff0000",
              "background": "#000000", "text": "#ffffff", "card": "#111111", "font": "rounded"}
    assert owner.client.post("/admin/theme/settings", data=fields).status_code == 302
    stored = json.loads((owner.folder / layouts.THEME_SETTINGS_FILE).read_text(encoding="utf-8"))
    assert stored["font"] == "rounded"
