"""USDT (epusdt-style) channel: a gateway simulator that signs as the gateway does (token generated
here), the numeric-text trap, the buyer's path to the gateway (the create request's signature),
a forgery matrix where every refused notification leaves the database exactly as it was, and
concurrent duplicate notifications."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import string
import sys
import time
import urllib.error
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

import kamengsite_test_fixtures as base
from kamengsite.testing import buy as shared_buy, csrf_token, new_order as shared_new_order, open_channel_shop, snapshot
import kamengsite_usdt
from kamengsite.errors import ConfigError
from kamengsite.orders import Order, Payment, create_order
from kamengsite.payments import PaymentError, PayRequest, check_payments_config
from kamengsite.tenancy import all_sites
from kamengsite_usdt import UsdtChannel

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
API = "https://usdt.gateway.test/"
PRICE_FEN = 10000  # 100 yuan: the gateway writes it as 100, never 100.00


# -- the gateway simulator: its own implementation of the protocol, not the plugin's -------------


class Num(str):
    """A JSON number written with exactly this text."""


def go_number(value) -> str:
    """How the gateway (Go, float64 through ``%v``) writes a number: no trailing zeros."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


class Gateway:
    """Signs notifications and checks merchant requests exactly as an epusdt gateway does."""

    def __init__(self):
        self.token = secrets.token_urlsafe(24)
        base58 = "".join(c for c in string.ascii_letters + string.digits if c not in "0OIl")
        self.wallet = "T" + "".join(secrets.choice(base58) for _ in range(33))  # a TRC20 address
        self.expires_in = 600  # seconds until the gateway gives the amount up
        self.requests = []  # (url, parsed body, timeout) of every create-transaction call

    @staticmethod
    def content(values: dict) -> str:
        kept = sorted((k.encode(), k, v) for k, v in values.items() if k != "signature" and v != "")
        return "&".join(f"{k}={v}" for _, k, v in kept)

    def md5(self, values: dict, token=None) -> str:
        return hashlib.md5((self.content(values) + (token or self.token)).encode()).hexdigest()

    @staticmethod
    def encode(fields: dict) -> bytes:
        """JSON with ``Num`` values written as bare numbers (their exact text)."""
        return ("{" + ",".join(f"{json.dumps(k)}:{v if isinstance(v, Num) else json.dumps(v)}"
                               for k, v in fields.items()) + "}").encode()

    def notification(self, order_no, *, amount=Num("100"), actual_amount=Num("13.89"), status=Num("2"),
                     token=None, signed_as=None, **overrides) -> bytes:
        """A notification body; ``signed_as`` replaces values in the signed text only (a forger's mistake)."""
        fields = {"trade_id": f"2024{order_no[-10:]}US", "order_id": order_no, "amount": amount,
                  "actual_amount": actual_amount, "token": self.wallet,
                  "block_transaction_id": secrets.token_hex(32), "status": status}
        fields.update(overrides)
        fields = {k: v for k, v in fields.items() if v is not None}
        fields["signature"] = self.md5(dict(fields, **(signed_as or {})), token)
        return self.encode(fields)

    def create_transaction(self, url, body, timeout):
        """The gateway's create endpoint: checks the merchant's signature like the gateway (Go) does."""
        request = json.loads(body)  # numbers become float64, as in the gateway
        self.requests.append((url, request, timeout))
        values = {k: go_number(v) if isinstance(v, (int, float)) else str(v) for k, v in request.items()}
        if not isinstance(request.get("amount"), (int, float)) or request.get("signature") != self.md5(values):
            return json.dumps({"status_code": 401, "message": "签名认证错误", "data": None}).encode()
        return json.dumps({"status_code": 200, "message": "success", "data": {
            "trade_id": "2024T" + request["order_id"][-8:], "order_id": request["order_id"],
            "amount": request["amount"], "actual_amount": 13.89, "token": self.wallet,
            "expiration_time": int(time.time()) + self.expires_in,
            "payment_url": f"{API}pay/checkout-counter/2024T{request['order_id'][-8:]}"},
        }).encode()


@pytest.fixture
def gateway(monkeypatch):
    g = Gateway()
    monkeypatch.setattr(kamengsite_usdt, "post_json", g.create_transaction)  # the default transport
    return g


def payments_config():
    return {"usdt": {
        "main": {"label": "USDT-TRC20", "api": API, "token": "env:USDT_TEST_TOKEN"},
        "alt": {"api": API, "token": "env:USDT_ALT_TOKEN"},
    }}


def _env(monkeypatch, gateway):
    monkeypatch.setenv("USDT_TEST_TOKEN", gateway.token)
    monkeypatch.setenv("USDT_ALT_TOKEN", "alt-" + secrets.token_urlsafe(16))


@pytest.fixture
def shop(host_factory, gateway, monkeypatch):
    _env(monkeypatch, gateway)
    host = host_factory("usdt", payments=payments_config())
    return open_channel_shop(host, PRICE_FEN)


token = csrf_token


def buy(client, product, pay="usdt/main"):
    return shared_buy(client, product, pay)


def new_order(shop, pay="usdt/main", client=None):
    return shared_new_order(shop, pay, client)


def notify(client, body: bytes, profile="main", channel="usdt"):
    return client.post(f"/pay/notify/{channel}/{profile}", data=body, content_type="application/json")


# -- signing and the numeric-text trap (no database) ---------------------------------------------


def test_the_plugin_signs_like_the_simulator():
    g = Gateway()
    values = {"order_id": "K1", "amount": "100", "notify_url": "http://a/n", "redirect_url": "http://a/r",
              "signature": "ignored", "empty": ""}
    assert kamengsite_usdt.sign_string(values) == Gateway.content(values) == (
        "amount=100&notify_url=http://a/n&order_id=K1&redirect_url=http://a/r")
    assert kamengsite_usdt.signature(values, g.token) == g.md5(values)


def test_numbers_are_read_as_the_text_that_was_signed():
    body = b'{"amount": 100, "actual_amount": "15.625", "x": 15.625, "y": 1.50, "status": 2, "ok": true}'
    assert kamengsite_usdt.parse_raw_json(body) == {
        "amount": "100", "actual_amount": "15.625", "x": "15.625", "y": "1.50", "status": "2", "ok": "true"}
    for bad in (b"[1]", b'{"a": null}', b'{"a": [1]}', b'{"a": {"b": 1}}', b'{"a": NaN}', b'{"a": 1, "a": 2}'):
        with pytest.raises(ValueError):
            kamengsite_usdt.parse_raw_json(bad)


@pytest.mark.parametrize("fen, text", [(10000, "100"), (1500, "15"), (1550, "15.5"), (1501, "15.01"), (5, "0.05")])
def test_amounts_are_sent_as_the_gateway_writes_them(fen, text):
    g = Gateway()
    channel = UsdtChannel(post=g.create_transaction)
    profile = check_payments_config({"usdt": {"main": {"api": API, "token": g.token}}},
                                    {"usdt": channel}, environ={})[("usdt", "main")]
    action = channel.create_payment(profile, PayRequest(order_no="K20240701000000000001", amount_fen=fen,
                                                        subject="月卡", notify_url="http://s/n", return_url="http://s/r"))
    url, body, timeout = g.requests[-1]
    assert url == API + "api/v1/order/create-transaction" and timeout == 10.0
    assert re.search(rb'"amount":' + text.encode() + rb"[,}]", channel.create_request(profile, PayRequest(
        order_no="K20240701000000000001", amount_fen=fen, subject="", notify_url="http://s/n",
        return_url="http://s/r"))[1])
    assert (action.kind, action.wallet, action.actual_amount) == ("redirect", g.wallet, "13.89")
    assert action.url.startswith("/pay/usdt/main/K20240701000000000001?")  # our page, not the gateway's


def test_gateway_failures_become_a_message_for_the_buyer(caplog):
    g = Gateway()
    profile_cfg = {"usdt": {"main": {"api": API, "token": g.token, "timeout": 3}}}
    request = PayRequest(order_no="K1", amount_fen=100, subject="", notify_url="http://s/n", return_url="http://s/r")

    def down(url, body, timeout):
        raise urllib.error.URLError("timed out")

    answers = [down, lambda *a: b"<html>502</html>", lambda *a: b'{"status_code":400,"message":"x","data":null}',
               lambda *a: json.dumps({"status_code": 200, "data": {"order_id": "K1",
                                                                   "payment_url": "javascript:alert(1)"}}).encode(),
               lambda *a: json.dumps({"status_code": 200, "data": {"order_id": "K2",
                                                                   "payment_url": API + "pay/x"}}).encode()]
    for post in answers:
        channel = UsdtChannel(post=post)
        profile = check_payments_config(profile_cfg, {"usdt": channel}, environ={})[("usdt", "main")]
        with pytest.raises(PaymentError):
            channel.create_payment(profile, request)
    assert g.token not in caplog.text


# -- the buyer's path ----------------------------------------------------------------------------


def test_pay_redirects_to_the_gateway_with_a_signed_request(shop, gateway):
    client = shop.client()
    page = client.get(f"/p/{shop.product.id}").get_data(as_text=True)
    assert 'value="usdt/main"' in page and "USDT-TRC20" in page
    order_no = new_order(shop, client=client)
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "usdt", "profile": "main"})
    assert response.status_code == 302
    assert response.headers["Location"].startswith(f"/pay/usdt/main/{order_no}?")
    url, request, _ = gateway.requests[-1]
    assert url == API + "api/v1/order/create-transaction"
    assert request["order_id"] == order_no and request["amount"] == 100 and isinstance(request["amount"], int)
    assert request["notify_url"] == "http://shop1.localhost/pay/notify/usdt/main"
    assert request["redirect_url"] == f"http://shop1.localhost/order/{order_no}"
    values = {k: str(v) for k, v in request.items()}
    assert request["signature"] == gateway.md5(values)  # accepted by the gateway's own check
    assert snapshot()[0] == 0


def test_a_gateway_refusal_leaves_the_order_unpaid(shop, gateway, monkeypatch):
    client = shop.client()
    order_no = new_order(shop, client=client)
    monkeypatch.setattr(kamengsite_usdt, "post_json", lambda *a: b'{"status_code":401,"message":"sign","data":null}')
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "usdt", "profile": "main"})
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/order/{order_no}")
    assert "USDT 支付网关" in client.get(f"/order/{order_no}").get_data(as_text=True)
    with all_sites():
        assert Order.get(Order.order_no == order_no).status == "created"


# -- accepted notifications ---------------------------------------------------------------------


@pytest.mark.parametrize("amount, actual", [
    (Num("100"), Num("13.89")),        # what the Go gateway sends
    ("100.00", "13.89"),              # both as strings: the signature covers "100.00"
    (Num("100"), "15.625"),           # actual_amount as a string
    (Num("100.0"), Num("15.625")),     # whatever text arrives is what was signed
])
def test_a_genuine_notification_delivers_and_replies_ok(shop, gateway, amount, actual):
    client = shop.client()
    order_no = new_order(shop, client=client)
    response = notify(shop.client(), gateway.notification(order_no, amount=amount, actual_amount=actual))
    assert (response.status_code, response.get_data()) == (200, b"ok")
    with all_sites():
        payment = Payment.get()
        assert Order.get(Order.order_no == order_no).status == "delivered"
    assert (payment.channel, payment.amount_fen, payment.trade_no) == ("usdt", PRICE_FEN, f"2024{order_no[-10:]}US")
    assert shop.counter.orders == [(order_no, "shop1")]
    assert "CODE-" in client.get(f"/order/{order_no}").get_data(as_text=True)


def test_a_replay_is_one_payment_and_ok_again_writing_nothing(shop, gateway):
    order_no = new_order(shop)
    body = gateway.notification(order_no)
    assert notify(shop.client(), body).get_data() == b"ok"
    after_first = snapshot()
    replies = [notify(shop.client(domain), body) for domain in ("shop1.localhost", "main.localhost")]
    assert [(r.status_code, r.get_data()) for r in replies] == [(200, b"ok")] * 2
    assert snapshot() == after_first and after_first[0] == 1
    assert shop.counter.orders == [(order_no, "shop1")]


def test_a_trade_id_cannot_pay_a_second_order(shop, gateway, caplog):
    first, second = new_order(shop), new_order(shop)
    assert notify(shop.client(), gateway.notification(first, trade_id="T-ONE")).get_data() == b"ok"
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), gateway.notification(second, trade_id="T-ONE"))
    assert (response.status_code, response.get_data()) == (400, b"fail") and snapshot() == before


# -- the forgery matrix: refused, logged, nothing written --------------------------------------


def _other_order(s, channel=None, profile=None):
    extra = {"channel": channel, "channel_profile": profile} if channel else {}
    return create_order(site_id=s.site_id, sku_id=s.product.skus[0].id, quantity=1, contact="x@y.zz",
                        **extra).order_no


def _retext(body: bytes, field: str, new: bytes) -> bytes:
    return re.sub(rb'"' + field.encode() + rb'":("[^"]*"|[^,}]*)', b'"' + field.encode() + b'":' + new, body)


FORGERIES = {
    "bad signature": lambda g, s: _retext(g.notification(new_order(s)), "signature", b'"' + b"0" * 32 + b'"'),
    "signed with another token": lambda g, s: g.notification(new_order(s), token="x" * 32),
    "tampered amount": lambda g, s: _retext(g.notification(new_order(s)), "amount", b"1"),
    "tampered order": lambda g, s: (lambda a, b: _retext(g.notification(a), "order_id", json.dumps(b).encode()))(
        new_order(s), new_order(s)),
    "signed wrong amount": lambda g, s: g.notification(new_order(s), amount=Num("1")),
    "three decimals": lambda g, s: g.notification(new_order(s), amount=Num("100.001")),
    "other channel's order": lambda g, s: g.notification(_other_order(s, "epay", "main")),
    "order without channel": lambda g, s: g.notification(_other_order(s)),
    "other profile's order": lambda g, s: g.notification(new_order(s, "usdt/alt")),
    "unknown order": lambda g, s: g.notification("K2024070100000000000"),
    "status 1 (unpaid)": lambda g, s: g.notification(new_order(s), status=Num("1")),
    "status 3 (expired)": lambda g, s: g.notification(new_order(s), status=Num("3")),
    "missing signature": lambda g, s: g.encode({k: v for k, v in json.loads(g.notification(new_order(s))).items()
                                                if k != "signature"}),
    "missing trade_id": lambda g, s: g.notification(new_order(s), trade_id=None),
    "signed over re-formatted amount": lambda g, s: g.notification(new_order(s), amount=Num("100"),
                                                                   signed_as={"amount": "100.00"}),
    "signed over re-formatted string amount": lambda g, s: g.notification(new_order(s), amount="100.00",
                                                                          signed_as={"amount": "100"}),
    "signed over re-formatted actual_amount": lambda g, s: g.notification(new_order(s), actual_amount="15.625",
                                                                          signed_as={"actual_amount": "15.63"}),
    "duplicate key": lambda g, s: g.notification(new_order(s)).replace(b'"trade_id"', b'"amount":1,"trade_id"', 1),
    "null value": lambda g, s: g.notification(new_order(s), block_transaction_id=Num("null")),
    "not json": lambda g, s: b"trade_id=1&order_id=" + new_order(s).encode(),
    "empty body": lambda g, s: (new_order(s), b"")[1],
}


# Genuine notifications that report no payment: acknowledged (so the gateway stops resending), nothing written.
ACKNOWLEDGED = {case: FORGERIES.pop(case) for case in ('status 1 (unpaid)', 'status 3 (expired)')}


def _assert_refused(shop, response, before, caplog):
    assert (response.status_code, response.get_data()) == (400, b"fail")
    assert snapshot() == before
    assert shop.counter.orders == []
    rejected = [r for r in caplog.records if "payment notification rejected" in r.getMessage()]
    assert len(rejected) == 1 and "reason=" in rejected[0].getMessage()


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_notifications_are_refused_and_write_nothing(shop, gateway, case, caplog):
    with all_sites():
        body = FORGERIES[case](gateway, shop)
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        response = notify(shop.client(), body)
    _assert_refused(shop, response, before, caplog)


@pytest.mark.parametrize("how", ["form", "query"])
def test_fields_outside_the_json_body_are_not_trusted(shop, gateway, how, caplog):
    order_no = new_order(shop)
    fields = {k: str(v) for k, v in json.loads(gateway.notification(order_no)).items()}
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="kamengsite.payments"):
        if how == "form":
            response = shop.client().post("/pay/notify/usdt/main", data=fields)
        else:
            response = shop.client().get("/pay/notify/usdt/main", query_string=fields)
    _assert_refused(shop, response, before, caplog)


def test_an_unconfigured_profile_is_not_found(shop, gateway):
    order_no = new_order(shop)
    before = snapshot()
    assert notify(shop.client(), gateway.notification(order_no), profile="nope").status_code == 404
    assert snapshot() == before


# -- concurrency on every backend ------------------------------------------------------------


def test_concurrent_duplicate_notifications_pay_and_deliver_once(tmp_path, backend_url, gateway, monkeypatch):
    _env(monkeypatch, gateway)
    instance = base.make_instance(tmp_path / "instance", backend_url, payments=payments_config())
    host = base.make_host(instance)
    try:
        shop = open_channel_shop(host, PRICE_FEN)
        counter, s = shop.counter, shop
        order_no = new_order(s)
        body = gateway.notification(order_no)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: notify(base.SiteClient(host, "shop1.localhost"), body).get_data(),
                                    range(16)))
        assert replies == [b"ok"] * 16
        payments_, orders_, sold = snapshot()
        assert payments_ == 1 and orders_ == [(order_no, "delivered")] and sold == 1
        assert counter.orders == [(order_no, "shop1")]
    finally:
        host.close()


# -- settings -------------------------------------------------------------------------------


def test_settings_are_validated_with_the_key_named_and_secrets_never_shown():
    channels = {"usdt": UsdtChannel()}
    with pytest.raises(ConfigError, match=r"payments\.usdt\.main\.token: is required"):
        check_payments_config({"usdt": {"main": {"api": API}}}, channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.usdt\.main\.token: environment variable 'NOPE' is not set"):
        check_payments_config({"usdt": {"main": {"api": API, "token": "env:NOPE"}}}, channels, environ={})
    with pytest.raises(ConfigError) as caught:
        check_payments_config({"usdt": {"main": {"api": API, "token": "short"}}}, channels, environ={})
    assert caught.value.key == "payments.usdt.main.token" and "short" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"payments\.usdt\.main\.api"):
        check_payments_config({"usdt": {"main": {"api": "ftp://x", "token": "t" * 16}}}, channels, environ={})
    with pytest.raises(ConfigError, match=r"payments\.usdt\.main\.wallet: unknown setting"):
        check_payments_config({"usdt": {"main": {"api": API, "token": "t" * 16, "wallet": "T"}}}, channels, environ={})
    secret = "s3cret-" + "k" * 16
    profile = check_payments_config({"usdt": {"main": {"api": API, "token": "env:USDT_K"}}},
                                    channels, environ={"USDT_K": secret})[("usdt", "main")]
    assert profile.get("token") == secret
    assert secret not in repr(profile) and profile.public_settings()["token"] == "******"


@pytest.mark.parametrize("case", sorted(ACKNOWLEDGED))
def test_signed_notifications_without_a_payment_are_acknowledged_and_write_nothing(shop, gateway, case, caplog):
    with all_sites():
        fields = ACKNOWLEDGED[case](gateway, shop)
    before = snapshot()
    delivered = list(shop.counter.orders)
    with caplog.at_level(logging.INFO, logger="kamengsite.payments"):
        response = notify(shop.client(), fields)
    assert (response.status_code, response.get_data()) == (200, b"ok")
    assert snapshot() == before
    assert shop.counter.orders == delivered
    assert [r for r in caplog.records if "acknowledged without payment" in r.getMessage()]
    assert not [r for r in caplog.records if "payment notification rejected" in r.getMessage()]


# -- our payment page: exact amount, wallet, its QR, the countdown ----------------------------------


def _start(shop, gateway, profile="main"):
    client = shop.client()
    order_no = new_order(shop, f"usdt/{profile}", client)
    page = client.get(f"/order/{order_no}")
    response = client.post(f"/pay/{order_no}", data={"csrf_token": token(page), "channel": "usdt", "profile": profile})
    assert response.status_code == 302
    return client, order_no, response.headers["Location"]


def test_the_page_shows_the_exact_amount_the_wallet_its_qr_and_the_countdown(shop, gateway):
    client, order_no, location = _start(shop, gateway)
    page = client.get(location)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<strong id="usdt-amount">13.89</strong> USDT' in html
    assert f'<code id="usdt-wallet">{gateway.wallet}</code>' in html
    assert f'data-qrcode="{gateway.wallet}"' in html and "<svg" in html  # the QR is the wallet, drawn server-side
    assert re.search(r'id="usdt-countdown" data-left="(59\d|600)">(9|10) 分 \d\d 秒<', html)
    assert "<script src" not in html and "cdn" not in html.lower()
    assert f'href="{API}pay/checkout-counter/2024T{order_no[-8:]}"' in html  # the gateway's cashier as a fallback
    assert len(gateway.requests) == 1
    assert client.get(location).status_code == 200 and len(gateway.requests) == 1  # a reload calls nobody


def test_a_page_url_that_was_tampered_with_is_not_found(shop, gateway):
    client, order_no, location = _start(shop, gateway)
    path, _, query = location.partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    data = json.loads(base64.urlsafe_b64decode(params["d"] + "=" * (-len(params["d"]) % 4)))
    forged = kamengsite_usdt.page_query("x" * 32, dict(data, w="T" + "9" * 33))  # signed with another token
    other_order = new_order(shop, client=client)
    for url in (f"{path}?d={params['d']}&s={'0' * 64}", f"{path}?d={forged['d']}&s={forged['s']}",
                f"{path}?s={params['s']}", path, f"/pay/usdt/main/{other_order}?{query}",
                f"/pay/usdt/alt/{order_no}?{query}", f"/pay/usdt/nope/{order_no}?{query}"):
        assert client.get(url).status_code == 404, url


def test_a_paid_order_sends_the_buyer_on_to_the_order_page(shop, gateway):
    client, order_no, location = _start(shop, gateway)
    assert notify(shop.client(), gateway.notification(order_no)).get_data() == b"ok"
    response = client.get(location)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/order/{order_no}")


def test_an_expired_amount_is_no_longer_offered(shop, gateway):
    gateway.expires_in = -5
    client, _, location = _start(shop, gateway)
    html = client.get(location).get_data(as_text=True)
    assert "支付已超时" in html and gateway.wallet not in html and "<svg" not in html


def test_without_segno_the_page_shows_the_wallet_as_text(shop, gateway, monkeypatch):
    monkeypatch.setitem(sys.modules, "segno", None)  # import segno now raises ImportError
    client, _, location = _start(shop, gateway)
    html = client.get(location).get_data(as_text=True)
    assert gateway.wallet in html and "<svg" not in html


def test_cashier_gateway_keeps_the_gateways_page(host_factory, gateway, monkeypatch):
    _env(monkeypatch, gateway)
    config = payments_config()
    config["usdt"]["main"]["cashier"] = "gateway"
    shop = open_channel_shop(host_factory("usdt-gw", payments=config), PRICE_FEN)
    _, order_no, location = _start(shop, gateway)
    assert location == f"{API}pay/checkout-counter/2024T{order_no[-8:]}"


@pytest.mark.parametrize("data", [{"token": ""}, {"token": "<script>"}, {"actual_amount": "13.89e3"}])
def test_an_answer_without_a_usable_wallet_or_amount_keeps_the_gateways_page(data):
    g = Gateway()

    def answer(url, body, timeout):
        reply = json.loads(g.create_transaction(url, body, timeout))
        reply["data"].update(data)
        return json.dumps(reply).encode()

    channel = UsdtChannel(post=answer)
    profile = check_payments_config({"usdt": {"main": {"api": API, "token": g.token}}},
                                    {"usdt": channel}, environ={})[("usdt", "main")]
    action = channel.create_payment(profile, PayRequest("K20240701000000000001", 1500, "", "http://s/n", "http://s/r"))
    assert action.url.startswith(API + "pay/checkout-counter/")


def test_usdt_cannot_refund_through_the_gateway():
    assert UsdtChannel.supports_refund is False


# -- languages ------------------------------------------------------------------------------------


def test_the_payment_page_speaks_english_on_request(shop, gateway):
    client, order_no, location = _start(shop, gateway)
    chinese = client.get(location).get_data(as_text=True)
    assert "USDT（TRC20）支付" in chinese and "（北京时间）前完成转账" in chinese
    english = client.get(location + "&lang=en").get_data(as_text=True)
    assert "<h1>USDT (TRC20) payment</h1>" in english and "Receiving address (TRC20 network only):" in english
    assert "<strong>exact amount</strong>" in english and "(Beijing time); time left:" in english
    assert re.search(r'id="usdt-countdown" data-left="\d+">(9|10) min \d\d s<', english)
    assert '"{m} min {s} s"' in english and '<strong id="usdt-amount">13.89</strong> USDT' in english
    assert "收款地址" not in english and "北京时间" not in english and "返回订单页" not in english
