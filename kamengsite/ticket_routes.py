"""The buyer's side of buyer messages: ``/order/<no>/messages`` (a core plugin on every site).

Only the browser that placed the order, or proved it owns it through the order lookup (the
same rule as for its keys), reads or writes the thread. The shop's FAQ comes first, so many
questions are answered before a message is written. A new message mails the site's operators
that have an e-mail address (without its text: it is read in the console).
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from wtforms import TextAreaField
from wtforms.validators import DataRequired, Length

from . import orders, tickets
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l
from .ratelimit import limited

bp = Blueprint("tickets", __name__)


class MessageForm(FlaskForm):
    body = TextAreaField(_l("Your message"), validators=[
        DataRequired(_l("Write your message")),
        Length(max=tickets.MAX_BODY, message=_l("At most %(max)d characters"))])


def _owned_order(order_no: str):
    from .storefront import _owns

    found = orders.find_order(order_no, site_id=current_site().site_id)
    if found is None or not _owns(order_no):
        abort(404)  # the same answer for someone else's order and for none at all
    return found


def notify_shop(site, order_no: str):
    """Mail the site's operators with an address that a buyer wrote (the text stays in the console)."""
    from .accounts import Account
    from .jobs import jobs_for
    from .mail import smtp_settings
    from .tenancy import acting_for

    if smtp_settings(site.instance) is None:
        return
    with acting_for(site.site_id):
        addresses = [a.email for a in Account.select().where((Account.email != "") & (Account.role == "operator"))]
    subject = _("New buyer message about order %(no)s", no=order_no)
    body = _("A buyer wrote about order %(no)s. Read and answer it in the console, under Buyer messages.",
             no=order_no)
    for address in addresses:
        jobs_for(site.instance).send_mail(address, subject, body, site.config.name)


@bp.route("/order/<order_no>/messages", methods=["GET", "POST"])
@limited("ticket", "20/minute")
def messages(order_no):
    order = _owned_order(order_no)
    site = current_site()
    form = MessageForm()
    refused = False
    if form.validate_on_submit():
        try:
            tickets.post(site.site_id, order.order_no, "buyer", form.body.data)
        except tickets.TicketError:
            refused = True
            flash(_("This conversation is full; please contact the shop another way"), "error")
        else:
            notify_shop(site, order.order_no)
            flash(_("Message sent. The shop's answer appears here"), "ok")
            return redirect(url_for("tickets.messages", order_no=order.order_no))
    ticket = tickets.ticket_for(site.site_id, order.order_no)
    if ticket is not None and ticket.buyer_unread:
        tickets.mark_read(ticket, "buyer")
    status = 400 if form.errors or refused else 200
    return render_template("storefront/messages.html", order=order, form=form, ticket=ticket,
                           thread=tickets.thread(ticket) if ticket else [], faq=tickets.faq(site.site_id)), status


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
