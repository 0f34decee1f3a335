"""The operator console (/admin/, main site only): login, catalogue forms, key import, CSRF, isolation."""

from __future__ import annotations

import io
import re

import pytest

from kamengsite.testing import form_errors as errors
from flask import session as flask_session

from kamengsite.accounts import Account, create_account, set_password
from kamengsite.admin import MAX_UPLOAD, PriceError, parse_yuan
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import Category, Product, Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.tenancy import all_sites

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
PASSWORD = "correct horse battery staple"
MAIN = "main.localhost"


def token(response) -> str:
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def text(response) -> str:
    return response.get_data(as_text=True)



def report(response) -> dict:
    return {name: int(value) for name, value in re.findall(r'<dd id="([a-z-]+)">(\d+)</dd>', text(response))}


@pytest.fixture
def main_site(host):
    return Site.get(Site.slug == "main")


@pytest.fixture
def operator(main_site):
    return create_account(main_site.id, "boss", PASSWORD)


def login(client, username="boss", password=PASSWORD, next_url=None):
    url = "/admin/login" + (f"?next={next_url}" if next_url else "")
    page = client.get(url)
    return client.post(url, data={"csrf_token": token(page), "username": username, "password": password})


@pytest.fixture
def console(client_for, operator):
    client = client_for(MAIN)
    assert login(client).status_code == 302
    return client


@pytest.fixture
def card_product(main_site):
    return create_product(main_site, "月卡", 1500)


def product_form(csrf, **overrides) -> dict:
    data = {"csrf_token": csrf, "name": "测试商品", "category": "0", "kind": "card", "summary": "", "description": "",
            "skus-0-name": "", "skus-0-price": "15", "skus-0-stock": "0", "skus-0-status": "on", "more_skus": "",
            "min_qty": "1", "max_qty": "10", "per_buyer_limit": "0", "delivery_order": "fifo",
            "low_stock_threshold": "0", "status": "on"}
    data.update(overrides)
    return data


def edit_form(client, product) -> tuple[str, dict]:
    """The edit page's current values as the browser would submit them unchanged."""
    page = client.get(f"/admin/products/{product.id}/edit")
    html = text(page)
    data = {}
    for tag in re.findall(r"<input\b[^>]*>", html):
        attrs = dict(re.findall(r'([a-z_-]+)="([^"]*)"', tag))
        flags = set(re.findall(r"\s(checked|disabled)\b", tag))
        if "name" not in attrs or "disabled" in flags:
            continue
        if attrs.get("type") == "checkbox" and "checked" not in flags:
            continue
        data.setdefault(attrs["name"], attrs.get("value", ""))
    for name, body in re.findall(r'<select [^>]*?name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        chosen = re.search(r'<option selected value="([^"]*)"', body)
        data[name] = chosen.group(1) if chosen else re.search(r'<option value="([^"]*)"', body).group(1)
    for name, body in re.findall(r'<textarea [^>]*?name="([^"]+)"[^>]*>(.*?)</textarea>', html, re.S):
        data[name] = body.strip()
    return html, data


# -- parsing prices -------------------------------------------------------------------


@pytest.mark.parametrize("typed, fen", [("15", 1500), ("15.5", 1550), ("15.50", 1550), ("0.01", 1), ("0", 0),
                                        (" 9.90 ", 990), ("１５", 1500), ("¥12", 1200), ("12元", 1200)])
def test_parse_yuan_gives_whole_fen(typed, fen):
    assert parse_yuan(typed) == fen


@pytest.mark.parametrize("typed, message", [("-5", "negative"), ("1.234", "two decimal places"), ("abc", "Invalid price"),
                                            ("", "Enter a price"), ("1e3", "Invalid price"), ("1,5", "Invalid price"),
                                            ("NaN", "Invalid price"), ("99999999999", "cannot exceed")])
def test_parse_yuan_refuses_with_a_reason(typed, message):
    # Outside a request (the CLI, jobs) the reason is the English text; pages show it in Chinese.
    with pytest.raises(PriceError, match=message):
        parse_yuan(typed)


# -- login -----------------------------------------------------------------------------


CONSOLE_GETS = ["/admin/", "/admin/categories", "/admin/products/new", "/admin/products/{id}/edit",
                "/admin/products/{id}/keys"]


def test_every_console_page_needs_a_login(client_for, card_product):
    client = client_for(MAIN)
    for path in CONSOLE_GETS:
        response = client.get(path.format(id=card_product.id))
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login"), path


def test_writes_without_a_login_are_refused_even_with_a_valid_token(client_for, card_product):
    client = client_for(MAIN)
    csrf = token(client.get("/admin/login"))
    sku = card_product.skus[0]
    posts = {
        "/admin/categories": {"name": "偷偷建的", "parent": "0", "sort": "0"},
        "/admin/products/new": product_form(csrf, name="偷偷建的"),
        f"/admin/products/{card_product.id}/edit": product_form(csrf, name="改掉了"),
        f"/admin/products/{card_product.id}/keys": {"sku": str(sku.id), "text": "SNEAKY-1\nSNEAKY-2"},
    }
    for path, data in posts.items():
        response = client.post(path, data={**data, "csrf_token": csrf})
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login"), path
    assert Category.select().count() == 0
    assert [p.name for p in Product.select()] == ["月卡"]
    assert CardKey.select().count() == 0 and Sku.get_by_id(sku.id).stock == 0


def test_login_takes_the_operator_to_the_page_asked_for(client_for, operator):
    client = client_for(MAIN)
    response = login(client, next_url="/admin/categories")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/categories"
    assert client.get("/admin/categories").status_code == 200
    with all_sites():
        assert Account.get_by_id(operator.id).last_login_at is not None


def test_login_never_redirects_off_the_console(client_for, operator):
    for target in ("https://evil.example/", "//evil.example/admin/", "/p/1"):
        response = login(client_for(MAIN), next_url=target)
        assert response.status_code == 302 and response.headers["Location"] == "/admin/", target


def test_wrong_password_and_unknown_user_are_refused(client_for, operator):
    client = client_for(MAIN)
    for username, password in (("boss", "wrong password!"), ("nobody", PASSWORD), ("BOSS ", "x" * 10)):
        response = login(client, username, password)
        assert response.status_code == 200
        assert "用户名或密码错误" in errors(response)
        assert client.get("/admin/").status_code == 302
    with all_sites():
        assert Account.get_by_id(operator.id).last_login_at is None


def test_usernames_are_not_case_sensitive(client_for, operator):
    client = client_for(MAIN)
    assert login(client, " Boss ").status_code == 302
    assert client.get("/admin/").status_code == 200


def test_login_starts_a_fresh_session(client_for, operator):
    client = client_for(MAIN)
    before = token(client.get("/admin/login"))
    login(client)
    after = token(client.get("/admin/"))
    assert before != after  # the session (and its CSRF secret) was replaced at login


def test_login_is_rate_limited(client_for, operator):
    client = client_for(MAIN)
    csrf = token(client.get("/admin/login"))
    codes = [client.post("/admin/login", data={"csrf_token": csrf, "username": "boss", "password": ""}).status_code
             for _ in range(11)]
    assert codes[:10] == [200] * 10 and codes[10] == 429
    # Even the right password waits now.
    assert client.post("/admin/login", data={"csrf_token": csrf, "username": "boss",
                                             "password": PASSWORD}).status_code == 429
    assert client.get("/admin/").status_code == 302


def test_logout_ends_every_copy_of_the_session(console, client_for):
    stolen = client_for(MAIN)
    stolen.set_cookie("ks_session", domain=MAIN, value=console.get_cookie("ks_session", domain=MAIN).value)
    assert stolen.get("/admin/").status_code == 200
    response = console.post("/admin/logout", data={"csrf_token": token(console.get("/admin/"))})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login"
    assert console.get("/admin/").status_code == 302
    assert stolen.get("/admin/").status_code == 302


def test_sessions_expire_after_twelve_hours(console, monkeypatch):
    import time

    from kamengsite import admin

    assert console.get("/admin/").status_code == 200
    now = time.time()
    monkeypatch.setattr(admin, "_now", lambda: now + 12 * 3600 + 1)
    assert console.get("/admin/").status_code == 302


def test_logout_needs_the_csrf_token(console):
    assert console.post("/admin/logout").status_code == 400
    assert console.get("/admin/").status_code == 200


def test_a_new_password_signs_out_open_sessions(console, main_site):
    set_password(main_site.id, "boss", "another long password")
    assert console.get("/admin/").status_code == 302


def test_console_pages_are_not_cached_or_framed(console):
    response = console.get("/admin/")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


# -- sub-sites -------------------------------------------------------------------------


def test_sub_sites_have_their_own_console_without_the_catalogue(host, client_for, operator, card_product):
    host.registry.create("shop1", template="gaming")
    client = client_for("shop1.localhost")
    assert client.get("/").status_code == 200
    assert client.get("/admin/").status_code == 302  # the sub-site's console: sign in first
    assert client.get("/admin/login").status_code == 200
    # The main site's operator is nobody on the sub-site: accounts are per site.
    assert "用户名或密码错误" in text(login(client))
    assert client.get("/admin/").status_code == 302
    # The catalogue pages are the main site's only: 404, signed in or not.
    paths = ("/admin/categories", "/admin/products/new", f"/admin/products/{card_product.id}/edit",
             f"/admin/products/{card_product.id}/keys")
    for path in paths:
        assert client.get(path).status_code == 404, path
    create_account(Site.get(Site.slug == "shop1").id, "owner", PASSWORD)
    assert login(client, "owner").status_code == 302
    for path in paths:
        assert client.get(path).status_code == 404, path
    csrf = token(client.get("/lookup"))
    assert client.post("/admin/categories", data={"csrf_token": csrf, "name": "偷偷建的"}).status_code == 404
    assert not Category.select().where(Category.name == "偷偷建的").exists()


def test_a_main_site_session_is_void_on_a_sub_site(host, console):
    host.registry.create("shop1", template="gaming")
    cookie = console.get_cookie("ks_session", domain=MAIN).value
    opened = {}
    for slug in ("main", "shop1"):
        app = host.app_for(slug)
        with app.test_request_context("/", headers={"Cookie": f"ks_session={cookie}"}):
            opened[slug] = dict(flask_session)
    assert "operator" in opened["main"]  # the cookie works where it was issued …
    assert opened["shop1"] == {}  # … and is just noise on another site


# -- categories and products ---------------------------------------------------------------


def test_create_categories_with_a_parent(console, main_site):
    page = console.get("/admin/categories")
    response = console.post("/admin/categories", data={"csrf_token": token(page), "name": "游戏点卡", "parent": "0",
                                                        "sort": "2"})
    assert response.status_code == 302
    games = Category.get(Category.name == "游戏点卡")
    assert (games.site_id, games.parent_id, games.sort) == (main_site.id, None, 2)
    console.post("/admin/categories", data={"csrf_token": token(page), "name": "Steam", "parent": str(games.id),
                                            "sort": "0"})
    steam = Category.get(Category.name == "Steam")
    assert steam.parent_id == games.id
    assert "游戏点卡 / Steam" in text(console.get("/admin/categories"))


def test_category_form_errors_keep_the_input(console):
    page = console.get("/admin/categories")
    response = console.post("/admin/categories", data={"csrf_token": token(page), "name": "  ", "parent": "999",
                                                        "sort": "abc"})
    assert response.status_code == 200
    assert {"请填写分类名称", "请选择有效的选项", "请填写一个整数"} <= set(errors(response))
    assert 'value="abc"' in text(response)
    assert Category.select().count() == 0


def test_create_product_converts_yuan_to_fen(console, main_site):
    games = Category.create(site=main_site, name="游戏点卡")
    page = console.get("/admin/products/new")
    assert "游戏点卡" in text(page)
    response = console.post("/admin/products/new", data=product_form(
        token(page), name="王者荣耀 点券", category=str(games.id), **{"skus-0-name": "60 点券", "skus-0-price": "6"},
        more_skus="300 点券 30.5\n\n  648 点券，64.80  \n", max_qty="5", per_buyer_limit="3",
        delivery_order="random", low_stock_threshold="4", members_only="y"))
    assert response.status_code == 302
    product = Product.get(Product.name == "王者荣耀 点券")
    assert response.headers["Location"] == f"/admin/products/{product.id}/keys"
    assert (product.site_id, product.category_id, product.kind) == (main_site.id, games.id, "card")
    assert (product.max_qty, product.per_buyer_limit, product.delivery_order) == (5, 3, "random")
    assert (product.low_stock_threshold, product.members_only, product.loop_key) == (4, True, False)
    skus = [(s.name, s.price_fen, s.stock) for s in Sku.select().where(Sku.product == product.id).order_by(Sku.sort)]
    assert skus == [("60 点券", 600, 0), ("300 点券", 3050, 0), ("648 点券", 6480, 0)]
    listing = text(console.get("/admin/products"))
    assert "王者荣耀 点券" in listing and "30.50" in listing and "64.80" in listing


@pytest.mark.parametrize("price, message", [("-5", "价格不能为负数"), ("15.999", "价格最多两位小数（精确到分）"),
                                            ("十五", "价格格式不对，请填写如 15 或 15.50"), ("", "请填写价格")])
def test_bad_prices_are_shown_next_to_the_field_and_nothing_is_saved(console, price, message):
    page = console.get("/admin/products/new")
    response = console.post("/admin/products/new", data=product_form(
        token(page), name="坏价格", summary="保留我", **{"skus-0-price": price}))
    assert response.status_code == 200
    assert message in errors(response)
    html = text(response)
    assert 'value="保留我"' in html and 'value="坏价格"' in html
    if price:
        assert f'value="{price}"' in html  # what was typed comes back as typed
    assert Product.select().count() == 0 and Sku.select().count() == 0


def test_bad_extra_sku_lines_name_their_line(console):
    page = console.get("/admin/products/new")
    response = console.post("/admin/products/new", data=product_form(
        token(page), more_skus="季卡 42.50\n年卡\n周卡 -1"))
    assert response.status_code == 200
    [message] = [e for e in errors(response) if "行" in e]
    assert "第 2 行" in message and "第 3 行：价格不能为负数" in message
    assert "季卡 42.50" in text(response)  # the textarea keeps what was typed
    assert Product.select().count() == 0


def test_quantity_rules_are_checked_before_saving(console):
    page = console.get("/admin/products/new")
    response = console.post("/admin/products/new", data=product_form(token(page), min_qty="5", max_qty="2",
                                                                     per_buyer_limit="-1"))
    assert "不能小于最少购买数量" in errors(response)
    assert "请填写 0 到 1000000 之间的整数" in errors(response)
    assert Product.select().count() == 0


def test_edit_a_product_and_add_a_sku(console, card_product):
    sku = card_product.skus[0]
    _, data = edit_form(console, card_product)
    assert data["skus-0-price"] == "15.00" and data["name"] == "月卡"
    data.update({"name": "月卡（新）", "skus-0-price": "16.8", "skus-0-name": "一个月", "more_skus": "季卡 45",
                 "status": "off", "delivery_order": "random"})
    response = console.post(f"/admin/products/{card_product.id}/edit", data=data)
    assert response.status_code == 302
    product = Product.get_by_id(card_product.id)
    assert (product.name, product.status, product.delivery_order) == ("月卡（新）", "off", "random")
    skus = [(s.id, s.name, s.price_fen) for s in Sku.select().where(Sku.product == product.id).order_by(Sku.sort)]
    assert skus[0] == (sku.id, "一个月", 1680)
    assert skus[1][1:] == ("季卡", 4500)


def test_edit_errors_keep_every_typed_value(console, card_product):
    _, data = edit_form(console, card_product)
    data.update({"name": "新名字", "summary": "新简介", "skus-0-price": "1.2.3"})
    response = console.post(f"/admin/products/{card_product.id}/edit", data=data)
    assert response.status_code == 200
    html = text(response)
    assert 'value="新名字"' in html and 'value="新简介"' in html and 'value="1.2.3"' in html
    assert Product.get_by_id(card_product.id).name == "月卡"
    assert Sku.get_by_id(card_product.skus[0].id).price_fen == 1500


def test_a_product_of_another_site_is_not_found(console, host):
    host.registry.create("shop1", template="gaming")
    other = create_product(Site.get(Site.slug == "shop1"), "别人的商品", 100)
    for path in ("/admin/products/{id}/edit", "/admin/products/{id}/keys"):
        assert console.get(path.format(id=other.id)).status_code == 404
    assert "别人的商品" not in text(console.get("/admin/"))


def test_counter_stock_of_a_manual_product_is_set_in_the_form(console):
    page = console.get("/admin/products/new")
    console.post("/admin/products/new", data=product_form(token(page), name="人工代充", kind="manual",
                                                          **{"skus-0-stock": "25"}))
    product = Product.get(Product.name == "人工代充")
    sku = Sku.get(Sku.product == product.id)
    assert (product.kind, sku.stock) == ("manual", 25)
    _, data = edit_form(console, product)
    Sku.update(stock=24).where(Sku.id == sku.id).execute()  # a buyer reserved one while the form was open
    data["skus-0-stock"] = "50"
    response = console.post(f"/admin/products/{product.id}/edit", data=data)
    assert response.status_code == 200 and any("库存在你编辑期间变成了 24" in e for e in errors(response))
    assert Sku.get_by_id(sku.id).stock == 24
    _, data = edit_form(console, product)
    data["skus-0-stock"] = "50"
    assert console.post(f"/admin/products/{product.id}/edit", data=data).status_code == 302
    assert Sku.get_by_id(sku.id).stock == 50


def test_kind_cannot_change_once_keys_are_in_stock(console, card_product, host):
    import_keys(card_product.skus[0], ["K-1"], CardKeyCipher.from_instance(host.instance))
    _, data = edit_form(console, card_product)
    data["kind"] = "manual"
    response = console.post(f"/admin/products/{card_product.id}/edit", data=data)
    assert response.status_code == 200 and "该商品已有卡密，不能再修改商品类型或循环卡密设置" in errors(response)
    assert Product.get_by_id(card_product.id).kind == "card"


# -- importing keys -------------------------------------------------------------------------


def keys_of(sku_id, cipher) -> list[str]:
    return sorted(cipher.open(k.sealed, k.sku_id) for k in CardKey.select().where(CardKey.sku == sku_id))


def test_paste_import_reports_what_the_database_holds(console, card_product, host):
    cipher = CardKeyCipher.from_instance(host.instance)
    sku = card_product.skus[0]
    import_keys(sku, ["OLD-1"], cipher)
    page = console.get(f"/admin/products/{card_product.id}/keys")
    pasted = "AAA-1\r\nBBB-2\r\n\r\nAAA-1\r\nOLD-1\r\nbad\x01key\r\n" + "X" * 1100 + "\r\n  CCC-3  \r\n"
    response = console.post(f"/admin/products/{card_product.id}/keys",
                            data={"csrf_token": token(page), "sku": str(sku.id), "text": pasted})
    assert response.status_code == 200
    assert report(response) == {"imported": 3, "duplicates-in-batch": 1, "duplicates-in-stock": 1, "invalid": 2}
    html = text(response)
    assert re.search(r"<td class=\"num\">6</td><td>含有控制字符</td>", html)
    assert re.search(r"<td class=\"num\">7</td><td>超过 1024 个字符</td>", html)
    assert keys_of(sku.id, cipher) == ["AAA-1", "BBB-2", "CCC-3", "OLD-1"]
    assert Sku.get_by_id(sku.id).stock == 4
    assert f'<td class="num" id="stock-{sku.id}">4</td>' in html
    for secret in ("AAA-1", "BBB-2", "CCC-3", "OLD-1"):  # never echoed back, never listed
        assert secret not in html
        assert secret not in text(console.get(f"/admin/products/{card_product.id}/keys"))
        assert secret not in text(console.get("/admin/"))


def test_paste_into_the_chosen_sku(console, main_site, host):
    product = create_product(main_site, "两规格", 100, skus=[("小", 100), ("大", 200)])
    small, big = product.skus.order_by(Sku.sort)
    page = console.get(f"/admin/products/{product.id}/keys")
    console.post(f"/admin/products/{product.id}/keys", data={"csrf_token": token(page), "sku": str(big.id),
                                                             "text": "B-1\nB-2"})
    assert (Sku.get_by_id(small.id).stock, Sku.get_by_id(big.id).stock) == (0, 2)
    response = console.post(f"/admin/products/{product.id}/keys", data={"csrf_token": token(page), "sku": "999999",
                                                                        "text": "B-3"})
    assert "请选择有效的选项" in errors(response)
    assert CardKey.select().count() == 2


def upload(client, product, sku, content: bytes, filename: str, **extra):
    page = client.get(f"/admin/products/{product.id}/keys")
    return client.post(f"/admin/products/{product.id}/keys", content_type="multipart/form-data",
                       data={"csrf_token": token(page), "sku": str(sku.id), "text": "",
                             "file": (io.BytesIO(content), filename), **extra})


def test_upload_txt_with_bom(console, card_product, host):
    cipher = CardKeyCipher.from_instance(host.instance)
    sku = card_product.skus[0]
    content = b"\xef\xbb\xbfT-1\r\nT-2\r\nT-1\r\n\xff\xfe broken\r\nT-3\n"
    response = upload(console, card_product, sku, content, "keys.TXT")
    assert report(response) == {"imported": 3, "duplicates-in-batch": 1, "duplicates-in-stock": 0, "invalid": 1}
    assert re.search(r'<td class="num">4</td><td>不是有效的 UTF-8 或 GB18030 文本</td>', text(response))
    assert keys_of(sku.id, cipher) == ["T-1", "T-2", "T-3"]  # the BOM is not part of the first key
    assert Sku.get_by_id(sku.id).stock == 3


def test_upload_csv_takes_the_first_column_and_can_skip_a_header(console, card_product, host):
    cipher = CardKeyCipher.from_instance(host.instance)
    sku = card_product.skus[0]
    content = "\ufeff卡密,备注\r\nC-1,first\r\n\"C-2,with comma\",x\r\nC-1,again\r\n".encode("utf-8")
    response = upload(console, card_product, sku, content, "keys.csv", skip_header="y")
    assert report(response) == {"imported": 2, "duplicates-in-batch": 1, "duplicates-in-stock": 0, "invalid": 0}
    assert keys_of(sku.id, cipher) == ["C-1", "C-2,with comma"]
    again = upload(console, card_product, sku, content, "keys.csv")  # header not skipped this time
    assert report(again) == {"imported": 1, "duplicates-in-batch": 1, "duplicates-in-stock": 2, "invalid": 0}
    assert keys_of(sku.id, cipher) == ["C-1", "C-2,with comma", "卡密"]
    assert Sku.get_by_id(sku.id).stock == 3


def test_upload_gb18030_is_converted(console, card_product, host):
    cipher = CardKeyCipher.from_instance(host.instance)
    sku = card_product.skus[0]
    response = upload(console, card_product, sku, "点卡-一\n点卡-二\n".encode("gb18030"), "keys.txt")
    assert report(response)["imported"] == 2
    assert keys_of(sku.id, cipher) == ["点卡-一", "点卡-二"]


def test_upload_refuses_other_file_types_and_both_sources(console, card_product):
    sku = card_product.skus[0]
    response = upload(console, card_product, sku, b"K-1\n", "keys.xlsx")
    assert "只支持 .txt 或 .csv 文件" in errors(response)
    response = upload(console, card_product, sku, b"K-1\n", "keys.txt", text="K-2")
    assert "请只选一种方式：粘贴或上传文件" in errors(response)
    page = console.get(f"/admin/products/{card_product.id}/keys")
    response = console.post(f"/admin/products/{card_product.id}/keys",
                            data={"csrf_token": token(page), "sku": str(sku.id), "text": " \n"})
    assert "请粘贴卡密，或选择要上传的文件" in errors(response)
    assert CardKey.select().count() == 0


def test_uploads_over_the_limit_are_refused_with_a_clear_message(console, card_product, host):
    assert MAX_UPLOAD == 64 * 1024 * 1024  # a million keys fit
    app = host.app_for("main")
    assert app.config["ADMIN_MAX_UPLOAD"] == MAX_UPLOAD
    app.config["ADMIN_MAX_UPLOAD"] = 256 * 1024  # a smaller limit keeps the test quick; same code paths
    sku = card_product.skus[0]

    def keys(count):
        return b"".join(b"KEY-%06d\n" % i for i in range(count))  # 11 bytes a line

    response = upload(console, card_product, sku, keys(40_000), "keys.txt")  # 440 KB: over the whole-body cap
    assert response.status_code == 413
    assert "一次最多导入 256 KB" in text(response)
    response = upload(console, card_product, sku, keys(25_000), "keys.txt")  # 275 KB: over the file limit
    assert response.status_code == 200 and "文件太大：上限 256 KB，请拆分后分批导入" in errors(response)
    page = console.get(f"/admin/products/{card_product.id}/keys")
    response = console.post(f"/admin/products/{card_product.id}/keys", content_type="multipart/form-data",
                            data={"csrf_token": token(page), "sku": str(sku.id), "text": keys(25_000).decode()})
    assert response.status_code == 413  # pasted text has the same limit
    assert CardKey.select().count() == 0 and Sku.get_by_id(sku.id).stock == 0
    assert report(upload(console, card_product, sku, keys(23_000), "keys.txt"))["imported"] == 23_000


def test_large_pastes_are_accepted_up_to_the_limit(console, card_product):
    sku = card_product.skus[0]
    pasted = "\n".join(f"PASTE-{i:07d}" for i in range(60_000))  # ~840 KB: over the default form field limit
    page = console.get(f"/admin/products/{card_product.id}/keys")
    response = console.post(f"/admin/products/{card_product.id}/keys", content_type="multipart/form-data",
                            data={"csrf_token": token(page), "sku": str(sku.id), "text": pasted})
    assert response.status_code == 200 and report(response)["imported"] == 60_000
    assert Sku.get_by_id(sku.id).stock == 60_000


def test_non_card_products_take_no_keys(console, main_site):
    product = create_product(main_site, "代充", 1000, kind="topup")
    page = console.get(f"/admin/products/{product.id}/keys")
    assert "不使用卡密" in text(page) and "导入卡密" not in text(page).split("<main>")[1]
    response = console.post(f"/admin/products/{product.id}/keys",
                            data={"csrf_token": token(page), "sku": str(product.skus[0].id), "text": "K-1"})
    assert response.status_code == 200
    assert CardKey.select().count() == 0


def test_a_loop_key_is_set_once_per_sku_and_never_shown(console, main_site, host):
    product = create_product(main_site, "共享账号", 500, loop_key=True)
    sku = product.skus[0]
    page = console.get(f"/admin/products/{product.id}/keys")
    assert "未设置" in text(page)
    response = console.post(f"/admin/products/{product.id}/keys",
                            data={"csrf_token": token(page), "sku": str(sku.id), "secret": "user:pass-123"})
    assert response.status_code == 302
    cipher = CardKeyCipher.from_instance(host.instance)
    assert keys_of(sku.id, cipher) == ["user:pass-123"]
    assert Sku.get_by_id(sku.id).stock == 0  # the stock of a loop key is the operator's counter
    again = console.post(f"/admin/products/{product.id}/keys",
                         data={"csrf_token": token(page), "sku": str(sku.id), "secret": "other"})
    assert any("已经设置了循环卡密" in e for e in errors(again))
    assert keys_of(sku.id, cipher) == ["user:pass-123"]
    assert "user:pass-123" not in text(again) and "已设置" in text(again)


# -- CSRF --------------------------------------------------------------------------------------


def test_writes_without_the_csrf_token_are_refused_and_write_nothing(console, card_product, main_site):
    sku = card_product.skus[0]
    posts = {
        "/admin/categories": {"name": "无令牌", "parent": "0", "sort": "0"},
        "/admin/products/new": product_form(None, name="无令牌"),
        f"/admin/products/{card_product.id}/edit": product_form(None, name="无令牌"),
        f"/admin/products/{card_product.id}/keys": {"sku": str(sku.id), "text": "NO-TOKEN-1"},
    }
    for path, data in posts.items():
        data = {k: v for k, v in data.items() if k != "csrf_token"}
        assert console.post(path, data=data).status_code == 400, path
        assert console.post(path, data={**data, "csrf_token": "forged"}).status_code == 400, path
    assert Category.select().count() == 0
    assert [p.name for p in Product.select()] == ["月卡"]
    assert CardKey.select().count() == 0
    fresh = create_account(main_site.id, "other", PASSWORD)
    response = console.post("/admin/login", data={"username": "other", "password": PASSWORD})
    assert response.status_code == 400
    with all_sites():
        assert Account.get_by_id(fresh.id).last_login_at is None


def test_everything_an_operator_typed_is_escaped(console, main_site):
    category = Category.create(site=main_site, name="<b>分类</b>")
    product = create_product(main_site, '<script>alert("x")</script>', 100, category=category,
                             skus=[("<i>规格</i>", 100)], summary='"><img src=x>')
    pages = [console.get("/admin/products"), console.get("/admin/categories"),
             console.get(f"/admin/products/{product.id}/edit"), console.get(f"/admin/products/{product.id}/keys")]
    for page in pages:
        html = text(page)
        assert "<script>alert" not in html and "<b>分类" not in html and "<i>规格" not in html
        assert "<img src=x>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text(pages[0])


def test_console_round_trip_on_every_database(db_host):
    from conftest import SiteClient

    main = Site.get(Site.slug == "main")
    create_account(main.id, "boss", PASSWORD)
    client = SiteClient(db_host, MAIN)
    assert login(client).status_code == 302
    page = client.get("/admin/products/new")
    created = client.post("/admin/products/new", data=product_form(token(page), name="各库通用", more_skus="大 20.5"))
    assert created.status_code == 302
    product = Product.get(Product.name == "各库通用")
    skus = list(Sku.select().where(Sku.product == product.id).order_by(Sku.sort))
    assert [s.price_fen for s in skus] == [1500, 2050]
    page = client.get(f"/admin/products/{product.id}/keys")
    response = client.post(f"/admin/products/{product.id}/keys", data={
        "csrf_token": token(page), "sku": str(skus[1].id), "text": "DB-1\nDB-2\nDB-1\n"})
    assert report(response) == {"imported": 2, "duplicates-in-batch": 1, "duplicates-in-stock": 0, "invalid": 0}
    assert Sku.get_by_id(skus[1].id).stock == 2
    with all_sites():
        assert Account.select().count() == 1


def test_a_sub_site_whose_level_allows_own_goods_keeps_its_own_catalogue(host, client_for, card_product):
    from kamengsite.cardkeys import CardKey
    from kamengsite.levels import seed_default_levels

    seed_default_levels()  # gold lists its own goods; bronze does not
    host.registry.create("goldshop", template="gaming")
    host.registry.update("goldshop", level="gold")
    gold = Site.get(Site.slug == "goldshop")
    create_account(gold.id, "owner", PASSWORD)
    client = client_for("goldshop.localhost")
    assert login(client, "owner").status_code == 302
    assert "自营商品" in text(client.get("/admin/"))
    page = client.get("/admin/products/new")
    created = client.post("/admin/products/new", data=product_form(token(page), name="站长自营卡", **{"skus-0-price": "25"}))
    assert created.status_code == 302
    own = Product.get(Product.name == "站长自营卡")
    assert own.site_id == gold.id  # the site's own catalogue, never the main site's
    keys = client.get(f"/admin/products/{own.id}/keys")
    client.post(f"/admin/products/{own.id}/keys", data={"csrf_token": token(keys), "sku": str(own.skus[0].id),
                                                         "text": "OWN-A\nOWN-B"})
    assert CardKey.select().where(CardKey.sku == own.skus[0].id).count() == 2
    listing = text(client.get("/admin/products"))
    assert "站长自营卡" in listing and card_product.name not in listing  # the main site's products are not its own
    assert client.get(f"/admin/products/{card_product.id}/edit").status_code == 404
    storefront = text(client_for("goldshop.localhost").get("/"))
    assert "站长自营卡" in storefront and "¥25.00" in storefront
    # A bronze site has no catalogue of its own: the pages stay a 404 even for its signed-in owner.
    host.registry.update("goldshop", level="bronze")
    assert client.get("/admin/").status_code == 200  # still signed in: the overview answers
    assert client.get("/admin/products").status_code == 404
    assert "自营商品" not in text(client.get("/admin/"))


# -- languages ---------------------------------------------------------------------------------


def test_the_console_is_chinese_by_default_and_english_on_request(console, main_site):
    create_product(main_site, "月卡", 123450)
    listing = text(console.get("/admin/products"))
    assert "<h1>商品 " in listing and "新建商品" in listing and "123450" not in listing and "1234.50" in listing
    assert '<html lang="zh-CN">' in listing
    english = console.get("/admin/products?lang=en")
    html = text(english)
    assert "<h1>Products " in html and "New product" in html and "Sign out" in html
    assert "新建商品" not in html and "退出登录" not in html and "管理后台" not in html
    assert "1,234.50" in html and "月卡" in html  # money the English way; the product's name is content
    assert '<html lang="en">' in html
    # The switcher marks the language shown; the choice is remembered in a cookie.
    assert re.search(r'<a href="\?lang=en"[^>]*aria-current="true"[^>]*>English</a>', html)
    assert not re.search(r'<a href="\?lang=zh_CN"[^>]*aria-current', html)
    assert "ks_lang=en" in english.headers.get("Set-Cookie", "")
    assert "<h1>Categories</h1>" in text(console.get("/admin/categories"))
    assert "<h1>分类</h1>" in text(console.get("/admin/categories?lang=zh_CN"))


def test_product_form_and_its_errors_in_english(console):
    page = console.get("/admin/products/new?lang=en")
    html = text(page)
    assert "Product name" in html and "Variants and prices" in html and "Card keys, delivered automatically" in html
    assert "商品名称" not in html and "规格与价格" not in html and "卡密自动发货" not in html
    response = console.post("/admin/products/new", data=product_form(
        token(page), name="坏价格", **{"skus-0-price": "十五"}, more_skus="年卡"))
    assert "Invalid price: write it like 15 or 15.50" in errors(response)
    assert any(e.startswith("Line 1: write it as &#34;name price&#34;") for e in errors(response))
    assert "价格格式不对" not in text(response)
    assert Product.select().count() == 0


def test_key_import_in_english(console, card_product):
    sku = card_product.skus[0]
    page = console.get(f"/admin/products/{card_product.id}/keys?lang=en")
    assert "Import keys" in text(page) and "导入卡密" not in text(page)
    response = console.post(f"/admin/products/{card_product.id}/keys",
                            data={"csrf_token": token(page), "sku": str(sku.id), "text": "E-1\nbad\x01key\n" + "X" * 1100})
    html = text(response)
    assert report(response) == {"imported": 1, "duplicates-in-batch": 0, "duplicates-in-stock": 0, "invalid": 2}
    assert "Import result" in html and "导入结果" not in html
    assert '<td class="num">2</td><td>Contains control characters</td>' in html
    assert '<td class="num">3</td><td>Longer than 1024 characters</td>' in html
    assert "Default variant (¥15.00, stock 1)" in html


def test_the_main_console_opens_on_the_dashboard(console):
    page = text(console.get("/admin/"))
    assert 'id="kpis"' in page or "数据概览" in page
    assert "/admin/products" in page  # the products list moved to its own address


def test_a_large_key_file_goes_to_a_background_job_with_progress(console, card_product, monkeypatch):
    from kamengsite import admin, jobs

    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    monkeypatch.setattr(admin, "BACKGROUND_IMPORT_BYTES", 1024)
    try:
        page = console.get(f"/admin/products/{card_product.id}/keys")
        data = "\n".join(f"BIG-{i:05d}" for i in range(400)).encode()
        response = console.post(f"/admin/products/{card_product.id}/keys", data={
            "csrf_token": token(page), "sku": card_product.skus[0].id,
            "file": (io.BytesIO(data), "big.txt")}, content_type="multipart/form-data")
        assert response.status_code == 302 and "/admin/jobs/" in response.headers["Location"]
        job = text(console.get(response.headers["Location"]))
        assert 'data-status="done"' in job and '<dd id="imported">400</dd>' in job
    finally:
        jobs.bind(None)
