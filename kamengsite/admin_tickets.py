"""买家留言 (/admin/tickets): the shop's side of buyer messages, and its FAQ (a core plugin).

Each console sees the threads of orders its own site sold (tenant rows), waiting ones first.
Answering mails the buyer when the order's contact is an e-mail address; the mail carries
the answer and points to the order lookup (where the buyer proves the order is theirs).
Staff need the ``members`` area (``permissions.py``).
"""

from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import TextAreaField
from wtforms.validators import DataRequired, Length

from . import admin, orders, tickets
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l

bp = admin.console_blueprint("admin_tickets", __name__, "/admin/tickets")

STATUS_LABELS = {"open": _l("Waiting for you"), "answered": _l("Answered"), "closed": _l("Closed")}


class AnswerForm(FlaskForm):
    body = TextAreaField(_l("Answer"), validators=[DataRequired(_l("Write your answer")),
                                                   Length(max=tickets.MAX_BODY, message=_l("At most %(max)d characters"))])


class ActionForm(FlaskForm):
    pass


def _site_id() -> int:
    return current_site().site_id


def _ticket_or_404(order_no: str) -> tickets.Ticket:
    found = tickets.ticket_for(_site_id(), order_no)
    if found is None:
        abort(404)
    return found


@bp.get("/")
@admin.operator_required
def index():
    status = request.args.get("status")
    rows = tickets.inbox(_site_id(), status if status in tickets.STATUSES else None)
    return render_template("admin/tickets.html", rows=rows, status=status, labels=STATUS_LABELS)


def notify_buyer(order, answer: str):
    from .jobs import jobs_for
    from .mail import is_email, smtp_settings

    site = current_site()
    if not is_email(order.contact) or smtp_settings(site.instance) is None:
        return
    lookup = request.host_url.rstrip("/") + url_for("storefront.lookup")
    subject = _("%(shop)s answered your message about order %(no)s", shop=site.config.name, no=order.order_no)
    body = _("%(shop)s wrote:\n\n%(answer)s\n\nTo reply, look up order %(no)s at %(link)s and open its messages.",
             shop=site.config.name, answer=answer, no=order.order_no, link=lookup)
    jobs_for(site.instance).send_mail(order.contact.strip(), subject, body, site.config.name)


@bp.route("/<order_no>", methods=["GET", "POST"])
@admin.operator_required
def show(order_no):
    ticket = _ticket_or_404(order_no)
    form = AnswerForm()
    if form.validate_on_submit():
        try:
            tickets.post(_site_id(), order_no, "shop", form.body.data, account_id=g.operator.id)
        except tickets.TicketError:
            flash(_("This conversation is full"), "error")
        else:
            order = orders.find_order(order_no, site_id=_site_id())
            if order is not None:
                notify_buyer(order, form.body.data.strip())
            flash(_("Answer sent"), "ok")
            return redirect(url_for("admin_tickets.show", order_no=order_no))
    if ticket.shop_unread:
        tickets.mark_read(ticket, "shop")
    order = orders.find_order(order_no, site_id=_site_id())
    return render_template("admin/ticket.html", ticket=ticket, thread=tickets.thread(ticket), order=order,
                           form=form, action=ActionForm(formdata=None), labels=STATUS_LABELS), \
        400 if form.errors else 200


@bp.post("/<order_no>/close")
@admin.operator_required
def close(order_no):
    _ticket_or_404(order_no)
    if not ActionForm().validate_on_submit():
        abort(400)
    tickets.close(_site_id(), order_no)
    flash(_("Closed: the buyer can still write again"), "ok")
    return redirect(url_for("admin_tickets.index"))


@bp.route("/faq", methods=["GET", "POST"])
@admin.operator_required
def faq():
    error = None
    entries = [(e.question, e.answer) for e in tickets.faq(_site_id())]
    if request.method == "POST":
        if not ActionForm().validate_on_submit():
            abort(400)
        questions, answers = request.form.getlist("question"), request.form.getlist("answer")
        entries = list(zip(questions, answers))
        try:
            tickets.save_faq(_site_id(), entries)
        except tickets.TicketError:
            error = _("Each question needs an answer (questions up to 200 characters, answers up to %(max)s, "
                      "at most %(count)s questions)", max=tickets.MAX_BODY, count=tickets.MAX_FAQ)
        else:
            flash(_("FAQ saved: buyers see it before they write to you"), "ok")
            return redirect(url_for("admin_tickets.faq"))
    return render_template("admin/faq.html", entries=entries + [("", "")], error=error,
                           action=ActionForm(formdata=None)), 400 if error else 200


@hookimpl
def admin_menu(site):
    waiting = tickets.unread_count(current_site().site_id)
    if waiting:
        return [(_("Buyer messages (%(n)s new)", n=waiting), "admin_tickets.index")]
    return [(_l("Buyer messages"), "admin_tickets.index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
