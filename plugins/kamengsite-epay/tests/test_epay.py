"""易支付 channel: a gateway simulator that signs as the gateway does (keys generated here),
the official test vector, the buyer's path to the gateway, and a forgery matrix where every
refused notification leaves the database exactly as it was."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import kamengsite_epay
import kamengsite_test_fixtures as base
from kamengsite.testing import (buy as shared_buy, csrf_token, new_order as shared_new_order, notify_form,
                                open_channel_shop, snapshot)
from kamengsite.errors import ConfigError
from kamengsite.notice_log import PaymentNotice
from kamengsite.orders import Order, Payment, create_order
from kamengsite.payments import PaymentError, PayRequest, RefundRequest, check_payments_config, sign_content
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


class GatewayServer:
    """The gateway's server API (mapi.php, api/pay/create, api.php?act=refund, api/pay/refund).

    Checks each request exactly as the gateway does and answers as told by ``answer``:
    for the create calls ``"qrcode"``, ``"payurl"``, ``"urlscheme"`` or ``"refuse"``; for refunds
    ``"ok"``, ``"refuse"`` (a business "no") or ``"forged"`` (an answer whose signature is not the
    platform's). ``down`` makes the call fail like a dead network.
    """

    def __init__(self, gateway):
        self.gateway = gateway
        self.answer = "qrcode"
        self.down = False
        self.calls = []  # (path, fields) of every request

    def __call__(self, url, fields, timeout):
        assert url.startswith(API) and 0 < timeout <= 60
        path = url[len(API):]
        self.calls.append((path, dict(fields)))
        if self.down:
            raise OSError("connection refused")
        handler = {"mapi.php": self.mapi, "api/pay/create": self.create_v2,
                   "api.php?act=refund": self.refund_v1, "api/pay/refund": self.refund_v2}[path]
        return json.dumps(handler(dict(fields)), ensure_ascii=False).encode()

    def _signed_by_merchant(self, fields, version) -> bool:
        try:
            return self.gateway.request_signed_by_merchant(fields, version)
        except Exception:  # noqa: BLE001 - InvalidSignature, missing fields: the gateway refuses
            return False

    def mapi(self, fields):
        if not self._signed_by_merchant(fields, "v1") or fields.get("pid") != V1_PID:
            return {"code": -1, "msg": "签名校验失败"}
        if not fields.get("clientip") or fields.get("device") not in ("pc", "mobile"):
            return {"code": -1, "msg": "clientip/device 不能为空"}
        trade_no = "2024" + fields["out_trade_no"][-10:]
        return {"code": 1, "msg": "ok", "trade_no": trade_no, **self._pay_target(trade_no)}

    def _pay_target(self, trade_no):
        return {"qrcode": {"qrcode": f"https://qr.alipay.com/bax0{trade_no}"},
                "payurl": {"payurl": f"{API}pay/cashier/{trade_no}"},
                "urlscheme": {"urlscheme": f"alipays://platformapi/startapp?saId=10000007&t={trade_no}"},
                "unsafe": {"payurl": "javascript:alert(document.cookie)"},
                "refuse": {}}[{"forged": "qrcode", "ok": "qrcode"}.get(self.answer, self.answer)]

    def platform_answer(self, answer: dict) -> dict:
        """Signed by the platform key as the V2 gateway signs its answers (ints written as PHP writes them)."""
        answer = dict(answer, timestamp=str(int(time.time())))
        private = self.gateway.merchant if self.answer == "forged" else self.gateway.platform
        raw = private.sign(self.gateway.content(answer).encode(), padding.PKCS1v15(), hashes.SHA256())
        return dict(answer, sign=base64.b64encode(raw).decode(), sign_type="RSA")

    def create_v2(self, fields):
        if not self._signed_by_merchant(fields, "v2") or fields.get("method") != "web":
            return {"code": -1, "msg": "签名校验失败"}
        trade_no = "2024" + fields["out_trade_no"][-10:]
        target = self._pay_target(trade_no)
        if not target:
            return {"code": -1, "msg": "通道维护中"}
        (kind, info), = target.items()
        return self.platform_answer({"code": 0, "trade_no": trade_no,
                                     "pay_type": "jump" if kind == "payurl" else kind, "pay_info": info})

    def refund_v1(self, fields):
        if fields.get("pid") != V1_PID or fields.get("key") != self.gateway.md5_key:
            return {"code": -1, "msg": "商户密钥错误"}
        if self.answer == "refuse":
            return {"code": -1, "msg": "退款金额超过可退金额"}
        return {"code": 1, "msg": "退款成功"}

    def refund_v2(self, fields):
        if not self._signed_by_merchant(fields, "v2"):
            return {"code": -1, "msg": "签名校验失败"}
        if self.answer == "refuse":
            return {"code": -1, "msg": "退款金额超过可退金额"}
        return self.platform_answer({"code": 0, "msg": "退款成功", "refund_no": "R" + fields["out_refund_no"],
                                     "out_refund_no": fields["out_refund_no"], "trade_no": fields.get("trade_no", ""),
                                     "money": fields["money"], "reducemoney": fields["money"]})


@pytest.fixture(scope="module")
def gateway():
    return Gateway()


@pytest.fixture
def server(gateway, monkeypatch):
    served = GatewayServer(gateway)
    monkeypatch.setattr(kamengsite_epay, "post_form", served)  # the default transport: no network
    return served


def payments_config(gateway):
    return {"epay": {
        "v1": {"label": "支付宝/微信", "api": API, "pid": V1_PID, "key": "env:EPAY_TEST_KEY"},
        "v2": {"version": "v2", "api": API, "pid": V2_PID, "merchant_private_key": gateway.merchant_private_body,
               "platform_public_key": gateway.platform_public_body},
        "mapi": {"api": API, "pid": V1_PID, "key": "env:EPAY_TEST_KEY", "mode": "mapi"},
        "mapi2": {"version": "v2", "api": API, "pid": V2_PID, "mode": "mapi",
                  "merchant_private_key": gateway.merchant_private_body,
                  "platform_public_key": gateway.platform_public_body},
    }}


def profile_of(gateway, name, **overrides):
    config = payments_config(gateway)
    config["epay"][name].update(overrides)
    profiles = check_payments_config({"epay": {name: config["epay"][name]}}, {"epay": EpayChannel()},
                                     environ={"EPAY_TEST_KEY": gateway.md5_key})
    return profiles[("epay", name)]


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
    return notify_form(client, channel, profile, fields, method)


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
    assert PaymentNotice.select().count() == 0  # a payment is no refusal
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
    # ... and kept for the operator's payments page, with the same reason
    newest = PaymentNotice.select().order_by(PaymentNotice.id.desc()).first()
    assert (newest.channel, newest.outcome) == ("epay", "rejected")
    assert newest.reason and newest.reason[:40] in rejected[0].getMessage()


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


# -- the server API (mode = "mapi"): a QR code or a jump, from the gateway's answer -------------


def _pay(shop, profile):
    client = shop.client()
    order_no = new_order(shop, f"epay/{profile}", client)
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "epay",
                                                     "profile": profile, "type": "alipay"},
                           environ_base={"REMOTE_ADDR": "203.0.113.7"})
    return client, order_no, response


@pytest.mark.parametrize("profile, version", [("mapi", "v1"), ("mapi2", "v2")])
def test_mapi_shows_the_gateways_qr_code_as_an_image(shop, server, profile, version):
    client, order_no, response = _pay(shop, profile)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    [(path, fields)] = server.calls
    assert path == ("mapi.php" if version == "v1" else "api/pay/create")
    assert server.gateway.request_signed_by_merchant(fields, version)  # the gateway's own check
    assert fields["clientip"] == "203.0.113.7" and fields["device"] == "pc" and fields["type"] == "alipay"
    assert fields["out_trade_no"] == order_no and fields["money"] == "15.00"
    assert 'data-qrcode="https://qr.alipay.com/bax0' in html
    assert "<svg" in html and "<script" not in html  # drawn on the server: no QR script, no CDN
    assert snapshot()[0] == 0  # showing a QR pays nothing


@pytest.mark.parametrize("answer", ["payurl", "urlscheme"])
@pytest.mark.parametrize("profile", ["mapi", "mapi2"])
def test_mapi_jumps_where_the_gateway_says(shop, server, answer, profile):
    server.answer = answer
    _, order_no, response = _pay(shop, profile)
    assert response.status_code == 302
    expected = {"payurl": f"{API}pay/cashier/2024{order_no[-10:]}",
                "urlscheme": f"alipays://platformapi/startapp?saId=10000007&t=2024{order_no[-10:]}"}[answer]
    assert response.headers["Location"] == expected


def test_mapi_sends_the_device_of_a_phone(shop, server):
    client = shop.client()
    order_no = new_order(shop, "epay/mapi", client)
    page = client.get(f"/order/{order_no}")
    client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "epay", "profile": "mapi"},
                headers={"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"})
    assert server.calls[-1][1]["device"] == "mobile"


@pytest.mark.parametrize("case", ["refused", "unsafe target", "network down", "forged V2 answer"])
def test_a_failed_server_api_call_shows_a_message_and_writes_nothing(shop, server, case):
    profile = "mapi2" if case == "forged V2 answer" else "mapi"
    server.answer = {"refused": "refuse", "unsafe target": "unsafe", "forged V2 answer": "forged"}.get(case, "qrcode")
    server.down = case == "network down"
    client = shop.client()
    order_no = new_order(shop, f"epay/{profile}", client)
    before = snapshot()
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "epay", "profile": profile})
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/order/{order_no}")
    shown = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert ("无法连接支付网关" if case == "network down" else "支付网关未能创建订单") in shown
    assert snapshot() == before
    assert server.calls  # the gateway was asked


def test_the_forged_v2_answer_would_have_been_a_qr_code(gateway, server, caplog):
    """The refusal above is the signature's doing: the same answer signed by the platform is shown."""
    channel = EpayChannel()
    request = PayRequest("K20240701000000000001", 1500, "月卡", "https://s/n", "https://s/r", "1.2.3.4", "alipay")
    server.answer = "forged"
    with caplog.at_level(logging.WARNING, logger="kamengsite_epay"), pytest.raises(PaymentError):
        channel.create_payment(profile_of(gateway, "mapi2"), request)
    assert "bad signature (RSA)" in caplog.text
    server.answer = "qrcode"
    assert channel.create_payment(profile_of(gateway, "mapi2"), request).kind == "qrcode"


def test_submit_stays_the_default_mode(shop, server):
    _, _, response = _pay(shop, "v1")
    assert "pay-form" in response.get_data(as_text=True) and server.calls == []


# -- refunds through the gateway ------------------------------------------------------------------


def _refund(gateway, profile_name, amount_fen=500, **overrides):
    channel = EpayChannel()
    request = RefundRequest(order_no="K20240701000000000001", trade_no="2024070100000001EP", refund_no="RF0001",
                            amount_fen=amount_fen, total_fen=PRICE_FEN, reason="缺货")
    return channel.refund(profile_of(gateway, profile_name, **overrides), request)


def test_epay_supports_refunds():
    assert EpayChannel.supports_refund is True


def test_a_v1_refund_posts_the_documented_fields_and_is_accepted(gateway, server):
    server.answer = "ok"
    result = _refund(gateway, "v1")
    assert result.ok and not result.pending
    [(path, fields)] = server.calls
    assert path == "api.php?act=refund"
    assert fields == {"pid": V1_PID, "key": gateway.md5_key, "trade_no": "2024070100000001EP",
                      "out_trade_no": "K20240701000000000001", "money": "5.00"}


def test_a_v2_refund_is_signed_and_its_answer_verified(gateway, server):
    server.answer = "ok"
    result = _refund(gateway, "v2", amount_fen=1500)
    assert result.ok and result.gateway_refund_no == "RRF0001"
    [(path, fields)] = server.calls
    assert path == "api/pay/refund" and gateway.request_signed_by_merchant(fields, "v2")
    assert (fields["trade_no"], fields["money"], fields["out_refund_no"]) == ("2024070100000001EP", "15.00", "RF0001")


@pytest.mark.parametrize("profile", ["v1", "v2"])
def test_a_refund_the_gateway_refuses_is_not_ok_with_its_reason(gateway, server, profile):
    server.answer = "refuse"
    result = _refund(gateway, profile)
    assert not result.ok and "退款金额超过可退金额" in result.message


def test_a_v2_refund_answer_with_a_bad_signature_is_not_ok(gateway, server):
    server.answer = "forged"  # a "yes" signed by someone other than the platform
    result = _refund(gateway, "v2")
    assert not result.ok and "failed signature verification" in result.message


def test_a_v2_refund_signed_with_the_wrong_merchant_key_is_refused_by_the_gateway(gateway, server):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.answer = "ok"
    result = _refund(gateway, "v2", merchant_private_key=_bodies(stranger)[0])
    assert not result.ok and "签名校验失败" in result.message


@pytest.mark.parametrize("profile", ["v1", "v2"])
def test_a_network_error_is_not_ok_and_never_raises(gateway, server, profile):
    server.down = True
    result = _refund(gateway, profile)
    assert not result.ok and "Cannot reach" in result.message


@pytest.mark.parametrize("answer", [b"<html>502 Bad Gateway</html>", b"[1]", b""])
def test_an_unreadable_answer_is_not_ok(gateway, answer):
    channel = EpayChannel(post=lambda url, fields, timeout: answer)
    request = RefundRequest("K1", "T1", "RF1", 100, 100)
    assert not channel.refund(profile_of(gateway, "v1"), request).ok
    assert not channel.refund(profile_of(gateway, "v2"), request).ok


def test_the_v1_key_never_travels_over_plain_http_and_never_shows_in_messages(gateway):
    calls = []
    channel = EpayChannel(post=lambda url, fields, timeout: calls.append(url) or json.dumps(
        {"code": -1, "msg": f"key {fields['key']} wrong"}).encode())
    request = RefundRequest("K1", "T1", "RF1", 100, 100)
    refused = channel.refund(profile_of(gateway, "v1", api="http://pay.gateway.test/"), request)
    assert not refused.ok and "https" in refused.message and calls == []
    echoed = channel.refund(profile_of(gateway, "v1"), request)
    assert not echoed.ok and gateway.md5_key not in echoed.message and "******" in echoed.message


@pytest.mark.parametrize("amount_fen", [0, -1, PRICE_FEN + 1])
def test_a_refund_amount_outside_the_payment_is_refused_before_any_call(gateway, server, amount_fen):
    result = _refund(gateway, "v1", amount_fen=amount_fen)
    assert not result.ok and server.calls == []


def test_mode_is_validated(gateway):
    with pytest.raises(ConfigError, match=r"payments\.epay\.v1\.mode"):
        profile_of(gateway, "v1", mode="qr")


# -- languages ------------------------------------------------------------------------------------


def test_the_buyer_reads_the_gateways_messages_in_english_on_request(shop, server):
    server.answer = "refuse"
    client = shop.client()
    client.get("/?lang=en")  # the visitor's choice, kept in a cookie
    order_no = new_order(shop, "epay/mapi", client)
    page = client.get(f"/order/{order_no}")
    client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "epay", "profile": "mapi"})
    shown = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "The payment gateway could not create the order" in shown and "支付网关未能创建订单" not in shown
    channel = EpayChannel()  # outside a request: the English names
    assert channel.name == "Epay"
    assert [t.name for t in channel.pay_types] == ["Alipay", "WeChat Pay", "QQ Wallet"]
