"""易支付 channel: a gateway simulator that signs as the gateway does (keys generated here),
the official test vector, the buyer's path to the gateway, and a forgery matrix where every
refused notification leaves the database exactly as it was."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import kamengsite_test_fixtures as base
from kamengsite.testing import buy as shared_buy, csrf_token, new_order as shared_new_order, open_channel_shop, snapshot
from kamengsite.errors import ConfigError
from kamengsite.orders import Order, Payment, create_order
from kamengsite.payments import check_payments_config, sign_content
from kamengsite.tenancy import all_sites
from kamengsite_epay import EpayChannel, md5_sign

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
API = "https://pay.gateway.test/"
V1_PID, V2_PID = "1000", "2000"
PRICE_FEN = 1500


# -- the gateway simulator: its own implementation of the protocol, not the plugin's -------------


def _bodies(key):
    private = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


class Gateway:
    """Signs notifications and checks merchant requests exactly as an epay gateway does."""

    def __init__(self):
        self.md5_key = secrets.token_urlsafe(24)
        self.platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.merchant_private_body, _ = _bodies(self.merchant)
        _, self.platform_public_body = _bodies(self.platform)

    @staticmethod
    def content(fields) -> str:
        kept = sorted((k.encode(), k, v) for k, v in fields.items()
                      if k not in ("sign", "sign_type") and str(v).strip() != "")
        return "&".join(f"{k}={v}" for _, k, v in kept)

    def sign(self, fields, version="v1", key=None, private=None):
        fields = dict(fields)
        if version == "v1":
            fields["sign"] = hashlib.md5((self.content(fields) + (key or self.md5_key)).encode()).hexdigest()
            fields["sign_type"] = "MD5"
        else:
            fields.setdefault("timestamp", str(int(time.time())))
            raw = (private or self.platform).sign(self.content(fields).encode(), padding.PKCS1v15(), hashes.SHA256())
            fields["sign"] = base64.b64encode(raw).decode()
            fields["sign_type"] = "RSA"
        return fields

    def notification(self, order_no, version="v1", *, money="15.00", **overrides):
        fields = {"pid": V1_PID if version == "v1" else V2_PID, "trade_no": f"2024{order_no[-10:]}EP",
                  "out_trade_no": order_no, "type": "alipay", "name": "测试月卡", "money": money,
                  "trade_status": "TRADE_SUCCESS", "param": "", "buyer": "b***@example.com"}
        if version == "v2":
            fields.update(api_trade_no="API" + order_no[-8:], addtime="2024-07-01 12:00:00",
                          endtime="2024-07-01 12:00:30")
        fields.update(overrides)
        return self.sign(fields, version)

    def request_signed_by_merchant(self, fields, version) -> bool:
        if version == "v1":
            expected = hashlib.md5((self.content(fields) + self.md5_key).encode()).hexdigest()
            return fields["sign"] == expected and fields["sign_type"] == "MD5"
        self.merchant.public_key().verify(base64.b64decode(fields["sign"]), self.content(fields).encode(),
                                          padding.PKCS1v15(), hashes.SHA256())
        return fields["sign_type"] == "RSA" and abs(int(fields["timestamp"]) - time.time()) < 300


@pytest.fixture(scope="module")
def gateway():
    return Gateway()


def payments_config(gateway):
    return {"epay": {
        "v1": {"label": "支付宝/微信", "api": API, "pid": V1_PID, "key": "env:EPAY_TEST_KEY"},
        "v2": {"version": "v2", "api": API, "pid": V2_PID, "merchant_private_key": gateway.merchant_private_body,
               "platform_public_key": gateway.platform_public_body},
    }}


@pytest.fixture
def shop(host_factory, gateway, monkeypatch):
    monkeypatch.setenv("EPAY_TEST_KEY", gateway.md5_key)
    host = host_factory("epay", payments=payments_config(gateway))
    return open_channel_shop(host, PRICE_FEN)


token = csrf_token


def buy(client, product, pay="epay/v1"):
    return shared_buy(client, product, pay)


def new_order(shop, pay="epay/v1", client=None):
    return shared_new_order(shop, pay, client)


def notify(client, fields, profile="v1", method="GET", channel="epay"):
    path = f"/pay/notify/{channel}/{profile}"
    if method == "GET":
        return client.get(path + "?" + urllib.parse.urlencode(fields))
    return client.post(path, data=fields)


# -- the reference test vector --------------------------------------------------------------


def test_official_sdk_test_vector():
    fields = {"money": "1.00", "name": "VIP会员", "notify_url": "http://shop.test/pay/epay/notify",
              "out_trade_no": "ORD20240701001", "pid": "1000", "return_url": "http://shop.test/pay/epay/return",
              "type": "alipay", "sign": "ignored", "sign_type": "MD5", "param": " "}
    assert sign_content(fields) == ("money=1.00&name=VIP会员&notify_url=http://shop.test/pay/epay/notify"
                                    "&out_trade_no=ORD20240701001&pid=1000&return_url=http://shop.test/pay/epay/return"
                                    "&type=alipay")
    assert md5_sign(fields, "WWc3Z2jkK7jhNGPALcGKjHLPK47wRK85") == "e2cf473614102b71dbe631663f2b45a5"
    assert Gateway.content(fields) == sign_content(fields)  # the simulator agrees with the vector


# -- the buyer's path --------------------------------------------------------------------------


def test_buyer_picks_a_method_before_ordering(shop):
    client = shop.client()
    page = client.get(f"/p/{shop.product.id}").get_data(as_text=True)
    assert 'value="epay/v1"' in page and 'value="epay/v2"' in page and "支付宝/微信" in page
    refused = buy(client, shop.product, pay="epay/nope")
    assert refused.status_code == 200 and "请选择支付方式" in refused.get_data(as_text=True)
    with all_sites():
        assert Order.select().count() == 0
    order_no = new_order(shop, "epay/v2", client)
    with all_sites():
        order = Order.get(Order.order_no == order_no)
    assert (order.channel, order.channel_profile) == ("epay", "v2")
    assert "模拟支付" not in client.get(f"/order/{order_no}").get_data(as_text=True)  # no demo shortcut


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pay_page_submits_a_request_the_gateway_accepts(shop, gateway, version):
    client = shop.client()
    order_no = new_order(shop, f"epay/{version}", client)
    page = client.get(f"/order/{order_no}")
    assert "去支付" in page.get_data(as_text=True)
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "epay",
                                                     "profile": version, "type": "wxpay"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    action = re.search(r'<form id="pay-form" method="POST" action="([^"]+)"', html).group(1)
    assert action == (API + ("submit.php" if version == "v1" else "api/pay/submit"))
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))
    import html as html_module

    fields = {k: html_module.unescape(v) for k, v in fields.items()}
    assert fields["out_trade_no"] == order_no and fields["money"] == "15.00" and fields["type"] == "wxpay"
    assert fields["notify_url"] == f"http://shop1.localhost/pay/notify/epay/{version}"
    assert fields["pid"] == (V1_PID if version == "v1" else V2_PID)
    assert gateway.request_signed_by_merchant(fields, version)


def test_pay_refuses_a_method_the_order_was_not_made_for(shop):
    client = shop.client()
    order_no = new_order(shop, "epay/v1", client)
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "epay", "profile": "v2"})
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/order/{order_no}")
    assert client.post(f"/pay/{order_no}", data={"channel": "epay", "profile": "v1"}).status_code == 400  # CSRF
    assert shop.client().post(f"/pay/{order_no}", data={"csrf_token": token(shop.client().get("/lookup")),
                                                        "channel": "epay", "profile": "v1"}).status_code in (400, 404)


# -- accepted notifications ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_genuine_notification_delivers_and_replies_success(shop, gateway, version, method):
    client = shop.client()
    order_no = new_order(shop, f"epay/{version}", client)
    response = notify(shop.client(), gateway.notification(order_no, version), version, method)
    assert (response.status_code, response.get_data()) == (200, b"success")
    with all_sites():
        payment = Payment.get()
        assert Order.get(Order.order_no == order_no).status == "delivered"
    assert (payment.channel, payment.amount_fen) == ("epay", PRICE_FEN)
    assert shop.counter.orders == [(order_no, "shop1")]
    assert "CODE-" in client.get(f"/order/{order_no}").get_data(as_text=True)


@pytest.mark.parametrize("money", ["15", "15.0", "15.00"])
def test_money_is_compared_as_a_decimal(shop, gateway, money):
    order_no = new_order(shop)
    assert notify(shop.client(), gateway.notification(order_no, money=money)).get_data() == b"success"


def test_sign_type_may_be_omitted_in_v1(shop, gateway):
    order_no = new_order(shop)
    fields = gateway.notification(order_no)
    del fields["sign_type"]
    assert notify(shop.client(), fields).get_data() == b"success"


@pytest.mark.parametrize("domain", ["shop1.localhost", "main.localhost"])
def test_the_notify_route_answers_on_every_site_domain(shop, gateway, domain):
    order_no = new_order(shop)
    response = notify(shop.client(domain), gateway.notification(order_no))
    assert response.get_data() == b"success"
    assert shop.counter.orders == [(order_no, "shop1")]  # the hook sees the selling site


def test_a_replay_is_one_payment_and_success_again(shop, gateway):
    order_no = new_order(shop)
    fields = gateway.notification(order_no)
    replies = [notify(shop.client(), fields, method=m).get_data() for m in ("GET", "POST", "GET")]
    assert replies == [b"success"] * 3
    assert snapshot()[0] == 1 and len(shop.counter.orders) == 1


# -- the forgery matrix: refused, logged, nothing written --------------------------------------


FORGERIES = {
    "bad signature": lambda g, s: dict(g.notification(new_order(s)), sign="0" * 32),
    "signed with another key": lambda g, s: g.sign(
        {k: v for k, v in g.notification(new_order(s)).items() if k not in ("sign", "sign_type")}, key="x" * 32),
    "tampered amount": lambda g, s: dict(g.notification(new_order(s)), money="0.01"),
    "signed wrong amount": lambda g, s: g.notification(new_order(s), money="0.01"),
    "other merchant": lambda g, s: g.notification(new_order(s), pid="1001"),
    "other channel's order": lambda g, s: g.notification(create_order(
        site_id=s.site_id, sku_id=s.product.skus[0].id, quantity=1, contact="x@y.zz",
        channel="alipay", channel_profile="v1").order_no),
    "order without channel": lambda g, s: g.notification(create_order(
        site_id=s.site_id, sku_id=s.product.skus[0].id, quantity=1, contact="x@y.zz").order_no),
    "other profile's order": lambda g, s: g.notification(new_order(s, "epay/v2")),
    "unknown order": lambda g, s: g.notification("K2024070100000000000"),
    "trade not successful": lambda g, s: g.notification(new_order(s), trade_status="WAIT_BUYER_PAY"),
    "three decimals": lambda g, s: g.notification(new_order(s), money="15.001"),
    "sign_type RSA on a V1 profile": lambda g, s: dict(g.notification(new_order(s)), sign_type="RSA"),
    "field sent twice": "twice",
}

# Genuine notifications that report no payment: acknowledged (so the gateway stops resending), nothing written.
ACKNOWLEDGED = {case: FORGERIES.pop(case) for case in ('trade not successful',)}


V2_FORGERIES = {
    "stale timestamp": lambda g, s: g.notification(new_order(s, "epay/v2"), "v2",
                                                   timestamp=str(int(time.time()) - 301)),
    "future timestamp": lambda g, s: g.notification(new_order(s, "epay/v2"), "v2",
                                                    timestamp=str(int(time.time()) + 301)),
    "signed by the merchant key": lambda g, s: g.sign(
        {k: v for k, v in g.notification(new_order(s, "epay/v2"), "v2").items() if k not in ("sign", "sign_type")},
        "v2", private=g.merchant),
    "tampered amount (v2)": lambda g, s: dict(g.notification(new_order(s, "epay/v2"), "v2"), money="0.01"),
    "md5 on a v2 profile": lambda g, s: g.sign(
        {k: v for k, v in g.notification(new_order(s, "epay/v2"), "v2").items() if k not in ("sign", "sign_type")}),
    "other merchant (v2)": lambda g, s: g.notification(new_order(s, "epay/v2"), "v2", pid="2001"),
}


def _assert_refused(shop, response, before, caplog):
    assert (response.status_code, response.get_data()) == (400, b"fail")
    assert snapshot() == before
    assert shop.counter.orders == []
    rejected = [r for r in caplog.records if "payment notification rejected" in r.getMessage()]
    assert len(rejected) == 1 and "reason=" in rejected[0].getMessage()


@pytest.mark.parametrize("case", sorted(FORGERIES))
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_forged_v1_notifications_are_refused_and_write_nothing(shop, gateway, case, method, caplog):
    if FORGERIES[case] == "twice":
        order_no = new_order(shop)
        fields = gateway.notification(order_no)
        before = snapshot()
        with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
            path = "/pay/notify/epay/v1?" + urllib.parse.urlencode(dict(fields, money="0.01"))
            response = shop.client().post(path, data=fields)  # query says 0.01, form says 15.00
        return _assert_refused(shop, response, before, caplog)
    with all_sites():
        fields = FORGERIES[case](gateway, shop)
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), fields, "v1", method)
    _assert_refused(shop, response, before, caplog)


@pytest.mark.parametrize("case", sorted(V2_FORGERIES))
def test_forged_v2_notifications_are_refused_and_write_nothing(shop, gateway, case, caplog):
    with all_sites():
        fields = V2_FORGERIES[case](gateway, shop)
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), fields, "v2")
    _assert_refused(shop, response, before, caplog)


def test_a_trade_number_cannot_pay_a_second_order(shop, gateway, caplog):
    first, second = new_order(shop), new_order(shop)
    fields = gateway.notification(first)
    assert notify(shop.client(), fields).get_data() == b"success"
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), gateway.notification(second, trade_no=fields["trade_no"]))
    assert (response.status_code, response.get_data()) == (400, b"fail") and snapshot() == before
    assert any("already paid another order" in r.getMessage() for r in caplog.records)


def test_a_second_trade_for_a_paid_order_is_owed_back_not_delivered_again(shop, gateway):
    order_no = new_order(shop)
    assert notify(shop.client(), gateway.notification(order_no)).get_data() == b"success"
    second = notify(shop.client(), gateway.notification(order_no, trade_no="SECOND-TRADE"))
    assert second.get_data() == b"success"  # recorded: the gateway must stop retrying
    with all_sites():
        assert dict(Payment.select(Payment.trade_no, Payment.state).tuples())["SECOND-TRADE"] == "refund_due"
    assert shop.counter.orders == [(order_no, "shop1")]  # one delivery, one mail


def test_an_unconfigured_profile_is_not_found(shop, gateway):
    order_no = new_order(shop)
    before = snapshot()
    assert notify(shop.client(), gateway.notification(order_no), profile="nope").status_code == 404
    assert notify(shop.client(), gateway.notification(order_no), channel="nope").status_code == 404
    assert snapshot() == before


# -- concurrency on every backend ------------------------------------------------------------


def test_concurrent_duplicate_notifications_pay_and_deliver_once(tmp_path, backend_url, gateway, monkeypatch):
    monkeypatch.setenv("EPAY_TEST_KEY", gateway.md5_key)
    instance = base.make_instance(tmp_path / "instance", backend_url, payments=payments_config(gateway))
    host = base.make_host(instance)
    try:
        shop = open_channel_shop(host, PRICE_FEN)
        counter, s = shop.counter, shop
        order_no = new_order(s)
        fields = gateway.notification(order_no)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: notify(base.SiteClient(host, "shop1.localhost"), fields,
                                                     method="GET" if i % 2 else "POST").get_data(), range(16)))
        assert replies == [b"success"] * 16
        payments_, orders_, sold = snapshot()
        assert payments_ == 1 and orders_ == [(order_no, "delivered")] and sold == 1
        assert counter.orders == [(order_no, "shop1")]
    finally:
        host.close()


# -- settings -------------------------------------------------------------------------------


def test_settings_are_validated_with_the_key_named_and_secrets_never_shown(gateway):
    channels = {"epay": EpayChannel()}
    with pytest.raises(ConfigError, match=r"payments\.epay\.main\.key: is required"):
        check_payments_config({"epay": {"main": {"api": API, "pid": "1"}}}, channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.epay\.main\.key: environment variable 'NOPE' is not set"):
        check_payments_config({"epay": {"main": {"api": API, "pid": "1", "key": "env:NOPE"}}}, channels, environ={})
    with pytest.raises(ConfigError) as caught:
        check_payments_config({"epay": {"main": {"api": API, "pid": "1", "key": "short"}}}, channels, environ={})
    assert caught.value.key == "payments.epay.main.key" and "short" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"payments\.epay\.main\.merchant_private_key: is required"):
        check_payments_config({"epay": {"main": {"version": "v2", "api": API, "pid": "1",
                                                 "platform_public_key": gateway.platform_public_body}}},
                              channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.epay\.main\.colour: unknown setting"):
        check_payments_config({"epay": {"main": {"api": API, "pid": "1", "key": "k" * 16, "colour": "red"}}},
                              channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.alipay: unknown payment channel"):
        check_payments_config({"alipay": {"main": {}}}, channels, environ={})
    secret = "s3cret-" + "k" * 16
    profiles = check_payments_config({"epay": {"main": {"api": API, "pid": "1", "key": "env:EPAY_K"}}},
                                     channels, environ={"EPAY_K": secret})
    profile = profiles[("epay", "main")]
    assert profile.get("key") == secret
    assert secret not in repr(profile) and profile.public_settings()["key"] == "******"


def test_a_bad_profile_is_left_out_and_the_others_keep_working(host_factory, gateway, monkeypatch):
    monkeypatch.setenv("EPAY_TEST_KEY", gateway.md5_key)
    config = payments_config(gateway)
    config["epay"]["broken"] = {"api": API, "pid": "1"}  # no key
    host = host_factory("partial", payments=config)
    product = open_channel_shop(host, PRICE_FEN).product
    page = base.SiteClient(host, "shop1.localhost").get(f"/p/{product.id}").get_data(as_text=True)
    assert 'value="epay/v1"' in page and 'value="epay/broken"' not in page


@pytest.mark.parametrize("case", sorted(ACKNOWLEDGED))
def test_signed_notifications_without_a_payment_are_acknowledged_and_write_nothing(shop, gateway, case, caplog):
    with all_sites():
        fields = ACKNOWLEDGED[case](gateway, shop)
    before = snapshot()
    delivered = list(shop.counter.orders)
    with caplog.at_level(logging.INFO, logger="kamengsite.payments"):
        response = notify(shop.client(), fields, "v1", "GET")
    assert (response.status_code, response.get_data()) == (200, b"success")
    assert snapshot() == before
    assert shop.counter.orders == delivered
    assert [r for r in caplog.records if "acknowledged without payment" in r.getMessage()]
    assert not [r for r in caplog.records if "payment notification rejected" in r.getMessage()]
