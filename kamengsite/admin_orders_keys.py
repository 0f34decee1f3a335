"""查看卡密: an operator reveals the card keys of one delivered order, and the audit log says so.

Who may: the operator of the site that sold the order (its owner, for a sub-site's order) and
the operator of the site whose catalogue the product belongs to (the main site, for the main
catalogue). Anyone else gets a 404 — another site's order numbers are not confirmed either.

The page never shows a key until the operator presses the button (a CSRF-checked POST); that
POST writes ``cardkey.reveal`` (order number and key ids, never the key text) *before* the keys
are decrypted — no entry, no keys — and answers ``Cache-Control: no-store`` (every console page
does). Registered by ``kamengsite.audit``.
"""

from __future__ import annotations

from flask import abort, g, redirect, render_template, request, url_for

from . import admin, audit, orders
from .app import current_site
from .cardkeys import CardKey
from .catalog import Product
from .ratelimit import limited
from .tenancy import all_sites

bp = admin.console_blueprint("admin_orders_keys", __name__, "/admin/orders")

ORDER_NO_MAX = 32


def visible_order(order_no: str):
    """(order, product) if this site's operator may see the order's keys, else a 404."""
    if not order_no or len(order_no) > ORDER_NO_MAX:
        abort(404)
    with all_sites():
        order = orders.find_order(order_no)
        product = Product.get_or_none(Product.id == order.product_id) if order is not None else None
    here = current_site().site_id
    if order is None or product is None or here not in (order.site_id, product.site_id):
        abort(404)
    return order, product


def _key_ids(order, product) -> list[int]:
    """The ids of the keys the buyer received (the one loop key, for a loop-key product)."""
    if product.loop_key:
        key = (CardKey.select(CardKey.id).where((CardKey.sku == order.sku_id) & (CardKey.status != "void"))
               .order_by(CardKey.id).first())
        return [key.id] if key else []
    return [key_id for (key_id,) in CardKey.select(CardKey.id).where(
        (CardKey.order == order.id) & (CardKey.status == "sold")).order_by(CardKey.id).tuples()]


def reveal(order, product) -> list[str]:
    """Audit first, then decrypt: the entry names the order and the key ids."""
    with all_sites():
        key_ids = _key_ids(order, product) if order.status == "delivered" else []
    audit.record("cardkey.reveal", account=g.operator, target=f"order:{order.order_no}",
                 details={"order_no": order.order_no, "key_ids": key_ids[:200], "count": len(key_ids),
                          "status": order.status})
    if not key_ids:
        return []
    with all_sites():
        return orders.delivered_keys(order, admin._cipher(), product)


@bp.get("/keys")
@admin.operator_required
def lookup():
    """The order-number box of the audit page: on to that order's page."""
    order_no = (request.args.get("order_no") or "").strip()
    if not order_no:
        return redirect(url_for("admin_audit.index"))
    return redirect(url_for(".order_keys", order_no=order_no[:ORDER_NO_MAX]))


@bp.route("/<order_no>/keys", methods=["GET", "POST"])
@admin.operator_required
@limited("cardkey_reveal", "30/minute")
def order_keys(order_no):
    order, product = visible_order(order_no)
    form = admin.ActionForm()
    keys = None
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        keys = reveal(order, product)
    return render_template("admin/order_keys.html", order=order, product=product, keys=keys, form=form,
                           statuses=_status_labels())


def _status_labels() -> dict:
    from .admin_money import ORDER_STATUS_LABELS

    return ORDER_STATUS_LABELS
