"""The reconciliation report: per day, per payment channel and per selling site, what came in
and to whom it belongs — read from the ledger, so it agrees with ``ledger check`` by construction.

For each payment (``("payment", order_no)``) and refund (``("refund", order_no)``) transaction
the row of (day, channel, selling site) adds up:

* ``gross``: what buyers paid through the channel (refunds: what went back, negative);
* ``fees``: what the gateway kept; ``platform``: the platform's revenue;
* ``sites``: the margins credited to sites (frozen), the selling site's and its parents';
* ``owed``: money that arrived for nothing and is owed back; ``wallet``: refunds into wallets.

``gross = fees + platform + sites + owed + wallet`` on every row (checked by the tests).
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass

from .ledger import LedgerAccount, LedgerEntry, LedgerTxn
from .models import Site
from .orders import Order, Payment
from .tenancy import all_sites

COLUMNS = ("gross", "fees", "platform", "sites", "owed", "wallet")
_COLUMN_OF_KIND = {"fees": "fees", "platform_revenue": "platform", "site_frozen": "sites",
                   "site_available": "sites", "prepaid_hold": "sites", "refund_payable": "owed",
                   "member_wallet": "wallet", "member_frozen": "wallet"}


@dataclass
class Row:
    day: str
    channel: str
    site: str
    orders: int = 0
    gross: int = 0
    fees: int = 0
    platform: int = 0
    sites: int = 0
    owed: int = 0
    wallet: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def balanced(self) -> bool:
        return self.gross == self.fees + self.platform + self.sites + self.owed + self.wallet


def report(start: datetime.date, end: datetime.date) -> list[Row]:
    """Rows for transactions from ``start`` to ``end`` inclusive (UTC days), sorted by day, channel, site."""
    since = datetime.datetime.combine(start, datetime.time())
    until = datetime.datetime.combine(end + datetime.timedelta(days=1), datetime.time())
    txns = list(LedgerTxn.select(LedgerTxn.id, LedgerTxn.kind, LedgerTxn.reference, LedgerTxn.created_at)
                .where(LedgerTxn.kind.in_(("payment", "refund")) & (LedgerTxn.created_at >= since)
                       & (LedgerTxn.created_at < until)))
    if not txns:
        return []
    entries = (LedgerEntry.select(LedgerEntry.txn, LedgerEntry.amount_fen, LedgerAccount.kind, LedgerAccount.channel)
               .join(LedgerAccount).where(LedgerEntry.txn.in_([t.id for t in txns])).tuples())
    by_txn: dict[int, list] = {}
    for txn_id, amount, kind, channel in entries:
        by_txn.setdefault(txn_id, []).append((amount, kind, channel))
    selling = _selling_sites({_order_no(t.reference) for t in txns})
    rows: dict[tuple, Row] = {}
    for txn in txns:
        lines = by_txn.get(txn.id, [])
        site, channel = selling.get(_order_no(txn.reference), ("?", "?"))
        key = (txn.created_at.date().isoformat(), channel or "manual", site)
        row = rows.setdefault(key, Row(*key))
        row.orders += 1 if txn.kind == "payment" else 0
        for amount, kind, _ in lines:
            if kind == "channel_clearing":
                row.gross -= amount
            elif kind == "prepaid_hold" and amount < 0 and txn.kind == "payment":
                row.gross -= amount  # a direct-settlement sale: the site's prepaid cost is what comes in
            elif kind in _COLUMN_OF_KIND:
                setattr(row, _COLUMN_OF_KIND[kind], getattr(row, _COLUMN_OF_KIND[kind]) + amount)
    return [rows[k] for k in sorted(rows)]


def _order_no(reference: str) -> str:
    return reference.split(":", 1)[1] if reference.startswith(("owed:", "prepay:")) else reference


def _selling_sites(references: set[str]) -> dict[str, tuple[str, str]]:
    """order_no → (slug of the site that sold it, the channel its buyer chose); owed payments are
    referenced by payment id, and counted under the channel that brought the money."""
    with all_sites():
        found = {no: (slug, channel) for no, slug, channel in (
            Order.select(Order.order_no, Site.slug, Order.channel).join(Site, on=(Order.site == Site.id))
            .where(Order.order_no.in_(list(references))).tuples())}
        owed_ids = [int(r) for r in references if r.isdigit()]
        if owed_ids:
            for payment_id, slug, channel in (
                    Payment.select(Payment.id, Site.slug, Payment.channel).join(Order)
                    .join(Site, on=(Order.site == Site.id)).where(Payment.id.in_(owed_ids)).tuples()):
                found[str(payment_id)] = (slug, channel)
    return found


def totals(rows: list[Row]) -> Row:
    total = Row("total", "", "")
    for row in rows:
        total.orders += row.orders
        for column in COLUMNS:
            setattr(total, column, getattr(total, column) + getattr(row, column))
    return total
