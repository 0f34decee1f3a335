"""The payment pages of every site: a core plugin.

* ``POST /pay/<order_no>`` — the buyer starts paying an order through the channel and
  profile it was created for (redirect, QR payload or auto-submitting form).
* ``GET|POST /pay/notify/<channel>/<profile>`` — gateway notifications, on every site
  domain; CSRF-exempt (the signature is the proof); verified before any write; replies
  the channel's exact body; every refusal is logged with its reason and recorded in the
  ``payment_notice`` table (``notice_log``) for the operator's payments page.

A QR payload is drawn server-side as an inline SVG (``qr_image``, with ``segno`` when it is
installed — the channel plugins depend on it); without it the page shows the payload text.
"""

from __future__ import annotations

import logging
import threading

from flask import (Blueprint, Response, abort, current_app, flash, has_app_context, has_request_context, redirect,
                   render_template, request, url_for)
from markupsafe import Markup

from . import notice_log
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _
from .member_routes import current_member_id
from .payments import NotifyRequest, PaymentError, PaymentRegistry, PayRequest, verify_and_apply

log = logging.getLogger("kamengsite.payments")
bp = Blueprint("payments", __name__)


def registry() -> PaymentRegistry:
    """The payment registry of the current site app (channels from every installed plugin)."""
    return current_app.extensions["kamengsite.payments"]


_registries: dict = {}
_registries_lock = threading.Lock()


def payment_registry(instance=None) -> PaymentRegistry | None:
    """The payment channels outside a site request too (a worker's refunds): the site app's, or built
    once per process for ``instance`` (the bound instance when not given); None when none is known."""
    if has_app_context() and "kamengsite.payments" in current_app.extensions:
        return current_app.extensions["kamengsite.payments"]
    if instance is None:
        from . import jobs

        instance = jobs.current_instance()
    if instance is None:
        return None
    key = str(instance.path)
    with _registries_lock:
        if key not in _registries:
            from . import hooks

            _registries[key] = PaymentRegistry.from_hook(hooks.instance_plugins().pm.hook, instance)
        return _registries[key]


def buyer_options() -> list[tuple[str, str]]:
    """``[("epay/main", "易支付"), ...]``: the payment methods a buyer may pick before ordering."""
    options = []
    site = current_site()
    member_id = current_member_id()
    for channel, profile in registry().options(site.slug, site.config.settlement):
        if channel.needs_member and member_id is None:
            continue  # e.g. the balance channel: only a signed-in member has a wallet
        options.append((f"{channel.id}/{profile.name}", profile.label or channel.name or channel.id))
    return options


def order_pay_options(order) -> list[tuple[str, str]]:
    """``[(pay_type, label)]`` for an unpaid order made for a configured channel; ``[]`` otherwise."""
    found = registry().find(order.channel, order.channel_profile) if order.channel else None
    if found is None:
        return []
    channel, profile = found
    return [(t.id, t.name) for t in channel.offered_types(profile)] or [("", channel.name or channel.id)]


@bp.post("/pay/<order_no>")
def pay(order_no):
    from . import orders
    from .storefront import _owns

    if not _owns(order_no):
        abort(404)
    order = orders.find_order(order_no, site_id=current_site().site_id)
    if order is None:
        abort(404)
    channel_id = request.form.get("channel", "")
    profile_name = request.form.get("profile", "")
    found = registry().find(channel_id, profile_name)
    if found is None or order.channel != channel_id or order.channel_profile != profile_name:
        flash(_("This order cannot be paid this way"), "error")
        return redirect(url_for("storefront.order", order_no=order_no))
    if order.status != "created":
        return redirect(url_for("storefront.order", order_no=order_no))
    channel, profile = found
    pay_type = request.form.get("type", "")
    offered = channel.offered_types(profile)
    if offered and pay_type not in {t.id for t in offered}:
        pay_type = offered[0].id
    ua = (request.user_agent.string or "").lower()
    pay_request = PayRequest(
        order_no=order.order_no, amount_fen=order.amount_fen, subject=order.product.name,
        notify_url=url_for("payments.notify", channel=channel.id, profile=profile.name, _external=True),
        return_url=url_for("storefront.order", order_no=order_no, _external=True),
        client_ip=request.remote_addr or "", pay_type=pay_type,
        device="mobile" if "mobile" in ua else "pc", member_id=current_member_id(), site_id=current_site().site_id)
    try:
        action = channel.create_payment(profile, pay_request)
    except PaymentError as exc:
        flash(_("Could not start the payment: %(reason)s", reason=str(exc)), "error")
        return redirect(url_for("storefront.order", order_no=order_no))
    if action.kind == "redirect":
        return redirect(action.url)
    qr = qr_image(action.qr) if action.kind == "qrcode" else None
    return render_template("payments/action.html", action=action, order=order, channel=channel, qr_image=qr)


def qr_image(payload: str) -> Markup | None:
    """The QR code of ``payload`` as inline SVG (no script, no CDN); None without ``segno`` or for no payload."""
    if not payload:
        return None
    try:
        import segno
    except ImportError:  # the page falls back to showing the payload text
        return None
    try:
        svg = segno.make(payload, error="m", micro=False).svg_inline(scale=5, border=2, title=_("Payment QR code"))
    except (ValueError, segno.DataOverflowError):
        log.warning("payment QR payload could not be encoded (%d characters)", len(payload))
        return None
    return Markup(svg)  # segno escapes what it writes; the payload itself is not embedded as text


@bp.route("/pay/notify/<channel>/<profile>", methods=["GET", "POST"])
def notify(channel, profile):
    return handle_notification(channel, profile, NotifyRequest.from_flask(request))


def handle_notification(channel_id: str, profile_name: str, notice: NotifyRequest) -> Response:
    """Verify, apply, notify after delivery, and answer exactly as the channel's gateway expects."""
    found = registry().find(channel_id, profile_name)
    if found is None:
        reason = "no such configured channel/profile"
        log.warning("payment notification rejected: channel=%s profile=%s reason=%s", channel_id, profile_name, reason)
        _record(channel_id, profile_name, notice_log.REJECTED, reason)
        return Response("unknown channel", status=404, content_type="text/plain; charset=utf-8")
    channel, profile = found
    outcome = verify_and_apply(channel, profile, notice)
    if outcome.acknowledged:
        log.info("payment notification acknowledged without payment: channel=%s profile=%s order=%s reason=%s",
                 channel.id, profile.name, outcome.notification.order_no, outcome.reason)
        _record(channel.id, profile.name, notice_log.ACKNOWLEDGED, outcome.reason, outcome.notification.order_no)
        reply = channel.reply(True)
    elif not outcome.ok:
        order_no = outcome.notification.order_no if outcome.notification else notice.fields.get("out_trade_no", "?")
        log.warning("payment notification rejected: channel=%s profile=%s order=%s reason=%s",
                    channel.id, profile.name, order_no, outcome.reason)
        _record(channel.id, profile.name, notice_log.REJECTED, outcome.reason, "" if order_no == "?" else order_no)
        reply = channel.reply(False)
    else:
        from .storefront import after_payment

        after_payment(outcome.result, outcome.order)
        reply = channel.reply(True)
    return Response(reply.body, status=reply.status, content_type=reply.content_type)


def _record(channel_id: str, profile_name: str, outcome: str, reason: str, order_no: str = ""):
    """Keep the refusal for the operator's payments page; ``record_notice`` never raises."""
    remote_ip = (request.remote_addr or "") if has_request_context() else ""
    notice_log.record_notice(channel=channel_id, profile=profile_name, outcome=outcome, reason=reason,
                             order_no=order_no, remote_ip=remote_ip)


@hookimpl
def prepare_site_app(app, site):
    from .storefront import csrf

    context = app.extensions["kamengsite.site"]
    plugins = app.extensions.get("kamengsite.plugins")
    hook = plugins.pm.hook if plugins is not None else app.extensions["kamengsite.hook"]
    payments = PaymentRegistry.from_hook(hook, context.instance)
    app.extensions["kamengsite.payments"] = payments
    app.register_blueprint(bp)
    csrf.exempt(notify)  # gateways cannot send a CSRF token; the signature is the proof
    for channel in payments.channels.values():
        try:
            channel.register_routes(app, context.instance)
        except Exception:  # noqa: BLE001 - one channel's pages must not take the site down
            log.exception("payment channel %s could not register its routes", channel.id)
