"""Withdrawals: a site owner takes money out of the site's available balance.

States (each move a conditional UPDATE, with its ledger transaction in the same database
transaction)::

    requested ──approve──▶ approved ──pay──▶ paid
        └──────reject──────────┴──reject──▶ rejected

Requesting moves the amount from ``site_available`` to ``site_payout`` (refused when the
balance is short, below the level's minimum, or when another request is open); paying
takes it out of ``site_payout``: the fee to ``platform_revenue``, the rest out through the
``payout`` clearing account; rejecting gives it back to ``site_available``.
"""

from __future__ import annotations

import peewee

from . import ledger
from .db import database, retry_transient
from .errors import KamengsiteError
from .i18n import _, format_money
from .levels import get_level
from .models import BaseModel, Site, utcnow
from .pricing import percent_of
from .tenancy import all_sites

PAYOUT_CHANNEL = "payout"
DEFAULT_MIN_FEN = 10000
OPEN = ("requested", "approved")


class WithdrawalError(KamengsiteError):
    code = "withdrawal_error"


class Withdrawal(BaseModel):
    site = peewee.ForeignKeyField(Site, on_delete="RESTRICT")
    amount_fen = peewee.BigIntegerField()
    fee_fen = peewee.BigIntegerField(default=0)
    status = peewee.CharField(max_length=12, default="requested")
    payee = peewee.TextField(default="")
    note = peewee.TextField(default="")
    requested_at = peewee.DateTimeField(default=utcnow)
    decided_at = peewee.DateTimeField(null=True)
    paid_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "withdrawal"


def _site(site_id: int) -> Site:
    with all_sites():
        site = Site.get_or_none(Site.id == site_id)
    if site is None:
        raise WithdrawalError(f"no site {site_id}")
    return site


def request_withdrawal(site_id: int, amount_fen: int, payee: str) -> Withdrawal:
    """Ask for ``amount_fen`` of the site's available balance to be paid to ``payee``."""
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise WithdrawalError(_("The amount must be a positive number of fen"))
    payee = (payee or "").strip()
    if not payee or len(payee) > 500:
        raise WithdrawalError(_("Please enter the payee details (at most 500 characters)"))
    level = get_level(_site(site_id).level)
    minimum = level.withdraw_min_fen if level else DEFAULT_MIN_FEN
    if amount_fen < minimum:
        raise WithdrawalError(_("The minimum withdrawal is ¥%(amount)s", amount=format_money(minimum)))
    fee = min(amount_fen, percent_of(amount_fen, level.withdraw_fee_bp)) if level else 0
    available = ledger.account("site_available", site=site_id)
    payout = ledger.account("site_payout", site=site_id)

    def write() -> Withdrawal:
        with database.atomic():
            ledger.lock([available])  # one open request per site: decided under the balance's lock
            if Withdrawal.select().where((Withdrawal.site == site_id) & Withdrawal.status.in_(OPEN)).exists():
                raise WithdrawalError(_("A withdrawal is already in progress; please wait until it is done"))
            w = Withdrawal.create(site=site_id, amount_fen=amount_fen, fee_fen=fee, payee=payee)
            try:
                ledger.post_in_transaction("withdrawal", f"request:{w.id}", [(available, -amount_fen),
                                                                           (payout, amount_fen)],
                                           memo=f"withdrawal {w.id} requested")
            except ledger.InsufficientFunds:
                raise WithdrawalError(_("Insufficient available balance")) from None
            return w

    return retry_transient(write)


def _move(withdrawal_id: int, allowed: tuple, to_status: str, entries_for, **changes) -> Withdrawal:
    def write() -> Withdrawal:
        with database.atomic():
            moved = (Withdrawal.update(status=to_status, **changes)
                     .where((Withdrawal.id == withdrawal_id) & Withdrawal.status.in_(allowed)).execute())
            w = Withdrawal.get_or_none(Withdrawal.id == withdrawal_id)
            if w is None:
                raise WithdrawalError(f"no withdrawal {withdrawal_id}")
            if not moved:
                raise WithdrawalError(f"withdrawal {withdrawal_id} is {w.status}; it cannot become {to_status}")
            entries = entries_for(w)
            if entries:
                ledger.post_in_transaction("withdrawal", f"{to_status}:{w.id}", entries,
                                           memo=f"withdrawal {w.id} {to_status}")
            return w

    return retry_transient(write)


def approve(withdrawal_id: int, note: str = "") -> Withdrawal:
    return _move(withdrawal_id, ("requested",), "approved", lambda w: [], decided_at=utcnow(), note=note)


def mark_paid(withdrawal_id: int, note: str = "") -> Withdrawal:
    """The operator paid the owner outside the system (bank, Alipay …): book it."""
    def entries(w):
        payout = ledger.account("site_payout", site=w.site_id)
        rows = [(payout, -w.amount_fen),
                (ledger.account("channel_clearing", channel=PAYOUT_CHANNEL), w.amount_fen - w.fee_fen)]
        if w.fee_fen:
            rows.append((ledger.account("platform_revenue"), w.fee_fen))
        return [r for r in rows if r[1]]

    return _move(withdrawal_id, ("approved",), "paid", entries, paid_at=utcnow(), note=note)


def reject(withdrawal_id: int, note: str = "") -> Withdrawal:
    def entries(w):
        return [(ledger.account("site_payout", site=w.site_id), -w.amount_fen),
                (ledger.account("site_available", site=w.site_id), w.amount_fen)]

    return _move(withdrawal_id, OPEN, "rejected", entries, decided_at=utcnow(), note=note)


def site_withdrawals(site_id: int, limit: int = 50) -> list[Withdrawal]:
    return list(Withdrawal.select().where(Withdrawal.site == site_id).order_by(Withdrawal.id.desc()).limit(limit))


def open_withdrawals() -> list[Withdrawal]:
    return list(Withdrawal.select().where(Withdrawal.status.in_(OPEN)).order_by(Withdrawal.id))
