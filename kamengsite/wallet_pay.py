"""Paying an order from its member's wallet: the one debit the balance channel and the reseller API share.

``pay_from_wallet`` pays the order at once through ``orders.mark_paid``, whose ``within`` hook
debits the wallet inside the payment's own database transaction: the debit and the payment
commit together or not at all. It works whether or not the balance plugin is enabled on the
site (the API pays with it on every site).

Ledger: ``wallet_pay`` (reference = the order number, so an order is debited at most once)
moves the amount from the member's ``member_wallet`` of the selling site to
``channel_clearing`` of the channel (``balance``). The ledger refuses to take a wallet below
zero (``InsufficientFunds``, nothing written). The trade number is ``BAL-<order no>``, so a
second payment of one order is a duplicate of the first, never a second debit.
"""

from __future__ import annotations

from . import ledger, members, orders
from .db import is_sqlite
from .i18n import _
from .tenancy import all_sites

InsufficientFunds = ledger.InsufficientFunds
CHANNEL_ID = "balance"


class OrderNotPayable(Exception):
    """The order left ``created`` before the wallet could be debited (paid meanwhile, expired)."""

    def __init__(self, status: str):
        super().__init__(f"order is {status}")
        self.status = status


def trade_no(order_no: str) -> str:
    return f"BAL-{order_no}"


def pay_from_wallet(order, *, channel: str = CHANNEL_ID, profile: str = "") -> orders.PaymentResult:
    """Pay ``order`` (a member's unpaid order) from that member's wallet of the order's site.

    Raises InsufficientFunds (nothing written), OrderNotPayable (the order is no longer
    ``created``), or ``orders.PaymentRejected``. The caller runs ``after_payment`` on success.
    """
    if order.member_id is None:
        raise orders.PaymentRejected(f"order {order.order_no} has no member to debit")
    # Outside the payment's transaction: ledger.account may open its own atomic block.
    wallet = members.wallet_account(order.site_id, order.member_id)
    clearing = ledger.account("channel_clearing", channel=channel)

    def debit(order):
        _lock_for_payment(order.id, wallet.id)
        status = order_status(order.id)
        if status != "created":
            raise OrderNotPayable(status)
        ledger.post_in_transaction("wallet_pay", order.order_no, [(wallet, -order.amount_fen),
                                                                  (clearing, order.amount_fen)],
                                   memo=_("Order %(no)s", no=order.order_no))

    return orders.mark_paid(order.order_no, channel=channel, trade_no=trade_no(order.order_no),
                            amount_fen=order.amount_fen, channel_profile=profile, within=debit)


def _lock_for_payment(order_id: int, wallet_id: int):
    """Lock the order row, then the wallet, before reading anything in the transaction.

    The order lock queues payments of one order (and the expiry sweep); the wallet lock queues
    the member's debits. Taken first, so that on MariaDB (REPEATABLE READ) the reads after
    them see every payment the locks waited for. SQLite's IMMEDIATE transaction already
    serialises writers.
    """
    if is_sqlite():
        return
    list(orders.Order.select(orders.Order.id).where(orders.Order.id == order_id).for_update().tuples())
    ledger.lock([wallet_id])


def order_status(order_id: int) -> str:
    with all_sites():
        return orders.Order.select(orders.Order.status).where(orders.Order.id == order_id).scalar()


def paid_from_wallet(order_id: int, channel: str = CHANNEL_ID) -> bool:
    """Whether the order has a payment of this wallet channel (a racing second attempt paid nothing)."""
    with all_sites():
        return orders.Payment.select().where((orders.Payment.order == order_id)
                                             & (orders.Payment.channel == channel)).exists()
