"""会员 (/admin/members): a site's members, searched and opened one by one (a core plugin).

Every console lists the members of its own site (tenant rows): e-mail, nickname, status,
wallet balance, paid orders, when they joined and last signed in. A member's page shows the
wallet's history and recent orders; the console may disable a member (signed out everywhere,
no more sign-in) and enable them again. On the main site the operator may also credit or debit
a wallet by hand, with a reason: it moves platform revenue, so sub-site owners cannot. Each
adjustment carries a reference made when the form was shown, so a double submit posts once.
Staff need the ``members`` area (and ``money`` for an adjustment).
"""

from __future__ import annotations

import secrets

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from peewee import fn
from wtforms import HiddenField, StringField
from wtforms.validators import DataRequired, Length

from . import admin, ledger, members, orders, permissions
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l
from .tenancy import acting_for

bp = admin.console_blueprint("admin_members", __name__, "/admin/members")

PER_PAGE = 50
STATUS_LABELS = {"active": _l("Active"), "disabled": _l("Disabled")}


class AdjustForm(FlaskForm):
    amount = StringField(_l("Amount (¥)"), validators=[DataRequired(_l("Enter an amount"))])
    memo = StringField(_l("Reason (shown in the wallet's history)"),
                       validators=[DataRequired(_l("Give a reason")), Length(max=200)])
    reference = HiddenField()


def _site_id() -> int:
    return current_site().site_id


def _member_or_404(member_id: int) -> members.Member:
    found = members.get_member(_site_id(), member_id)
    if found is None:
        abort(404)
    return found


def _paid_orders(site_id: int, member_ids) -> dict[int, int]:
    if not member_ids:
        return {}
    with acting_for(site_id):
        rows = (orders.Order.select(orders.Order.member_id, fn.COUNT(orders.Order.id))
                .where(orders.Order.member_id.in_(list(member_ids)) & orders.Order.paid_at.is_null(False))
                .group_by(orders.Order.member_id).tuples())
        return dict(rows)


@bp.get("/")
@admin.operator_required
def index():
    site_id = _site_id()
    search = (request.args.get("q") or "").strip()[:120]
    status = request.args.get("status") if request.args.get("status") in members.STATUSES else ""
    page = max(1, int(request.args.get("page", "1")) if request.args.get("page", "1").isdigit() else 1)
    with acting_for(site_id):
        query = members.Member.select()
        if search:
            needle = search.lower()
            query = query.where(members.Member.email.contains(needle) | members.Member.display_name.contains(search))
        if status:
            query = query.where(members.Member.status == status)
        found = list(query.order_by(members.Member.id.desc()).offset((page - 1) * PER_PAGE).limit(PER_PAGE + 1))
    shown = found[:PER_PAGE]
    balances = {m.id: members.wallet_balance(site_id, m.id) for m in shown}
    return render_template("admin/members.html", rows=shown, balances=balances,
                           paid=_paid_orders(site_id, [m.id for m in shown]), search=search, status=status,
                           statuses=STATUS_LABELS, page=page, more=len(found) > PER_PAGE)


def _render_member(member, form=None, status=200):
    site_id = _site_id()
    with acting_for(site_id):
        recent = list(orders.Order.select().where(orders.Order.member_id == member.id)
                      .order_by(orders.Order.id.desc()).limit(20))
    may_adjust = admin.is_main_site() and permissions.can("money")
    if may_adjust and form is None:
        form = AdjustForm(formdata=None, data={"reference": secrets.token_hex(12)})
    return render_template("admin/member.html", member=member, statuses=STATUS_LABELS,
                           balance=members.wallet_balance(site_id, member.id),
                           frozen=members.frozen_commissions(site_id, member.id),
                           history=members.wallet_history(site_id, member.id), orders=recent,
                           action=admin.ActionForm(formdata=None), form=form if may_adjust else None), status


@bp.get("/<int:member_id>")
@admin.operator_required
def show(member_id):
    return _render_member(_member_or_404(member_id))


@bp.post("/<int:member_id>/status")
@admin.operator_required
def set_status(member_id):
    member = _member_or_404(member_id)
    wanted = request.form.get("status")
    if not admin.ActionForm().validate_on_submit() or wanted not in members.STATUSES:
        abort(400)
    members.set_status(_site_id(), member.id, wanted)
    flash(_("Member disabled and signed out") if wanted == "disabled" else _("Member enabled"), "ok")
    return redirect(url_for("admin_members.show", member_id=member.id))


@bp.post("/<int:member_id>/wallet/<any(credit, debit):direction>")
@admin.main_site_only
@admin.operator_required
def adjust(member_id, direction):
    permissions.forbid_unless("money")
    member = _member_or_404(member_id)
    form = AdjustForm()
    if not form.validate_on_submit():
        return _render_member(member, form, 400)
    try:
        amount = admin.parse_yuan(form.amount.data)
        if amount <= 0:
            raise admin.PriceError(_("Enter an amount above zero"))
    except admin.PriceError as exc:
        form.amount.errors.append(str(exc))
        return _render_member(member, form, 400)
    reference = f"console:{_site_id()}:{member.id}:{form.reference.data or secrets.token_hex(12)}"[:120]
    memo = f"{form.memo.data.strip()} ({g.operator.username})"
    change = members.credit_wallet if direction == "credit" else members.debit_wallet
    try:
        change(_site_id(), member.id, amount, reference, memo)
    except ledger.InsufficientFunds:
        form.amount.errors.append(_("The wallet holds less than that"))
        return _render_member(member, form, 400)
    except members.MemberError:
        flash(_("This adjustment was already posted"), "error")
        return redirect(url_for("admin_members.show", member_id=member.id))
    flash(_("Wallet credited") if direction == "credit" else _("Wallet debited"), "ok")
    return redirect(url_for("admin_members.show", member_id=member.id))


@hookimpl
def admin_menu(site):
    return [(_l("Members"), "admin_members.index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
