"""支付宝 (Alipay Open Platform, RSA2) channel: a gateway simulator that signs as Alipay does (keys
generated here), the buyer's signed page-pay redirect, and a forgery matrix where every refused
notification leaves the database exactly as it was."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import kamengsite_alipay
import kamengsite_test_fixtures as base
from kamengsite.testing import (buy as shared_buy, csrf_token, new_order as shared_new_order, notify_form,
                                open_channel_shop, snapshot)
from kamengsite.errors import ConfigError
from kamengsite.orders import Order, Payment, create_order
from kamengsite.payments import (NotifyRequest, PaymentError, PayRequest, RefundRequest, Rejection, Reply,
                                 check_payments_config)
from kamengsite.tenancy import all_sites
from kamengsite_alipay import (GATEWAY, SANDBOX_GATEWAY, AlipayChannel, amount_to_fen, load_private_key,
                               load_public_key, response_node)

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
APP_ID, OTHER_APP_ID = "2021004100000001", "2021004100000002"
SELLER_ID = "2088000000000001"
PRICE_FEN = 1500


# -- the Alipay simulator: its own implementation of the protocol, not the plugin's --------------


def _pem_pkcs1(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def _body_pkcs8(key) -> str:
    return base64.b64encode(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())).decode()


def _body_spki(public) -> str:
    return base64.b64encode(public.public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


def _pem_spki(public) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class Alipay:
    """Signs notifications and checks merchant requests exactly as the Alipay gateway does."""

    def __init__(self):
        self.platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # 支付宝 key pair
        self.app = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # 应用 key pair (merchant)
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.counter = 0

    @staticmethod
    def notify_content(fields) -> str:
        return "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k not in ("sign", "sign_type"))

    def sign(self, fields, private=None, sign_type="RSA2"):
        fields = {k: v for k, v in fields.items() if k not in ("sign", "sign_type")}
        raw = (private or self.platform).sign(self.notify_content(fields).encode("utf-8"),
                                              padding.PKCS1v15(), hashes.SHA256())
        fields["sign"] = base64.b64encode(raw).decode()
        if sign_type is not None:
            fields["sign_type"] = sign_type
        return fields

    def notification(self, order_no, *, total_amount="15.00", trade_status="TRADE_SUCCESS", **overrides):
        self.counter += 1
        fields = {
            "gmt_create": "2024-07-01 12:00:00", "charset": "utf-8", "seller_email": "shop@example.com",
            "subject": "测试月卡", "buyer_id": "2088102177846880", "invoice_amount": total_amount,
            "notify_id": f"2024070100222120000000{self.counter:05d}", "notify_type": "trade_status_sync",
            "fund_bill_list": json.dumps([{"amount": total_amount, "fundChannel": "ALIPAYACCOUNT"}]),
            "trade_status": trade_status, "receipt_amount": total_amount, "buyer_pay_amount": total_amount,
            "app_id": APP_ID, "auth_app_id": APP_ID, "seller_id": SELLER_ID,
            "gmt_payment": "2024-07-01 12:00:05", "notify_time": "2024-07-01 12:00:06", "version": "1.0",
            "out_trade_no": order_no, "total_amount": total_amount,
            "trade_no": f"2024070122001{order_no[-15:]}", "buyer_logon_id": "b***@example.com",
            "point_amount": "0.00",
        }
        fields.update(overrides)
        return self.sign(fields)

    def request_signed_by_app(self, params) -> bool:
        content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")
        try:
            self.app.public_key().verify(base64.b64decode(params["sign"]), content.encode("utf-8"),
                                         padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return params["sign_type"] == "RSA2" and params["charset"] == "utf-8"


class AlipayServer:
    """The gateway's server API (``alipay.trade.precreate``, ``alipay.trade.refund``) as Alipay runs it.

    Checks the request signature with the application public key like Alipay, then answers as
    told by ``answer``: ``"ok"``, ``"pending"`` (a refund with ``fund_change`` N), ``"refuse"`` (a
    business "no"), ``"forged"`` (a success signed by another key) or ``"unsigned"``. Answers are
    written with Alipay's spacing and escapes, and signed over that exact text.
    """

    def __init__(self, alipay):
        self.alipay = alipay
        self.answer = "ok"
        self.down = False
        self.calls = []  # (url, params, biz) of every request

    def __call__(self, url, fields, timeout):
        assert 0 < timeout <= 60
        if self.down:
            raise TimeoutError("timed out")
        biz = json.loads(fields["biz_content"])
        self.calls.append((url, dict(fields), biz))
        node_name = fields["method"].replace(".", "_") + "_response"
        if not self.alipay.request_signed_by_app(fields) or fields.get("app_id") != APP_ID:
            return self.respond(node_name, {"code": "40002", "msg": "Invalid Arguments",
                                            "sub_code": "isv.invalid-signature",
                                            "sub_msg": "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配"})
        if self.answer == "refuse":
            return self.respond(node_name, {"code": "40004", "msg": "Business Failed",
                                            "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})
        if fields["method"] == "alipay.trade.precreate":
            node = {"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"],
                    "qr_code": "https://qr.alipay.com/bax08" + biz["out_trade_no"][-12:]}
        else:
            node = {"code": "10000", "msg": "Success", "buyer_logon_id": "b***@example.com",
                    "buyer_user_id": "2088102177846880", "fund_change": "N" if self.answer == "pending" else "Y",
                    "gmt_refund_pay": "2024-07-01 12:30:00", "out_trade_no": biz.get("out_trade_no"),
                    "refund_fee": biz["refund_amount"], "send_back_fee": "0.00", "trade_no": biz.get("trade_no")}
        return self.respond(node_name, node)

    def respond(self, node_name, node) -> bytes:
        # Alipay's own writing: a space after ':' in places, '\/' escapes, non-ASCII as \u escapes.
        text = json.dumps(node, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").replace(
            '"code":', '"code": ', 1)
        key = self.alipay.stranger if self.answer == "forged" else self.alipay.platform
        sign = base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
        tail = "" if self.answer == "unsigned" else f',"sign":"{sign}"'
        return f'{{"{node_name}":{text}{tail}}}'.encode()


@pytest.fixture(scope="module")
def alipay():
    return Alipay()


@pytest.fixture
def server(alipay, monkeypatch):
    served = AlipayServer(alipay)
    monkeypatch.setattr(kamengsite_alipay, "post_form", served)  # the default transport: no network
    return served


def payments_config(alipay):
    return {"alipay": {
        # PKCS#1 PEM private key, PEM public key, seller_id checked
        "main": {"label": "支付宝", "app_id": APP_ID, "seller_id": SELLER_ID,
                 "app_private_key": "env:ALIPAY_TEST_PRIVATE_KEY", "alipay_public_key": _pem_spki(alipay.platform.public_key())},
        # bare base64 PKCS#8 / SPKI bodies, sandbox gateway, no seller_id
        "second": {"app_id": OTHER_APP_ID, "app_private_key": _body_pkcs8(alipay.app),
                   "alipay_public_key": _body_spki(alipay.platform.public_key()), "sandbox": True},
        # 当面付: a QR code from alipay.trade.precreate
        "qr": {"label": "支付宝扫码", "app_id": APP_ID, "product": "qr", "app_private_key": "env:ALIPAY_TEST_PRIVATE_KEY",
               "alipay_public_key": _pem_spki(alipay.platform.public_key())},
    }}


def profile_of(alipay, name="main", **overrides):
    config = payments_config(alipay)["alipay"][name]
    config.update(overrides)
    return check_payments_config({"alipay": {name: config}}, {"alipay": AlipayChannel()},
                                 environ={"ALIPAY_TEST_PRIVATE_KEY": _pem_pkcs1(alipay.app)})[("alipay", name)]


@pytest.fixture
def shop(host_factory, alipay, monkeypatch):
    monkeypatch.setenv("ALIPAY_TEST_PRIVATE_KEY", _pem_pkcs1(alipay.app))
    host = host_factory("alipay", payments=payments_config(alipay))
    return open_channel_shop(host, PRICE_FEN)


token = csrf_token


def buy(client, product, pay="alipay/main"):
    return shared_buy(client, product, pay)


def new_order(shop, pay="alipay/main", client=None):
    return shared_new_order(shop, pay, client)


def notify(client, fields, profile="main", method="POST", channel="alipay"):
    return notify_form(client, channel, profile, fields, method)


# -- the buyer's path: a signed page-pay redirect ------------------------------------------------


def _start_paying(shop, profile):
    client = shop.client()
    order_no = new_order(shop, f"alipay/{profile}", client)
    page = client.get(f"/order/{order_no}")
    assert "去支付" in page.get_data(as_text=True)
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "alipay",
                                                     "profile": profile, "type": "alipay"})
    assert response.status_code == 302
    return order_no, response.headers["Location"]


@pytest.mark.parametrize("profile, gateway_url", [("main", GATEWAY), ("second", SANDBOX_GATEWAY)])
def test_page_pay_redirects_to_a_url_signed_for_alipay(shop, alipay, profile, gateway_url):
    order_no, location = _start_paying(shop, profile)
    url, _, query = location.partition("?")
    assert url == gateway_url
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    assert len(params) == len(pairs)  # every parameter once
    assert params["method"] == "alipay.trade.page.pay" and params["version"] == "1.0"
    assert params["app_id"] == (APP_ID if profile == "main" else OTHER_APP_ID)
    assert params["format"] == "JSON" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", params["timestamp"])
    assert params["notify_url"] == f"http://shop1.localhost/pay/notify/alipay/{profile}"
    assert params["return_url"] == f"http://shop1.localhost/order/{order_no}"
    biz = json.loads(params["biz_content"])
    assert biz == {"out_trade_no": order_no, "total_amount": "15.00", "subject": "测试月卡",
                   "product_code": "FAST_INSTANT_TRADE_PAY"}
    assert alipay.request_signed_by_app(params)
    assert not alipay.request_signed_by_app(dict(params, biz_content=params["biz_content"].replace("15.00", "0.01")))


def test_the_order_page_offers_alipay_and_no_demo_shortcut(shop):
    client = shop.client()
    page = client.get(f"/p/{shop.product.id}").get_data(as_text=True)
    assert 'value="alipay/main"' in page and 'value="alipay/second"' in page
    order_no = new_order(shop, "alipay/main", client)
    with all_sites():
        order = Order.get(Order.order_no == order_no)
    assert (order.channel, order.channel_profile) == ("alipay", "main")
    assert "模拟支付" not in client.get(f"/order/{order_no}").get_data(as_text=True)


# -- accepted notifications ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["TRADE_SUCCESS", "TRADE_FINISHED"])
def test_a_genuine_notification_delivers_and_replies_exactly_success(shop, alipay, status):
    client = shop.client()
    order_no = new_order(shop, client=client)
    fields = alipay.notification(order_no, trade_status=status)
    response = notify(shop.client(), fields)
    assert (response.status_code, response.get_data()) == (200, b"success")
    assert response.headers["Content-Type"].startswith("text/plain")
    with all_sites():
        payment = Payment.get()
        assert Order.get(Order.order_no == order_no).status == "delivered"
    assert (payment.channel, payment.trade_no, payment.amount_fen) == ("alipay", fields["trade_no"], PRICE_FEN)
    assert shop.counter.orders == [(order_no, "shop1")]
    assert "CODE-" in client.get(f"/order/{order_no}").get_data(as_text=True)


def test_the_second_profile_with_bare_base64_keys_and_no_seller_check(shop, alipay):
    order_no = new_order(shop, "alipay/second")
    fields = alipay.notification(order_no, app_id=OTHER_APP_ID, auth_app_id=OTHER_APP_ID, seller_id="2088999999999999")
    assert notify(shop.client(), fields, profile="second").get_data() == b"success"
    assert snapshot()[0] == 1


@pytest.mark.parametrize("amount", ["15", "15.0", "15.00"])
def test_total_amount_is_compared_as_a_decimal(shop, alipay, amount):
    order_no = new_order(shop)
    assert notify(shop.client(), alipay.notification(order_no, total_amount=amount)).get_data() == b"success"


def test_trade_finished_after_trade_success_is_a_harmless_replay(shop, alipay):
    order_no = new_order(shop)
    success = alipay.notification(order_no)
    finished = alipay.notification(order_no, trade_status="TRADE_FINISHED",
                                   notify_time="2024-10-01 12:00:06")  # sent when the refund window closes
    assert notify(shop.client(), success).get_data() == b"success"
    after_first = snapshot()
    response = notify(shop.client(), finished)
    assert (response.status_code, response.get_data()) == (200, b"success")
    assert snapshot() == after_first and after_first[0] == 1
    assert shop.counter.orders == [(order_no, "shop1")]


def test_a_replay_is_one_payment_and_success_again(shop, alipay):
    order_no = new_order(shop)
    fields = alipay.notification(order_no)
    assert notify(shop.client(), fields).get_data() == b"success"
    after_first = snapshot()
    replies = [notify(shop.client(domain), fields).get_data() for domain in ("shop1.localhost", "main.localhost")]
    assert replies == [b"success"] * 2
    assert snapshot() == after_first and len(shop.counter.orders) == 1


# -- the forgery matrix: refused, logged, nothing written --------------------------------------


def _unsigned(fields):
    return {k: v for k, v in fields.items() if k not in ("sign", "sign_type")}


def _paid_trade_on_another_order(g, s):
    first = new_order(s)
    fields = g.notification(first)
    assert notify(s.client(), fields).get_data() == b"success"
    return g.notification(new_order(s), trade_no=fields["trade_no"])


FORGERIES = {
    "bad signature": lambda g, s: dict(g.notification(new_order(s)), sign=base64.b64encode(b"\0" * 256).decode()),
    "sign not base64": lambda g, s: dict(g.notification(new_order(s)), sign="not base64!"),
    "missing sign": lambda g, s: {k: v for k, v in g.notification(new_order(s)).items() if k != "sign"},
    "empty sign": lambda g, s: dict(g.notification(new_order(s)), sign=""),
    "signed with another key": lambda g, s: g.sign(_unsigned(g.notification(new_order(s))), private=g.stranger),
    "signed with the app's own key": lambda g, s: g.sign(_unsigned(g.notification(new_order(s))), private=g.app),
    "sign_type RSA (SHA1)": lambda g, s: dict(g.notification(new_order(s)), sign_type="RSA"),
    "tampered amount": lambda g, s: dict(g.notification(new_order(s)), total_amount="0.01"),
    "unsigned field added": lambda g, s: dict(g.notification(new_order(s)), extra="1"),
    "signed wrong amount": lambda g, s: g.notification(new_order(s), total_amount="0.01"),
    "negative amount": lambda g, s: g.notification(new_order(s), total_amount="-15.00"),
    "exponent amount": lambda g, s: g.notification(new_order(s), total_amount="1.5E+1"),
    "three decimals": lambda g, s: g.notification(new_order(s), total_amount="15.001"),
    "other app_id": lambda g, s: g.notification(new_order(s), app_id=OTHER_APP_ID),
    "other seller_id": lambda g, s: g.notification(new_order(s), seller_id="2088000000000002"),
    "no seller_id": lambda g, s: g.sign({k: v for k, v in _unsigned(g.notification(new_order(s))).items()
                                         if k != "seller_id"}),
    "other channel's order": lambda g, s: g.notification(create_order(
        site_id=s.site_id, sku_id=s.product.skus[0].id, quantity=1, contact="x@y.zz",
        channel="epay", channel_profile="main").order_no),
    "order without channel": lambda g, s: g.notification(create_order(
        site_id=s.site_id, sku_id=s.product.skus[0].id, quantity=1, contact="x@y.zz").order_no),
    "other profile's order": lambda g, s: g.notification(new_order(s, "alipay/second")),
    "unknown order": lambda g, s: g.notification("K2024070100000000000"),
    "WAIT_BUYER_PAY": lambda g, s: g.notification(new_order(s), trade_status="WAIT_BUYER_PAY"),
    "TRADE_CLOSED": lambda g, s: g.notification(new_order(s), trade_status="TRADE_CLOSED"),
    "missing trade_no": lambda g, s: g.sign({k: v for k, v in _unsigned(g.notification(new_order(s))).items()
                                             if k != "trade_no"}),
    "trade no already paid another order": _paid_trade_on_another_order,
}


#: Why each forgery is refused: the check that must catch it, not merely some check.
# Genuine notifications that report no payment: acknowledged (so the gateway stops resending), nothing written.
ACKNOWLEDGED = {case: FORGERIES.pop(case) for case in ('WAIT_BUYER_PAY', 'TRADE_CLOSED')}


REASONS = {
    "bad signature": "bad signature", "sign not base64": "bad signature", "missing sign": "no sign",
    "empty sign": "no sign", "signed with another key": "bad signature",
    "signed with the app's own key": "bad signature", "sign_type RSA (SHA1)": "is not RSA2",
    "tampered amount": "bad signature", "unsigned field added": "bad signature",
    "signed wrong amount": "does not match order", "negative amount": "is not a plain decimal number",
    "exponent amount": "is not a plain decimal number", "three decimals": "has more than 2 decimals",
    "other app_id": "app_id", "other seller_id": "seller_id", "no seller_id": "seller_id",
    "other channel's order": "was created for epay/main", "order without channel": "was created for -/-",
    "other profile's order": "was created for alipay/second", "unknown order": "unknown order",
    "WAIT_BUYER_PAY": "'WAIT_BUYER_PAY' is not a payment", "TRADE_CLOSED": "'TRADE_CLOSED' is not a payment",
    "missing trade_no": "missing trade_no", "trade no already paid another order": "already paid another order",
}


def _assert_refused(shop, response, before, caplog, reason="reason="):
    assert (response.status_code, response.get_data()) == (400, b"fail")
    assert snapshot() == before
    rejected = [r.getMessage() for r in caplog.records if "payment notification rejected" in r.getMessage()]
    assert len(rejected) == 1 and "reason=" in rejected[0]
    assert reason in rejected[0].split("reason=", 1)[1], rejected[0]


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_notifications_are_refused_and_write_nothing(shop, alipay, case, caplog):
    with all_sites():
        fields = FORGERIES[case](alipay, shop)
    before = snapshot()
    delivered = list(shop.counter.orders)
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), fields)
    _assert_refused(shop, response, before, caplog, REASONS[case])
    assert shop.counter.orders == delivered  # no new delivery


def test_a_genuine_notification_sent_as_get_is_refused(shop, alipay, caplog):
    fields = alipay.notification(new_order(shop))
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), fields, method="GET")
    _assert_refused(shop, response, before, caplog, "form POST")


def test_a_field_sent_twice_with_different_values_is_refused(shop, alipay, caplog):
    fields = alipay.notification(new_order(shop))
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        path = "/pay/notify/alipay/main?" + urllib.parse.urlencode({"total_amount": "0.01"})
        response = shop.client().post(path, data=fields)
    _assert_refused(shop, response, before, caplog, "sent twice")


def test_an_unconfigured_profile_is_not_found(shop, alipay):
    fields = alipay.notification(new_order(shop))
    before = snapshot()
    assert notify(shop.client(), fields, profile="nope").status_code == 404
    assert snapshot() == before


# -- concurrency on every backend ------------------------------------------------------------


def test_concurrent_duplicate_notifications_pay_and_deliver_once(tmp_path, backend_url, alipay, monkeypatch):
    monkeypatch.setenv("ALIPAY_TEST_PRIVATE_KEY", _pem_pkcs1(alipay.app))
    instance = base.make_instance(tmp_path / "instance", backend_url, payments=payments_config(alipay))
    host = base.make_host(instance)
    try:
        shop = open_channel_shop(host, PRICE_FEN)
        counter, s = shop.counter, shop
        order_no = new_order(s)
        success = alipay.notification(order_no)
        finished = alipay.notification(order_no, trade_status="TRADE_FINISHED")
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: notify(base.SiteClient(host, "shop1.localhost"),
                                                     finished if i % 4 == 3 else success).get_data(), range(16)))
        assert replies == [b"success"] * 16
        payments_, orders_, sold = snapshot()
        assert payments_ == 1 and orders_ == [(order_no, "delivered")] and sold == 1
        assert counter.orders == [(order_no, "shop1")]
    finally:
        host.close()


# -- the channel on its own ------------------------------------------------------------------


def test_reply_bodies_are_exact():
    channel = AlipayChannel()
    assert channel.reply(True) == Reply("success", 200)
    assert (channel.reply(False).body, channel.reply(False).status) == ("fail", 400)


@pytest.mark.parametrize("text, fen", [("15", 1500), ("15.5", 1550), ("0.01", 1), ("1234567.89", 123456789)])
def test_amounts(text, fen):
    assert amount_to_fen(text) == fen


@pytest.mark.parametrize("text", ["-1", "+1", "1e3", "1.5E+1", "1.001", "NaN", "Infinity", " 1", "1,00", "", "0x10",
                                  "１５"])
def test_bad_amounts(text):
    with pytest.raises(ValueError):
        amount_to_fen(text)


def test_keys_load_as_pem_or_bare_base64(alipay):
    public = alipay.platform.public_key()
    bodies = [_pem_pkcs1(alipay.app), _body_pkcs8(alipay.app),
              base64.b64encode(alipay.app.private_bytes(serialization.Encoding.DER,
                                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                                        serialization.NoEncryption())).decode()]
    for text in bodies:
        assert load_private_key(text).private_numbers() == alipay.app.private_numbers()
    wrapped = "\n".join(_body_spki(public)[i:i + 64] for i in range(0, len(_body_spki(public)), 64))
    for text in (_pem_spki(public), _body_spki(public), wrapped):
        assert load_public_key(text).public_numbers() == public.public_numbers()
    with pytest.raises(ValueError):
        load_private_key("A" * 100)


def test_a_sandbox_profile_does_nothing_on_a_production_instance(alipay):
    channel = AlipayChannel(production=True)
    profiles = check_payments_config(payments_config(alipay), {"alipay": channel},
                                     environ={"ALIPAY_TEST_PRIVATE_KEY": _pem_pkcs1(alipay.app)})
    profile = profiles[("alipay", "second")]
    fields = alipay.notification("K2024070100000000001", app_id=OTHER_APP_ID)
    verdict = channel.verify_notification(profile, NotifyRequest("POST", fields), time.time())
    assert isinstance(verdict, Rejection) and "sandbox" in verdict.reason
    with pytest.raises(Exception, match="sandbox"):  # outside a request: English
        channel.create_payment(profile, PayRequest("K1", 100, "x", "https://a/n", "https://a/r"))
    # the same notification on a non-production instance passes verification
    assert AlipayChannel().verify_notification(profile, NotifyRequest("POST", fields), time.time()).status == "paid"


def test_settings_are_validated_with_the_key_named_and_secrets_never_shown(alipay):
    channels = {"alipay": AlipayChannel()}
    good = {"app_id": APP_ID, "app_private_key": _body_pkcs8(alipay.app),
            "alipay_public_key": _body_spki(alipay.platform.public_key())}
    with pytest.raises(ConfigError, match=r"payments\.alipay\.main\.app_private_key: is required"):
        check_payments_config({"alipay": {"main": {k: v for k, v in good.items() if k != "app_private_key"}}},
                              channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.alipay\.main\.seller_id"):
        check_payments_config({"alipay": {"main": dict(good, seller_id="1234")}}, channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.alipay\.main\.gateway"):
        check_payments_config({"alipay": {"main": dict(good, gateway="http://openapi.alipay.com/gateway.do")}},
                              channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.alipay\.main\.colour: unknown setting"):
        check_payments_config({"alipay": {"main": dict(good, colour="red")}}, channels, environ={})
    bad_secret = "not a key! " * 10
    with pytest.raises(ConfigError) as caught:
        check_payments_config({"alipay": {"main": dict(good, app_private_key=bad_secret)}}, channels, environ={})
    assert caught.value.key == "payments.alipay.main.app_private_key" and "not a key" not in str(caught.value)
    profile = check_payments_config({"alipay": {"main": dict(good, app_private_key="env:K")}}, channels,
                                    environ={"K": good["app_private_key"]})[("alipay", "main")]
    assert profile.get("app_private_key") == good["app_private_key"]
    assert good["app_private_key"] not in repr(profile) and profile.public_settings()["app_private_key"] == "******"


@pytest.mark.parametrize("case", sorted(ACKNOWLEDGED))
def test_signed_notifications_without_a_payment_are_acknowledged_and_write_nothing(shop, alipay, case, caplog):
    with all_sites():
        fields = ACKNOWLEDGED[case](alipay, shop)
    before = snapshot()
    delivered = list(shop.counter.orders)
    with caplog.at_level(logging.INFO, logger="kamengsite.payments"):
        response = notify(shop.client(), fields)
    assert (response.status_code, response.get_data()) == (200, b"success")
    assert snapshot() == before
    assert shop.counter.orders == delivered
    assert [r for r in caplog.records if "acknowledged without payment" in r.getMessage()]
    assert not [r for r in caplog.records if "payment notification rejected" in r.getMessage()]


# -- 手机网站支付 and 当面付 (precreate) --------------------------------------------------------------


def test_a_phone_gets_wap_pay_signed_for_alipay(shop, alipay):
    client = shop.client()
    order_no = new_order(shop, "alipay/main", client)
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "alipay", "profile": "main"},
                           headers={"User-Agent": "Mozilla/5.0 (Linux; Android 14) Mobile Safari/537.36"})
    assert response.status_code == 302
    url, _, query = response.headers["Location"].partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    assert url == GATEWAY and params["method"] == "alipay.trade.wap.pay"
    assert json.loads(params["biz_content"]) == {
        "out_trade_no": order_no, "total_amount": "15.00", "subject": "测试月卡", "product_code": "QUICK_WAP_WAY",
        "quit_url": f"http://shop1.localhost/order/{order_no}"}
    assert alipay.request_signed_by_app(params)


def _pay_qr(shop):
    client = shop.client()
    order_no = new_order(shop, "alipay/qr", client)
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "alipay", "profile": "qr"})
    return client, order_no, response


def test_precreate_shows_alipays_qr_code_as_an_image(shop, server):
    _, order_no, response = _pay_qr(shop)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'data-qrcode="https://qr.alipay.com/bax08{order_no[-12:]}"' in html
    assert "<svg" in html and "<script" not in html
    [(url, params, biz)] = server.calls  # the request passed Alipay's signature check
    assert url == GATEWAY and params["method"] == "alipay.trade.precreate"
    assert params["notify_url"] == "http://shop1.localhost/pay/notify/alipay/qr" and "return_url" not in params
    assert biz == {"out_trade_no": order_no, "total_amount": "15.00", "subject": "测试月卡"}
    assert snapshot()[0] == 0


@pytest.mark.parametrize("answer, shown", [("refuse", "支付宝下单失败"), ("forged", "无法连接支付宝"),
                                           ("unsigned", "无法连接支付宝")])
def test_a_precreate_answer_that_is_refused_or_not_alipays_shows_a_message(shop, server, answer, shown):
    server.answer = answer
    client, order_no, response = _pay_qr(shop)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/order/{order_no}")
    assert shown in client.get(f"/order/{order_no}").get_data(as_text=True)
    assert server.calls


def test_a_precreate_signed_with_another_app_key_is_refused_by_alipay(alipay, server):
    channel = AlipayChannel()
    request = PayRequest("K20240701000000000001", 1500, "月卡", "https://s/n", "https://s/r")
    with pytest.raises(PaymentError, match="Alipay could not create the payment"):
        channel.create_payment(profile_of(alipay, "qr", app_private_key=_body_pkcs8(alipay.stranger)), request)
    assert channel.create_payment(profile_of(alipay, "qr"), request).kind == "qrcode"


def test_the_signed_text_is_cut_from_the_answer_not_re_serialised(alipay):
    server = AlipayServer(alipay)
    raw = server.respond("alipay_trade_refund_response", {"code": "10000", "msg": "成功", "url": "https://a/b"})
    node, text, sign = response_node(raw, "alipay.trade.refund")
    assert node == {"code": "10000", "msg": "成功", "url": "https://a/b"}
    assert '"code": "10000"' in text and "\\u6210" in text and "\\/" in text  # exactly as sent
    assert text != json.dumps(node)
    assert kamengsite_alipay.rsa2_verify(text, sign, _pem_spki(alipay.platform.public_key()))


# -- refunds ----------------------------------------------------------------------------------


def _refund(alipay, amount_fen=500, profile="main", **overrides):
    request = RefundRequest(order_no="K20240701000000000001", trade_no="2024070122001400000000000001",
                            refund_no="RF0001", amount_fen=amount_fen, total_fen=PRICE_FEN, reason="缺货退款")
    return AlipayChannel().refund(profile_of(alipay, profile, **overrides), request)


def test_alipay_supports_refunds():
    assert AlipayChannel.supports_refund is True


def test_a_refund_is_signed_for_alipay_and_its_signed_answer_accepted(alipay, server):
    result = _refund(alipay)
    assert result.ok and not result.pending
    [(url, params, biz)] = server.calls
    assert url == GATEWAY and params["method"] == "alipay.trade.refund"
    assert biz == {"out_trade_no": "K20240701000000000001", "trade_no": "2024070122001400000000000001",
                   "refund_amount": "5.00", "out_request_no": "RF0001", "refund_reason": "缺货退款"}


def test_a_refund_without_fund_change_is_accepted_as_pending(alipay, server):
    server.answer = "pending"
    result = _refund(alipay, amount_fen=PRICE_FEN)
    assert result.ok and result.pending


def test_a_refund_alipay_refuses_is_not_ok_with_its_reason(alipay, server):
    server.answer = "refuse"
    result = _refund(alipay)
    assert not result.ok and "ACQ.TRADE_NOT_EXIST" in result.message and "交易不存在" in result.message


@pytest.mark.parametrize("answer", ["forged", "unsigned"])
def test_a_success_answer_not_signed_by_alipay_is_not_ok(alipay, server, answer):
    server.answer = answer
    result = _refund(alipay)
    assert not result.ok and "failed signature verification" in result.message


def test_a_refund_signed_with_another_app_key_is_refused_by_alipay(alipay, server):
    result = _refund(alipay, app_private_key=_body_pkcs8(alipay.stranger))
    assert not result.ok and "isv.invalid-signature" in result.message


@pytest.mark.parametrize("raw", [TimeoutError("timed out"), b"<html>502</html>", b'{"sign":"x"}'])
def test_network_errors_and_unreadable_answers_are_not_ok_and_never_raise(alipay, raw):
    def post(url, fields, timeout):
        if isinstance(raw, Exception):
            raise raw
        return raw

    request = RefundRequest("K1", "T1", "RF1", 100, 100)
    result = AlipayChannel(post=post).refund(profile_of(alipay), request)
    assert not result.ok and "Cannot reach Alipay or its answer is unreadable" in result.message
    assert "PRIVATE" not in result.message


@pytest.mark.parametrize("amount_fen", [0, PRICE_FEN + 1])
def test_a_refund_amount_outside_the_payment_is_refused_before_any_call(alipay, server, amount_fen):
    assert not _refund(alipay, amount_fen=amount_fen).ok and server.calls == []


def test_a_sandbox_profile_refunds_nothing_on_a_production_instance(alipay, server):
    request = RefundRequest("K1", "T1", "RF1", 100, 100)
    result = AlipayChannel(production=True).refund(profile_of(alipay, "second"), request)
    assert not result.ok and "sandbox" in result.message and server.calls == []


def test_product_is_validated(alipay):
    with pytest.raises(ConfigError, match=r"payments\.alipay\.main\.product"):
        profile_of(alipay, product="app")


# -- languages ------------------------------------------------------------------------------------


def test_the_buyer_reads_alipays_messages_in_english_on_request(shop, server):
    server.answer = "refuse"
    client = shop.client()
    client.get("/?lang=en")  # the visitor's choice, kept in a cookie
    order_no = new_order(shop, "alipay/qr", client)
    page = client.get(f"/order/{order_no}")
    client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "alipay", "profile": "qr"})
    shown = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "Alipay could not create the payment" in shown and "支付宝下单失败" not in shown
    channel = AlipayChannel()  # outside a request: the English names (支付宝 in a Chinese request)
    assert channel.name == "Alipay" and [(t.id, t.name) for t in channel.pay_types] == [("alipay", "Alipay")]
