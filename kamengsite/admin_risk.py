"""风控 (/admin/risk): the review queue of held orders, the site's risk rules and its blacklists (a core plugin).

Every site's console has it, confined to the site's own rows (another site's order is a 404).
Staff need the ``orders`` area. Approve delivers a held order, reject refunds it (or cancels it
if unpaid): each exactly once however often or concurrently it is clicked (``risk.approve`` /
``risk.reject`` claim the decision first), and each is written to the audit log.
"""

from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm

from . import admin, audit, payment_routes, risk
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l
from .permissions import area

bp = admin.console_blueprint("admin_risk", __name__, "/admin/risk")

#: The settings form: (field, label), in the order shown.
SETTING_FIELDS = (
    ("ip_limit", _l("Orders from one IP: hold above")),
    ("ip_window", _l("… within (seconds)")),
    ("contact_limit", _l("Orders with one contact: hold above")),
    ("contact_window", _l("… within (seconds)")),
    ("member_limit", _l("Orders by one member: hold above")),
    ("member_window", _l("… within (seconds)")),
    ("device_limit", _l("Orders from one device: hold above")),
    ("device_window", _l("… within (seconds)")),
    ("small_limit", _l("Small orders from one IP: hold above")),
    ("small_window", _l("… within (seconds)")),
    ("small_under_fen", _l("Small means under (fen)")),
    ("signup_limit", _l("Accounts registered from one IP: refuse from")),
    ("signup_window", _l("… within (seconds)")),
)
BLOCK_LABELS = {"ip": _l("IP address or range (CIDR)"), "contact": _l("Contact"),
                "email_domain": _l("E-mail domain"), "member": _l("Member (id or e-mail)")}
DECISION_LABELS = {"approved": _l("Approved"), "rejected": _l("Rejected")}
OUTCOME_MESSAGES = {
    risk.DECIDED: _l("This order was already decided"),
    risk.NOT_PAID: _l("This order is not paid yet: it can be approved once it is paid"),
    risk.FAILED: _l("Nothing was done: the order changed meanwhile"),
}


class ActionForm(FlaskForm):
    pass


def _site_id() -> int:
    return current_site().site_id


def _render(settings=None, error: str | None = None, status: int = 200):
    site_id = _site_id()
    return render_template("admin/risk.html", waiting=risk.queue(site_id), decided=risk.queue(site_id, decided=True,
                                                                                               limit=20),
                           settings=settings or risk.settings_for(site_id), fields=SETTING_FIELDS,
                           blocks=risk.blocks(site_id), block_labels=BLOCK_LABELS, decisions=DECISION_LABELS,
                           rule_label=risk.rule_label, describe=risk.describe, error=error,
                           action=ActionForm(formdata=None)), status


@bp.get("/")
@area("orders")
@admin.operator_required
def index():
    return _render()


def _decide(order_no: str, decision: str):
    site_id = _site_id()
    if risk.hold_of(site_id, order_no) is None:
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    who = g.operator.username
    if decision == "approve":
        outcome = risk.approve(site_id, order_no, by=who)
        done = _("Approved: order %(no)s is delivered", no=order_no)
    else:
        outcome = risk.reject(site_id, order_no, by=who, registry=payment_routes.payment_registry())
        done = _("Rejected: order %(no)s is refunded or cancelled", no=order_no)
    audit.record(f"risk.{decision}", account=g.operator, target=f"order:{order_no}", details={"outcome": outcome},
                 status=200 if outcome == risk.DONE else 409)
    if outcome == risk.DONE:
        flash(done, "ok")
    else:
        flash(str(OUTCOME_MESSAGES[outcome]), "error")
    return redirect(url_for("admin_risk.index"))


@bp.post("/orders/<order_no>/approve")
@area("orders")
@admin.operator_required
def approve(order_no):
    return _decide(order_no, "approve")


@bp.post("/orders/<order_no>/reject")
@area("orders")
@admin.operator_required
def reject(order_no):
    return _decide(order_no, "reject")


@bp.post("/settings")
@area("orders")
@admin.operator_required
def settings():
    if not ActionForm().validate_on_submit():
        abort(400)
    values = {name: request.form.get(name, "").strip() for name, _label in SETTING_FIELDS}
    try:
        risk.save_settings(_site_id(), values)
    except risk.RiskError as exc:
        return _render(error=str(exc), status=400)
    flash(_("Risk rules saved"), "ok")
    return redirect(url_for("admin_risk.index"))


@bp.post("/blocks")
@area("orders")
@admin.operator_required
def add_block():
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        risk.add_block(_site_id(), request.form.get("kind", ""), request.form.get("value", ""),
                       note=request.form.get("note", ""), by=g.operator.username)
    except risk.RiskError as exc:
        return _render(error=str(exc), status=400)
    flash(_("Added to the blacklist"), "ok")
    return redirect(url_for("admin_risk.index"))


@bp.post("/blocks/delete")
@area("orders")
@admin.operator_required
def delete_block():
    if not ActionForm().validate_on_submit():
        abort(400)
    block_id = request.form.get("block_id", "")
    if not block_id.isdigit() or not risk.remove_block(_site_id(), int(block_id)):
        abort(404)  # another site's entry is not found: remove_block is confined to this site
    flash(_("Removed from the blacklist"), "ok")
    return redirect(url_for("admin_risk.index"))


@hookimpl
def admin_menu(site):
    waiting = risk.waiting_count(current_site().site_id)
    if waiting:
        return [(_("Risk review (%(n)s waiting)", n=waiting), "admin_risk.index")]
    return [(_l("Risk review"), "admin_risk.index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
    app.after_request(risk.remember_device)  # the ks_dev cookie the device rule counts by
