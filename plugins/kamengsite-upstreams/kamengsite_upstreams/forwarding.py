"""Forwarding: a paid order of a supplied product is bought from its upstream and delivered — once.

One ``UpstreamForward`` row per order (unique), moved along by conditional updates::

    pending ──claim──▶ sending ──upstream delivered──▶ delivered (keys sealed into the order)
       ▲                  │──upstream accepted, keys later──▶ sent ──query──▶ delivered / …
       └──transport error, backoff──┘
                          └──definite "no" (and no fallback left), or out of attempts──▶ refunded

* The upstream is called outside any database transaction, with the order number as the
  idempotency key. Claiming a row is a conditional UPDATE on the state and attempt count the
  worker saw, so two workers never call the upstream for one order at the same time.
* After an uncertain attempt (a timeout, a worker that died while ``sending``) the next attempt
  asks the upstream about that key first (``query_order``) unless its protocol is idempotent —
  so an order the upstream did take is never bought twice.
* A definite failure moves to the link's fallback upstream if it has one and it was not tried;
  otherwise, or after ``MAX_ATTEMPTS`` transport failures, the buyer is refunded exactly once
  (``refunds.refund_order``: one refund row per order) and the operator gets a notice.
* ``deliver_supplied`` delivers in one transaction with a conditional ``paid → delivered``,
  so a late second answer delivers nothing twice.

``on_supply_order`` (the ``supply_order`` hook) queues the job at once; ``sweep`` (every
minute) picks up whatever that missed: paid orders with no forward row, due retries, stale
claims. Every step is safe to run twice or concurrently.
"""

from __future__ import annotations

import datetime
import logging
import threading

import peewee

from kamengsite import alerts, hooks, orders, refunds
from kamengsite.catalog import Product
from kamengsite.db import database
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import all_sites

log = logging.getLogger(__name__)

SUPPLIER = "upstreams"
MAX_ATTEMPTS = 6
#: Seconds to wait after the n-th failed attempt (transport errors).
BACKOFF = (30, 60, 120, 300, 600, 1800)
#: Seconds between questions about an order the upstream accepted but has not delivered yet.
POLL = (15, 30, 60, 120, 300, 600)
#: A ``sending`` claim older than this belongs to a worker that died: the attempt is uncertain.
LEASE = datetime.timedelta(minutes=5)
#: Polls of a ``sent`` order after which the operator is told it is stuck (it is never refunded
#: automatically: the upstream may still deliver what we paid for).
STUCK_POLLS = 40

_tasks: dict[str, object] = {}
_tasks_lock = threading.Lock()


# -- queueing -----------------------------------------------------------------------------------


def on_supply_order(order):
    """The ``supply_order`` hook's work: write the forward row and queue its job (the sweep is the safety net)."""
    if getattr(order.product, "supplier", "") != SUPPLIER:
        return
    forward = ensure_forward(order.id)
    if forward is not None:
        _enqueue(forward.id)


def _enqueue(forward_id: int):
    from kamengsite import jobs

    instance = jobs.current_instance()
    if instance is None:
        return  # no queue known to this process: the worker's sweep forwards it
    jobs.jobs_for(instance)  # builds the huey, which registers the task below
    task = _tasks.get(_instance_key(instance))
    if task is not None:
        task(forward_id)


def _instance_key(instance) -> str:
    return str(instance.path)


def register_jobs(huey, instance):
    """The forwarding task and its periodic sweep, on the instance's huey."""
    from huey import crontab

    @huey.task()
    def forward_upstream_order(forward_id: int):
        """Forward one paid order to its upstream (one attempt; the sweep schedules the next)."""
        return process(forward_id, instance)

    @huey.periodic_task(crontab(minute="*"))
    def sweep_upstream_forwards():
        """Forward paid orders the fast path missed, retry the due ones, poll the accepted ones (every minute)."""
        return sweep(instance)

    with _tasks_lock:
        _tasks[_instance_key(instance)] = forward_upstream_order


def ensure_forward(order_id: int, instance=None):
    """The order's forward row, written now if missing; None when its SKU has no link (the operator is told)."""
    from .models import UpstreamForward, UpstreamLink

    existing = UpstreamForward.get_or_none(UpstreamForward.order == order_id)
    if existing is not None:
        return existing
    with all_sites():
        order = orders.Order.get_by_id(order_id)
    link = UpstreamLink.get_or_none(UpstreamLink.sku == order.sku_id)
    if link is None:
        _tell_operator(instance, "upstream_unlinked", f"order:{order.order_no}",
                       N_("Order %(order_no)s is paid but its SKU is linked to no upstream"),
                       N_("Link the SKU on the upstreams page, or refund the order; it stays paid until then."),
                       order_no=order.order_no)
        return None
    now = utcnow()
    # The sync found the primary failing or sold out and took price and stock from the fallback: buy there.
    upstream_id = link.fallback_upstream_id if link.via_fallback and link.fallback_upstream_id else link.upstream_id
    try:
        return UpstreamForward.create(order=order_id, site_id=order.site_id, link=link.id, upstream=upstream_id,
                                      state="pending", attempts=0, next_at=now, created_at=now, updated_at=now)
    except peewee.IntegrityError:  # written concurrently (hook and sweep): that row is the one
        return UpstreamForward.get(UpstreamForward.order == order_id)


# -- the sweep ----------------------------------------------------------------------------------


def sweep(instance, now: datetime.datetime | None = None, limit: int = 200) -> dict:
    """Write the missing forward rows, then process every due one; returns counts by outcome."""
    from .models import UpstreamForward

    for order_id in _unforwarded_paid_orders(limit):
        ensure_forward(order_id, instance)
    now = now or utcnow()  # after the rows above, which are due at once
    due = (UpstreamForward.select(UpstreamForward.id)
           .where((UpstreamForward.state.in_(("pending", "sent")) & (UpstreamForward.next_at <= now))
                  | ((UpstreamForward.state == "sending") & (UpstreamForward.updated_at < now - LEASE)))
           .order_by(UpstreamForward.next_at).limit(limit))
    counts: dict[str, int] = {}
    for (forward_id,) in due.tuples():
        outcome = process(forward_id, instance, now=now)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _unforwarded_paid_orders(limit: int) -> list[int]:
    from .models import UpstreamForward

    Order = orders.Order
    with all_sites():
        query = (Order.select(Order.id).join(Product, on=(Order.product == Product.id))
                 .join(UpstreamForward, peewee.JOIN.LEFT_OUTER, on=(UpstreamForward.order == Order.id))
                 .where((Product.supplier == SUPPLIER) & (Order.status == "paid") & (Order.hold == "")
                        & UpstreamForward.id.is_null())
                 .order_by(Order.id).limit(limit))
        return [order_id for (order_id,) in query.tuples()]


# -- one attempt --------------------------------------------------------------------------------


def process(forward_id: int, instance, now: datetime.datetime | None = None) -> str:
    """One attempt at one forward; returns what happened ("delivered", "sent", "retry", "refunded", "skipped" …)."""
    from .models import UpstreamForward

    now = now or utcnow()
    seen = UpstreamForward.get_or_none(UpstreamForward.id == forward_id)
    if seen is None or not _due(seen, now):
        return "skipped"
    uncertain = seen.state == "sent" or (seen.state == "sending") or bool(seen.last_error and seen.attempts)
    if not _claim(seen, now):
        return "skipped"  # another worker took it
    order = _order_of(seen.order_id)
    if order.status != "paid" or order.hold:
        return _settle_elsewhere(seen, order, now)
    try:
        upstream, ref = _target(seen)
        connector = _connector(upstream, instance)
        answer = None
        if uncertain and not (connector.idempotent and seen.state != "sent"):
            answer = _query(connector, order.order_no, seen.upstream_order_no)
        if answer is None:
            if seen.state == "sent":
                # The upstream said it took the order and now knows nothing of it: ask again at the next poll.
                return _wait(seen, now, "the upstream does not know this order yet")
            answer = connector.place_order(ref, order.quantity, order.order_no, order.field_values)
    except Exception as exc:  # noqa: BLE001 - any failure of the call is an attempt that failed
        return _failed_attempt(seen, order, instance, now, exc)
    return _apply_answer(seen, order, instance, now, answer)


def _query(connector, key: str, upstream_order_no: str):
    """``query_order``, with the upstream's own order number when we have it (some find orders only by it)."""
    return connector.query_order(key, upstream_order_no) if upstream_order_no else connector.query_order(key)


def _order_of(order_id: int):
    with all_sites():
        order_no = orders.Order.select(orders.Order.order_no).where(orders.Order.id == order_id).scalar()
        return orders.find_order(order_no)


def _due(forward, now) -> bool:
    if forward.state in ("pending", "sent"):
        return forward.next_at <= now
    return forward.state == "sending" and forward.updated_at < now - LEASE


def _claim(seen, now) -> bool:
    """Take the row for this attempt: only if nobody moved it since we read it."""
    from .models import UpstreamForward

    return UpstreamForward.update(state="sending", attempts=UpstreamForward.attempts + 1, updated_at=now).where(
        (UpstreamForward.id == seen.id) & (UpstreamForward.state == seen.state)
        & (UpstreamForward.attempts == seen.attempts) & (UpstreamForward.updated_at == seen.updated_at)
    ).execute() == 1


def _update(seen, now, **changes):
    from .models import UpstreamForward

    UpstreamForward.update(updated_at=now, **changes).where(UpstreamForward.id == seen.id).execute()


def _target(forward):
    """The upstream and its item ref this forward buys from (the fallback once it switched)."""
    from .models import Upstream, UpstreamLink

    link = UpstreamLink.get_by_id(forward.link_id)
    upstream_id = forward.upstream_id or link.upstream_id
    if upstream_id == link.fallback_upstream_id and link.fallback_ref:
        return Upstream.get_by_id(upstream_id), link.fallback_ref
    return Upstream.get_by_id(link.upstream_id), link.ref


def _connector(upstream, instance):
    from . import connector_for

    return connector_for(upstream, instance)


def _apply_answer(seen, order, instance, now, answer) -> str:
    state = getattr(answer, "state", "")
    if state == "delivered":
        try:
            delivered = orders.deliver_supplied(order.order_no, SUPPLIER, list(answer.keys), _cipher(instance))
        except orders.OrderError as exc:  # the upstream's goods do not fit the order: a definite failure
            return _definite_failure(seen, order, instance, now, str(exc))
        _update(seen, now, state="delivered", upstream_order_no=(answer.upstream_order_no or "")[:64], last_error="")
        if delivered:
            order.status = "delivered"
            hooks.notify("order_delivered", order)  # the keys mail, the reseller's callback
        return "delivered"
    if state == "pending":
        _update(seen, now, state="sent", upstream_order_no=(answer.upstream_order_no or "")[:64],
                next_at=now + datetime.timedelta(seconds=_step(POLL, seen.attempts)), last_error="")
        if seen.attempts + 1 == STUCK_POLLS:
            _tell_stuck(instance, order)
        return "sent"
    return _definite_failure(seen, order, instance, now, getattr(answer, "message", "") or "the upstream refused")


def _wait(seen, now, why: str) -> str:
    _update(seen, now, state="sent", last_error=why[:500],
            next_at=now + datetime.timedelta(seconds=_step(POLL, seen.attempts)))
    return "sent"


def _failed_attempt(seen, order, instance, now, exc) -> str:
    retryable = getattr(exc, "retryable", True)
    message = f"{type(exc).__name__}: {exc}"[:500]
    log.warning("forwarding order %s upstream failed (attempt %d): %s", order.order_no, seen.attempts + 1, message)
    if getattr(exc, "already_placed", False):
        # An earlier attempt bought it and its answer was lost: keep asking, tell the operator, never refund.
        _tell_stuck(instance, order)
        return _wait(seen, now, message)
    if not retryable:
        return _definite_failure(seen, order, instance, now, message)
    if seen.state == "sent" or seen.upstream_order_no:
        return _wait(seen, now, message)  # the upstream took the order (and our money): never refund on silence
    if seen.attempts + 1 >= MAX_ATTEMPTS:
        return _refund(seen, order, instance, now, f"{MAX_ATTEMPTS} attempts failed; last: {message}")
    # Back to pending: the next attempt asks the upstream first whether this one went through.
    _update(seen, now, state="pending", last_error=message,
            next_at=now + datetime.timedelta(seconds=_step(BACKOFF, seen.attempts)))
    return "retry"


def _definite_failure(seen, order, instance, now, why: str) -> str:
    from .models import UpstreamLink

    link = UpstreamLink.get_by_id(seen.link_id)
    on_fallback = seen.upstream_id == link.fallback_upstream_id and link.fallback_upstream_id is not None
    if link.fallback_upstream_id and link.fallback_ref and not on_fallback:
        _update(seen, now, state="pending", upstream=link.fallback_upstream_id, next_at=now,
                last_error=f"primary refused ({why[:300]}); trying the fallback")
        return "fallback"
    return _refund(seen, order, instance, now, why)


def _refund(seen, order, instance, now, why: str) -> str:
    from kamengsite.payment_routes import payment_registry

    try:
        refund = refunds.refund_order(order.order_no, reason=f"upstream failed: {why}"[:500], to="auto",
                                      absorb=True, registry=payment_registry(instance))
    except Exception as exc:  # noqa: BLE001 - keep the order paid and visible rather than lose it
        log.exception("refund of %s after its upstream failed could not be written", order.order_no)
        _update(seen, now, state="pending", last_error=f"refund failed: {exc}"[:500],
                next_at=now + datetime.timedelta(seconds=BACKOFF[-1]))
        return "retry"
    _update(seen, now, state="refunded", last_error=why[:500])
    _tell_operator(instance, "upstream_failed", f"order:{order.order_no}",
                   N_("Order %(order_no)s was refunded: its upstream failed"),
                   N_("Reason: %(why)s\nRefund %(refund_no)s: %(amount)s fen to %(destination)s (%(status)s)."),
                   order_no=order.order_no, why=why, refund_no=refund.refund_no, amount=refund.amount_fen,
                   destination=refund.destination, status=refund.status)
    return "refunded"


def _settle_elsewhere(seen, order, now) -> str:
    """The order left ``paid`` by another way (refunded by hand, delivered): record that, call nobody."""
    state = "delivered" if order.status == "delivered" else "refunded"
    _update(seen, now, state=state, last_error=f"order is {order.status}")
    return state


def _step(steps: tuple, attempts: int) -> int:
    return steps[min(attempts, len(steps) - 1)]


def _cipher(instance):
    from kamengsite.crypto import CardKeyCipher

    return CardKeyCipher.from_instance(instance)


def N_(message: str) -> str:
    """Mark a message for the catalogs; it is translated when written, in the operator's language."""
    return message


def _tell_stuck(instance, order):
    _tell_operator(instance, "upstream_stuck", f"order:{order.order_no}",
                   N_("Order %(order_no)s has waited long for its upstream"),
                   N_("The upstream accepted it and has not delivered yet; it is still being asked."),
                   order_no=order.order_no)


def _tell_operator(instance, kind: str, ref: str, title: str, body: str, **values):
    """A notice on the main site's console (the operator docks upstreams there) and a mail, in its language."""
    from kamengsite import jobs, mail

    try:
        instance = instance or jobs.current_instance()
        with all_sites():
            main = Site.get_or_none(Site.slug == instance.main_site) if instance is not None else None
            # Once per order and kind: the sweep meets an unlinked order every minute.
            if main is None or alerts.Notice.select().where(
                    (alerts.Notice.site == main.id) & (alerts.Notice.kind == kind) & (alerts.Notice.ref == ref)).exists():
                return
        gettext = mail.site_gettext(mail.site_locale(main.id, instance))
        title, body = gettext(title, **values), gettext(body, **values)
        alerts.add_notice(main.id, kind=kind, title=title, body=body, ref=ref)
        mail.queue_operator_mail(instance, title, body)
    except Exception:  # noqa: BLE001 - a notice must never undo the forward's bookkeeping
        log.exception("notice %s about %s could not be written", kind, ref)


def forward_of(order_id: int):
    from .models import UpstreamForward

    return UpstreamForward.get_or_none(UpstreamForward.order == order_id)


def retry_now(forward_id: int, instance) -> str:
    """The console's "retry now": make a waiting forward due at once and run it."""
    from .models import UpstreamForward

    with database.atomic():
        UpstreamForward.update(next_at=utcnow()).where(
            (UpstreamForward.id == forward_id) & UpstreamForward.state.in_(("pending", "sent"))).execute()
    return process(forward_id, instance)
