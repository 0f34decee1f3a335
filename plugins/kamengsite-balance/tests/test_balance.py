"""The balance channel: a signed-in member pays from the wallet of their site, end to end through
the site app; short wallets, guests and other members' orders are refused with nothing written;
concurrent payments on every backend debit once and never take a wallet below zero."""

from __future__ import annotations

import datetime
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import kamengsite_test_fixtures as base
from kamengsite import ledger, members
from kamengsite.errors import ConfigError
from kamengsite.models import utcnow
from kamengsite.orders import Order, Payment, expire_due
from kamengsite.payments import PaymentError, PayRequest, Profile, check_payments_config
from kamengsite.tenancy import all_sites
from kamengsite.testing import buy, csrf_token, open_channel_shop, sign_in_member, snapshot
from kamengsite_balance import BalanceChannel, plugin

PRICE_FEN = 1500
PASSWORD = "correct horse battery staple"
SHOP1 = "shop1.localhost"
BALANCE = {"label": "会员余额"}
PAYMENTS = {"balance": {"default": BALANCE}, "sandbox": {"demo": {}}}
PROFILE = Profile("balance", "default", BALANCE)


# -- helpers ---------------------------------------------------------------------------------------


class Shop:
    """shop1 selling a card product, a member ``alice`` with ``wallet_fen``, and her signed-in browser."""

    def __init__(self, host, wallet_fen, keys=20):
        self.host = host
        self.channel_shop = open_channel_shop(host, PRICE_FEN, keys=keys)
        self.site_id, self.product = self.channel_shop.site_id, self.channel_shop.product
        self.alice = members.register(self.site_id, "alice@example.com", PASSWORD)
        if wallet_fen:
            members.credit_wallet(self.site_id, self.alice.id, wallet_fen, "opening", "开户")
        self.client = self.login("alice@example.com")

    @property
    def delivered(self):
        return self.channel_shop.counter.orders

    def login(self, email):
        return sign_in_member(base.SiteClient(self.host, SHOP1), email, PASSWORD)

    def order(self, client=None, pay="balance/default") -> str:
        created = buy(client or self.client, self.product, pay)
        assert created.status_code == 302, created.get_data(as_text=True)
        return created.headers["Location"].rsplit("/", 1)[1]

    def pay(self, order_no, client=None):
        client = client or self.client
        page = client.get("/lookup")  # any page with a form: the token is the session's
        return client.post(f"/pay/{order_no}", data={"csrf_token": csrf_token(page), "channel": "balance",
                                                     "profile": "default", "type": ""})

    def wallet(self, member=None) -> int:
        return members.wallet_balance(self.site_id, (member or self.alice).id)


def wallet_debits(order_no=None) -> list:
    query = ledger.LedgerTxn.select().where(ledger.LedgerTxn.kind == "wallet_pay")
    if order_no is not None:
        query = query.where(ledger.LedgerTxn.reference == order_no)
    return list(query)


def status_of(order_no) -> str:
    with all_sites():
        return Order.get(Order.order_no == order_no).status


def page_text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def balance_host(host_factory):
    return host_factory("balance", payments=PAYMENTS)


# -- paying ------------------------------------------------------------------------------------------


def test_a_member_pays_an_order_from_the_wallet(balance_host):
    shop = Shop(balance_host, wallet_fen=2000)
    product_page = page_text(shop.client.get(f"/p/{shop.product.id}"))
    assert 'value="balance/default"' in product_page and "会员余额" in product_page
    order_no = shop.order()
    order_page = page_text(shop.client.get(f"/order/{order_no}"))
    assert "待支付" in order_page and "余额支付" in order_page
    assert shop.wallet() == 2000  # ordering takes nothing: paying does

    paid = shop.pay(order_no)
    assert paid.status_code == 302 and paid.headers["Location"].endswith(f"/order/{order_no}")
    order_page = page_text(shop.client.get(f"/order/{order_no}"))
    assert "已发货" in order_page and "CODE-0000" in order_page
    assert shop.wallet() == 500
    with all_sites():
        payment = Payment.get()
    assert (payment.channel, payment.trade_no, payment.amount_fen) == ("balance", f"BAL-{order_no}", PRICE_FEN)
    [debit] = wallet_debits()
    assert debit.reference == order_no
    assert sorted((e.account.kind, e.account.channel, e.amount_fen) for e in debit.entries) == [
        ("channel_clearing", "balance", PRICE_FEN), ("member_wallet", "", -PRICE_FEN)]
    assert shop.delivered == [(order_no, "shop1")]  # the order_delivered hook ran once
    account = page_text(shop.client.get("/member/"))
    assert "余额支付" in account and "5.00" in account and order_no in account

    again = shop.pay(order_no)  # pressed twice: the order is paid, nothing more happens
    assert again.status_code == 302
    assert shop.wallet() == 500 and len(wallet_debits()) == 1 and snapshot()[0] == 1
    assert shop.delivered == [(order_no, "shop1")]
    assert ledger.check() == []


def test_a_short_wallet_is_refused_and_nothing_is_written(balance_host):
    shop = Shop(balance_host, wallet_fen=PRICE_FEN - 1)
    order_no = shop.order()
    before = snapshot()
    refused = shop.pay(order_no)
    assert refused.status_code == 302 and refused.headers["Location"] == f"/order/{order_no}"
    assert "余额不足" in page_text(shop.client.get(f"/order/{order_no}"))
    assert snapshot() == before and status_of(order_no) == "created"  # the order is still there, unpaid
    assert shop.wallet() == PRICE_FEN - 1 and wallet_debits() == [] and shop.delivered == []
    members.credit_wallet(shop.site_id, shop.alice.id, 1, "top-up")  # topped up: the same order now pays
    shop.pay(order_no)
    assert status_of(order_no) == "delivered" and shop.wallet() == 0
    assert ledger.check() == []


def test_guests_are_not_offered_the_balance_and_cannot_use_it(balance_host):
    shop = Shop(balance_host, wallet_fen=5000)
    guest = base.SiteClient(balance_host, SHOP1)
    page = page_text(guest.get(f"/p/{shop.product.id}"))
    assert "balance/default" not in page and "sandbox/demo" in page
    refused = buy(guest, shop.product, "balance/default")
    assert refused.status_code == 200 and "请选择支付方式" in page_text(refused)
    assert snapshot()[1] == []  # no order
    order_no = shop.order()
    with pytest.raises(PaymentError, match="Please sign in to your member account"):
        BalanceChannel().create_payment(PROFILE, PayRequest(
            order_no=order_no, amount_fen=PRICE_FEN, subject="x", notify_url="", return_url="/",
            member_id=None, site_id=shop.site_id))
    # Signed out elsewhere: this browser still holds the order, but no member pays it.
    members.end_sessions(shop.site_id, shop.alice.id)
    before = snapshot()
    shop.pay(order_no)
    assert "请先登录会员账户" in page_text(shop.client.get(f"/order/{order_no}"))
    assert snapshot() == before and shop.wallet() == 5000 and wallet_debits() == []


def test_another_members_order_or_another_sites_order_is_refused(balance_host):
    shop = Shop(balance_host, wallet_fen=5000)
    bob = members.register(shop.site_id, "bob@example.com", PASSWORD)
    members.credit_wallet(shop.site_id, bob.id, 5000, "bob-opening")
    order_no = shop.order()
    before = snapshot()
    channel = BalanceChannel()
    for member_id, site_id in ((bob.id, shop.site_id), (shop.alice.id, shop.site_id + 1), (shop.alice.id, None)):
        with pytest.raises(PaymentError, match="not your order"):
            channel.create_payment(PROFILE, PayRequest(order_no=order_no, amount_fen=PRICE_FEN, subject="x",
                                                       notify_url="", return_url="/", member_id=member_id,
                                                       site_id=site_id))
    with pytest.raises(PaymentError):
        channel.create_payment(PROFILE, PayRequest(order_no="K-nope", amount_fen=1, subject="x", notify_url="",
                                                   return_url="/", member_id=bob.id, site_id=shop.site_id))
    assert snapshot() == before and wallet_debits() == []
    assert (shop.wallet(), shop.wallet(bob)) == (5000, 5000)
    # Bob's browser cannot even reach the pay button of alice's order.
    bobs = shop.login("bob@example.com")
    assert bobs.post(f"/pay/{order_no}", data={"csrf_token": csrf_token(bobs.get("/member/")),
                                               "channel": "balance", "profile": "default"}).status_code == 404


def test_an_expired_order_is_refused_not_paid_late(balance_host):
    shop = Shop(balance_host, wallet_fen=5000)
    order_no = shop.order()
    expire_due(now=utcnow() + datetime.timedelta(days=1))
    assert status_of(order_no) == "expired"
    with pytest.raises(PaymentError, match="expired"):
        BalanceChannel().create_payment(PROFILE, PayRequest(order_no=order_no, amount_fen=PRICE_FEN, subject="x",
                                                            notify_url="", return_url="/", member_id=shop.alice.id,
                                                            site_id=shop.site_id))
    assert status_of(order_no) == "expired" and shop.wallet() == 5000 and wallet_debits() == []


def test_the_channel_takes_no_notifications_and_checks_its_settings(balance_host):
    shop = Shop(balance_host, wallet_fen=5000)
    order_no = shop.order()
    before = snapshot()
    reply = base.SiteClient(balance_host, SHOP1).post("/pay/notify/balance/default",
                                                      data={"out_trade_no": order_no, "money": "15.00"})
    assert reply.status_code == 400 and snapshot() == before
    channels = {"balance": BalanceChannel()}
    assert check_payments_config({"balance": {"default": {}}}, channels)[("balance", "default")].label == ""
    with pytest.raises(ConfigError, match=r"payments\.balance\.default\.key: unknown setting"):
        check_payments_config({"balance": {"default": {"key": "x"}}}, channels)
    channel = plugin.payment_channels(instance=balance_host.instance)[0]
    assert (channel.id, channel.name, channel.needs_member) == ("balance", "Pay with balance", True)  # no request: English


# -- concurrency on every backend -----------------------------------------------------------------


@pytest.fixture
def db_shop(tmp_path, backend_url):
    instance = base.make_instance(tmp_path / "instance", backend_url, payments=PAYMENTS)
    host = base.make_host(instance)
    try:
        yield lambda wallet_fen: Shop(host, wallet_fen)
    finally:
        host.close()


def pay_concurrently(shop, order_nos, threads=8):
    """POST /pay/<order_no> for each number at once, each from its own copy of alice's browser."""
    cookie = shop.client.get_cookie("ks_session", domain=SHOP1).value
    token = csrf_token(shop.client.get("/member/"))
    gate = threading.Event()

    def pay(order_no):
        client = base.SiteClient(shop.host, SHOP1)
        client.set_cookie("ks_session", cookie, domain=SHOP1)
        gate.wait(timeout=10)
        return client.post(f"/pay/{order_no}", data={"csrf_token": token, "channel": "balance",
                                                     "profile": "default", "type": ""}).status_code

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(pay, order_no) for order_no in order_nos]
        gate.set()
        return [f.result() for f in futures]


def test_a_wallet_for_one_order_pays_exactly_one_of_two_concurrent_orders(db_shop):
    shop = db_shop(0)
    for round_ in range(3):  # a few rounds: the race has more than one way to go
        members.credit_wallet(shop.site_id, shop.alice.id, PRICE_FEN + 700, f"round-{round_}")
        first, second = shop.order(), shop.order()
        assert pay_concurrently(shop, [first, second], threads=2) == [302, 302]
        statuses = sorted([status_of(first), status_of(second)])
        assert statuses == ["created", "delivered"], statuses
        assert shop.wallet() == 700
        members.debit_wallet(shop.site_id, shop.alice.id, 700, f"round-{round_}-reset")
    assert shop.wallet() == 0
    assert len(wallet_debits()) == 3 and len(shop.delivered) == 3
    with all_sites():
        assert Payment.select().count() == 3
    assert ledger.check() == []  # no wallet ever below zero, every transaction balanced


def test_one_order_paid_concurrently_is_debited_and_delivered_once(db_shop):
    shop = db_shop(PRICE_FEN * 3)
    order_no = shop.order()
    assert pay_concurrently(shop, [order_no] * 8) == [302] * 8
    assert status_of(order_no) == "delivered"
    assert [t.reference for t in wallet_debits(order_no)] == [order_no]
    assert shop.wallet() == PRICE_FEN * 2
    payments, _, sold = snapshot()
    assert (payments, sold) == (1, 1)
    assert shop.delivered == [(order_no, "shop1")]
    assert ledger.check() == []


# -- languages ---------------------------------------------------------------------------------------


def test_the_balance_channel_speaks_english_on_request(balance_host):
    shop = Shop(balance_host, wallet_fen=500)  # not enough for one order
    order_no = shop.order()
    assert "余额支付" in page_text(shop.client.get(f"/order/{order_no}"))
    english = page_text(shop.client.get(f"/order/{order_no}?lang=en"))
    assert "Pay with balance" in english and "余额支付" not in english
    refused = shop.pay(order_no)  # the cookie keeps English
    assert refused.status_code == 302
    shown = page_text(shop.client.get(f"/order/{order_no}"))
    assert "Insufficient balance" in shown and "余额不足" not in shown
