"""The buyer's pages: product → order → demo payment → keys; lookup; CSRF; rate limits; site isolation."""

from __future__ import annotations

import re

import pytest

from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Sku, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


@pytest.fixture
def shop(host):
    host.registry.create("shop1", template="gaming")
    host.registry.create("shop2", template="wholesale")
    main = Site.get(Site.slug == "main")
    product = create_product(main, "测试月卡", 1500, max_qty=5)
    import_keys(product.skus[0], [f"CODE-{i:04d}" for i in range(3)], CardKeyCipher.from_instance(host.instance))
    return product


def token(response):
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def buy(client, product, quantity=1, contact="buyer@example.com", password="pass1234"):
    page = client.get(f"/p/{product.id}")
    return client.post(f"/p/{product.id}", data={
        "csrf_token": token(page), "sku": product.skus[0].id, "quantity": quantity,
        "contact": contact, "query_password": password})


def test_buy_pay_and_see_the_keys(shop, client_for):
    client = client_for("shop1.localhost")
    home = client.get("/").get_data(as_text=True)
    assert "测试月卡" in home and "15.00" in home
    created = buy(client, shop, quantity=2)
    assert created.status_code == 302
    order_path = created.headers["Location"]
    page = client.get(order_path)
    assert "待支付" in page.get_data(as_text=True)
    paid = client.post(order_path + "/demo-pay", data={"csrf_token": token(page)})
    assert paid.status_code == 302
    text = client.get(order_path).get_data(as_text=True)
    assert "已发货" in text
    assert sorted(re.findall(r"<code>(CODE-\d+)</code>", text)) == ["CODE-0000", "CODE-0001"]


def test_keys_are_hidden_from_another_browser_until_it_proves_the_password(shop, client_for):
    buyer = client_for("shop1.localhost")
    order_path = buy(buyer, shop).headers["Location"]
    buyer.post(order_path + "/demo-pay", data={"csrf_token": token(buyer.get(order_path))})
    stranger = client_for("shop1.localhost")
    assert "CODE-" not in stranger.get(order_path).get_data(as_text=True)
    lookup = stranger.get("/lookup")
    wrong = stranger.post("/lookup", data={"csrf_token": token(lookup), "contact": "buyer@example.com",
                                           "query_password": "nope"})
    assert "没有找到订单" in wrong.get_data(as_text=True)
    right = stranger.post("/lookup", data={"csrf_token": token(lookup), "contact": "buyer@example.com",
                                           "query_password": "pass1234"})
    assert order_path.rsplit("/", 1)[1] in right.get_data(as_text=True)
    assert "CODE-0000" in stranger.get(order_path).get_data(as_text=True)


def test_an_order_of_one_site_is_not_found_on_another(shop, client_for):
    order_path = buy(client_for("shop1.localhost"), shop).headers["Location"]
    assert client_for("shop2.localhost").get(order_path).status_code == 404
    assert client_for("main.localhost").get(order_path).status_code == 404


def test_writes_without_csrf_token_are_refused_and_create_nothing(shop, client_for):
    from kamengsite.orders import Order
    from kamengsite.tenancy import all_sites

    client = client_for("shop1.localhost")
    response = client.post(f"/p/{shop.id}", data={"sku": shop.skus[0].id, "quantity": 1,
                                                  "contact": "a@b.cd", "query_password": "pass1234"})
    assert response.status_code == 400
    with all_sites():
        assert Order.select().count() == 0


def test_bad_input_says_what_is_wrong_and_keeps_what_was_typed(shop, client_for):
    client = client_for("shop1.localhost")
    response = buy(client, shop, contact="not-a-contact")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "请填写有效的邮箱或 11 位手机号" in text and 'value="not-a-contact"' in text


def test_out_of_stock_is_a_clear_message(shop, client_for):
    client = client_for("shop1.localhost")
    assert buy(client, shop, quantity=3).status_code == 302
    response = buy(client, shop, quantity=1)
    assert response.status_code == 200 and "库存不足" in response.get_data(as_text=True)


def test_lookup_is_rate_limited_per_site_and_ip(shop, client_for):
    client = client_for("shop1.localhost")
    form = {"csrf_token": token(client.get("/lookup")), "order_no": "K0"}
    codes = [client.post("/lookup", data=form).status_code for _ in range(11)]
    assert codes[:10] == [200] * 10 and codes[10] == 429
    other = client_for("shop2.localhost")  # another site's allowance is untouched
    assert other.post("/lookup", data={"csrf_token": token(other.get("/lookup")), "order_no": "K0"}).status_code == 200


def test_topup_product_asks_for_its_fields_and_stores_them(host, client_for):
    from kamengsite.orders import Order
    from kamengsite.tenancy import all_sites

    host.registry.create("shop1", template="gaming")
    main = Site.get(Site.slug == "main")
    product = create_product(main, "话费直充", 5000, kind="topup",
                             topup_fields=[{"name": "phone", "label": "充值手机号", "pattern": r"1\d{10}"}])
    Sku.update(stock=10).where(Sku.product == product.id).execute()  # top-up stock is a counter
    client = client_for("shop1.localhost")
    page = client.get(f"/p/{product.id}")
    assert 'name="topup_phone"' in page.get_data(as_text=True)
    form = {"csrf_token": token(page), "sku": product.skus[0].id, "quantity": 1,
            "contact": "buyer@example.com", "query_password": "pass1234", "topup_phone": "12345"}
    refused = client.post(f"/p/{product.id}", data=form)
    assert refused.status_code == 200 and "充值手机号格式不正确" in refused.get_data(as_text=True)
    assert 'value="12345"' in refused.get_data(as_text=True)  # what was typed is kept
    with all_sites():
        assert Order.select().count() == 0
    form["topup_phone"] = "13800138000"
    created = client.post(f"/p/{product.id}", data=form)
    assert created.status_code == 302
    with all_sites():
        assert Order.get().field_values == {"phone": "13800138000"}
    assert "13800138000" in client.get(created.headers["Location"]).get_data(as_text=True)


def test_keys_are_masked_until_revealed(shop, client_for):
    from kamengsite.themes import mask_key

    client = client_for("shop1.localhost")
    order_path = buy(client, shop).headers["Location"]
    client.post(order_path + "/demo-pay", data={"csrf_token": token(client.get(order_path))})
    text = client.get(order_path).get_data(as_text=True)
    summary = text[text.index("<summary>"):text.index("</summary>")]
    assert "CODE-0000" not in summary and mask_key("CODE-0000") in summary
    assert "<details" in text and "<code>CODE-0000</code>" in text
    assert mask_key("ABCDEFGHIJKLMNOP") == "ABCD****MNOP" and mask_key("ABC") == "***"


def test_an_order_that_reaches_the_threshold_raises_one_low_stock_notice(host, client_for):
    from kamengsite.alerts import Notice
    from kamengsite.tenancy import all_sites

    host.registry.create("shop1", template="gaming")
    main = Site.get(Site.slug == "main")
    product = create_product(main, "预警月卡", 1500, low_stock_threshold=2)
    import_keys(product.skus[0], [f"LOW-{i}" for i in range(5)], CardKeyCipher.from_instance(host.instance))
    client = client_for("shop1.localhost")

    def notices():
        with all_sites():
            return Notice.select().where(Notice.kind == "low_stock").count()

    buy(client, product)  # 4 left
    buy(client, product)  # 3 left
    assert notices() == 0
    buy(client, product)  # 2 left: at the threshold
    assert notices() == 1
    buy(client, product)  # 1 left: still one notice, not one per sale
    assert notices() == 1


def test_the_reservation_lasts_the_instance_order_ttl(tmp_path, client_for):
    import datetime

    from kamengsite.orders import Order
    from kamengsite.tenancy import all_sites
    from conftest import SiteClient, make_host, make_instance

    instance = make_instance(tmp_path / "ttl", f"sqlite:///{tmp_path / 'ttl.db'}", order_ttl_minutes=3)
    host = make_host(instance)
    host.registry.create("shop1", template="gaming")
    product = create_product(Site.get(Site.slug == "main"), "限时卡", 100)
    import_keys(product.skus[0], ["TTL-1"], CardKeyCipher.from_instance(instance))
    assert buy(SiteClient(host, "shop1.localhost"), product).status_code == 302
    with all_sites():
        order = Order.get()
    held = order.expires_at - order.created_at
    assert datetime.timedelta(minutes=3) - datetime.timedelta(seconds=1) <= held <= datetime.timedelta(minutes=3)


def test_the_buyer_pages_are_chinese_by_default_and_english_on_request(shop, client_for):
    client = client_for("shop1.localhost")
    chinese = client.get(f"/p/{shop.id}").get_data(as_text=True)
    assert "立即购买" in chinese and "Buy now" not in chinese and '<html lang="zh-CN">' in chinese
    english = client.get(f"/p/{shop.id}?lang=en").get_data(as_text=True)
    assert "Buy now" in english and "Lookup password" in english and '<html lang="en">' in english
    assert "立即购买" not in english and ">查询密码<" not in english  # (the layout's own sections are content)
    assert "¥15.00" in english and "3 in stock" in english
    # The choice is kept (cookie): the next pages are English too, and the footer marks it.
    order_path = buy(client, shop).headers["Location"]
    order = client.get(order_path).get_data(as_text=True)
    assert "Status: Awaiting payment" in order and "待支付" not in order
    assert re.search(r'<a href="\?lang=en"[^>]*aria-current="true"', order)
    assert not re.search(r'<a href="\?lang=zh_CN"[^>]*aria-current', order)
    lookup = client.get("/lookup")
    refused = client.post("/lookup", data={"csrf_token": token(lookup)}).get_data(as_text=True)
    assert "Enter an order number, or your contact and lookup password" in refused and "请输入订单号" not in refused
    back = client.get(order_path + "?lang=zh_CN").get_data(as_text=True)
    assert "状态：待支付" in back and re.search(r'<a href="\?lang=zh_CN"[^>]*aria-current="true"', back)
