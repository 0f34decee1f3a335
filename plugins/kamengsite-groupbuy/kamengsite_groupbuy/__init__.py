"""Group-buy (拼团) for a site: a group price on a product for buyers who fill a group in time.

Enabled per site (``plugins = ["groupbuy"]`` in ``site.toml``). The owner creates offers in the
console (``/admin/groupbuy/``: SKU, group size, group price, how long a started group stays
open, the offer's dates). On the product page a section shows the group price with a
"发起拼团" button and the open groups to join; each group has a share page ``/groupbuy/<id>``.
Both lead to the normal buy form with the ``groupbuy`` input filled (``start:<offer>`` or
``join:<group>``): the price pipeline offers the group price and holds the order's delivery,
``order_reserving`` starts the group or takes a place in it (never more places than the group
has), the payment leaves the order paid with its stock reserved. When the group has as many
paid members as its size it fills and every member's order is delivered; when its window
closes first, every paid member is refunded (``groups.py`` has the rules and the sweep).
"""

from __future__ import annotations

import datetime
import logging
from functools import cache
from pathlib import Path

from flask import Blueprint, abort, current_app, flash, redirect, render_template_string, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import StringField
from wtforms.validators import Length, Optional

from kamengsite import admin
from kamengsite.payment_routes import payment_registry
from kamengsite.checkout import CheckoutInput, CheckoutRefused
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _, _l, _n
from kamengsite.sections import Section
from kamengsite.tenancy import acting_for

from . import groups
from .groups import (HOLD, INPUT, SETTINGS_SCHEMA, Group, GroupMember, GroupOffer, complete_group,  # noqa: F401
                     fail_group, settle_members, sweep)

log = logging.getLogger(__name__)
PLUGIN = "groupbuy"
TEMPLATES = Path(__file__).parent / "templates" / "groupbuy"
BEIJING = datetime.timedelta(hours=8)  # the console shows and reads times in Beijing time; stored in UTC

share_bp = Blueprint("groupbuy_share", __name__)
bp = admin.console_blueprint("groupbuy", __name__, "/admin/groupbuy")
STATUS_LABELS = {"open": _l("Group open"), "filled": _l("Group filled"), "failed": _l("Group not filled (refunded)")}


@cache
def _source(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _site():
    return current_app.extensions["kamengsite.site"]


def settings(site) -> dict:
    """This plugin's settings on ``site`` (defaults when they are missing or wrong, and say so)."""
    from kamengsite.plugin_settings import settings_for

    try:
        return settings_for(site, PLUGIN, SETTINGS_SCHEMA)
    except Exception:  # noqa: BLE001 - a typo in site.toml must not stop the shop
        log.exception("groupbuy settings of %s are invalid; using the defaults", getattr(site, "slug", "?"))
        return {k: v["default"] for k, v in SETTINGS_SCHEMA["properties"].items()}


# -- the hooks ----------------------------------------------------------------------------


@hookimpl
def plugin_settings_schema():
    return SETTINGS_SCHEMA


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(share_bp)
    app.register_blueprint(bp)


@hookimpl
def admin_menu(site):
    return [(_("Group buys"), "groupbuy.index")]


@hookimpl
def checkout_inputs(site):
    return [CheckoutInput(INPUT, _l("Group-buy order"), max_length=24, hidden=True)]


@hookimpl
def adjust_price(checkout, stage):
    """At the promotion stage: the group price, and the order's delivery held until the group fills."""
    if stage != "promotion" or not checkout.inputs.get(INPUT):
        return
    try:
        mode, offer, group = groups.resolve(checkout.site_id, checkout.product.id, checkout.sku_id,
                                            checkout.inputs[INPUT])
    except CheckoutRefused:
        return  # validate_checkout says why
    checkout.offer_unit_price(int(offer.group_price_fen), source=PLUGIN, label=_("Group price"))
    checkout.note(PLUGIN, mode=mode, offer_id=offer.id, group_id=group.id if group is not None else None)
    checkout.hold_delivery = HOLD


@hookimpl
def validate_checkout(checkout):
    value = checkout.inputs.get(INPUT)
    if not value:
        return
    groups.resolve(checkout.site_id, checkout.product.id, checkout.sku_id, value, member_id=checkout.member_id,
                   contact=checkout.contact, max_open=settings(checkout.site)["max_open_groups_per_member"])
    if checkout.quantity != 1:
        raise CheckoutRefused(_("A group buy is limited to 1 unit per person"))
    if PLUGIN not in checkout.notes or checkout.hold_delivery != HOLD:
        # the price step failed: never sell without the hold
        raise CheckoutRefused(_("Group buying is unavailable right now; please try again later"))


@hookimpl
def order_reserving(order, checkout):
    note = checkout.notes.get(PLUGIN)
    if note:
        groups.reserve_place(order, note)


@hookimpl
def order_paid(order, site):
    groups.settle_order(order, registry=payment_registry())


@hookimpl
def theme_sections(site):
    return [Section("groupbuy", _l("Group buys"), _render_section, pages=("product",))]


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute="*"), name="groupbuy_sweep")
    def groupbuy_sweep():
        """Fill paid-up groups, fail and refund groups past their window, finish interrupted work."""
        counts = sweep(registry=payment_registry(instance))
        if any(counts.values()):
            log.info("groupbuy sweep: %s", counts)
        return counts


@hookimpl
def register_commands(cli):
    import click

    @cli.command("groupbuy-sweep")
    @click.pass_context
    def groupbuy_sweep_command(ctx):
        """Run the group-buy sweep once (what the worker does every minute)."""
        from kamengsite.cli import bound_database

        instance = ctx.obj.instance()
        with bound_database(instance):
            counts = sweep(registry=payment_registry(instance))
        click.echo(f"filled {counts['filled']}, failed {counts['failed']}, settled {counts['settled']}")


# -- payment channels outside a request ----------------------------------------------------

# -- the product page's section and the share page -----------------------------------------


def _render_section(context) -> Markup:
    product = context.get("product")
    site_id = _site().site_id  # sections render inside the site's own request
    if product is None:
        return Markup("")
    offers = groups.live_offers(site_id, product.id)
    if not offers:
        return Markup("")
    joinable = groups.open_groups(site_id, [o.id for o in offers])
    return Markup(render_template_string(_source("section.html"), offers=offers, joinable=joinable,
                                         product_id=product.id, now=groups.now_()))


@share_bp.get("/groupbuy/<int:group_id>")
def share(group_id):
    site_id = _site().site_id
    with acting_for(site_id):
        group = Group.get_or_none(Group.id == group_id)
        offer = GroupOffer.get_or_none(GroupOffer.id == group.offer_id) if group is not None else None
    if group is None or offer is None:
        abort(404)
    from kamengsite.catalog import Product

    product = Product.get_or_none(Product.id == offer.product_id)
    taken, paid = groups.member_count(group.id)
    now = groups.now_()
    left_seconds = max(0, int((group.closes_at - now).total_seconds()))
    joinable = group.status == "open" and left_seconds > 0 and taken < group.group_size and offer.active
    return render_template_string(_source("share.html"), group=group, offer=offer, product=product, taken=taken,
                                  paid=paid, left=group.group_size - taken, joinable=joinable,
                                  left_text=_duration(left_seconds), status_labels=STATUS_LABELS,
                                  share_url=url_for("groupbuy_share.share", group_id=group.id, _external=True))


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours:
        return _("%(hours)s h %(minutes)s min", hours=hours, minutes=minutes)
    return _n("%(num)d minute", "%(num)d minutes", minutes) if minutes else _("less than 1 minute")


# -- the owner's console: /admin/groupbuy/ -------------------------------------------------


class OfferForm(FlaskForm):
    sku = admin.ChoiceField(_l("Product SKU"), coerce=int)
    group_size = admin.WholeNumberField(_l("Group size (2-50)"), default=2)
    group_price = admin.YuanField(_l("Group price (yuan)"))
    window_minutes = admin.WholeNumberField(_l("Time to fill (minutes after a group starts)"))
    starts_at = StringField(_l("Starts (Beijing time, e.g. 2026-12-01 10:00, optional)"),
                            validators=[Optional(), Length(max=16)])
    ends_at = StringField(_l("Ends (Beijing time, optional)"), validators=[Optional(), Length(max=16)])


def _parse_time(text: str | None):
    text = (text or "").strip()
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M") - BEIJING
    except ValueError:
        raise ValueError(_("Time format: 2026-12-01 10:00")) from None


def _catalogue_skus():
    """``[(sku id, "product · SKU")]`` of the goods this site sells."""
    from kamengsite.catalog import Product, Sku
    from kamengsite.storefront import catalog_owners

    owners = catalog_owners()
    rows = (Sku.select(Sku.id, Sku.name, Sku.price_fen, Product.name.alias("product_name"))
            .join(Product).where(Product.site.in_(owners) & (Product.status == "on") & (Sku.status == "on"))
            .order_by(Product.sort, Product.id, Sku.sort, Sku.id).limit(500).dicts())
    return owners, [(r["id"], f"{r['product_name']} · {r['name']}") for r in rows]


@bp.route("/", methods=["GET", "POST"])
@admin.operator_required
def index():
    site = _site()
    site_id = site.site_id
    owners, choices = _catalogue_skus()
    form = OfferForm()
    form.sku.choices = choices
    if not form.is_submitted():
        form.window_minutes.data = settings(site.config)["default_window_minutes"]
    if form.validate_on_submit():
        try:
            offer = groups.create_offer(
                site_id, form.sku.data, group_size=form.group_size.data, group_price_fen=form.group_price.data,
                window_minutes=form.window_minutes.data, starts_at=_parse_time(form.starts_at.data),
                ends_at=_parse_time(form.ends_at.data), owners=owners)
        except (groups.OfferError, ValueError) as exc:
            flash(_("Not saved: %(error)s", error=exc), "error")
        else:
            flash(_("Group-buy offer #%(id)s created", id=offer.id), "ok")
            return redirect(url_for("groupbuy.index"))
    from kamengsite.catalog import Product, Sku

    with acting_for(site_id):
        offers = list(GroupOffer.select().order_by(GroupOffer.id.desc()).limit(100))
        recent = list(Group.select().order_by(Group.id.desc()).limit(100))
    names = {s.id: f"{p} · {s.name}" for s, p in
             ((s, Product.get_by_id(s.product_id).name) for s in Sku.select().where(
                 Sku.id.in_([o.sku_id for o in offers] or [0])))}
    counts = {g.id: groups.member_count(g.id) for g in recent}
    return render_template_string(_source("admin.html"), form=form, offers=offers, groups=recent, names=names,
                                  counts=counts, statuses=STATUS_LABELS, action_form=admin.ActionForm(),
                                  beijing=BEIJING)


@bp.post("/offers/<int:offer_id>/toggle")
@admin.operator_required
def toggle(offer_id):
    form = admin.ActionForm()
    if not form.validate_on_submit():
        abort(400)
    site_id = _site().site_id
    with acting_for(site_id):
        offer = GroupOffer.get_or_none(GroupOffer.id == offer_id)
    if offer is None:
        abort(404)
    groups.set_offer_active(site_id, offer_id, not offer.active)
    flash(_("Group-buy offer #%(id)s disabled", id=offer_id) if offer.active
          else _("Group-buy offer #%(id)s enabled", id=offer_id), "ok")
    return redirect(url_for("groupbuy.index"))


__all__ = ["GroupOffer", "Group", "GroupMember", "complete_group", "fail_group", "settle_members", "sweep",
           "payment_registry"]
