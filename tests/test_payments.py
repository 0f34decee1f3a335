"""Core of the payment channels: money parsing, the ``payments`` setting, the registry, the demo fallback."""

from __future__ import annotations

import pytest

from kamengsite.errors import ConfigError
from kamengsite.hookspecs import hookimpl
from kamengsite.instance import Instance
from kamengsite.payments import (Channel, Notification, NotifyRequest, PaymentRegistry, PayType, Rejection, Reply,
                                 fen_to_yuan, sign_content, verify_and_apply, yuan_to_fen)


@pytest.mark.parametrize("text,fen", [("1", 100), ("1.00", 100), ("10.5", 1050), ("0.01", 1), (" 15.00 ", 1500)])
def test_yuan_to_fen_parses_decimals(text, fen):
    assert yuan_to_fen(text) == fen


@pytest.mark.parametrize("text", ["", "abc", "1.001", "-1", "NaN", "Infinity", "1e400", None, 1.5, "１５", "1.５"])
def test_yuan_to_fen_refuses_anything_else(text):
    with pytest.raises(ValueError):
        yuan_to_fen(text)


def test_fen_to_yuan_and_sign_content():
    assert fen_to_yuan(1050) == "10.50" and fen_to_yuan(1) == "0.01"
    assert sign_content({"b": "2", "a": "1", "sign": "x", "sign_type": "MD5", "c": " ", "d": ""}) == "a=1&b=2"


@pytest.mark.parametrize("payments,key", [
    ({"Epay": {"main": {}}}, "payments.Epay"),
    ({"epay": {}}, "payments.epay"),
    ({"epay": {"Main Account": {}}}, "payments.epay.Main Account"),
    ({"epay": {"main": "x"}}, "payments.epay.main"),
])
def test_the_payments_setting_is_checked_with_the_key_named(tmp_path, payments, key):
    with pytest.raises(ConfigError) as caught:
        Instance.create(tmp_path / "i", payments=payments)
    assert caught.value.key == key


class Fake(Channel):
    id = "fake"
    name = "Fake"
    pay_types = (PayType("x", "X"),)
    settings_schema = {"type": "object", "properties": {"secret": {"type": "string", "writeOnly": True}},
                       "required": ["secret"], "additionalProperties": False}

    def verify_notification(self, profile, notice, now):
        if notice.fields.get("sig") != profile.get("secret"):
            return Rejection("bad signature")
        return Notification(notice.fields["order"], 100, "T1", notice.fields.get("status", "paid"))


def test_registry_keeps_good_profiles_and_reports_bad_ones():
    registry = PaymentRegistry([Fake(), Fake(), object()], {"fake": {"a": {"secret": "s"}, "b": {}},
                                                           "nope": {"c": {}}})
    assert list(registry.channels) == ["fake"]
    assert registry.find("fake", "a")[1].get("secret") == "s" and registry.find("fake", "b") is None
    assert set(registry.errors) == {"payments.fake.b", "payments.nope.c"}
    assert Fake().reply(True) == Reply("success") and Fake().reply(False) == Reply("fail", 400)


def test_refusals_happen_before_the_database_is_touched():
    channel = Fake()
    profile = PaymentRegistry([channel], {"fake": {"a": {"secret": "s"}}}).find("fake", "a")[1]
    # No database is bound in this test: any query would raise, so these prove verify-before-read/write.
    assert verify_and_apply(channel, profile, NotifyRequest("GET", {"order": "K1", "sig": "bad"})).reason == "bad signature"
    unpaid = verify_and_apply(channel, profile, NotifyRequest("GET", {"order": "K1", "sig": "s", "status": "unpaid"}))
    assert not unpaid.ok and unpaid.acknowledged and "not a payment" in unpaid.reason
    twice = verify_and_apply(channel, profile, NotifyRequest("GET", {}, duplicate_fields=("money",)))
    assert not twice.ok and "money" in twice.reason


class FakePlugin:
    @hookimpl
    def payment_channels(self, instance):
        return [Fake()]


def test_with_a_channel_configured_the_buyer_pays_through_it_and_demo_pay_is_gone(host_factory):
    import re

    from conftest import SiteClient
    from kamengsite.cardkeys import import_keys
    from kamengsite.catalog import create_product
    from kamengsite.crypto import CardKeyCipher
    from kamengsite.models import Site
    from kamengsite.orders import Order
    from kamengsite.tenancy import all_sites

    host = host_factory("fake", payments={"fake": {"a": {"secret": "s", }}})
    host.plugins.register(FakePlugin(), name="fake-channel")
    main = Site.get(Site.slug == "main")
    product = create_product(main, "月卡", 100)
    import_keys(product.skus[0], ["K-1"], CardKeyCipher.from_instance(host.instance))
    client = SiteClient(host, "main.localhost")
    page = client.get(f"/p/{product.id}")
    assert 'value="fake/a"' in page.get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page.get_data(as_text=True)).group(1)
    created = client.post(f"/p/{product.id}", data={"csrf_token": csrf, "sku": product.skus[0].id, "quantity": 1,
                                                    "pay": "fake/a", "contact": "a@b.cd", "query_password": "pass1234"})
    order_no = created.headers["Location"].rsplit("/", 1)[1]
    with all_sites():
        order = Order.get(Order.order_no == order_no)
    assert (order.channel, order.channel_profile) == ("fake", "a")
    text = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "去支付 · X" in text and "模拟支付（演示）" not in text
    assert client.post(f"/order/{order_no}/demo-pay", data={"csrf_token": csrf}).status_code == 404
    with all_sites():
        assert Order.get(Order.order_no == order_no).status == "created"


def test_notification_body_survives_a_form_content_type():
    from flask import Flask, request

    from kamengsite.payments import NotifyRequest

    app = Flask(__name__)
    body = b'{"order_id":"K1","amount":100}'
    with app.test_request_context("/pay/notify/x/y", method="POST", data=body,
                                  content_type="application/x-www-form-urlencoded"):
        notice = NotifyRequest.from_flask(request)
    assert notice.body == body
    with app.test_request_context("/n?a=1", method="POST", data={"b": "2"}):
        notice = NotifyRequest.from_flask(request)
    assert notice.fields == {"a": "1", "b": "2"} and notice.body == b"b=2"


# -- what every profile may carry: fees, the sites it is offered on -----------------------


@pytest.mark.parametrize("extra, key", [({"fee_bearer": "nobody"}, "payments.fake.a.fee_bearer"),
                                        ({"fee_bp": -1}, "payments.fake.a.fee_bp"),
                                        ({"fee_fixed_fen": 1.5}, "payments.fake.a.fee_fixed_fen"),
                                        ({"sites": "shop1"}, "payments.fake.a.sites")])
def test_common_profile_settings_are_checked_with_the_key_named(extra, key):
    registry = PaymentRegistry([Fake()], {"fake": {"a": {"secret": "s", **extra}}})
    assert registry.find("fake", "a") is None
    assert key in registry.errors["payments.fake.a"]


def test_profile_fee_and_the_sites_it_is_offered_on():
    registry = PaymentRegistry([Fake()], {"fake": {
        "everywhere": {"secret": "s", "fee_bp": 60, "fee_fixed_fen": 10},
        "shop1_only": {"secret": "s", "sites": ["shop1"], "fee_bearer": "buyer", "fee_bp": 100},
        "shop2_own": {"secret": "s", "owner_site": "shop2"}}})
    everywhere, only, own = (registry.find("fake", n)[1] for n in ("everywhere", "shop1_only", "shop2_own"))
    assert everywhere.fee_for(23580) == (142 + 10, "seller")  # 0.6 % of 235.80 = 1.4148 → 1.42, + 0.10
    assert only.fee_for(999) == (10, "buyer") and only.fee_for(0) == (0, "buyer")
    assert "fee_bp" not in everywhere.settings  # the host's settings never reach the channel's
    names = lambda *args: [p.name for _, p in registry.options(*args)]  # noqa: E731
    assert names("shop1") == ["everywhere", "shop1_only"]
    assert names("shop2") == ["everywhere"]
    assert names("shop2", "direct") == ["shop2_own"]  # a direct-settlement site pays into its own account only
    assert names("shop3", "direct") == []


def test_a_buyer_borne_fee_is_added_to_what_the_buyer_pays(host_factory):
    from kamengsite.catalog import create_product
    from kamengsite.cardkeys import import_keys
    from kamengsite.crypto import CardKeyCipher
    from kamengsite.models import Site
    from kamengsite.orders import Order
    from kamengsite.testing import SiteClient, buy
    from kamengsite.tenancy import all_sites

    host = host_factory("fee", payments={"fake": {"a": {"secret": "s", "fee_bp": 100, "fee_fixed_fen": 5,
                                                         "fee_bearer": "buyer"}}})
    host.plugins.register(FakePlugin(), name="fake-channel")
    product = create_product(Site.get(Site.slug == "main"), "月卡", 1000)
    import_keys(product.skus[0], ["K-1"], CardKeyCipher.from_instance(host.instance))
    created = buy(SiteClient(host, "main.localhost"), product, "fake/a")
    with all_sites():
        order = Order.get(Order.order_no == created.headers["Location"].rsplit("/", 1)[1])
    assert (order.goods_fen, order.fee_fen, order.fee_bearer, order.amount_fen) == (1000, 15, "buyer", 1015)


class QrFake(Fake):
    """A channel that answers with a QR code, or refuses when the order's amount is odd."""

    def create_payment(self, profile, request):
        from kamengsite.payments import PaymentAction, PaymentError

        if request.amount_fen % 2:
            raise PaymentError("gateway says no")
        return PaymentAction(kind="qrcode", qr="weixin://pay/123")


class QrFakePlugin:
    @hookimpl
    def payment_channels(self, instance):
        return [QrFake()]


def test_the_payment_pages_are_chinese_by_default_and_english_on_request(host_factory):
    from kamengsite.cardkeys import import_keys
    from kamengsite.catalog import create_product
    from kamengsite.crypto import CardKeyCipher
    from kamengsite.models import Site
    from kamengsite.testing import SiteClient, buy, csrf_token

    host = host_factory("qr", payments={"fake": {"a": {"secret": "s"}}})
    host.plugins.register(QrFakePlugin(), name="qr-channel")
    main = Site.get(Site.slug == "main")
    even, odd = create_product(main, "月卡", 100), create_product(main, "周卡", 101)
    for product in (even, odd):
        import_keys(product.skus[0], ["K-1"], CardKeyCipher.from_instance(host.instance))
    client = SiteClient(host, "main.localhost")
    order_path = buy(client, even, "fake/a").headers["Location"]
    order_no = order_path.rsplit("/", 1)[1]
    form = {"channel": "fake", "profile": "a", "type": "x"}
    chinese = client.get(order_path).get_data(as_text=True)
    assert "去支付 · X" in chinese
    paying = client.post(f"/pay/{order_no}", data={**form, "csrf_token": csrf_token(client.get(order_path))})
    assert "支付订单" in paying.get_data(as_text=True) and "请用手机扫码支付" in paying.get_data(as_text=True)

    page = client.get(order_path + "?lang=en")
    assert "Pay with X" in page.get_data(as_text=True) and "去支付" not in page.get_data(as_text=True)
    paying = client.post(f"/pay/{order_no}", data={**form, "csrf_token": csrf_token(page)}).get_data(as_text=True)
    assert f"Pay order {order_no}" in paying and "Scan the code with your phone to pay:" in paying
    assert "支付" not in paying and "¥1.00" in paying
    refused_path = buy(client, odd, "fake/a").headers["Location"]
    refused = client.post(f"/pay/{refused_path.rsplit('/', 1)[1]}", data={**form, "csrf_token": csrf_token(page)})
    text = client.get(refused.headers["Location"]).get_data(as_text=True)
    assert "Could not start the payment: gateway says no" in text and "无法发起支付" not in text
