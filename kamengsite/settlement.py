"""Where each fen of a paid order goes: the ledger side of payments, prepayment and release.

A payment through the platform's channels (the default) is split in one ledger
transaction ``("payment", order_no)``, written inside ``orders.mark_paid``'s own
database transaction, so a payment is never recorded without its split::

    channel_clearing(channel)   −amount        what the gateway collected for us
    fees(channel)               +fee           what the gateway keeps
    site_frozen(selling site)   +price − cost  the owner's margin
    site_frozen(each parent)    +child's cost − own cost
    platform_revenue            +top site's cost (main-site orders: everything)

The fee comes out of the seller's margin (``fee_bearer = "seller"``; the platform bears
what the margin cannot) or is added to what the buyer pays (``"buyer"``). Margins stay
frozen for the site level's ``freeze_days`` and are then released to ``site_available``
(``release_due``), which is what owners withdraw.

A site with **direct settlement** takes payments on its own merchant accounts: when an
order is created its cost is moved from its prepaid ``site_available`` balance into a hold
(``("prepay", order_no)``; refused when short), the payment splits the hold up the chain
(the selling site's margin is already in its own account), and an expired order gets the
hold back.

Distribution commissions (``order_commissions``) are carved out of the seller's margin in
the same split and credited to each member's ``member_frozen`` account of the selling
site; ``release_commissions`` moves one order's commissions to the members' wallets in
one transaction ``("release", "commission:<order_no>")`` once their freeze period is over
(``release_due_commissions``), and a refund takes them back from frozen first, then from
the wallet (``take_back_commission``).

Money that arrives for an order that cannot take it (paid twice, paid after its stock
was gone) is owed back: ``refund_payable`` holds it until the refund.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import peewee

from . import ledger
from .db import database, retry_transient
from .errors import KamengsiteError
from .i18n import _
from .levels import Level
from .models import Site, utcnow
from .pricing import percent_of
from .tenancy import all_sites

log = logging.getLogger(__name__)
MANUAL_CHANNEL = "manual"
#: Where a commission waits for its freeze period, and where it goes then.
COMMISSION_FROZEN = "member_frozen"
COMMISSION_WALLET = "member_wallet"
#: The account kinds a payment split credits commissions to (``member_wallet``: splits
#: recorded before commissions were frozen).
COMMISSION_KINDS = (COMMISSION_FROZEN, COMMISSION_WALLET)
DEFAULT_COMMISSION_FREEZE_DAYS = 7


class SettlementError(KamengsiteError):
    code = "settlement_error"


# -- channel fees --------------------------------------------------------------------------


def channel_fee(goods_fen: int, *, fee_bp: int = 0, fee_fixed_fen: int = 0) -> int:
    """A channel profile's fee on ``goods_fen``: percent (basis points, rounded up) plus fixed."""
    if goods_fen <= 0:
        return 0
    return percent_of(goods_fen, fee_bp) + fee_fixed_fen


# -- the payment split ---------------------------------------------------------------------


def _margins(order) -> tuple[list[tuple[int, int]], int]:
    """([(site_id, margin_fen), …] selling site first, platform share) of the goods' price."""
    costs, quantity, goods = order.costs, order.quantity, order.goods_fen or order.amount_fen
    if not costs:
        return [], goods
    margins = [(costs[0][0], goods - costs[0][1] * quantity)]
    for (_site, child_cost), (site_id, cost) in zip(costs, costs[1:]):
        margins.append((site_id, (child_cost - cost) * quantity))
    return margins, costs[-1][1] * quantity


def payment_entries(order, prepaid: bool = False) -> list[tuple[ledger.LedgerAccount, int]]:
    """The split of a paid order as ledger entries (zero parts left out)."""
    margins, platform = _margins(order)
    if prepaid:
        # The buyer paid the site's own account: the site's margin never reaches us; its cost sits in the hold.
        seller_site, _ = margins[0]
        source = [(ledger.account("prepaid_hold", site=seller_site), -(order.goods_fen - margins[0][1]))]
        margins, fee = margins[1:], 0
    else:
        fee = order.fee_fen
        channel = order.channel or MANUAL_CHANNEL
        source = [(ledger.account("channel_clearing", channel=channel), -order.amount_fen)]
        if fee and order.fee_bearer != "buyer":
            if margins:
                taken = min(fee, margins[0][1])
                margins[0] = (margins[0][0], margins[0][1] - taken)
                platform -= fee - taken
            else:
                platform -= fee
        if fee:
            source.append((ledger.account("fees", channel=channel), fee))
    # Distribution commissions come out of what the seller keeps: its margin, or on the main site the
    # platform's share. A direct-settlement site's margin never passed through us: nothing to carve.
    if prepaid:
        seller_margin = 0
    else:
        seller_margin = margins[0][1] if margins else platform
    commissions = _commissions(order, seller_margin) if seller_margin > 0 else []
    paid_out = sum(fen for _, fen in commissions)
    if margins and not prepaid:
        margins[0] = (margins[0][0], margins[0][1] - paid_out)
    elif not prepaid:
        platform -= paid_out
    credits = [(ledger.account("site_frozen", site=site_id), fen) for site_id, fen in margins if fen]
    credits += [(ledger.account(COMMISSION_FROZEN, site=order.site_id, member=member), fen) for member, fen in commissions]
    if platform:
        credits.append((ledger.account("platform_revenue"), platform))
    return [entry for entry in source + credits if entry[1]]


def _commissions(order, margin_fen: int) -> list[tuple[int, int]]:
    """The ``order_commissions`` hook's answers, checked; raises (failing the payment closed) when wrong."""
    hook = _commission_hook(order)
    if hook is None:
        return []
    merged: dict[int, int] = {}
    for answer in hook.order_commissions(order=order, margin_fen=margin_fen):
        for member_id, fen in answer or ():
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (member_id, fen)) or fen < 0 \
                    or member_id <= 0:
                raise SettlementError(f"order_commissions returned {(member_id, fen)!r}: want (member id, fen ≥ 0)")
            merged[member_id] = merged.get(member_id, 0) + fen
    if sum(merged.values()) > margin_fen:
        raise SettlementError(f"commissions of {sum(merged.values())} fen exceed the seller's {margin_fen} fen "
                              f"on order {order.order_no}")
    return [(member, fen) for member, fen in merged.items() if fen]


def _commission_hook(order):
    """The hook relay of the plugins the *selling* site enables (payments are recorded inside a
    request, but a gateway's notification may arrive on another site's domain)."""
    from flask import has_app_context

    if not has_app_context():
        return None
    from . import hooks

    return hooks.site_hook(order.site_id)


# -- commissions: frozen → wallet, and back on refund ------------------------------------------


def commission_release_reference(order_no: str) -> str:
    return f"commission:{order_no}"


def _commission_entries(order_no: str) -> list[tuple[ledger.LedgerAccount, int]]:
    """The frozen commission credits of an order's payment split: [(member_frozen account, fen), …]."""
    split = ledger.find("payment", order_no)
    if split is None:
        return []
    Account, Entry = ledger.LedgerAccount, ledger.LedgerEntry
    rows = (Entry.select(Entry.amount_fen, Account).join(Account)
            .where((Entry.txn == split.id) & (Account.kind == COMMISSION_FROZEN) & (Entry.amount_fen > 0))
            .order_by(Entry.id))
    return [(row.account, int(row.amount_fen)) for row in rows]


def release_commissions(order_no: str) -> ledger.LedgerTxn | None:
    """Move an order's frozen commissions to the members' wallets: one transaction per order, once.

    Returns the release (the one posted before, on a rerun), or None when there is nothing to
    release: no commissions, or a refund took them back first. Locks the members' frozen and
    wallet accounts, as a refund does, so a release and a refund of one order never both take
    the same money.
    """
    return _release_commissions(order_no)[0]


def _release_commissions(order_no: str) -> tuple[ledger.LedgerTxn | None, bool]:
    """(the release or None, whether this call posted it)."""
    reference = commission_release_reference(order_no)
    done = ledger.find("release", reference)
    if done is not None:
        return done, False
    credits = _commission_entries(order_no)
    if not credits:
        return None, False
    wallets = {frozen.id: ledger.account(COMMISSION_WALLET, site=frozen.site_id, member=frozen.member_id)
               for frozen, _ in credits}  # made outside the transaction

    @database.atomic()
    def write():
        ledger.lock([frozen for frozen, _ in credits] + list(wallets.values()))
        # Read after the lock: a refund that committed meanwhile is seen, and one still running waits for us.
        done = ledger.find("release", reference)
        if done is not None or ledger.find("refund", order_no) is not None:
            return done, False
        entries = []
        for frozen, fen in credits:
            entries += [(frozen, -fen), (wallets[frozen.id], fen)]
        return ledger.post_in_transaction("release", reference, entries, memo=f"commission of order {order_no}",
                                          new=True), True

    try:
        return retry_transient(write)
    except peewee.IntegrityError:  # released concurrently: the first release stands
        found = ledger.find("release", reference)
        if found is None:
            raise
        return found, False


def commission_released_fen(order_no: str, frozen: ledger.LedgerAccount) -> int:
    """How much of this member's commission on the order was released to their wallet."""
    release = ledger.find("release", commission_release_reference(order_no))
    if release is None:
        return 0
    Entry = ledger.LedgerEntry
    moved = (Entry.select(peewee.fn.COALESCE(peewee.fn.SUM(Entry.amount_fen), 0))
             .where((Entry.txn == release.id) & (Entry.account == frozen.id)).scalar())
    return -int(moved or 0)


def commission_wallets(accounts) -> list[int]:
    """The wallet account ids a refund must lock with these commission accounts (``COMMISSION_KINDS``)."""
    return sorted({ledger.account(COMMISSION_WALLET, site=a.site_id, member=a.member_id).id for a in accounts
                   if a.kind == COMMISSION_FROZEN})


def take_back_commission(order_no: str, account: ledger.LedgerAccount, amount_fen: int) -> tuple[list[tuple[int, int]], int]:
    """Entries taking back the commission ``amount_fen`` credited to ``account`` by the order's payment,
    and what the member has spent of it already (``spent``: the caller lets the platform carry it
    or refuses). Frozen first — what was not released is still frozen — then the wallet.

    The caller holds the refund's transaction with ``account`` and ``commission_wallets([account])`` locked.
    """
    if account.kind == COMMISSION_WALLET:  # a split recorded before commissions were frozen
        wallet, from_frozen = account, 0
        rest = amount_fen
    else:
        wallet = ledger.account(COMMISSION_WALLET, site=account.site_id, member=account.member_id)
        still_frozen = amount_fen - commission_released_fen(order_no, account)
        from_frozen = max(0, min(still_frozen, ledger.balance(account)))
        rest = amount_fen - from_frozen
    from_wallet = max(0, min(rest, ledger.balance(wallet)))
    entries = [(account.id, -from_frozen)] if from_frozen else []
    if from_wallet:
        entries.append((wallet.id, -from_wallet))
    return entries, rest - from_wallet


def release_due_commissions(now: datetime.datetime | None = None, freeze_days_for=None) -> int:
    """Release every order's commissions whose freeze period is over; returns how many orders.

    ``freeze_days_for(site_id) -> int`` is the selling site's freeze period (default 7 days).
    Safe to run twice or concurrently: each order is released once (``release_commissions``).
    Only members' frozen accounts with money in them are looked at, each back to its oldest
    commission still frozen.
    """
    now = now or utcnow()
    due: list[str] = []
    cutoffs: dict[int, datetime.datetime] = {}
    Account, Entry = ledger.LedgerAccount, ledger.LedgerEntry
    total = peewee.fn.SUM(Entry.amount_fen)
    holding = list(Account.select(Account, total.alias("held")).join(Entry)
                   .where(Account.kind == COMMISSION_FROZEN).group_by(Account).having(total > 0))
    for frozen in holding:
        if frozen.site_id not in cutoffs:
            days = DEFAULT_COMMISSION_FREEZE_DAYS if freeze_days_for is None else freeze_days_for(frozen.site_id)
            cutoffs[frozen.site_id] = now - datetime.timedelta(days=max(0, int(days)))
        due += _due_on(frozen, int(frozen.held), cutoffs[frozen.site_id])
    released = 0
    for order_no in dict.fromkeys(due):
        try:
            released += _release_commissions(order_no)[1]
        except ledger.InsufficientFunds:  # never expected: the ledger says why; the others go on
            log.exception("commission of order %s could not be released", order_no)
    return released


def _due_on(frozen, held: int, cutoff, page: int = 200) -> list[str]:
    """Orders whose commission is still frozen on this account and credited before ``cutoff``.

    Walks the account's commission credits newest first until the credits neither released nor
    refunded add up to what the account holds (older ones were all released or taken back).
    """
    Entry, Txn = ledger.LedgerEntry, ledger.LedgerTxn
    due, last_id = [], None
    while held > 0:
        query = (Entry.select(Entry.id, Entry.amount_fen, Txn.reference, Txn.created_at).join(Txn)
                 .where((Entry.account == frozen.id) & (Txn.kind == "payment") & (Entry.amount_fen > 0)))
        if last_id is not None:
            query = query.where(Entry.id < last_id)
        rows = list(query.order_by(Entry.id.desc()).limit(page).tuples())
        if not rows:
            break
        refs = [ref for _, _, ref, _ in rows]
        closed = {ref for (ref,) in Txn.select(Txn.reference).where((Txn.kind == "refund") & Txn.reference.in_(refs))
                  .tuples()}
        closed |= {ref.split(":", 1)[1] for (ref,) in Txn.select(Txn.reference).where(
            (Txn.kind == "release") & Txn.reference.in_([commission_release_reference(r) for r in refs])).tuples()}
        for entry_id, amount, ref, created_at in rows:
            last_id = entry_id
            if ref in closed:
                continue
            held -= int(amount)
            if created_at <= cutoff:
                due.append(ref)
            if held <= 0:
                break
    return due


def warm_accounts(order) -> None:
    """Before ``mark_paid``'s transaction: create or cache the accounts its split will use."""
    channel = order.channel or MANUAL_CHANNEL
    ledger.account("channel_clearing", channel=channel)
    ledger.account("fees", channel=channel)
    ledger.account("platform_revenue")
    ledger.account("refund_payable")
    for site_id, _cost in order.costs:
        ledger.account("site_frozen", site=site_id)


def post_payment(order, payment) -> None:
    """Inside ``mark_paid``'s transaction: the split of a delivered/paid order, or money owed back."""
    if payment.amount_fen <= 0:
        return
    entries = payment_entries(order, prepaid=order.fee_bearer == "direct")
    if len(entries) >= 2:
        # New for sure: the order just left created/expired for paid, which happens once.
        ledger.post_in_transaction("payment", order.order_no, entries, memo=f"order {order.order_no}", new=True)


def post_owed(order, payment) -> None:
    """Inside ``mark_paid``'s transaction: money that arrived but buys nothing, owed to the buyer."""
    if payment.amount_fen <= 0:
        return
    channel = payment.channel or MANUAL_CHANNEL
    ledger.post_in_transaction("payment", f"owed:{payment.id}", [
        (ledger.account("channel_clearing", channel=channel), -payment.amount_fen),
        (ledger.account("refund_payable"), payment.amount_fen)], memo=f"owed back: order {order.order_no}")


# -- direct settlement: prepaying the cost ---------------------------------------------------


@dataclass(frozen=True)
class PrepayPlan:
    """The cost a direct-settlement site pays for an order when it is created."""

    site_id: int
    amount_fen: int
    available: ledger.LedgerAccount
    hold: ledger.LedgerAccount

    def post(self, order) -> None:
        """Inside ``create_order``'s transaction; InsufficientFunds rolls the order back."""
        if self.amount_fen <= 0:
            return
        from .orders import InvalidOrder

        try:
            ledger.post_in_transaction("prepay", order.order_no, [(self.available, -self.amount_fen),
                                                                  (self.hold, self.amount_fen)],
                                       memo=f"cost of order {order.order_no}")
        except ledger.InsufficientFunds:
            raise InvalidOrder(_("This site's prepaid balance is too low to take orders right now; "
                                "please contact the site owner")) from None


def prepay_plan(site_id: int, costs, quantity: int) -> PrepayPlan:
    """The accounts (created now, outside the order's transaction) and amount of a prepayment."""
    if not costs:
        raise SettlementError("the main site does not prepay its own goods")
    return PrepayPlan(site_id, costs[0][1] * quantity, ledger.account("site_available", site=site_id),
                      ledger.account("prepaid_hold", site=site_id))


def release_prepay(order_no: str) -> None:
    """Inside the caller's transaction: give an expired order's held cost back to its site
    (no-op if none was held, or it was given back already)."""
    txn = ledger.find("prepay", order_no)
    if txn is None or prepay_released(order_no):
        return
    entries = [(e.account_id, -e.amount_fen) for e in txn.entries.order_by(ledger.LedgerEntry.id)]
    ledger.post_in_transaction("refund", f"prepay:{order_no}", entries, memo=f"order {order_no} expired")


def prepay_released(order_no: str) -> bool:
    return ledger.find("refund", f"prepay:{order_no}") is not None


# -- frozen → available ----------------------------------------------------------------------


def release_due(now: datetime.datetime | None = None) -> int:
    """Move each site's margins older than its level's freeze period to its available balance.

    What is released is the frozen balance less the credits still inside the freeze window,
    computed under a lock on the frozen account, so two workers never release twice.
    Returns how many sites had money released.
    """
    now = now or utcnow()
    released = 0
    frozen_accounts = list(ledger.LedgerAccount.select().where(ledger.LedgerAccount.kind == "site_frozen"))
    levels = {lv.code: lv for lv in Level.select()}
    with all_sites():
        site_levels = dict(Site.select(Site.id, Site.level).tuples())
    for frozen in frozen_accounts:
        level = levels.get(site_levels.get(frozen.site_id, ""))
        cutoff = now - datetime.timedelta(days=level.freeze_days if level else 7)
        available = ledger.account("site_available", site=frozen.site_id)
        if ledger.balance(frozen) > 0:
            released += retry_transient(lambda: _release_one(frozen, available, cutoff, now))
    return released


@database.atomic()
def _release_one(frozen, available, cutoff, now) -> int:
    ledger.lock([frozen])
    recent = int(ledger.LedgerEntry.select(peewee.fn.COALESCE(peewee.fn.SUM(ledger.LedgerEntry.amount_fen), 0))
                 .where((ledger.LedgerEntry.account == frozen.id) & (ledger.LedgerEntry.amount_fen > 0)
                        & (ledger.LedgerEntry.created_at > cutoff)).scalar() or 0)
    amount = ledger.balance(frozen) - recent
    if amount <= 0:
        return 0
    ledger.post_in_transaction("release", f"release:{frozen.site_id}:{now:%Y%m%d%H%M%S%f}",
                               [(frozen, -amount), (available, amount)], memo="freeze period over")
    return 1


def site_balances(site_id: int) -> dict[str, int]:
    """What a site owner sees: frozen, available, being paid out, held for direct orders."""
    return {kind: ledger.balance(ledger.account(kind, site=site_id))
            for kind in ("site_frozen", "site_available", "site_payout", "prepaid_hold")}
