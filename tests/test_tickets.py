"""Buyer messages per order and the shop's FAQ (kamengsite/tickets.py, ticket_routes.py, admin_tickets.py)."""

from __future__ import annotations


import pytest

from kamengsite import jobs, tickets
from kamengsite.accounts import create_account
from kamengsite.ratelimit import reset as reset_limits
from kamengsite.testing import SiteClient, at_once, csrf_token, new_order, open_channel_shop, sign_in_console, site_id

from mailhelpers import SmtpServer

PASSWORD = "correct horse battery staple"


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def smtp(monkeypatch):
    server = SmtpServer().start()
    monkeypatch.setenv("KAMENGSITE_SMTP_URL", f"smtp://127.0.0.1:{server.port}")
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    yield server
    server.stop()
    jobs.bind(None)


@pytest.fixture
def shop(host):
    reset_limits()
    shop = open_channel_shop(host, 1500)
    create_account(shop.site_id, "owner", PASSWORD)
    return shop


def write(client, order_no, body):
    page = client.get(f"/order/{order_no}/messages")
    return client.post(f"/order/{order_no}/messages", data={"csrf_token": csrf_token(page), "body": body})


def test_buyer_and_shop_talk_in_one_thread_and_the_buyer_is_mailed(host, shop, smtp, client_for):
    buyer = shop.client()
    order_no = new_order(shop, "demo", client=buyer)
    assert write(buyer, order_no, "卡密无法使用，请帮忙看看").status_code == 302
    ticket = tickets.ticket_for(shop.site_id, order_no)
    assert ticket.status == "open" and ticket.shop_unread and ticket.messages == 1

    owner = sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)
    inbox = text(owner.get("/admin/tickets/"))
    assert order_no in inbox and "未读" in inbox
    page = owner.get(f"/admin/tickets/{order_no}")
    assert "卡密无法使用" in text(page)
    assert not tickets.ticket_for(shop.site_id, order_no).shop_unread
    response = owner.post(f"/admin/tickets/{order_no}", data={"csrf_token": csrf_token(page),
                                                              "body": "已为您补发，请查收"})
    assert response.status_code == 302
    ticket = tickets.ticket_for(shop.site_id, order_no)
    assert ticket.status == "answered" and ticket.buyer_unread and ticket.messages == 2

    thread_page = text(buyer.get(f"/order/{order_no}/messages"))
    assert "已为您补发" in thread_page
    assert not tickets.ticket_for(shop.site_id, order_no).buyer_unread
    (_, recipients, message), = smtp.messages
    assert recipients == ["buyer@example.com"] and order_no in message["Subject"]
    assert "已为您补发" in message.get_body(("plain",)).get_content()


def test_only_the_buyer_reads_or_writes_the_thread(host, shop):
    order_no = new_order(shop, "demo", client=shop.client())
    stranger = shop.client()
    assert stranger.get(f"/order/{order_no}/messages").status_code == 404
    assert stranger.post(f"/order/{order_no}/messages", data={"body": "hi"}).status_code in (400, 404)
    assert tickets.ticket_for(shop.site_id, order_no) is None


def test_another_site_sees_nothing_of_the_thread(host, shop, client_for):
    buyer = shop.client()
    order_no = new_order(shop, "demo", client=buyer)
    write(buyer, order_no, "help")
    create_account(site_id("main"), "boss", PASSWORD)
    boss = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)
    assert order_no not in text(boss.get("/admin/tickets/"))
    assert boss.get(f"/admin/tickets/{order_no}").status_code == 404
    token = csrf_token(boss.get("/admin/tickets/faq"))
    assert boss.post(f"/admin/tickets/{order_no}", data={"csrf_token": token, "body": "x"}).status_code == 404
    assert boss.post(f"/admin/tickets/{order_no}/close", data={"csrf_token": token}).status_code == 404
    # the buyer's page lives on the selling site only
    assert SiteClient(host, "main.localhost").get(f"/order/{order_no}/messages").status_code == 404


def test_the_faq_comes_before_the_form_and_a_bad_save_keeps_the_input(host, shop, client_for):
    owner = sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)
    page = owner.get("/admin/tickets/faq")
    bad = owner.post("/admin/tickets/faq", data={"csrf_token": csrf_token(page),
                                                  "question": ["多久发货？", "能退款吗？"], "answer": ["付款后立即自动发货", ""]})
    assert bad.status_code == 400 and "能退款吗？" in text(bad) and "付款后立即自动发货" in text(bad)
    assert tickets.faq(shop.site_id) == []
    good = owner.post("/admin/tickets/faq", data={"csrf_token": csrf_token(page),
                                                   "question": ["多久发货？", ""], "answer": ["付款后立即自动发货", ""]})
    assert good.status_code == 302
    assert [(e.question, e.answer) for e in tickets.faq(shop.site_id)] == [("多久发货？", "付款后立即自动发货")]

    buyer = shop.client()
    order_no = new_order(shop, "demo", client=buyer)
    body = text(buyer.get(f"/order/{order_no}/messages"))
    assert body.index("多久发货？") < body.index('name="body"')


def test_messages_are_checked(host, shop, monkeypatch):
    buyer = shop.client()
    order_no = new_order(shop, "demo", client=buyer)
    assert write(buyer, order_no, "   ").status_code == 400
    assert write(buyer, order_no, "x" * (tickets.MAX_BODY + 1)).status_code == 400
    assert tickets.ticket_for(shop.site_id, order_no) is None
    monkeypatch.setattr(tickets, "MAX_MESSAGES", 2)
    tickets.post(shop.site_id, order_no, "buyer", "one")
    tickets.post(shop.site_id, order_no, "buyer", "two")
    with pytest.raises(tickets.TicketError):
        tickets.post(shop.site_id, order_no, "buyer", "three")
    assert tickets.ticket_for(shop.site_id, order_no).messages == 2


def test_a_closed_thread_opens_again_when_the_buyer_writes(host, shop, client_for):
    buyer = shop.client()
    order_no = new_order(shop, "demo", client=buyer)
    write(buyer, order_no, "first")
    owner = sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)
    token = csrf_token(owner.get("/admin/tickets/"))
    assert owner.post(f"/admin/tickets/{order_no}/close", data={"csrf_token": token}).status_code == 302
    assert tickets.ticket_for(shop.site_id, order_no).status == "closed"
    write(buyer, order_no, "again")
    assert tickets.ticket_for(shop.site_id, order_no).status == "open"


def test_first_messages_sent_at_once_make_one_thread(db_host):
    """The unique order number keeps one thread per order, on every database."""
    from kamengsite.models import Site

    shop_id = Site.get(Site.slug == "main").id
    _posted, errors = at_once(lambda n: tickets.post(shop_id, "K20260101000001", "buyer", f"message {n}"), 6)
    assert errors == []
    found = tickets.ticket_for(shop_id, "K20260101000001")
    assert found.messages == 6 and len(tickets.thread(found)) == 6
