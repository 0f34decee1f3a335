"""Balance payment channel: a signed-in member pays an order of their site from their wallet.

No gateway and no notification: ``create_payment`` pays the order at once through
``orders.mark_paid``, whose ``within`` hook debits the wallet inside the payment's own
database transaction — the debit and the payment commit together or not at all.

Ledger: ``wallet_pay`` (reference = the order number, so an order is debited at most once)
moves the amount from the member's ``member_wallet`` of the selling site to
``channel_clearing`` of channel ``balance``. The ledger refuses to take a wallet below
zero (``InsufficientFunds`` → 「余额不足」, nothing written).
"""

from __future__ import annotations

import logging

from kamengsite import ledger, members, orders
from kamengsite.db import is_sqlite
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import Channel, PaymentAction, PaymentError, Rejection
from kamengsite.tenancy import all_sites

log = logging.getLogger(__name__)
CHANNEL_ID = "balance"


class OrderNotPayable(Exception):
    """The order left ``created`` before the wallet could be debited (paid meanwhile, expired)."""

    def __init__(self, status: str):
        super().__init__(f"order is {status}")
        self.status = status


def trade_no(order_no: str) -> str:
    return f"BAL-{order_no}"


class BalanceChannel(Channel):
    id = CHANNEL_ID
    needs_member = True
    pay_types = ()
    settings_schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "maxLength": 40}},
        "additionalProperties": False,
    }

    @property
    def name(self):
        return _("Pay with balance")

    def create_payment(self, profile, request):
        if request.member_id is None:
            raise PaymentError(_("Please sign in to your member account first"))
        with all_sites():
            order = orders.find_order(request.order_no)
        if order is None or order.member_id != request.member_id or order.site_id != request.site_id:
            raise PaymentError(_("This is not your order: it cannot be paid from your balance"))
        # Outside the payment's transaction: ledger.account may open its own atomic block.
        wallet = members.wallet_account(order.site_id, order.member_id)
        clearing = ledger.account("channel_clearing", channel=CHANNEL_ID)

        def debit(order):
            _lock_for_payment(order.id, wallet.id)
            status = _status(order.id)
            if status != "created":
                raise OrderNotPayable(status)
            ledger.post_in_transaction("wallet_pay", order.order_no, [(wallet, -order.amount_fen),
                                                                      (clearing, order.amount_fen)],
                                       memo=_("Order %(no)s", no=order.order_no))

        try:
            result = orders.mark_paid(order.order_no, channel=CHANNEL_ID, trade_no=trade_no(order.order_no),
                                      amount_fen=order.amount_fen, channel_profile=profile.name, within=debit)
        except ledger.InsufficientFunds:
            raise PaymentError(_("Insufficient balance")) from None
        except OrderNotPayable as exc:
            if exc.status in ("paid", "delivered") and _paid_by_balance(order.id):
                return PaymentAction.redirect(request.return_url)  # a second click raced the first: paid once
            raise PaymentError(_("The order has expired or been closed; please place a new order")) from None
        except orders.PaymentRejected as exc:
            log.warning("balance payment of %s refused: %s", order.order_no, exc)
            raise PaymentError(_("This order cannot be paid from the balance")) from None
        from kamengsite.storefront import after_payment

        after_payment(result, order)  # the order_delivered hook (mail) and the low-stock check, once
        return PaymentAction.redirect(request.return_url)

    def verify_notification(self, profile, notice, now):
        return Rejection("the balance channel takes no notifications")


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


def _status(order_id: int) -> str:
    return orders.Order.select(orders.Order.status).where(orders.Order.id == order_id).scalar()


def _paid_by_balance(order_id: int) -> bool:
    with all_sites():
        return orders.Payment.select().where((orders.Payment.order == order_id)
                                             & (orders.Payment.channel == CHANNEL_ID)).exists()


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [BalanceChannel()]


plugin = _Plugin()
