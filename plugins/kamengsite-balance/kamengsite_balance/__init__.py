"""Balance payment channel: a signed-in member pays an order of their site from their wallet.

No gateway and no notification: ``create_payment`` pays the order at once through
``kamengsite.wallet_pay.pay_from_wallet`` (the core debit the reseller API shares), which
debits the wallet inside the payment's own database transaction — the debit and the payment
commit together or not at all.

Ledger: ``wallet_pay`` (reference = the order number, so an order is debited at most once)
moves the amount from the member's ``member_wallet`` of the selling site to
``channel_clearing`` of channel ``balance``. The ledger refuses to take a wallet below
zero (``InsufficientFunds`` → 「余额不足」, nothing written).
"""

from __future__ import annotations

import logging

from kamengsite import orders, wallet_pay
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import Channel, PaymentAction, PaymentError, Rejection
from kamengsite.tenancy import all_sites
from kamengsite.wallet_pay import OrderNotPayable, trade_no

log = logging.getLogger(__name__)
CHANNEL_ID = wallet_pay.CHANNEL_ID


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
        try:
            result = wallet_pay.pay_from_wallet(order, channel=CHANNEL_ID, profile=profile.name)
        except wallet_pay.InsufficientFunds:
            raise PaymentError(_("Insufficient balance")) from None
        except OrderNotPayable as exc:
            if exc.status in ("paid", "delivered") and wallet_pay.paid_from_wallet(order.id, CHANNEL_ID):
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


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        return [BalanceChannel()]


plugin = _Plugin()

__all__ = ["BalanceChannel", "OrderNotPayable", "plugin", "trade_no"]  # the last two: kept importable from here
