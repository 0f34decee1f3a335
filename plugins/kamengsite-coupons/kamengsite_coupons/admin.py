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

from . import rules
from .models import KIND_LABELS, Coupon, FlashSale, NewcomerPrice, QuantityTier

bp = Blueprint("coupons", __name__, url_prefix="/admin/coupons")
bp.after_request(admin._console_headers)
bp.context_processor(admin._console_context)
TEMPLATE = Path(__file__).parent / "templates" / "coupons" / "index.html"
MAX_SKUS = 500
LISTED = 200


class CouponForm(FlaskForm):
    code = StringField("优惠码", validators=[InputRequired("请填写优惠码"), Length(max=32)])
    kind = admin.ChoiceField("类型", choices=[admin._option("fixed", "立减（元）"), admin._option("percent", "折扣（减百分之几）")],
                            default="fixed")
    value = StringField("额度：立减填元，折扣填百分比（如 10 表示减 10%）", validators=[InputRequired("请填写额度")])
    max_discount = StringField("折扣最多减（元，可空）", validators=[Optional()])
    min_spend = StringField("满多少元可用（满减门槛，可空）", validators=[Optional()])
    product_ids = StringField("仅限商品 ID（逗号分隔，可空）", validators=[Optional(), Length(max=500)])
    category_ids = StringField("仅限分类 ID（逗号分隔，可空）", validators=[Optional(), Length(max=500)])
    total_limit = StringField("总共可用次数（0 或空：不限）", validators=[Optional()])
    per_member_limit = StringField("每人可用次数（0 或空：不限）", validators=[Optional()])
    starts_at = StringField("开始时间（UTC，如 2026-11-22 10:00，可空）", validators=[Optional()])
    ends_at = StringField("结束时间（UTC，可空）", validators=[Optional()])
    stackable = BooleanField("可与秒杀价、新人价同时使用")
    members_only = BooleanField("仅限会员")
    note = StringField("备注", validators=[Optional(), Length(max=120)])


class FlashForm(FlaskForm):
    sku = admin.ChoiceField("规格", coerce=int)
    price = StringField("秒杀价（元）", validators=[InputRequired("请填写秒杀价")])
    cap = StringField("秒杀数量（件）", validators=[InputRequired("请填写数量")])
    per_member_limit = StringField("每人限购（件，0 或空：不限）", validators=[Optional()])
    starts_at = StringField("开始时间（UTC）", validators=[InputRequired("请填写开始时间")])
    ends_at = StringField("结束时间（UTC）", validators=[InputRequired("请填写结束时间")])


class NewcomerForm(FlaskForm):
    sku = admin.ChoiceField("规格", coerce=int)
    price = StringField("新人价（元）", validators=[InputRequired("请填写新人价")])


class TierForm(FlaskForm):
    sku = admin.ChoiceField("规格", coerce=int)
    min_qty = StringField("起批数量（件）", validators=[InputRequired("请填写数量")])
    price = StringField("批发单价（元）", validators=[InputRequired("请填写单价")])


def _site_id() -> int:
    return current_site().site_id


def _fen(text, *, blank=0) -> int:
    text = unicodedata.normalize("NFKC", text or "").strip().removeprefix("¥").removesuffix("元").strip()
    if not text:
        return blank
    return admin.parse_yuan(text)


def _whole(text, what) -> int:
    text = unicodedata.normalize("NFKC", text or "").strip()
    if not text:
        return 0
    if not re.fullmatch(r"\d{1,9}", text):
        raise ValueError(f"{what}须为整数")
    return int(text)


def _percent_bp(text) -> int:
    text = unicodedata.normalize("NFKC", text or "").strip().removesuffix("%")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError("折扣请填写百分比，如 10 或 12.5") from None
    if value <= 0 or value >= 100 or value != value.quantize(Decimal("0.01")):
        raise ValueError("折扣须在 0 到 100 之间，最多两位小数")
    return int(value * 100)


def _ids(text) -> list[int]:
    parts = [p for p in re.split(r"[\s,，]+", unicodedata.normalize("NFKC", text or "").strip()) if p]
    if any(not p.isdigit() for p in parts):
        raise ValueError("ID 须为数字，用逗号分隔")
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
        label = f"#{product_id} {product_name} {sku_name}".strip() + f"（售价 ¥{rules.yuan(quote.unit_price_fen)}"
        label += f"，成本 ¥{rules.yuan(cost)}）" if quote.costs else "）"
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
            total_limit=_whole(form.total_limit.data, "总次数"), per_member_limit=_whole(form.per_member_limit.data, "每人次数"),
            starts_at=rules.parse_local(form.starts_at.data), ends_at=rules.parse_local(form.ends_at.data),
            stackable=form.stackable.data, members_only=form.members_only.data, note=form.note.data or "")
    except ValueError as exc:
        flash(f"未保存：{exc}", "error")
        return _page(forms, 400)
    flash(f"已创建优惠码 {coupon.code}", "ok")
    return redirect(url_for("coupons.index"))


@bp.post("/flash")
@admin.operator_required
def flash_create():
    forms = _forms()
    form = forms["flash"]
    if not form.validate_on_submit():
        return _page(forms, 400)
    try:
        rules.create_flash_sale(_site_id(), form.sku.data, _fen(form.price.data), _whole(form.cap.data, "数量"),
                                rules.parse_local(form.starts_at.data), rules.parse_local(form.ends_at.data),
                                per_member_limit=_whole(form.per_member_limit.data, "每人限购"))
    except ValueError as exc:
        flash(f"未保存：{exc}", "error")
        return _page(forms, 400)
    flash("已创建秒杀活动", "ok")
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
        flash(f"未保存：{exc}", "error")
        return _page(forms, 400)
    flash("已设置新人价", "ok")
    return redirect(url_for("coupons.index"))


@bp.post("/tier")
@admin.operator_required
def tier_set():
    forms = _forms()
    form = forms["tier"]
    if not form.validate_on_submit():
        return _page(forms, 400)
    try:
        rules.set_tier(_site_id(), form.sku.data, _whole(form.min_qty.data, "起批数量"), _fen(form.price.data))
    except ValueError as exc:
        flash(f"未保存：{exc}", "error")
        return _page(forms, 400)
    flash("已设置批发价", "ok")
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
        flash("已删除批发价", "ok")
        return redirect(url_for("coupons.index"))
    model = _TOGGLES.get(kind)
    if model is None or not model.update(active=(state == "on")).where(model.id == row_id).execute():
        abort(404)  # another site's row is not in this request's scope
    flash("已启用" if state == "on" else "已停用", "ok")
    return redirect(url_for("coupons.index"))
