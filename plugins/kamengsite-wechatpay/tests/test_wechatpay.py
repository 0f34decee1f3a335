"""微信支付 API v3 channel: a WeChat Pay simulator that signs and encrypts as WeChat Pay does (RSA keys
and APIv3 key generated here), the buyer's path to the QR code with a faked HTTP call, and a forgery
matrix where every refused notification leaves the database exactly as it was."""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import string
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import kamengsite_test_fixtures as base
from kamengsite.testing import buy as shared_buy, csrf_token, new_order as shared_new_order, open_channel_shop, snapshot
import kamengsite_wechatpay
from kamengsite.errors import ConfigError
from kamengsite.orders import Order, Payment, create_order
from kamengsite.payments import NotifyRequest, PaymentError, RefundRequest, check_payments_config, verify_and_apply
from kamengsite.tenancy import all_sites
from kamengsite_wechatpay import HttpAnswer, WechatPayChannel

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
APPID, MCHID, ALT_MCHID = "wx8888888888888888", "1900000109", "1900000110"
SERIAL_NO = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PUB_KEY_ID = "PUB_KEY_ID_0119000001092024070100000000"
PRICE_FEN = 1500
FAIL = b'{"code":"FAIL","message":"\xe5\xa4\xb1\xe8\xb4\xa5"}'  # {"code":"FAIL","message":"失败"}


# -- the WeChat Pay simulator: its own implementation of the protocol, not the plugin's ----------


def _pem(key, private=False):
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _nonce(n=32):
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


class WechatPaySim:
    """Signs and encrypts notifications and checks merchant requests exactly as WeChat Pay API v3 does."""

    def __init__(self):
        self.platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.apiv3_key = _nonce(32)
        self.requests = []

    # notifications
    def encrypt(self, plaintext: bytes, key=None, aad="transaction"):
        nonce = _nonce(12)
        ciphertext = AESGCM((key or self.apiv3_key).encode()).encrypt(nonce.encode(), plaintext, aad.encode())
        return {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": aad, "nonce": nonce}

    def sign(self, body: bytes, timestamp=None, nonce=None, key=None, serial=PUB_KEY_ID,
             sign_type="WECHATPAY2-SHA256-RSA2048"):
        timestamp = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or _nonce()
        message = timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
        signature = base64.b64encode((key or self.platform).sign(message, padding.PKCS1v15(), hashes.SHA256()))
        headers = {"Wechatpay-Serial": serial, "Wechatpay-Signature": signature.decode(),
                   "Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce}
        if sign_type is not None:
            headers["Wechatpay-Signature-Type"] = sign_type
        return headers

    @staticmethod
    def transaction(order_no, *, total=PRICE_FEN, **overrides):
        trade = {"appid": APPID, "mchid": MCHID, "out_trade_no": order_no,
                 "transaction_id": "42000012" + order_no[-12:].rjust(12, "0") + "8888",
                 "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
                 "bank_type": "OTHERS", "attach": "", "success_time": "2024-07-01T12:00:30+08:00",
                 "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
                 "amount": {"total": total, "payer_total": total if isinstance(total, int) else 0,
                            "currency": "CNY", "payer_currency": "CNY"}}
        trade.update(overrides)
        return trade

    def body(self, trade: dict, key=None, event_type="TRANSACTION.SUCCESS") -> bytes:
        event = {"id": "EV-" + _nonce(16), "create_time": "2024-07-01T12:00:31+08:00",
                 "resource_type": "encrypt-resource", "event_type": event_type, "summary": "支付成功",
                 "resource": self.encrypt(json.dumps(trade, ensure_ascii=False).encode(), key)}
        return json.dumps(event, ensure_ascii=False).encode()  # WeChat's own spacing: ", " and ": "

    def notification(self, order_no, **overrides):
        body = self.body(self.transaction(order_no, **overrides))
        return self.sign(body), body

    # merchant requests
    def check_request(self, method, url, body: bytes, headers: dict) -> dict:
        schema, _, params = headers["Authorization"].partition(" ")
        assert schema == "WECHATPAY2-SHA256-RSA2048"
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        assert set(fields) == {"mchid", "nonce_str", "signature", "timestamp", "serial_no"}
        assert fields["mchid"] == MCHID and fields["serial_no"] == SERIAL_NO
        assert abs(int(fields["timestamp"]) - time.time()) < 300
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        message = f"{method}\n{path}\n{fields['timestamp']}\n{fields['nonce_str']}\n".encode() + body + b"\n"
        self.merchant.public_key().verify(base64.b64decode(fields["signature"]), message,
                                          padding.PKCS1v15(), hashes.SHA256())  # raises when forged
        return fields

    def transport(self, url, body, headers, timeout):
        assert timeout and timeout <= 30
        self.check_request("POST", url, body, headers)
        self.requests.append((url, json.loads(body), headers))
        return {"code_url": "weixin://wxpay/bizpayurl?pr=" + _nonce(7)}

    # the refund API: ``refund_answer`` is "SUCCESS", "PROCESSING", "CLOSED", "refuse" (a business
    # "no"), "forged" (signed by another key), "unsigned" or "wrong serial"
    refund_answer = "SUCCESS"

    def answer(self, status: int, payload: dict, key=None, serial=PUB_KEY_ID, signed=True) -> HttpAnswer:
        body = json.dumps(payload, ensure_ascii=False).encode()  # WeChat's own spacing
        headers = {"Request-ID": "08F4" + _nonce(16), "Content-Type": "application/json"}
        if signed:
            headers.update(self.sign(body, key=key, serial=serial, sign_type=None))  # answers carry no type
        return HttpAnswer(status, headers, body)

    def refund_transport(self, url, body, headers, timeout):
        assert timeout and timeout <= 30 and url == "https://api.mch.weixin.qq.com/v3/refund/domestic/refunds"
        try:
            self.check_request("POST", url, body, headers)
        except Exception:  # noqa: BLE001 - WeChat Pay refuses a request it cannot verify
            return self.answer(401, {"code": "SIGN_ERROR", "message": "签名错误"})
        request = json.loads(body)
        self.requests.append((url, request, headers))
        how = self.refund_answer
        if how == "refuse":
            return self.answer(403, {"code": "NOT_ENOUGH", "message": "基本账户余额不足，请充值后重新发起"})
        refund = {"refund_id": "50000000382019052709732678859", "out_refund_no": request["out_refund_no"],
                  "transaction_id": request.get("transaction_id", ""), "out_trade_no": "K2024070100000000001",
                  "channel": "ORIGINAL", "user_received_account": "招商银行信用卡0403",
                  "create_time": "2024-07-01T12:30:00+08:00", "funds_account": "AVAILABLE",
                  "status": how if how in ("SUCCESS", "PROCESSING", "CLOSED") else "SUCCESS",
                  "amount": dict(request["amount"], payer_total=request["amount"]["refund"],
                                 payer_refund=request["amount"]["refund"],
                                 settlement_refund=request["amount"]["refund"],
                                 settlement_total=request["amount"]["total"], discount_refund=0)}
        return self.answer(200, refund, key=self.merchant if how == "forged" else None,
                           serial="PUB_KEY_ID_0000000000" if how == "wrong serial" else PUB_KEY_ID,
                           signed=how != "unsigned")


@pytest.fixture(scope="module")
def wxpay():
    return WechatPaySim()


def profile_settings(sim, **overrides):
    settings = {"label": "微信扫码", "appid": APPID, "mchid": MCHID,
                "merchant_private_key": "env:WXPAY_TEST_PRIVATE_KEY", "merchant_serial_no": SERIAL_NO,
                "apiv3_key": "env:WXPAY_TEST_APIV3_KEY", "platform_public_key": _pem(sim.platform),
                "platform_public_key_id": PUB_KEY_ID}
    settings.update(overrides)
    return settings


def payments_config(sim):
    return {"wechatpay": {"main": profile_settings(sim), "alt": profile_settings(sim, mchid=ALT_MCHID)}}


def _environment(monkeypatch, sim):
    monkeypatch.setenv("WXPAY_TEST_PRIVATE_KEY", _pem(sim.merchant, private=True))
    monkeypatch.setenv("WXPAY_TEST_APIV3_KEY", sim.apiv3_key)
    monkeypatch.setattr(kamengsite_wechatpay, "post_json", sim.transport)  # no network


@pytest.fixture
def shop(host_factory, wxpay, monkeypatch):
    _environment(monkeypatch, wxpay)
    host = host_factory("wechatpay", payments=payments_config(wxpay))
    return open_channel_shop(host, PRICE_FEN)


token = csrf_token


def buy(client, product, pay="wechatpay/main"):
    return shared_buy(client, product, pay)


def new_order(shop, pay="wechatpay/main", client=None):
    return shared_new_order(shop, pay, client)


def notify(client, headers, body, profile="main", method="POST"):
    return client.open(f"/pay/notify/wechatpay/{profile}", method=method, data=body, headers=headers,
                       content_type="application/json")


# -- the buyer's path: a signed Native order, the QR code -----------------------------------------


def test_the_pay_page_shows_the_code_url_of_a_signed_native_order(shop, wxpay):
    client = shop.client()
    order_no = new_order(shop, client=client)
    page = client.get(f"/order/{order_no}")
    assert "模拟支付" not in page.get_data(as_text=True)
    wxpay.requests.clear()
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "wechatpay",
                                                     "profile": "main", "type": "wxpay"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    qr = re.search(r'data-qrcode="([^"]+)"', html).group(1)
    assert qr.startswith("weixin://wxpay/bizpayurl?pr=")
    assert "<svg" in html and "<script" not in html  # the QR is drawn on the server: no script, no CDN
    [(url, body, headers)] = wxpay.requests  # check_request verified Authorization with the merchant public key
    assert url == "https://api.mch.weixin.qq.com/v3/pay/transactions/native"
    assert body == {"appid": APPID, "mchid": MCHID, "description": "测试月卡", "out_trade_no": order_no,
                    "notify_url": "http://shop1.localhost/pay/notify/wechatpay/main",
                    "amount": {"total": PRICE_FEN, "currency": "CNY"}}
    assert headers["Content-Type"] == "application/json" and headers["Accept"] == "application/json"


def test_the_authorization_header_verifies_with_the_merchant_public_key_and_nothing_else(wxpay, monkeypatch):
    _environment(monkeypatch, wxpay)
    channel = WechatPayChannel()
    profile = check_payments_config(payments_config(wxpay), {"wechatpay": channel})[("wechatpay", "main")]
    from kamengsite.payments import PayRequest

    url, body, headers = channel.native_request(profile, PayRequest("K1", 1, "x" * 200, "https://a.test/n", ""))
    fields = wxpay.check_request("POST", url, body, headers)
    assert len(json.loads(body)["description"].encode()) <= 127
    with pytest.raises(Exception):  # a changed body no longer matches the signature
        wxpay.check_request("POST", url, body.replace(b'"total":1', b'"total":2'), headers)
    with pytest.raises(Exception):
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        other.public_key().verify(base64.b64decode(fields["signature"]), b"", padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("answer", [PaymentError("boom"), {"code": "PARAM_ERROR", "message": "x"}])
def test_a_failed_create_call_shows_a_message_and_writes_nothing(shop, monkeypatch, answer):
    def fake(url, body, headers, timeout):
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(kamengsite_wechatpay, "post_json", fake)
    client = shop.client()
    order_no = new_order(shop, client=client)
    page = client.get(f"/order/{order_no}")
    before = snapshot()
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "wechatpay",
                                                     "profile": "main"})
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/order/{order_no}")
    assert snapshot() == before


# -- accepted notifications ------------------------------------------------------------------


def test_a_genuine_notification_delivers_and_replies_204_empty(shop, wxpay):
    client = shop.client()
    order_no = new_order(shop, client=client)
    headers, body = wxpay.notification(order_no)
    response = notify(shop.client("main.localhost"), headers, body)
    assert (response.status_code, response.get_data()) == (204, b"")
    with all_sites():
        payment = Payment.get()
        assert Order.get(Order.order_no == order_no).status == "delivered"
    trade = wxpay.transaction(order_no)
    assert (payment.channel, payment.amount_fen, payment.trade_no) == ("wechatpay", PRICE_FEN, trade["transaction_id"])
    assert shop.counter.orders == [(order_no, "shop1")]
    assert "CODE-" in client.get(f"/order/{order_no}").get_data(as_text=True)


def test_a_duplicate_within_the_window_is_one_payment_and_204_again(shop, wxpay):
    order_no = new_order(shop)
    headers, body = wxpay.notification(order_no)
    replies = [notify(shop.client(), headers, body) for _ in range(3)]
    assert [(r.status_code, r.get_data()) for r in replies] == [(204, b"")] * 3
    resent = wxpay.sign(body)  # WeChat's retry: same body, new signature
    assert notify(shop.client(), resent, body).status_code == 204
    assert snapshot()[0] == 1 and len(shop.counter.orders) == 1


def test_headers_are_matched_case_insensitively(wxpay, monkeypatch):
    _environment(monkeypatch, wxpay)
    channel = WechatPayChannel()
    profile = check_payments_config(payments_config(wxpay), {"wechatpay": channel})[("wechatpay", "main")]
    headers, body = wxpay.notification("K2024070100000000001")
    lower = {k.lower(): v for k, v in headers.items()}
    verdict = channel.verify_notification(profile, NotifyRequest("POST", {}, lower, body), time.time())
    assert verdict.status == "paid" and verdict.amount_fen == PRICE_FEN and verdict.order_no == "K2024070100000000001"


# -- the forgery matrix: refused, logged, nothing written --------------------------------------


def _other_order(shop, channel=None, profile=""):
    extra = {"channel": channel, "channel_profile": profile} if channel else {}
    return create_order(site_id=shop.site_id, sku_id=shop.product.skus[0].id, quantity=1, contact="x@y.zz",
                        **extra).order_no


def _resign(w, headers, body):
    return w.sign(body), body


def _tampered_body(w, s):
    headers, body = w.notification(new_order(s))
    return headers, body.replace("支付成功".encode(), "支付失败".encode(), 1)


def _reserialised(w, s):
    headers, body = w.notification(new_order(s))
    same = json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=True).encode()
    assert json.loads(same) == json.loads(body) and same != body
    return headers, same


def _bad_tag(w, s):
    event = json.loads(w.notification(new_order(s))[1])
    raw = bytearray(base64.b64decode(event["resource"]["ciphertext"]))
    raw[-1] ^= 0x01
    event["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    body = json.dumps(event, ensure_ascii=False).encode()
    return w.sign(body), body  # correctly signed by WeChat, but the resource does not authenticate


def _aad_changed(w, s):
    event = json.loads(w.notification(new_order(s))[1])
    event["resource"]["associated_data"] = "certificate"
    body = json.dumps(event).encode()
    return w.sign(body), body


def _headers(change):
    def make(w, s):
        headers, body = w.notification(new_order(s))
        return change(dict(headers), w), body
    return make


def _signed(w, order_no, key=None, event_type="TRANSACTION.SUCCESS", **overrides):
    body = w.body(w.transaction(order_no, **overrides), key=key, event_type=event_type)
    return w.sign(body), body


FORGERIES = {
    "bad signature": _headers(lambda h, w: dict(h, **{"Wechatpay-Signature": base64.b64encode(
        secrets.token_bytes(256)).decode()})),
    "WeChat signature probe": _headers(lambda h, w: dict(h, **{"Wechatpay-Signature": "WECHATPAY/SIGNTEST/"
                                                               + h["Wechatpay-Signature"]})),
    "signature not base64": _headers(lambda h, w: dict(h, **{"Wechatpay-Signature": "not base64!"})),
    "no signature": _headers(lambda h, w: {k: v for k, v in h.items() if k != "Wechatpay-Signature"}),
    "signed by the merchant key": lambda w, s: (w.sign(b := w.notification(new_order(s))[1], key=w.merchant), b),
    "body tampered after signing": _tampered_body,
    "re-serialised JSON body": _reserialised,
    "nonce changed": _headers(lambda h, w: dict(h, **{"Wechatpay-Nonce": _nonce()})),
    "timestamp changed": _headers(lambda h, w: dict(h, **{"Wechatpay-Timestamp": str(int(h["Wechatpay-Timestamp"]) - 1)})),
    "wrong serial": lambda w, s: (w.sign(b := w.notification(new_order(s))[1], serial="PUB_KEY_ID_0000000000"), b),
    "no serial": _headers(lambda h, w: {k: v for k, v in h.items() if k != "Wechatpay-Serial"}),
    "stale timestamp": lambda w, s: (w.sign(b := w.notification(new_order(s))[1], timestamp=int(time.time()) - 301), b),
    "future timestamp": lambda w, s: (w.sign(b := w.notification(new_order(s))[1], timestamp=int(time.time()) + 301), b),
    "timestamp in milliseconds": lambda w, s: (w.sign(b := w.notification(new_order(s))[1],
                                                      timestamp=int(time.time() * 1000)), b),
    "missing signature type": lambda w, s: (w.sign(b := w.notification(new_order(s))[1], sign_type=None), b),
    "other signature type": lambda w, s: (w.sign(b := w.notification(new_order(s))[1], sign_type="WECHATPAY2-SM2-WITH-SM3"), b),
    "wrong appid": lambda w, s: _signed(w, new_order(s), appid="wx0000000000000000"),
    "wrong mchid": lambda w, s: _signed(w, new_order(s), mchid="1900009999"),
    "other profile's merchant": lambda w, s: _signed(w, new_order(s, "wechatpay/alt"), mchid=ALT_MCHID),
    "other profile's order": lambda w, s: _signed(w, new_order(s, "wechatpay/alt")),
    "other channel's order": lambda w, s: _signed(w, _other_order(s, "epay", "main")),
    "order without channel": lambda w, s: _signed(w, _other_order(s)),
    "unknown order": lambda w, s: _signed(w, "K2024070100000000000"),
    "amount tampered inside the encrypted resource": lambda w, s: _signed(w, new_order(s), total=1),
    "amount as a string": lambda w, s: _signed(w, new_order(s), total="1500"),
    "amount as a float": lambda w, s: _signed(w, new_order(s), total=1500.0),
    "amount as yuan": lambda w, s: _signed(w, new_order(s), total=15),
    "other currency": lambda w, s: _signed(w, new_order(s), amount={"total": PRICE_FEN, "currency": "USD"}),
    "bad AES tag": _bad_tag,
    "associated data changed": _aad_changed,
    "encrypted with another APIv3 key": lambda w, s: _signed(w, new_order(s), key=_nonce(32)),
    "trade_state NOTPAY": lambda w, s: _signed(w, new_order(s), trade_state="NOTPAY"),
    "trade_state REFUND": lambda w, s: _signed(w, new_order(s), trade_state="REFUND"),
    "other event type": lambda w, s: _signed(w, new_order(s), event_type="REFUND.SUCCESS"),
    "no transaction_id": lambda w, s: _signed(w, new_order(s), transaction_id=""),
    "GET instead of POST": "GET",
}


# Genuine notifications that report no payment: acknowledged (so the gateway stops resending), nothing written.
ACKNOWLEDGED = {case: FORGERIES.pop(case) for case in ('trade_state NOTPAY', 'trade_state REFUND')}


REASONS = {  # each forgery is refused for its own reason, not by accident
    "GET instead of POST": "is not POST", "WeChat signature probe": "signature probe",
    "amount as a float": "not an integer number of fen", "amount as a string": "not an integer number of fen",
    "amount as yuan": "does not match order", "amount tampered inside the encrypted resource": "does not match order",
    "associated data changed": "does not decrypt", "bad AES tag": "does not decrypt",
    "encrypted with another APIv3 key": "does not decrypt", "bad signature": "bad signature",
    "body tampered after signing": "bad signature", "re-serialised JSON body": "bad signature",
    "nonce changed": "bad signature", "timestamp changed": "bad signature", "signature not base64": "bad signature",
    "signed by the merchant key": "bad signature", "no signature": "missing Wechatpay-Nonce or Wechatpay-Signature",
    "future timestamp": "window", "stale timestamp": "window", "timestamp in milliseconds": "is not seconds",
    "missing signature type": "Signature-Type '(none)'", "other signature type": "Signature-Type 'WECHATPAY2-SM2",
    "no serial": "Wechatpay-Serial '(none)'", "wrong serial": "Wechatpay-Serial 'PUB_KEY_ID_0000000000'",
    "no transaction_id": "missing transaction_id", "order without channel": "was created for -/-",
    "other channel's order": "was created for epay/main", "other profile's order": "was created for wechatpay/alt",
    "other profile's merchant": "mchid '1900000110'", "wrong mchid": "mchid '1900009999'",
    "wrong appid": "appid 'wx0000000000000000'", "other currency": "currency 'USD'",
    "other event type": "event_type 'REFUND.SUCCESS'", "trade_state NOTPAY": "'NOTPAY' is not a payment",
    "trade_state REFUND": "'REFUND' is not a payment", "unknown order": "unknown order",
}


def test_every_forgery_has_an_expected_reason():
    assert set(REASONS) == set(FORGERIES) | set(ACKNOWLEDGED)


def _assert_refused(shop, response, before, caplog, reason=""):
    assert (response.status_code, response.get_data()) == (400, FAIL)
    assert response.content_type.startswith("application/json")
    assert snapshot() == before
    assert shop.counter.orders == []
    rejected = [r for r in caplog.records if "payment notification rejected" in r.getMessage()]
    assert len(rejected) == 1 and "reason=" in rejected[0].getMessage()
    assert reason in rejected[0].getMessage().split("reason=", 1)[1]


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_notifications_are_refused_and_write_nothing(shop, wxpay, case, caplog):
    method = "POST"
    with all_sites():
        if FORGERIES[case] == "GET":
            (headers, body), method = wxpay.notification(new_order(shop)), "GET"
        else:
            headers, body = FORGERIES[case](wxpay, shop)
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), headers, body, method=method)
    _assert_refused(shop, response, before, caplog, REASONS[case])


def test_a_replay_after_the_window_is_refused_and_writes_nothing(shop, wxpay, caplog):
    order_no = new_order(shop)
    captured = int(time.time()) - 3600
    headers, body = wxpay.sign(b := wxpay.notification(order_no)[1], timestamp=captured), b
    channel = WechatPayChannel()
    profile = check_payments_config({"wechatpay": {"main": profile_settings(wxpay)}},
                                    {"wechatpay": channel})[("wechatpay", "main")]
    first = verify_and_apply(channel, profile, NotifyRequest("POST", {}, headers, body), now=captured + 1)
    assert first.ok  # it was genuine when it was sent
    before = snapshot()
    assert before[0] == 1
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), headers, body)
    _assert_refused(shop, response, before, caplog, "window")


def test_a_transaction_id_cannot_pay_a_second_order(shop, wxpay, caplog):
    first, second = new_order(shop), new_order(shop)
    headers, body = wxpay.notification(first)
    assert notify(shop.client(), headers, body).status_code == 204
    shop.counter.orders.clear()
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), *_signed(wxpay, second,
                                                  transaction_id=wxpay.transaction(first)["transaction_id"]))
    _assert_refused(shop, response, before, caplog, "already paid another order")


def test_an_unconfigured_profile_is_not_found(shop, wxpay):
    headers, body = wxpay.notification(new_order(shop))
    before = snapshot()
    assert notify(shop.client(), headers, body, profile="nope").status_code == 404
    assert snapshot() == before


# -- concurrency on every backend ------------------------------------------------------------


def test_concurrent_duplicate_notifications_pay_and_deliver_once(tmp_path, backend_url, wxpay, monkeypatch):
    _environment(monkeypatch, wxpay)
    instance = base.make_instance(tmp_path / "instance", backend_url, payments=payments_config(wxpay))
    host = base.make_host(instance)
    try:
        shop = open_channel_shop(host, PRICE_FEN)
        counter, s = shop.counter, shop
        order_no = new_order(s)
        headers, body = wxpay.notification(order_no)
        retries = [wxpay.sign(body) for _ in range(4)]  # WeChat's retries carry fresh signatures

        def send(i):
            response = notify(base.SiteClient(host, "shop1.localhost"), headers if i % 2 else retries[i % 4], body)
            return response.status_code, response.get_data()

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(send, range(16)))
        assert replies == [(204, b"")] * 16
        payments_, orders_, sold = snapshot()
        assert payments_ == 1 and orders_ == [(order_no, "delivered")] and sold == 1
        assert counter.orders == [(order_no, "shop1")]
    finally:
        host.close()


# -- settings -------------------------------------------------------------------------------


def test_settings_are_validated_with_the_key_named_and_secrets_never_shown(wxpay):
    channels = {"wechatpay": WechatPayChannel()}
    env = {"WXPAY_TEST_PRIVATE_KEY": _pem(wxpay.merchant, private=True), "WXPAY_TEST_APIV3_KEY": wxpay.apiv3_key}
    short = "k" * 31
    with pytest.raises(ConfigError) as caught:
        check_payments_config({"wechatpay": {"main": profile_settings(wxpay, apiv3_key=short)}}, channels, environ=env)
    assert caught.value.key == "payments.wechatpay.main.apiv3_key" and short not in str(caught.value)
    settings = profile_settings(wxpay)
    del settings["platform_public_key_id"]
    with pytest.raises(ConfigError, match=r"payments\.wechatpay\.main\.platform_public_key_id: is required"):
        check_payments_config({"wechatpay": {"main": settings}}, channels, environ=env)
    with pytest.raises(ConfigError, match=r"payments\.wechatpay\.main\.merchant_private_key: environment variable"):
        check_payments_config({"wechatpay": {"main": profile_settings(wxpay)}}, channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.wechatpay\.main\.colour: unknown setting"):
        check_payments_config({"wechatpay": {"main": profile_settings(wxpay, colour="red")}}, channels, environ=env)
    profile = check_payments_config({"wechatpay": {"main": profile_settings(wxpay)}}, channels,
                                    environ=env)[("wechatpay", "main")]
    assert profile.get("apiv3_key") == wxpay.apiv3_key
    assert wxpay.apiv3_key not in repr(profile) and "PRIVATE KEY" not in repr(profile)
    assert profile.public_settings()["apiv3_key"] == profile.public_settings()["merchant_private_key"] == "******"


def test_the_plugin_is_installed_under_its_entry_point():
    from importlib.metadata import entry_points

    [ep] = [e for e in entry_points(group="kamengsite") if e.name == "wechatpay"]
    assert ep.load() is kamengsite_wechatpay.plugin
    [channel] = kamengsite_wechatpay.plugin.payment_channels(instance=None)
    assert channel.id == "wechatpay" and channel.reply(True).status == 204 and channel.reply(True).body == ""


@pytest.mark.parametrize("case", sorted(ACKNOWLEDGED))
def test_signed_notifications_without_a_payment_are_acknowledged_and_write_nothing(shop, wxpay, case, caplog):
    with all_sites():
        fields = ACKNOWLEDGED[case](wxpay, shop)
    before = snapshot()
    delivered = list(shop.counter.orders)
    with caplog.at_level(logging.INFO, logger="kamengsite.payments"):
        response = notify(shop.client(), *fields)
    assert (response.status_code, response.get_data()) == (204, b"")
    assert snapshot() == before
    assert shop.counter.orders == delivered
    assert [r for r in caplog.records if "acknowledged without payment" in r.getMessage()]
    assert not [r for r in caplog.records if "payment notification rejected" in r.getMessage()]


# -- refunds through POST /v3/refund/domestic/refunds ---------------------------------------------


@pytest.fixture
def refunds(wxpay, monkeypatch):
    _environment(monkeypatch, wxpay)
    monkeypatch.setattr(kamengsite_wechatpay, "post_raw", wxpay.refund_transport)  # no network
    monkeypatch.setattr(wxpay, "refund_answer", "SUCCESS")
    wxpay.requests.clear()
    return wxpay


def _refund(wxpay, amount_fen=500, trade_no="4200001234202407011234567890", **settings):
    channel = WechatPayChannel()
    profile = check_payments_config({"wechatpay": {"main": profile_settings(wxpay, **settings)}},
                                    {"wechatpay": channel})[("wechatpay", "main")]
    request = RefundRequest(order_no="K2024070100000000001", trade_no=trade_no, refund_no="RF0001",
                            amount_fen=amount_fen, total_fen=PRICE_FEN, reason="缺货退款")
    return channel.refund(profile, request)


def test_wechatpay_supports_refunds():
    assert WechatPayChannel.supports_refund is True


def test_a_refund_is_signed_and_its_signed_answer_accepted(refunds):
    result = _refund(refunds)
    assert result.ok and not result.pending and result.gateway_refund_no == "50000000382019052709732678859"
    [(url, body, headers)] = refunds.requests  # check_request verified Authorization with the merchant public key
    assert body == {"out_refund_no": "RF0001", "transaction_id": "4200001234202407011234567890", "reason": "缺货退款",
                    "amount": {"refund": 500, "total": PRICE_FEN, "currency": "CNY"}}


def test_a_refund_without_the_trade_number_names_our_order(refunds):
    assert _refund(refunds, trade_no="").ok
    assert refunds.requests[-1][1]["out_trade_no"] == "K2024070100000000001"
    assert "transaction_id" not in refunds.requests[-1][1]


def test_a_processing_refund_is_accepted_as_pending(refunds):
    refunds.refund_answer = "PROCESSING"
    result = _refund(refunds)
    assert result.ok and result.pending


@pytest.mark.parametrize("answer, words", [("refuse", "NOT_ENOUGH"), ("CLOSED", "CLOSED")])
def test_a_refund_wechat_pay_refuses_is_not_ok_with_its_reason(refunds, answer, words):
    refunds.refund_answer = answer
    result = _refund(refunds)
    assert not result.ok and words in result.message


@pytest.mark.parametrize("answer, why", [("forged", "bad signature"), ("unsigned", "Wechatpay-Serial '(none)'"),
                                         ("wrong serial", "PUB_KEY_ID_0000000000")])
def test_a_success_answer_not_signed_by_wechat_pay_is_not_ok(refunds, answer, why):
    refunds.refund_answer = answer
    result = _refund(refunds)
    assert not result.ok and "failed signature verification" in result.message and why in result.message


def test_a_stale_answer_is_not_ok(refunds, monkeypatch):
    real_sign = refunds.sign
    stale = int(time.time()) - 301
    monkeypatch.setattr(refunds, "sign", lambda body, **kw: real_sign(body, **dict(kw, timestamp=stale)))
    result = _refund(refunds)
    assert not result.ok and "window" in result.message


def test_a_refund_signed_with_another_merchant_key_is_refused_by_wechat_pay(refunds, monkeypatch):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv("WXPAY_TEST_PRIVATE_KEY", _pem(stranger, private=True))
    result = _refund(refunds)
    assert not result.ok and "SIGN_ERROR" in result.message


@pytest.mark.parametrize("failure", [TimeoutError("timed out"), HttpAnswer(502, {}, b"<html>bad gateway</html>")])
def test_network_errors_and_unreadable_answers_are_not_ok_and_never_raise(refunds, monkeypatch, failure):
    def transport(url, body, headers, timeout):
        if isinstance(failure, Exception):
            raise failure
        return failure

    monkeypatch.setattr(kamengsite_wechatpay, "post_raw", transport)
    result = _refund(refunds)
    assert not result.ok and result.message
    assert refunds.apiv3_key not in result.message and "PRIVATE" not in result.message


@pytest.mark.parametrize("amount_fen", [0, PRICE_FEN + 1])
def test_a_refund_amount_outside_the_payment_is_refused_before_any_call(refunds, amount_fen):
    assert not _refund(refunds, amount_fen=amount_fen).ok and refunds.requests == []


# -- languages ------------------------------------------------------------------------------------


def test_the_buyer_reads_wechat_pays_messages_in_english_on_request(shop, monkeypatch):
    def fake(url, body, headers, timeout):
        return {"code": "PARAM_ERROR", "message": "x"}

    monkeypatch.setattr(kamengsite_wechatpay, "post_json", fake)
    client = shop.client()
    client.get("/?lang=en")  # the visitor's choice, kept in a cookie
    order_no = new_order(shop, client=client)
    page = client.get(f"/order/{order_no}")
    client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "wechatpay", "profile": "main"})
    shown = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "WeChat Pay could not create the payment" in shown and "微信支付下单失败" not in shown
    channel = kamengsite_wechatpay.WechatPayChannel()  # outside a request: the English names
    assert channel.name == "WeChat Pay" and [t.name for t in channel.pay_types] == ["WeChat Pay"]
