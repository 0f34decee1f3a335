"""The owner's console page ``/admin/coupons/``: coupons, flash sales, newcomer prices and tiers.

Every page is ``admin.operator_required``; the site is the request's (never a form's), rows are
read and written inside the request's site scope, and every write is a POST form with a CSRF token.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path

from flask import Blueprint, abort, flash, redirect, render_template_string, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, StringField
from wtforms.validators import InputRequired, Length, Optional

from kamengsite import admin
from kamengsite.app import current_site
from kamengsite.catalog import Product, Sku
from kamengsite.i18n import _, _l

from . import rules
from .models import KIND_LABELS, Coupon, FlashSale, NewcomerPrice, QuantityTier

bp = Blueprint("coupons", __name__, url_prefix="/admin/coupons")
bp.after_request(admin._console_headers)
bp.context_processor(admin._console_context)
TEMPLATE = Path(__file__).parent / "templates" / "coupons" / "index.html"
MAX_SKUS = 500
LISTED = 200


class CouponForm(FlaskForm):
    code = StringField(_l("Coupon code"), validators=[InputRequired(_l("Enter a coupon code")), Length(max=32)])
    kind = admin.ChoiceField(_l("Type"), default="fixed", choices=[
        admin._option("fixed", _l("Money off (yuan)")),
        admin._option("percent", _l("Percent off (a percentage of the price)"))])
    value = StringField(_l("Amount: yuan for money off, or a percentage for percent off (e.g. 10 takes off 10%)"),
                        validators=[InputRequired(_l("Enter the amount"))])
    max_discount = StringField(_l("Percent off at most (yuan, optional)"), validators=[Optional()])
    min_spend = StringField(_l("Minimum spend in yuan (optional)"), validators=[Optional()])
    product_ids = StringField(_l("Only these product IDs (comma-separated, optional)"),
                              validators=[Optional(), Length(max=500)])
    category_ids = StringField(_l("Only these category IDs (comma-separated, optional)"),
                               validators=[Optional(), Length(max=500)])
    total_limit = StringField(_l("Total uses (0 or empty: unlimited)"), validators=[Optional()])
    per_member_limit = StringField(_l("Uses per customer (0 or empty: unlimited)"), validators=[Optional()])
    starts_at = StringField(_l("Starts (e.g. 2026-11-22 10:00, optional)"), validators=[Optional()])
    ends_at = StringField(_l("Ends (optional)"), validators=[Optional()])
    stackable = BooleanField(_l("Can be combined with flash sale and newcomer prices"))
    members_only = BooleanField(_l("Only for members"))
    note = StringField(_l("Note"), validators=[Optional(), Length(max=120)])


class FlashForm(FlaskForm):
    sku = admin.ChoiceField(_l("SKU"), coerce=int)
    price = StringField(_l("Flash sale price (yuan)"), validators=[InputRequired(_l("Enter the flash sale price"))])
    cap = StringField(_l("Units on sale"), validators=[InputRequired(_l("Enter the quantity"))])
    per_member_limit = StringField(_l("Limit per customer (units, 0 or empty: unlimited)"), validators=[Optional()])
    starts_at = StringField(_l("Starts"), validators=[InputRequired(_l("Enter the start time"))])
    ends_at = StringField(_l("Ends"), validators=[InputRequired(_l("Enter the end time"))])


class NewcomerForm(FlaskForm):
    sku = admin.ChoiceField(_l("SKU"), coerce=int)
    price = StringField(_l("Newcomer price (yuan)"), validators=[InputRequired(_l("Enter the newcomer price"))])


class TierForm(FlaskForm):
    sku = admin.ChoiceField(_l("SKU"), coerce=int)
    min_qty = StringField(_l("Wholesale minimum (units)"), validators=[InputRequired(_l("Enter the quantity"))])
    price = StringField(_l("Wholesale unit price (yuan)"), validators=[InputRequired(_l("Enter the unit price"))])


def _when(text: str):
    """A time typed in the console: the site's time zone (as every time the console shows)."""
    import zoneinfo

    return rules.parse_local(text, zoneinfo.ZoneInfo(current_site().config.timezone))


def _site_id() -> int:
    return current_site().site_id


def _fen(text, *, blank=0) -> int:
    text = unicodedata.normalize("NFKC", text or "").strip().removeprefix("¥").removesuffix("元").strip()  # i18n: keep
    if not text:
        return blank
    return admin.parse_yuan(text)


def _whole(text, what) -> int:
    text = unicodedata.normalize("NFKC", text or "").strip()
    if not text:
        return 0
    if not re.fullmatch(r"\d{1,9}", text):
        raise ValueError(_("%(what)s must be a whole number", what=what))
    return int(text)


def _percent_bp(text) -> int:
    text = unicodedata.normalize("NFKC", text or "").strip().removesuffix("%")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(_("Enter the discount as a percentage, e.g. 10 or 12.5")) from None
    if value <= 0 or value >= 100 or value != value.quantize(Decimal("0.01")):
        raise ValueError(_("The discount must be between 0 and 100, with at most two decimals"))
    return int(value * 100)


def _ids(text) -> list[int]:
    parts = [p for p in re.split(r"[\s,，]+", unicodedata.normalize("NFKC", text or "").strip()) if p]  # i18n: keep
    if any(not p.isdigit() for p in parts):
        raise ValueError(_("IDs must be numbers separated by commas"))
    return [int(p) for p in parts]


def sku_choices(site_id: int) -> list[tuple[int, str]]:
    """The SKUs this site sells (its storefront's catalogues), labelled with its price and cost."""
    from kamengsite import pricing
    from kamengsite.storefront import catalog_owners

    owners = catalog_owners()
    rows = (Sku.select(Sku.id, Sku.name, Product.id, Product.name).join(Product)
            .where(Product.site.in_(owners) & (Product.status == "on") & (Sku.status == "on"))
            .order_by(Product.sort, Product.id, Sku.sort, Sku.id).limit(MAX_SKUS).tuples())
    choices = []
    for sku_id, sku_name, product_id, product_name in rows:
        quote = pricing.quote_sku(site_id, sku_id)
        if quote is None:
            continue
        cost = quote.costs[0][1] if quote.costs else 0
        name = f"#{product_id} {product_name} {sku_name}".strip()
        if quote.costs:
            label = _("%(name)s (price ¥%(price)s, cost ¥%(cost)s)", name=name, price=rules.yuan(quote.unit_price_fen),
                      cost=rules.yuan(cost))
        else:
            label = _("%(name)s (price ¥%(price)s)", name=name, price=rules.yuan(quote.unit_price_fen))
        choices.append((sku_id, label))
    return choices


def _forms():
    choices = sku_choices(_site_id())
    forms = {"coupon": CouponForm(prefix="c"), "flash": FlashForm(prefix="f"), "newcomer": NewcomerForm(prefix="n"),
             "tier": TierForm(prefix="t"), "action": admin.ActionForm()}
    for name in ("flash", "newcomer", "tier"):
        forms[name].sku.choices = [admin._option(value, label) for value, label in choices]
    return forms


def _sku_names(sku_ids) -> dict:
    ids = list({int(i) for i in sku_ids})
    if not ids:
        return {}
    return {sku_id: f"#{pid} {pname} {sname}".strip() for sku_id, sname, pid, pname in
            Sku.select(Sku.id, Sku.name, Product.id, Product.name).join(Product).where(Sku.id.in_(ids)).tuples()}


@cache
def _source() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def _page(forms, status=200):
    coupons = list(Coupon.select().order_by(Coupon.id.desc()).limit(LISTED))
    sales = list(FlashSale.select().order_by(FlashSale.id.desc()).limit(LISTED))
    newcomers = list(NewcomerPrice.select().order_by(NewcomerPrice.id.desc()).limit(LISTED))
    tiers = list(QuantityTier.select().order_by(QuantityTier.sku_id, QuantityTier.min_qty).limit(LISTED))
    names = _sku_names([s.sku_id for s in sales] + [n.sku_id for n in newcomers] + [t.sku_id for t in tiers])
    return render_template_string(_source(), forms=forms, coupons=coupons, sales=sales, newcomers=newcomers,
                                  tiers=tiers, names=names, kinds=KIND_LABELS, yuan=rules.yuan), status


@bp.get("/")
@admin.operator_required
def index():
    return _page(_forms())


@bp.post("/coupon")
@admin.operator_required
def coupon_create():
    forms = _forms()
    form = forms["coupon"]
    if not form.validate_on_submit():
        return _page(forms, 400)
    try:
        kind = form.kind.data
        value = _fen(form.value.data) if kind == "fixed" else _percent_bp(form.value.data)
        coupon = rules.create_coupon(
            _site_id(), form.code.data, kind, value, min_spend_fen=_fen(form.min_spend.data),
            max_discount_fen=_fen(form.max_discount.data) if kind == "percent" else 0,
            product_ids=_ids(form.product_ids.data), category_ids=_ids(form.category_ids.data),
            total_limit=_whole(form.total_limit.data, _("Total uses")),
            per_member_limit=_whole(form.per_member_limit.data, _("Uses per customer")),
            starts_at=_when(form.starts_at.data), ends_at=_when(form.ends_at.data),
            stackable=form.stackable.data, members_only=form.members_only.data, note=form.note.data or "")
    except ValueError as exc:
        flash(_("Not saved: %(error)s", error=exc), "error")
        return _page(forms, 400)
    flash(_("Coupon %(code)s created", code=coupon.code), "ok")
    return redirect(url_for("coupons.index"))


@bp.post("/flash")
@admin.operator_required
def flash_create():
    forms = _forms()
    form = forms["flash"]
    if not form.validate_on_submit():
        return _page(forms, 400)
    try:
        rules.create_flash_sale(_site_id(), form.sku.data, _fen(form.price.data), _whole(form.cap.data, _("Quantity")),
                                _when(form.starts_at.data), _when(form.ends_at.data),
                                per_member_limit=_whole(form.per_member_limit.data, _("Limit per customer")))
    except ValueError as exc:
        flash(_("Not saved: %(error)s", error=exc), "error")
        return _page(forms, 400)
    flash(_("Flash sale created"), "ok")
    return redirect(url_for("coupons.index"))


@bp.post("/newcomer")
@admin.operator_required
def newcomer_set():
    forms = _forms()
    form = forms["newcomer"]
    if not form.validate_on_submit():
        return _page(forms, 400)
    try:
        rules.set_newcomer_price(_site_id(), form.sku.data, _fen(form.price.data))
    except ValueError as exc:
        flash(_("Not saved: %(error)s", error=exc), "error")
        return _page(forms, 400)
    flash(_("Newcomer price set"), "ok")
    return redirect(url_for("coupons.index"))


@bp.post("/tier")
@admin.operator_required
def tier_set():
    forms = _forms()
    form = forms["tier"]
    if not form.validate_on_submit():
        return _page(forms, 400)
    try:
        rules.set_tier(_site_id(), form.sku.data, _whole(form.min_qty.data, _("Wholesale minimum")),
                       _fen(form.price.data))
    except ValueError as exc:
        flash(_("Not saved: %(error)s", error=exc), "error")
        return _page(forms, 400)
    flash(_("Wholesale price set"), "ok")
    return redirect(url_for("coupons.index"))


_TOGGLES = {"coupon": Coupon, "flash": FlashSale, "newcomer": NewcomerPrice}


@bp.post("/<kind>/<int:row_id>/<any(on, off):state>")
@admin.operator_required
def toggle(kind, row_id, state):
    form = admin.ActionForm()
    if not form.validate_on_submit():
        abort(400)
    if kind == "tier":
        if state != "off" or not QuantityTier.delete().where(QuantityTier.id == row_id).execute():
            abort(404)
        flash(_("Wholesale price deleted"), "ok")
        return redirect(url_for("coupons.index"))
    model = _TOGGLES.get(kind)
    if model is None or not model.update(active=(state == "on")).where(model.id == row_id).execute():
        abort(404)  # another site's row is not in this request's scope
    flash(_("Enabled") if state == "on" else _("Disabled"), "ok")
    return redirect(url_for("coupons.index"))
