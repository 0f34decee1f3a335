"""Signed status callbacks to resellers (kamengsite/api/callbacks.py), against a real HTTP receiver.

The receiver listens on 127.0.0.1 (the loopback switch lets the delivery reach it) and checks
each request's signature with ``kamengsite.api.signing``, as a reseller would. Time is driven
with explicit ``now`` arguments: nothing sleeps through a backoff.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kamengsite import hooks, jobs, members, refunds, storefront
from kamengsite.accounts import create_account
from kamengsite.api import callbacks, keys, signing
from kamengsite.api.models import ApiCallback, ApiOrder
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.db import release_connections
from kamengsite.models import Site, utcnow
from kamengsite.orders import create_order, mark_paid
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import SiteClient, at_once, csrf_token, open_plugin_site, sign_in_console, site_id

PASSWORD = "correct horse battery staple"
SECOND = datetime.timedelta(seconds=1)


class Receiver:
    """A reseller's callback endpoint on 127.0.0.1: records every request and whether its signature holds."""

    def __init__(self):
        self.secrets: dict[str, str] = {}  # app key → secret
        self.statuses: list[int] = []  # answers to give, in order; 200 once they run out
        self.delay = 0.0
        self.hits: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._record(self.path, dict(self.headers.items()), body)
                if receiver.delay:
                    threading.Event().wait(receiver.delay)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/callback") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def _record(self, path, headers, body):
        app_key = headers.get(signing.KEY_HEADER, "")
        secret = self.secrets.get(app_key)
        expected = signing.signature(secret, "POST", path, headers.get(signing.TIMESTAMP_HEADER, ""),
                                     headers.get(signing.NONCE_HEADER, ""), body) if secret else ""
        with self._lock:
            self.hits.append({"path": path, "headers": headers, "body": body, "json": json.loads(body),
                              "signed": bool(secret) and signing.matches(expected,
                                                                         headers.get(signing.SIGNATURE_HEADER, ""))})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def loopback(monkeypatch):
    monkeypatch.setenv(callbacks.LOOPBACK_ENV, "1")


@pytest.fixture(autouse=True)
def immediate_jobs(monkeypatch):
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")  # a queued delivery runs at once, in the caller


class ApiShop:
    """The main site selling a card product, a member with an app key, and a receiver that knows its secret."""

    def __init__(self, host, receiver):
        self.host, self.instance, self.receiver = host, host.instance, receiver
        jobs.bind(host.instance)
        self.site = site_id(host.instance.main_site)
        self.product = create_product(Site.get_by_id(self.site), "Monthly card", 1000, max_qty=5)
        self.codes = [f"CODE-{i:04d}" for i in range(20)]
        import_keys(self.product.skus[0], self.codes, CardKeyCipher.from_instance(host.instance))
        self.member = members.register(self.site, "alice@example.com", PASSWORD)
        self.key, self.secret = keys.issue_key(self.site, self.member.id, host.instance.secret_key,
                                               callback_url=receiver.url("/default?shop=1"))
        receiver.secrets[self.key.app_key] = self.secret
        self._trade = 0

    def api_order(self, out_trade_no, quantity=1, callback_url="", key=None):
        order = create_order(site_id=self.site, sku_id=self.product.skus[0].id, quantity=quantity,
                             contact=self.member.email, channel="demo", member_id=self.member.id)
        with site_scope(self.site):
            ApiOrder.create(site=self.site, api_key=(key or self.key).id, out_trade_no=out_trade_no, order=order.id,
                            callback_url=callback_url)
        return order

    def pay(self, order):
        """Pay the order and run what follows a payment (the hooks), as the storefront does."""
        self._trade += 1
        result = mark_paid(order.order_no, channel="demo", trade_no=f"T-{self._trade}", amount_fen=order.amount_fen)
        with self.host.app_for(self.host.instance.main_site).app_context(), all_sites():
            storefront.after_payment(result, order)
        return result


def callbacks_of(order) -> list[ApiCallback]:
    with all_sites():
        return list(ApiCallback.select().where(ApiCallback.order == order.id).order_by(ApiCallback.id))


def reload(callback) -> ApiCallback:
    with all_sites():
        return ApiCallback.get_by_id(callback.id)


@pytest.fixture
def shop(db_host, receiver, loopback):
    """On every backend of the matrix."""
    yield ApiShop(db_host, receiver)
    release_connections()


@pytest.fixture
def local_shop(host, receiver, loopback):
    return ApiShop(host, receiver)


# -- delivery ------------------------------------------------------------------------------------


def test_a_delivered_api_order_is_called_back_once_with_a_good_signature(shop, caplog):
    caplog.set_level(logging.DEBUG)
    order = shop.api_order("OUT-1", quantity=2, callback_url=shop.receiver.url("/orders/cb?sig=1&x=%20y"))
    shop.pay(order)

    (hit,) = shop.receiver.hits
    assert hit["signed"] and hit["path"] == "/orders/cb?sig=1&x=%20y"
    assert hit["headers"]["Content-Type"] == "application/json"
    assert hit["headers"][signing.KEY_HEADER] == shop.key.app_key
    document = hit["json"]
    assert document["event"] == "order.delivered"
    assert abs(document["sent_at"] - int(hit["headers"][signing.TIMESTAMP_HEADER])) == 0
    sent = document["order"]
    assert sent["order_no"] == order.order_no and sent["out_trade_no"] == "OUT-1"
    assert sent["status"] == "delivered" and sent["keys"] == shop.codes[:2]
    assert (sent["quantity"], sent["unit_price_fen"], sent["amount_fen"]) == (2, 1000, 2000)
    assert (sent["product_id"], sent["sku_id"]) == (shop.product.id, shop.product.skus[0].id)
    assert sent["delivered_at"].endswith("Z") and sent["paid_at"].endswith("Z") and sent["created_at"].endswith("Z")

    (row,) = callbacks_of(order)
    assert (row.event, row.state, row.attempts, row.last_status, row.last_error) == ("order.delivered", "delivered",
                                                                                      1, 200, "")
    assert row.site_id == shop.site and row.next_at is None
    assert all(code not in row.payload for code in shop.codes)  # keys are decrypted when sending, never stored
    assert all(code not in caplog.text for code in shop.codes)

    # A replayed hook, and the sweep, send nothing more.
    with shop.host.app_for("main").app_context(), all_sites():
        callbacks.order_delivered(order, None)
        hooks.notify("order_delivered", order)
    assert callbacks.sweep(shop.instance, now=utcnow() + datetime.timedelta(days=1)) == 0
    assert len(callbacks_of(order)) == 1 and len(shop.receiver.hits) == 1


def test_the_keys_default_callback_url_is_used_when_the_order_names_none(shop):
    order = shop.api_order("OUT-2")
    shop.pay(order)
    (hit,) = shop.receiver.hits
    assert hit["signed"] and hit["path"] == "/default?shop=1"
    assert callbacks_of(order)[0].url == shop.receiver.url("/default?shop=1")


def test_orders_without_an_api_order_or_a_callback_url_are_not_called_back(shop):
    plain = create_order(site_id=shop.site, sku_id=shop.product.skus[0].id, quantity=1, contact="x@example.com",
                         channel="demo")
    shop.pay(plain)
    bare_key, secret = keys.issue_key(shop.site, shop.member.id, shop.instance.secret_key)  # no default URL
    silent = shop.api_order("OUT-3", key=bare_key)
    shop.pay(silent)
    assert callbacks_of(plain) == [] and callbacks_of(silent) == [] and shop.receiver.hits == []


def test_a_failing_receiver_is_retried_with_backoff_then_failed(shop, caplog):
    caplog.set_level(logging.DEBUG)
    shop.receiver.statuses = [500] * 7
    order = shop.api_order("OUT-4")
    before = utcnow()
    shop.pay(order)
    after = utcnow()
    (row,) = callbacks_of(order)
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("pending", 1, 500, "HTTP 500")
    first_wait = datetime.timedelta(seconds=callbacks.BACKOFF_SECONDS[0])
    assert before + first_wait - SECOND <= row.next_at <= after + first_wait

    waits = list(callbacks.BACKOFF_SECONDS[1:]) + [None]
    for attempt, wait in zip(range(2, callbacks.MAX_ATTEMPTS + 1), waits):
        due = row.next_at
        assert callbacks.sweep(shop.instance, now=due - SECOND) == 0  # not yet
        assert callbacks.sweep(shop.instance, now=due) == 1
        row = reload(row)
        assert row.attempts == attempt and row.last_status == 500
        if wait is None:
            assert row.state == "failed" and row.next_at is None
        else:
            assert row.state == "pending" and row.next_at == due + datetime.timedelta(seconds=wait)
    assert callbacks.MAX_ATTEMPTS == 7 and callbacks.BACKOFF_SECONDS == (60, 300, 900, 3600, 10800, 21600)
    assert len(shop.receiver.hits) == 7 and all(hit["signed"] for hit in shop.receiver.hits)
    assert all(hit["json"]["order"]["keys"] == shop.codes[:1] for hit in shop.receiver.hits)
    assert callbacks.sweep(shop.instance, now=utcnow() + datetime.timedelta(days=30)) == 0
    assert callbacks.deliver(row.id, shop.instance, now=utcnow() + datetime.timedelta(days=30)) is None
    assert len(shop.receiver.hits) == 7
    assert shop.codes[0] not in caplog.text and shop.codes[0] not in row.last_error


def test_an_unreachable_receiver_records_the_error_and_is_retried(shop):
    order = shop.api_order("OUT-5", callback_url="http://127.0.0.1:9/nobody-listens")
    shop.pay(order)
    (row,) = callbacks_of(order)
    assert (row.state, row.attempts, row.last_status) == ("pending", 1, None)
    assert "127.0.0.1" in row.last_error and shop.codes[0] not in row.last_error


def test_two_workers_never_send_the_same_attempt(shop):
    shop.receiver.statuses = [500]  # the first attempt fails: the row stays pending for the race
    order = shop.api_order("OUT-6")
    shop.pay(order)
    (row,) = callbacks_of(order)
    due = row.next_at
    shop.receiver.delay = 0.3
    results, errors = at_once(lambda _n: callbacks.deliver(row.id, shop.instance, now=due), 2)
    assert errors == [] and sorted(map(str, results)) == ["None", "delivered"]
    assert len(shop.receiver.hits) == 2  # the first attempt and one of the two racers
    assert reload(row).attempts == 2


def test_a_stale_copy_cannot_claim_a_row_twice(local_shop):
    local_shop.receiver.statuses = [500]
    order = local_shop.api_order("OUT-7")
    local_shop.pay(order)
    (stale,) = callbacks_of(order)
    lease_end = stale.next_at + datetime.timedelta(seconds=callbacks.LEASE_SECONDS)
    with all_sites():
        assert callbacks._claim(stale, stale.next_at) is True
        assert callbacks._claim(reload(stale), stale.next_at) is False  # leased: not due until the lease ends
        # Even once due again, what another worker read before the claim is out of date (attempts moved on).
        assert callbacks._claim(stale, lease_end) is False
    assert callbacks.deliver(stale.id, local_shop.instance, now=lease_end) == "delivered"  # a dead worker's claim


def test_a_refund_sends_order_refunded(shop):
    order = shop.api_order("OUT-8", quantity=1)
    shop.pay(order)
    refund = refunds.refund_order(order.order_no, to="balance", reason="cancelled by the reseller")
    assert refund.status == "done"
    delivered, refunded = callbacks_of(order)
    assert (delivered.event, refunded.event) == ("order.delivered", "order.refunded")
    assert refunded.state == "delivered"
    hit = shop.receiver.hits[-1]
    assert hit["signed"] and hit["json"]["event"] == "order.refunded"
    assert hit["json"]["order"]["status"] == "refunded" and hit["json"]["order"]["keys"] == []
    assert refunds.refund_order(order.order_no).id == refund.id  # again: no new refund, no new callback
    assert len(callbacks_of(order)) == 2 and len(shop.receiver.hits) == 2


def test_loopback_is_refused_without_the_switch(local_shop, monkeypatch):
    monkeypatch.delenv(callbacks.LOOPBACK_ENV)
    order = local_shop.api_order("OUT-9")
    local_shop.pay(order)
    (row,) = callbacks_of(order)
    assert row.state == "pending" and row.attempts == 1 and "refused" in row.last_error
    assert local_shop.receiver.hits == []
    monkeypatch.setenv(callbacks.LOOPBACK_ENV, "1")
    monkeypatch.setattr(local_shop.instance, "production", True)  # the switch is ignored in production
    assert callbacks.sweep(local_shop.instance, now=row.next_at) == 1
    assert "refused" in reload(row).last_error and local_shop.receiver.hits == []
    monkeypatch.setattr(local_shop.instance, "production", False)
    assert callbacks.sweep(local_shop.instance, now=reload(row).next_at) == 1
    assert reload(row).state == "delivered" and len(local_shop.receiver.hits) == 1


def test_the_minute_sweep_is_a_registered_job_and_delivers_what_the_queue_lost(local_shop, monkeypatch):
    monkeypatch.setattr(callbacks, "queue", lambda callback_id, instance: False)  # the queue entry is lost
    order = local_shop.api_order("OUT-10")
    local_shop.pay(order)
    (row,) = callbacks_of(order)
    assert row.state == "pending" and row.attempts == 0 and local_shop.receiver.hits == []
    huey = jobs.make_jobs(local_shop.instance, immediate=True).huey
    (task,) = [t for t in huey._registry._periodic_tasks if t.__name__ == "api_callback_sweep"]
    assert huey.execute(task()) == 1
    assert reload(row).state == "delivered" and len(local_shop.receiver.hits) == 1
    assert huey.execute(task()) == 0


# -- the console's delivery log -------------------------------------------------------------------


def failed_callback(local_shop) -> ApiCallback:
    local_shop.receiver.statuses = [500]
    order = local_shop.api_order(f"OUT-F{len(local_shop.receiver.hits)}")
    local_shop.pay(order)
    (row,) = callbacks_of(order)
    with all_sites():
        ApiCallback.update(state="failed", attempts=callbacks.MAX_ATTEMPTS, next_at=None).where(
            ApiCallback.id == row.id).execute()
    return reload(row)


def test_the_console_shows_the_log_and_retries_a_failed_callback(host, local_shop, client_for):
    row = failed_callback(local_shop)
    create_account(site_id("main"), "boss", PASSWORD)
    console = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)
    page = console.get("/admin/api/")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and f'id="callback-{row.id}" class="callback-failed"' in body
    assert "HTTP 500" in body and "OUT-F0" in body
    assert f"/admin/api/callbacks/{row.id}/retry" in body
    token = csrf_token(page)
    assert console.post(f"/admin/api/callbacks/{row.id}/retry", data={}).status_code == 400
    assert reload(row).state == "failed"
    assert console.post(f"/admin/api/callbacks/{row.id}/retry", data={"csrf_token": token}).status_code == 302
    retried = reload(row)
    assert (retried.state, retried.attempts, retried.last_status) == ("delivered", callbacks.MAX_ATTEMPTS + 1, 200)
    assert len(local_shop.receiver.hits) == 2 and local_shop.receiver.hits[-1]["signed"]
    # Only a failed one: a delivered callback is not sent again.
    assert console.post(f"/admin/api/callbacks/{row.id}/retry", data={"csrf_token": token}).status_code == 302
    assert len(local_shop.receiver.hits) == 2
    failed_only = console.get("/admin/api/", query_string={"state": "failed"}).get_data(as_text=True)
    assert f'id="callback-{row.id}"' not in failed_only


def test_another_sites_callback_is_a_404(host, local_shop, client_for):
    row = failed_callback(local_shop)
    shopb = open_plugin_site(host, "shopb", ())
    create_account(shopb, "owner", PASSWORD)
    owner = sign_in_console(SiteClient(host, "shopb.localhost"), "owner", PASSWORD)
    page = owner.get("/admin/api/")
    assert page.status_code == 200 and f'id="callback-{row.id}"' not in page.get_data(as_text=True)
    response = owner.post(f"/admin/api/callbacks/{row.id}/retry", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 404
    assert reload(row).state == "failed" and len(local_shop.receiver.hits) == 1
