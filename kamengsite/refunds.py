"""Refunds: give a paid order's money back — once — and undo its split in the ledger.

Where the money goes:

* ``channel``: back through the gateway that took it, when its channel supports refunds;
* ``balance``: into the buyer's member wallet on the selling site (orders of members);
* ``manual``: the operator (or, for a direct-settlement site, the owner) pays it back by
  hand and confirms with ``confirm_manual``.

``"auto"`` picks the first of those that applies. One ``refund`` row per order (unique)
makes a refund happen once however often it is asked for. The ledger transaction
``("refund", order_no)`` takes back what the payment credited: each site's margin from its
frozen balance first and from its available balance for what was already released — when
that is short the refund is refused naming the site, unless ``absorb=True`` lets the
platform carry the difference. Distribution commissions likewise: from the member's frozen
commissions while not released, else from the wallet (``settlement.take_back_commission``).
"""

from __future__ import annotations

import secrets

import peewee

from . import ledger, orders, settlement
from .db import database, retry_transient
from .errors import KamengsiteError
from .models import BaseModel, Site, utcnow
from .payments import RefundRequest
from .tenancy import all_sites

DESTINATIONS = ("auto", "channel", "balance", "manual")
REFUNDABLE = ("paid", "delivered", "refund_pending")


class RefundError(KamengsiteError):
    code = "refund_error"


class Refund(BaseModel):
    site = peewee.ForeignKeyField(Site, on_delete="RESTRICT")
    order = peewee.ForeignKeyField(orders.Order, unique=True, on_delete="RESTRICT")
    refund_no = peewee.CharField(max_length=40, unique=True)
    amount_fen = peewee.BigIntegerField()
    destination = peewee.CharField(max_length=12)
    status = peewee.CharField(max_length=12, default="pending")  # pending | done | failed
    gateway_refund_no = peewee.CharField(max_length=64, default="")
    reason = peewee.TextField(default="")
    message = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)
    done_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "refund"


def _pick_destination(order, wanted: str, gateway) -> str:
    prepaid = order.fee_bearer == orders.DIRECT  # the buyer paid the site's own account: the site pays back
    can = {"channel": gateway is not None and gateway[0].supports_refund and not prepaid,
           "balance": order.member_id is not None and not prepaid,
           "manual": True}
    if wanted == "auto":
        return next(d for d in ("channel", "balance", "manual") if can[d])
    if not can[wanted]:
        raise RefundError(f"order {order.order_no} cannot be refunded to {wanted}")
    return wanted


def _take_back(order, payment, absorb: bool) -> list[tuple[int, int]]:
    """Entries that undo what the payment credited; the caller holds the transaction (accounts locked here)."""
    if order.status == "refund_pending":
        owed = ledger.find("payment", f"owed:{payment.id}")
        return [(e.account_id, -e.amount_fen) for e in owed.entries] if owed else []
    split = ledger.find("payment", order.order_no)
    if split is None:
        raise RefundError(f"order {order.order_no} has no recorded payment split")
    entries = [(e.account_id, e.amount_fen) for e in split.entries.order_by(ledger.LedgerEntry.id)]
    accounts = {a.id: a for a in ledger.LedgerAccount.select().where(
        ledger.LedgerAccount.id.in_([a for a, _ in entries]))}
    frozen_ids = [a for a, _ in entries if accounts[a].kind == "site_frozen"]
    wallet_ids = [a for a, _ in entries if accounts[a].kind in settlement.COMMISSION_KINDS]
    available = {a: ledger.account("site_available", site=accounts[a].site_id) for a in frozen_ids}
    platform = ledger.account("platform_revenue").id
    ledger.lock(frozen_ids + wallet_ids + settlement.commission_wallets([accounts[a] for a in wallet_ids])
                + [acct.id for acct in available.values()])
    back = []
    for account_id, amount in entries:
        if account_id in wallet_ids:  # a commission: frozen first, then the wallet; what was spent, the platform carries
            parts, spent = settlement.take_back_commission(order.order_no, accounts[account_id], amount)
            if spent and not absorb:
                raise RefundError(f"member {accounts[account_id].member_id} has spent {spent} fen of the commission "
                                  f"on order {order.order_no} (absorb=True lets the platform carry it)")
            back += parts + [(platform, -spent)]
            continue
        if account_id not in available:
            back.append((account_id, -amount))
            continue
        # Released margins come back out of the available balance.
        from_frozen = min(amount, max(0, ledger.balance(account_id)))
        rest = amount - from_frozen
        short = max(0, rest - ledger.balance(available[account_id])) if rest else 0
        if short and not absorb:
            raise RefundError(f"site {accounts[account_id].site_id} has {short} fen too little to give back "
                              f"its margin of order {order.order_no} (absorb=True lets the platform carry it)")
        back += [(account_id, -from_frozen), (available[account_id].id, -(rest - short)), (platform, -short)]
    return back


def _applied_payment(order) -> orders.Payment:
    """The payment the order was paid by (for a refund_pending order: the one that is owed back)."""
    state = "refund_due" if order.status == "refund_pending" else "applied"
    payment = (orders.Payment.select().where((orders.Payment.order == order.id) & (orders.Payment.state == state))
               .order_by(orders.Payment.id).first())
    if payment is None:
        raise RefundError(f"order {order.order_no} has no payment to give back")
    return payment


def refund_order(order_no: str, *, reason: str = "", to: str = "auto", absorb: bool = False,
                 registry=None) -> Refund:
    """Refund a paid order in full (once); returns its ``Refund`` (status ``done``, ``pending`` or ``failed``)."""
    if to not in DESTINATIONS:
        raise RefundError(f"destination must be one of {', '.join(DESTINATIONS)}")
    with all_sites():
        order = orders.find_order(order_no)
    if order is None:
        raise RefundError(f"unknown order {order_no!r}")
    existing = Refund.get_or_none(Refund.order == order.id)
    if existing is not None:
        return existing
    if order.status not in REFUNDABLE:
        raise RefundError(f"order {order_no} is {order.status}; only paid orders are refunded")
    payment = _applied_payment(order)
    gateway = registry.find(order.channel, order.channel_profile) if registry and order.channel else None
    destination = _pick_destination(order, to, gateway)
    prepaid = order.fee_bearer == orders.DIRECT
    out = _destination_account(order, payment, destination)

    def write() -> Refund:
        with database.atomic():
            refund = Refund.create(site=order.site_id, order=order.id, refund_no=_refund_no(), amount_fen=payment.amount_fen,
                                   destination=destination, reason=reason[:500],
                                   status="done" if destination == "balance" else "pending",
                                   done_at=utcnow() if destination == "balance" else None)
            entries = _merge(_take_back(order, payment, absorb))
            if not prepaid:
                # What came in through the gateway's clearing account now leaves through ``out``.
                clearing = {a.id for a in ledger.LedgerAccount.select().where(
                    ledger.LedgerAccount.id.in_([a for a, _ in entries]) & (ledger.LedgerAccount.kind == "channel_clearing"))}
                entries = _merge([(out.id if a in clearing else a, amt) for a, amt in entries])
            if entries:
                ledger.post_in_transaction("refund", order_no, entries, memo=f"refund {refund.refund_no}")
            if prepaid:
                settlement.release_prepay(order_no)  # the site pays its buyer back; its cost comes back
            orders.release_held(order)  # a held order (group-buy) never delivered: its stock goes back
            orders.Order.update(status="refunded", updated_at=utcnow()).where(
                (orders.Order.id == order.id) & orders.Order.status.in_(REFUNDABLE)).execute()
            orders.Payment.update(state="refunded").where(orders.Payment.id == payment.id).execute()
            return refund

    try:
        with all_sites():
            refund = retry_transient(write)
    except peewee.IntegrityError:
        found = Refund.get_or_none(Refund.order == order.id)
        if found is None:
            raise
        return found
    if destination == "channel":
        refund = _ask_gateway(refund, order, payment, gateway)
    from . import hooks

    order.status = "refunded"
    hooks.notify("order_refunded", order, refund=refund)  # each plugin alone: the refund stands
    return refund


def _destination_account(order, payment, destination: str):
    if destination == "balance":
        return ledger.account("member_wallet", site=order.site_id, member=order.member_id)
    return ledger.account("channel_clearing", channel=payment.channel or settlement.MANUAL_CHANNEL)


def _merge(entries) -> list[tuple[int, int]]:
    merged: dict[int, int] = {}
    for account_id, amount in entries:
        merged[account_id] = merged.get(account_id, 0) + amount
    return [(a, amt) for a, amt in merged.items() if amt]


def _refund_no() -> str:
    return "R" + utcnow().strftime("%Y%m%d%H%M%S") + secrets.token_hex(6)


def _ask_gateway(refund: Refund, order, payment, gateway) -> Refund:
    channel, profile = gateway
    request = RefundRequest(order_no=order.order_no, trade_no=payment.trade_no, refund_no=refund.refund_no,
                            amount_fen=refund.amount_fen, total_fen=payment.amount_fen, reason=refund.reason)
    try:
        result = channel.refund(profile, request)
    except Exception as exc:  # noqa: BLE001 - a channel bug leaves the refund failed, visibly
        result = None
        message = f"channel error: {type(exc).__name__}"
    else:
        message = result.message
    # A gateway that accepted but confirms later (Alipay fund_change N, WeChat PROCESSING) stays pending.
    status = "failed" if result is None or not result.ok else ("pending" if result.pending else "done")
    Refund.update(status=status, message=message[:500],
                  gateway_refund_no=(result.gateway_refund_no if result else "")[:64],
                  done_at=utcnow() if status == "done" else None).where(Refund.id == refund.id).execute()
    return Refund.get_by_id(refund.id)


def retry(refund_no: str, registry) -> Refund:
    """Ask the gateway again for a failed refund (same refund number: gateways dedupe on it)."""
    refund = Refund.get_or_none(Refund.refund_no == refund_no)
    if refund is None or refund.status != "failed":
        raise RefundError(f"refund {refund_no} is not a failed refund")
    with all_sites():
        order = orders.Order.get_by_id(refund.order_id)
    payment = orders.Payment.select().where(orders.Payment.order == order.id).order_by(orders.Payment.id).first()
    gateway = registry.find(order.channel, order.channel_profile)
    if gateway is None:
        raise RefundError(f"channel {order.channel}/{order.channel_profile} is not configured")
    return _ask_gateway(refund, order, payment, gateway)


def confirm_manual(refund_no: str, note: str = "") -> Refund:
    """The money was paid back by hand (or by the direct-settlement site): close the refund."""
    moved = Refund.update(status="done", done_at=utcnow(), message=note[:500]).where(
        (Refund.refund_no == refund_no) & (Refund.destination.in_(("manual", "channel")))
        & (Refund.status.in_(("pending", "failed")))).execute()
    if not moved:
        raise RefundError(f"refund {refund_no} is not waiting for a manual payment")
    return Refund.get(Refund.refund_no == refund_no)
