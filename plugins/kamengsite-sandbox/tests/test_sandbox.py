"""The sandbox channel: the demo's gateway, through the real notify path; never in production."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tomllib
import urllib.parse

import pytest

import kamengsite_test_fixtures as base
from kamengsite.cardkeys import CardKey, import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.orders import Order, Payment
from kamengsite.tenancy import all_sites
from kamengsite_sandbox import SandboxChannel, plugin

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
SANDBOX = {"sandbox": {"demo": {"label": "沙箱支付（演示）"}}}


def token(response):
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def _shop(host):
    host.registry.create("shop1", template="gaming")
    product = create_product(Site.get(Site.slug == "main"), "测试月卡", 1500, max_qty=5)
    import_keys(product.skus[0], [f"CODE-{i:04d}" for i in range(5)], CardKeyCipher.from_instance(host.instance))
    return product


def snapshot():
    with all_sites():
        return (Payment.select().count(), sorted(Order.select(Order.order_no, Order.status).tuples()),
                CardKey.select().where(CardKey.status == "sold").count())


def buy(client, product, pay="sandbox/demo"):
    page = client.get(f"/p/{product.id}")
    created = client.post(f"/p/{product.id}", data={
        "csrf_token": token(page), "sku": product.skus[0].id, "quantity": 1, "pay": pay,
        "contact": "buyer@example.com", "query_password": "pass1234"})
    assert created.status_code == 302, created.get_data(as_text=True)
    return created.headers["Location"].rsplit("/", 1)[1]


@pytest.fixture
def sandbox(host_factory):
    host = host_factory("sandbox", payments=SANDBOX)
    return host, _shop(host)


def test_the_buyer_pays_through_the_sandbox_gateway_page(sandbox):
    host, product = sandbox
    client = base.SiteClient(host, "shop1.localhost")
    assert "沙箱支付（演示）" in client.get(f"/p/{product.id}").get_data(as_text=True)
    order_no = buy(client, product)
    page = client.get(f"/order/{order_no}")
    assert "模拟支付（演示）" not in page.get_data(as_text=True)  # the old shortcut is gone
    started = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "sandbox",
                                                    "profile": "demo", "type": "wxpay"})
    assert started.status_code == 302
    gateway_path = started.headers["Location"]
    assert gateway_path.startswith(f"/pay/sandbox/demo/{order_no}")
    cashier = client.get(gateway_path)
    assert "模拟支付成功" in cashier.get_data(as_text=True)
    assert base.SiteClient(host, "shop1.localhost").get(gateway_path).status_code == 404  # another browser
    paid = client.post(gateway_path, data={"csrf_token": token(cashier), "type": "wxpay"})
    assert paid.status_code == 302 and paid.headers["Location"].endswith(f"/order/{order_no}")
    assert "CODE-" in client.get(f"/order/{order_no}").get_data(as_text=True)
    client.post(gateway_path, data={"csrf_token": token(cashier)})  # pressed twice
    with all_sites():
        payment = Payment.get()
        assert Payment.select().count() == 1
    assert (payment.channel, payment.trade_no, payment.amount_fen) == ("sandbox", f"SANDBOX-{order_no}", 1500)


def test_sandbox_notifications_take_the_real_notify_route(sandbox, caplog):
    host, product = sandbox
    order_no = buy(base.SiteClient(host, "shop1.localhost"), product)
    channel = SandboxChannel(host.instance)
    from kamengsite.orders import find_order
    from kamengsite.payments import Profile

    with all_sites():
        order = find_order(order_no)
    fields = channel.notification(Profile("sandbox", "demo", {}), order, "alipay")
    forged = dict(fields, money="0.01")
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        refused = base.SiteClient(host, "main.localhost").get("/pay/notify/sandbox/demo?" + urllib.parse.urlencode(forged))
    assert (refused.status_code, refused.get_data()) == (400, b"fail") and snapshot() == before
    assert any("bad signature" in r.getMessage() for r in caplog.records)
    ok = base.SiteClient(host, "main.localhost").post("/pay/notify/sandbox/demo", data=fields)
    assert (ok.status_code, ok.get_data()) == (200, b"success")
    assert snapshot()[1] == [(order_no, "delivered")]


def test_the_sandbox_refuses_production(host_factory):
    host = host_factory("prod", production=True, payments=SANDBOX)
    product = _shop(host)
    assert plugin.payment_channels(instance=host.instance) == []
    client = base.SiteClient(host, "shop1.localhost")
    page = client.get(f"/p/{product.id}").get_data(as_text=True)
    assert "sandbox/demo" not in page and "模拟支付" not in page
    app = host.app_for("shop1")
    registry = app.extensions["kamengsite.payments"]
    assert "sandbox" not in registry.channels and "payments.sandbox.demo" in registry.errors
    assert client.get("/pay/sandbox/demo/K1").status_code == 404
    assert client.get("/pay/notify/sandbox/demo?pid=sandbox").status_code == 404


def test_the_sandbox_module_refuses_to_load_with_production_set():
    env = dict(os.environ, KAMENGSITE_PRODUCTION="1")
    result = subprocess.run([sys.executable, "-c", "import kamengsite_sandbox"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "refuses to load" in result.stderr


def test_a_new_demo_instance_pays_through_the_sandbox(cli):
    result = cli("demo", "--no-serve")
    assert result.exit_code == 0, result.output
    with open(cli.instance_path / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["payments"] == SANDBOX


def test_the_sandbox_cashier_speaks_english_on_request(sandbox):
    host, product = sandbox
    client = base.SiteClient(host, "shop1.localhost")
    order_no = buy(client, product)
    page = client.get(f"/order/{order_no}")
    started = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "sandbox",
                                                    "profile": "demo", "type": "alipay"})
    gateway_path = started.headers["Location"]
    assert "<h1>沙箱收银台（演示，不会扣款）</h1>" in client.get(gateway_path).get_data(as_text=True)
    english = client.get(gateway_path + "&lang=en").get_data(as_text=True)
    assert "<h1>Sandbox checkout (demo, nothing is charged)</h1>" in english
    assert "Simulate a successful payment" in english and f"Order {order_no}" in english
    assert "沙箱收银台" not in english and "模拟支付成功" not in english
