"""Signed status callbacks to resellers (a core plugin): queued on delivery and refund, retried with backoff.

An order placed through the API (an ``ApiOrder`` row) whose callback URL is known (the order's,
else its key's default) gets one ``ApiCallback`` row per event (``order.delivered``,
``order.refunded``); the unique (order, event) pair makes a replayed hook write nothing new.
The row is then queued for delivery: a POST of ``{"event", "order", "sent_at"}`` signed like a
request (``signing.signed_headers`` with the key's app key and secret, PATH = the callback URL's
path and query), through the SSRF guard (``kamengsite.outbound``). A 2xx answer delivers it;
anything else is retried after 1 min, 5 min, 15 min, 1 h, 3 h and 6 h, and the 7th failed
attempt leaves it ``failed`` (the shop's console may retry it by hand).

The row stores the order as it was at the event, without its card keys: the keys are decrypted
only when a delivery is sent (like the keys mail), so the table never holds a key in clear.
Every attempt first claims the row with a conditional UPDATE (attempts and due time), so two
workers, or the queue and the minute sweep, never send the same attempt twice; a worker that dies
mid-send leaves a claim that expires after ``LEASE_SECONDS`` and the sweep tries again.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import weakref
from urllib.parse import urlsplit

import peewee

from .. import outbound
from ..db import database
from ..hookspecs import hookimpl
from ..models import utcnow
from ..tenancy import acting_for, all_sites
from . import keys, signing
from .models import ApiCallback, ApiKey, ApiOrder

log = logging.getLogger(__name__)

DELIVERED, REFUNDED = "order.delivered", "order.refunded"
#: The wait after the 1st, 2nd … 6th failed attempt; the attempt after the last wait is the last one.
BACKOFF_SECONDS = (60, 5 * 60, 15 * 60, 3600, 3 * 3600, 6 * 3600)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1
TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 64 * 1024  # the answer's body is ignored: no need to read much of it
LEASE_SECONDS = 120  # longer than any attempt can take (the timeout), so a live claim is never taken over
SWEEP_BATCH = 100
MAX_URL = 500  # ApiKey.callback_url / ApiOrder.callback_url / ApiCallback.url
LOOPBACK_ENV = "KAMENGSITE_API_ALLOW_LOOPBACK"
STATES = ("pending", "delivered", "failed")

#: huey → its "deliver one callback" task (registered by ``register_jobs``), to enqueue from the hooks.
_TASKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# -- which URLs a callback may go to -------------------------------------------------------


def loopback_allowed(instance) -> bool:
    """Loopback targets (a test's fake receiver) only with KAMENGSITE_API_ALLOW_LOOPBACK=1 off production.

    The one switch for both the delivery and the forms that take a callback URL; private and
    link-local addresses stay refused whatever it says (``outbound``).
    """
    return os.environ.get(LOOPBACK_ENV, "") == "1" and not getattr(instance, "production", True)


def check_callback_url(url: str, instance) -> str:
    """The URL, stripped, if a callback may be sent there; ``outbound.OutboundError`` otherwise."""
    url = (url or "").strip()
    if len(url) > MAX_URL:
        raise outbound.OutboundError(f"the URL must be at most {MAX_URL} characters", refused=True)
    # outbound.resolve looked up at call time: tests replace it with a resolver of their own.
    outbound.check_url(url, allow_loopback=loopback_allowed(instance), resolver=outbound.resolve)
    return url


def signed_path(url: str) -> str:
    """The path and query a receiver sees for ``url``: what the signature covers."""
    parts = urlsplit(url.strip())
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


# -- the payload ---------------------------------------------------------------------------


def iso(moment: datetime.datetime | None) -> str | None:
    """ISO 8601 UTC with a "Z" (database times are naive UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat() + "Z"


def order_document(order, out_trade_no: str, order_keys: list[str] | None = None) -> dict:
    """The API's Order object (docs/api.md); ``keys`` only for a delivered order."""
    return {
        "order_no": order.order_no,
        "out_trade_no": out_trade_no,
        "status": order.status,
        "product_id": order.product_id,
        "sku_id": order.sku_id,
        "quantity": order.quantity,
        "unit_price_fen": int(order.unit_price_fen),
        "amount_fen": int(order.amount_fen),
        "keys": list(order_keys or []) if order.status == "delivered" else [],
        "created_at": iso(order.created_at),
        "paid_at": iso(order.paid_at),
        "delivered_at": iso(order.delivered_at),
    }


def _keys_of(order_id: int, instance) -> list[str]:
    from ..crypto import CardKeyCipher
    from ..orders import Order, delivered_keys

    with all_sites():
        order = Order.get_by_id(order_id)
        return delivered_keys(order, CardKeyCipher.from_instance(instance))


# -- writing the callbacks -------------------------------------------------------------------


def record(order, event: str, *, now: datetime.datetime | None = None) -> ApiCallback | None:
    """The new callback row of ``order``'s ``event``; None when the order is not an API order with a
    callback URL, or when this event of this order was recorded already (a replayed hook)."""
    from ..orders import Order

    with all_sites():
        api_order = ApiOrder.get_or_none(ApiOrder.order == order.id)
        if api_order is None:
            return None
        key = ApiKey.get_by_id(api_order.api_key_id)
        url = (api_order.callback_url or key.callback_url or "").strip()
        if not url:
            return None
        if ApiCallback.select().where((ApiCallback.order == order.id) & (ApiCallback.event == event)).exists():
            return None
        current = Order.get_by_id(order.id)  # the hook's copy may be stale (times, status)
        payload = json.dumps({"event": event, "order": order_document(current, api_order.out_trade_no)},
                             ensure_ascii=False)
    moment = _whole_seconds(now or utcnow())
    try:
        # Unscoped: the hook may run in a request of another domain (a gateway's notification).
        with all_sites(), database.atomic():
            return ApiCallback.create(site=api_order.site_id, api_key=key.id, order=order.id, event=event,
                                      url=url[:MAX_URL], payload=payload, next_at=moment, created_at=moment,
                                      updated_at=moment)
    except peewee.IntegrityError:  # the same hook, at the same time, in another process
        return None


def queue(callback_id: int, instance) -> bool:
    """Enqueue the delivery of one callback; False if there is no queue (the minute sweep sends it then)."""
    from .. import jobs

    if instance is None:
        return False
    try:
        task = _TASKS.get(jobs.jobs_for(instance).huey)
        if task is None:
            return False
        task(callback_id)
    except Exception:  # noqa: BLE001 - the row is written: the sweep delivers it whatever happened here
        log.exception("API callback %s could not be queued; the sweep will send it", callback_id)
        return False
    return True


def _on_event(order, event: str):
    from .. import jobs

    try:
        callback = record(order, event)
        if callback is not None:
            queue(callback.id, jobs.current_instance())
    except Exception:  # noqa: BLE001 - a callback must never break a delivery or a refund
        log.exception("order %s: its %s callback could not be recorded", getattr(order, "order_no", "?"), event)


@hookimpl
def order_delivered(order, site):
    _on_event(order, DELIVERED)


@hookimpl
def order_refunded(order, refund, site):
    _on_event(order, REFUNDED)


# -- delivering ------------------------------------------------------------------------------


def _whole_seconds(moment: datetime.datetime) -> datetime.datetime:
    """Stored times without a fraction: a MySQL DATETIME would round one up, past the moment it was due."""
    return moment.replace(microsecond=0)


def _due(now: datetime.datetime):
    return ApiCallback.next_at.is_null() | (ApiCallback.next_at <= now)


def _claim(callback: ApiCallback, now: datetime.datetime) -> bool:
    """Take this attempt of ``callback`` for this worker: one UPDATE that only one worker can win."""
    lease = _whole_seconds(now + datetime.timedelta(seconds=LEASE_SECONDS))
    won = (ApiCallback.update(attempts=ApiCallback.attempts + 1, next_at=lease, updated_at=now)
           .where((ApiCallback.id == callback.id) & (ApiCallback.state == "pending")
                  & (ApiCallback.attempts == callback.attempts) & _due(now))
           .execute())
    return won == 1


def _request(callback: ApiCallback, instance) -> tuple[bytes, dict]:
    """The body and headers of one attempt: the keys decrypted now, signed with the key's secret."""
    document = json.loads(callback.payload)
    order = document["order"]
    if order.get("status") == "delivered":
        order["keys"] = _keys_of(callback.order_id, instance)
    document["sent_at"] = int(time.time())  # the receiver checks the signature's time against its clock
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    key = ApiKey.get_by_id(callback.api_key_id)
    headers = signing.signed_headers(key.app_key, keys.secret_for(key, instance.secret_key), "POST",
                                     signed_path(callback.url), body, timestamp=document["sent_at"])
    headers["Content-Type"] = "application/json"
    return body, headers


def _finish(callback: ApiCallback, attempt: int, now: datetime.datetime, *, status: int | None,
            error: str) -> str:
    """Record how attempt number ``attempt`` went; the new state."""
    if status is not None and 200 <= status < 300:
        state, next_at, error = "delivered", None, ""
    elif attempt >= MAX_ATTEMPTS:
        state, next_at = "failed", None
    else:
        state, next_at = "pending", _whole_seconds(now + datetime.timedelta(seconds=BACKOFF_SECONDS[attempt - 1]))
    (ApiCallback.update(state=state, next_at=next_at, last_status=status, last_error=error[:500], updated_at=now)
     .where((ApiCallback.id == callback.id) & (ApiCallback.state == "pending") & (ApiCallback.attempts == attempt))
     .execute())
    return state


def deliver(callback_id: int, instance, *, now: datetime.datetime | None = None) -> str | None:
    """One attempt at a due pending callback: its new state, or None when it was not due or another
    worker has it. ``now`` decides what is due and when the next attempt is (tests drive time with it)."""
    with all_sites():
        callback = ApiCallback.get_or_none(ApiCallback.id == callback_id)
        started = now or utcnow()
        if callback is None or callback.state != "pending" or not _claim(callback, started):
            return None
        attempt = callback.attempts + 1
        status, error = None, ""
        try:
            body, headers = _request(callback, instance)
            answer = outbound.request("POST", callback.url, body=body, headers=headers, timeout=TIMEOUT_SECONDS,
                                      max_bytes=MAX_ANSWER_BYTES, allow_loopback=loopback_allowed(instance),
                                      resolver=outbound.resolve)
        except outbound.OutboundError as exc:
            error = str(exc)  # the guard's and the connection's own words: a host, never the payload
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the row claimed forever
            log.exception("API callback %s: attempt %s broke", callback.id, attempt)
            error = f"internal error: {type(exc).__name__}"
        else:
            status = answer.status
            # Only the status: a receiver's body could echo the payload (and its keys) back.
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        state = _finish(callback, attempt, now or utcnow(), status=status, error=error)
    log.info("API callback %s (order %s, %s) attempt %s: %s%s", callback.id, callback.order_id, callback.event,
             attempt, state, f" ({error})" if error else "")
    return state


def sweep(instance, *, now: datetime.datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """Attempt every pending callback that is due (the queue's safety net); how many were attempted."""
    moment = now or utcnow()
    with all_sites():
        due = [row_id for (row_id,) in ApiCallback.select(ApiCallback.id)
               .where((ApiCallback.state == "pending") & _due(moment))
               .order_by(ApiCallback.next_at, ApiCallback.id).limit(limit).tuples()]
    return sum(1 for row_id in due if deliver(row_id, instance, now=now) is not None)


def retry_now(site_id: int, callback_id: int, *, now: datetime.datetime | None = None) -> ApiCallback | None:
    """Make a failed callback of ``site_id`` due at once (one more attempt); None if it is not one of
    this site's failed callbacks."""
    moment = _whole_seconds(now or utcnow())
    with acting_for(site_id):
        moved = (ApiCallback.update(state="pending", next_at=moment, updated_at=moment)
                 .where((ApiCallback.id == callback_id) & (ApiCallback.state == "failed")).execute())
        return ApiCallback.get_or_none(ApiCallback.id == callback_id) if moved else None


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.task(name="api_deliver_callback")
    def api_deliver_callback(callback_id: int):
        """One attempt at one callback, queued when it is recorded (or retried from the console)."""
        return deliver(callback_id, instance)

    @huey.periodic_task(crontab(minute="*"), name="api_callback_sweep")
    def api_callback_sweep():
        """Every due pending callback: retries, and whatever a lost queue entry left behind."""
        return sweep(instance)

    _TASKS[huey] = api_deliver_callback
