"""The console's order list: search, date range, and mailing a buyer's keys again (kamengsite/admin_money.py)."""

from __future__ import annotations

import datetime

import pytest

from kamengsite import jobs
from kamengsite.accounts import Account, create_account
from kamengsite.audit import AuditEntry
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite.orders import Order, create_order, mark_paid
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import csrf_token, sign_in_console, site_id

from mailhelpers import SmtpServer

PASSWORD = "correct horse battery staple"


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def shop(host, client_for):
    main = Site.get(Site.slug == "main")
    product = create_product(main, "搜索月卡", 1000)
    import_keys(product.skus[0], [f"SEARCH-{i}" for i in range(10)], CardKeyCipher.from_instance(host.instance))
    create_account(main.id, "boss", PASSWORD)
    console = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)

    def order(contact, paid=True, created=None):
        placed = create_order(site_id=main.id, sku_id=product.skus[0].id, quantity=1, contact=contact, channel="demo")
        if paid:
            mark_paid(placed.order_no, channel="demo", trade_no=f"T-{placed.order_no}", amount_fen=placed.amount_fen)
        if created:
            with all_sites():
                Order.update(created_at=created).where(Order.id == placed.id).execute()
        return placed.order_no

    return console, order


def listed(console, **params) -> str:
    return text(console.get("/admin/orders", query_string=params))


def test_search_by_order_number_or_contact(host, shop):
    console, order = shop
    first, second = order("alice@example.com"), order("bob@example.com")
    page = listed(console, q="alice@example.com")
    assert f'id="order-{first}"' in page and f'id="order-{second}"' not in page
    page = listed(console, q=second[:-3].lower())  # a start of the number, typed in lower case
    assert f'id="order-{second}"' in page
    assert "没有符合条件的订单" in listed(console, q="nobody@example.com")


def test_date_range_is_in_the_sites_time_zone(host, shop):
    console, order = shop
    # 2026-03-09 17:00 UTC is 2026-03-10 01:00 in Shanghai: a 10 March order for the shop.
    late = order("late@example.com", created=datetime.datetime(2026, 3, 9, 17, 0))
    early = order("early@example.com", created=datetime.datetime(2026, 3, 9, 15, 0))
    page = listed(console, **{"from": "2026-03-10", "to": "2026-03-10"})
    assert f'id="order-{late}"' in page and f'id="order-{early}"' not in page
    assert f'id="order-{early}"' in listed(console, **{"from": "2026-03-09", "to": "2026-03-09"})
    assert f'id="order-{late}"' in listed(console, **{"from": "not-a-date"})  # ignored, not an error


def test_orders_of_another_site_never_show(host, shop, client_for):
    console, order = shop
    mine = order("mine@example.com")
    host.registry.create("shop1", template="gaming")
    create_account(site_id("shop1"), "owner", PASSWORD)
    owner = sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)
    page = text(owner.get("/admin/orders", query_string={"q": mine}))
    assert f'id="order-{mine}"' not in page and "没有符合条件的订单" in page
    token = csrf_token(owner.get("/admin/orders"))
    assert owner.post(f"/admin/orders/{mine}/resend", data={"csrf_token": token}).status_code == 404


def test_mailing_the_keys_again(host, shop, monkeypatch):
    server = SmtpServer().start()
    monkeypatch.setenv("KAMENGSITE_SMTP_URL", f"smtp://127.0.0.1:{server.port}")
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    try:
        console, order = shop
        delivered, unpaid = order("buyer@example.com"), order("buyer2@example.com", paid=False)
        token = csrf_token(console.get("/admin/orders"))
        before = len(server.messages)
        response = console.post(f"/admin/orders/{delivered}/resend", data={"csrf_token": token})
        assert response.status_code == 302 and "重新发送" in listed(console)
        assert len(server.messages) == before + 1 and server.messages[-1][1] == ["buyer@example.com"]
        console.post(f"/admin/orders/{unpaid}/resend", data={"csrf_token": token})
        assert "只有已发货的订单" in listed(console) and len(server.messages) == before + 1
        with site_scope(site_id("main")):
            assert AuditEntry.select().where(AuditEntry.target.contains(delivered)).exists()
    finally:
        server.stop()
        jobs.bind(None)


def test_staff_with_orders_may_search_and_resend_but_nothing_else(host, shop, client_for):
    create_account(site_id("main"), "clerk", PASSWORD, role="staff")
    with site_scope(site_id("main")):
        Account.update(permissions="orders").where(Account.username == "clerk").execute()
    clerk = sign_in_console(client_for("main.localhost"), "clerk", PASSWORD)
    assert clerk.get("/admin/orders", query_string={"q": "x"}).status_code == 200
    assert clerk.get("/admin/refunds").status_code == 403
