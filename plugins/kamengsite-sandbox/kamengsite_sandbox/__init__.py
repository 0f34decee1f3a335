"""Sandbox payment channel: plays an epay-V1 gateway for demos; refuses to run in production."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

from flask import Blueprint, abort, flash, redirect, render_template_string, request, url_for

from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _
from kamengsite.payments import (Channel, Notification, NotifyRequest, PaymentAction, PayType, Rejection,
                                 fen_to_yuan, sign_content, yuan_to_fen)

if os.environ.get("KAMENGSITE_PRODUCTION", "").lower() in ("1", "true", "yes"):
    raise RuntimeError("kamengsite-sandbox refuses to load on a production instance (KAMENGSITE_PRODUCTION is set)")

log = logging.getLogger(__name__)
PID = "sandbox"

PAGE = """{% extends "base.html" %}
{% block title %}{{ t.title }} · {{ site.name }}{% endblock %}
{% block body %}
{% include "storefront/_messages.html" %}
<article class="card pay sandbox">
  <h1>{{ t.heading }}</h1>
  <p>{{ t.order }} · {{ order.product.name }} · <span class="price">¥{{ order.amount_fen|money }}</span> · {{ pay_type }}</p>
  {% if order.status == "created" %}
  <form method="post">
    <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
    <input type="hidden" name="type" value="{{ pay_type }}">
    <button type="submit">{{ t.pay }}</button>
  </form>
  {% endif %}
  <p><a href="{{ url_for('storefront.order', order_no=order.order_no) }}">{{ t.back }}</a></p>
</article>
{% endblock %}
"""


def sandbox_key(profile, instance) -> str:
    """The profile's own key, or one derived from the instance secret (same in every worker)."""
    if profile.get("key"):
        return profile.get("key")
    return hmac.new(instance.secret_key.encode(), f"sandbox-pay:{profile.name}".encode(), hashlib.sha256).hexdigest()


def sign(fields: dict, key: str) -> dict:
    """Sign as an epay V1 gateway: md5(sorted k=v&... + key), lowercase hex."""
    signed = dict(fields)
    signed["sign"] = hashlib.md5((sign_content(fields) + key).encode("utf-8")).hexdigest()
    signed["sign_type"] = "MD5"
    return signed


class SandboxChannel(Channel):
    id = "sandbox"

    @property
    def name(self):
        return _("Sandbox payment (demo)")

    @property
    def pay_types(self):
        return (PayType("alipay", _("Alipay (sandbox)")), PayType("wxpay", _("WeChat Pay (sandbox)")))

    devices = ("pc", "mobile")
    settings_schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 40},
            "key": {"type": "string", "minLength": 16, "writeOnly": True},
        },
        "additionalProperties": False,
    }

    def __init__(self, instance):
        self.instance = instance

    def create_payment(self, profile, request):
        return PaymentAction.redirect(url_for("kamengsite_sandbox.gateway", profile=profile.name,
                                              order_no=request.order_no, type=request.pay_type))

    def notification(self, profile, order, pay_type: str) -> dict:
        """What the sandbox gateway sends when the buyer presses 模拟支付成功."""
        return sign({"pid": PID, "trade_no": f"SANDBOX-{order.order_no}", "out_trade_no": order.order_no,
                     "type": pay_type or "alipay", "name": order.product.name, "money": fen_to_yuan(order.amount_fen),
                     "trade_status": "TRADE_SUCCESS"}, sandbox_key(profile, self.instance))

    def verify_notification(self, profile, notice, now):
        if self.instance.production:
            return Rejection("the sandbox never pays on a production instance")
        fields = notice.fields
        expected = sign({k: v for k, v in fields.items() if k not in ("sign", "sign_type")},
                        sandbox_key(profile, self.instance))["sign"]
        if not hmac.compare_digest(expected, (fields.get("sign") or "").lower()):
            return Rejection("bad signature (MD5)")
        if fields.get("pid") != PID:
            return Rejection(f"pid {fields.get('pid')!r} is not the sandbox")
        try:
            amount_fen = yuan_to_fen(fields.get("money", ""))
        except ValueError as exc:
            return Rejection(str(exc))
        status = fields.get("trade_status", "")
        return Notification(order_no=fields.get("out_trade_no", ""), amount_fen=amount_fen,
                            trade_no=fields.get("trade_no", ""),
                            status="paid" if status == "TRADE_SUCCESS" else "unpaid", raw_status=status)

    def register_routes(self, app, instance):
        if instance.production:
            return
        bp = Blueprint("kamengsite_sandbox", __name__)
        bp.add_url_rule("/pay/sandbox/<profile>/<order_no>", "gateway", self._gateway, methods=["GET", "POST"])
        app.register_blueprint(bp)

    def _gateway(self, profile, order_no):
        from kamengsite import orders
        from kamengsite.app import current_site
        from kamengsite.payment_routes import handle_notification, registry
        from kamengsite.storefront import _owns

        found = registry().find(self.id, profile)
        if self.instance.production or found is None or not _owns(order_no):
            abort(404)
        order = orders.find_order(order_no, site_id=current_site().site_id)
        if order is None or (order.channel, order.channel_profile) != (self.id, profile):
            abort(404)
        pay_type = request.values.get("type", "alipay")
        if request.method == "POST":
            # Play the gateway: a signed notification through the very same verify-then-apply path.
            reply = handle_notification(self.id, profile, NotifyRequest(
                method="POST", fields=self.notification(found[1], order, pay_type)))
            if reply.get_data() != b"success":
                flash(_("The sandbox notification was refused; see the log"), "error")
            return redirect(url_for("storefront.order", order_no=order_no))
        return render_template_string(PAGE, order=order, pay_type=pay_type, t=_page_text(order))


def _page_text(order) -> dict:
    """The sandbox page's words in the visitor's language (the page is a string, not a template file)."""
    return {
        "title": _("Sandbox checkout"),
        "heading": _("Sandbox checkout (demo, nothing is charged)"),
        "order": _("Order %(no)s", no=order.order_no),
        "pay": _("Simulate a successful payment"),
        "back": _("Back to the order"),
    }


class _Plugin:
    @hookimpl
    def payment_channels(self, instance):
        if instance.production:
            log.error("kamengsite-sandbox: refusing to offer the sandbox channel on a production instance")
            return []
        return [SandboxChannel(instance)]


plugin = _Plugin()
