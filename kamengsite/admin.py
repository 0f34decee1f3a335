"""The operator console (/admin/): a core plugin, served on every site.

Every site has its own console accounts (``accounts.py``): a login on one site is void on
every other. The catalogue pages below — the main site's operators manage categories,
products and SKUs and import card keys by pasting or uploading a .txt/.csv file — are
``catalogue_required``: on a sub-site they are a 404 unless its level lets it list goods of its own
(sub-sites sell the main catalogue; those own goods come on top).
Accounts live in ``accounts.py`` (two-step login, throttling and sessions in
``account_security.py``); every view here goes through ``operator_required``, every write is a
Flask-WTF form (CSRF) and is recorded by ``audit.py``; no page shows a card key's plaintext except
the audited 查看卡密 page (``admin_orders_keys.py``).

Sessions: the login stores the account id, its ``session_version`` and the login time, and
creates a ``console_session`` row; a new password or ``accounts.end_sessions`` bumps the version
and so voids every copy of the cookie, a log-out ends this session's row, and a session older
than ``SESSION_HOURS`` is refused.
"""

from __future__ import annotations

import codecs
import functools
import re
import tempfile
import time
import unicodedata
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from peewee import fn
from wtforms import (BooleanField, FieldList, Form, FormField, HiddenField, IntegerField, PasswordField, SelectField,
                     StringField, TextAreaField)
from wtforms.validators import InputRequired, Length, NumberRange, ValidationError

try:
    from wtforms.fields.choices import SelectChoice as _option  # WTForms 3.3+: tuples are deprecated
except ImportError:  # pragma: no cover - older WTForms
    def _option(value, label):
        return (value, label)

from . import accounts
from .app import current_site
from .cardkeys import CardKey, check_key_line, import_keys
from .catalog import DELIVERY_ORDERS, KINDS, Category, Product, Sku, create_product
from .crypto import CardKeyCipher, normalize_secret
from .db import database
from .hookspecs import hookimpl
from .models import utcnow
from .ratelimit import limited
from .themes import format_fen

bp = Blueprint("admin", __name__, url_prefix="/admin")

#: Largest key file (or pasted text) one import accepts; ``ADMIN_MAX_UPLOAD`` in the app config overrides it.
MAX_UPLOAD = 20 * 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # the other fields and multipart boundaries around the file
SESSION_KEY = "operator"
SESSION_HOURS = 12
CONSOLE_ROLES = ("operator",)
MAX_SKUS = 50
MAX_PRICE_FEN = 1_000_000_000  # 10,000,000 元
SHOW_INVALID = 100

KIND_LABELS = {"card": "卡密自动发货", "topup": "代充", "manual": "人工发货"}
DELIVERY_LABELS = {"fifo": "先进先出（先导入的先发）", "random": "随机"}
STATUS_LABELS = {"on": "上架", "off": "下架"}
SKU_STATUS_LABELS = {"on": "在售", "off": "停售"}


# -- money -------------------------------------------------------------------------


class PriceError(ValueError):
    pass


_YUAN = re.compile(r"^\d{1,12}(?:\.\d{1,2})?$")
_TOO_PRECISE = re.compile(r"^\d+\.\d{3,}$")


def parse_yuan(text: str) -> int:
    """'15' → 1500, '15.5' → 1550, '15.50' → 1550 fen; PriceError with a message for the operator."""
    value = unicodedata.normalize("NFKC", text or "").strip()  # full-width digits and ￥ too
    value = value.removeprefix("¥").removesuffix("元").strip()
    if not value:
        raise PriceError("请填写价格")
    if value.startswith("-"):
        raise PriceError("价格不能为负数")
    if _TOO_PRECISE.match(value):
        raise PriceError("价格最多两位小数（精确到分）")
    if not _YUAN.match(value):
        raise PriceError("价格格式不对，请填写如 15 或 15.50")
    fen = int(Decimal(value) * 100)
    if fen > MAX_PRICE_FEN:
        raise PriceError(f"价格不能超过 {format_fen(MAX_PRICE_FEN)} 元")
    return fen


_SKU_LINE = re.compile(r"^(?P<name>.+?)[\s,，]+(?P<price>[^\s,，]+)$")


def parse_sku_lines(text: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Lines "规格名 价格" → ([(name, fen)], [errors with line numbers])."""
    skus, errors = [], []
    for number, line in enumerate((text or "").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        match = _SKU_LINE.match(line)
        if not match:
            errors.append(f"第 {number} 行：请写成“规格名 价格”，如“季卡 42.50”")
            continue
        name = match["name"].strip()
        if len(name) > 60:
            errors.append(f"第 {number} 行：规格名最多 60 个字")
            continue
        try:
            skus.append((name, parse_yuan(match["price"])))
        except PriceError as exc:
            errors.append(f"第 {number} 行：{exc}")
    return skus, errors


# -- form fields with Chinese messages ------------------------------------------------


class YuanField(StringField):
    """A price typed in yuan, ``data`` in integer fen; what was typed is shown again on errors."""

    def process_formdata(self, valuelist):
        if valuelist:
            self.data = None
            try:
                self.data = parse_yuan(valuelist[0])
            except PriceError as exc:
                raise ValueError(str(exc)) from None

    def pre_validate(self, form):
        if self.data is None and not self.process_errors:
            raise ValidationError("请填写价格")

    def _value(self):
        if self.raw_data:
            return self.raw_data[0]
        return format_fen(self.data) if isinstance(self.data, int) else ""


class WholeNumberField(IntegerField):
    def process_formdata(self, valuelist):
        if valuelist:
            text = unicodedata.normalize("NFKC", valuelist[0] or "").strip()
            self.data = None
            if not re.fullmatch(r"-?\d{1,9}", text):
                raise ValueError("请填写一个整数")
            self.data = int(text)

    def pre_validate(self, form):
        if self.data is None and not self.process_errors:
            raise ValidationError("请填写一个整数")

    def _value(self):
        if self.raw_data:
            return self.raw_data[0]
        return "" if self.data is None else str(self.data)


class ChoiceField(SelectField):
    def process_formdata(self, valuelist):
        try:
            super().process_formdata(valuelist)
        except ValueError:
            raise ValueError("请选择有效的选项") from None

    def pre_validate(self, form):
        if self.data not in {next(iter(choice)) for choice in self.choices or ()}:
            raise ValidationError("请选择有效的选项")


def _range(low, high):
    return NumberRange(min=low, max=high, message=f"请填写 {low} 到 {high} 之间的整数")


# -- forms -------------------------------------------------------------------------


class LoginForm(FlaskForm):
    username = StringField("用户名", validators=[InputRequired("请输入用户名"), Length(max=64)])
    password = PasswordField("密码", validators=[InputRequired("请输入密码"), Length(max=accounts.MAX_PASSWORD)])


class ActionForm(FlaskForm):
    """A form with nothing but its CSRF token (log-out)."""


class CategoryForm(FlaskForm):
    name = StringField("分类名称", validators=[InputRequired("请填写分类名称"), Length(max=60, message="最多 60 个字")])
    parent = ChoiceField("上级分类", coerce=int, default=0)
    sort = WholeNumberField("排序（小的在前）", default=0, validators=[_range(-9999, 9999)])

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("请填写分类名称")


class SkuRow(Form):
    id = HiddenField()
    name = StringField("规格名", validators=[Length(max=60, message="最多 60 个字")])
    price = YuanField("价格（元）")
    stock = WholeNumberField("库存", default=0, validators=[_range(0, 10_000_000)])
    stock_seen = HiddenField()
    status = ChoiceField("状态", choices=[_option(*item) for item in SKU_STATUS_LABELS.items()], default="on")


class ProductForm(FlaskForm):
    name = StringField("商品名称", validators=[InputRequired("请填写商品名称"), Length(max=120, message="最多 120 个字")])
    category = ChoiceField("分类", coerce=int, default=0)
    kind = ChoiceField("商品类型", choices=[_option(k, KIND_LABELS[k]) for k in KINDS], default="card")
    summary = StringField("一句话简介", validators=[Length(max=255, message="最多 255 个字")])
    description = TextAreaField("详细说明", validators=[Length(max=20000, message="最多 20000 个字")])
    skus = FieldList(FormField(SkuRow), min_entries=1, max_entries=MAX_SKUS)
    more_skus = TextAreaField("添加规格（每行一个：规格名 价格，如“季卡 42.50”）")
    min_qty = WholeNumberField("最少购买数量", default=1, validators=[_range(1, 10000)])
    max_qty = WholeNumberField("最多购买数量（0 为不限）", default=10, validators=[_range(0, 10000)])
    per_buyer_limit = WholeNumberField("每人限购（0 为不限）", default=0, validators=[_range(0, 1_000_000)])
    members_only = BooleanField("仅会员可买")
    delivery_order = ChoiceField("发卡顺序", choices=[_option(d, DELIVERY_LABELS[d]) for d in DELIVERY_ORDERS],
                                 default="fifo")
    loop_key = BooleanField("循环卡密（一个卡密重复出售，库存为计数）")
    low_stock_threshold = WholeNumberField("库存预警阈值（0 为关闭）", default=0, validators=[_range(0, 1_000_000)])
    status = ChoiceField("状态", choices=[_option(*item) for item in STATUS_LABELS.items()], default="on")

    extra_skus: list = ()

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError("请填写商品名称")

    def validate_max_qty(self, field):
        if field.data and isinstance(self.min_qty.data, int) and field.data < self.min_qty.data:
            raise ValidationError("不能小于最少购买数量")

    def validate_more_skus(self, field):
        self.extra_skus, errors = parse_sku_lines(field.data)
        if errors:
            raise ValidationError("；".join(errors[:10]) + ("……" if len(errors) > 10 else ""))
        if len(self.skus.entries) + len(self.extra_skus) > MAX_SKUS:
            raise ValidationError(f"一个商品最多 {MAX_SKUS} 个规格")


class ImportForm(FlaskForm):
    sku = ChoiceField("导入到规格", coerce=int)
    text = TextAreaField("粘贴卡密（每行一个）")
    file = FileField("或上传文件（.txt 每行一个；.csv 取第一列；UTF-8 或 GB18030）")
    skip_header = BooleanField("文件第一行是表头，跳过")


class LoopKeyForm(FlaskForm):
    sku = ChoiceField("规格", coerce=int)
    secret = PasswordField("循环卡密（每个买家都会收到这一个）", validators=[InputRequired("请填写卡密")])


# -- sessions ------------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _site_id() -> int:
    return current_site().site_id


def _current_operator():
    data = session.get(SESSION_KEY)
    if data is None:
        return None
    try:
        account_id, version, since = int(data["id"]), int(data["v"]), float(data["t"])
    except (TypeError, KeyError, ValueError):
        session.pop(SESSION_KEY, None)
        return None
    fresh = 0 <= _now() - since < SESSION_HOURS * 3600
    account = accounts.Account.get_or_none(accounts.Account.id == account_id) if fresh else None
    if (account is None or account.site_id != _site_id() or account.session_version != version
            or account.role not in CONSOLE_ROLES):
        session.pop(SESSION_KEY, None)
        return None
    return account


def is_main_site() -> bool:
    site = current_site()
    return site.slug == site.instance.main_site


def main_site_only(view):
    """A page of the operator's console: a 404 on sub-sites, signed in or not (nothing to learn there)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not is_main_site():
            abort(404)
        return view(*args, **kwargs)

    return wrapper


def sells_own_goods() -> bool:
    """Whether this site keeps a catalogue of its own: the main site, or a sub-site whose level
    lets it list its own goods (the platform keeping the level's commission on them)."""
    if is_main_site():
        return True
    from .pricing import Pricer

    return Pricer.for_site(_site_id()).sells_own_goods


def catalogue_required(view):
    """A catalogue page (products, categories, keys): a 404 on sites without a catalogue of their
    own, signed in or not (nothing to learn there). Each site only ever sees its own products."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not sells_own_goods():
            abort(404)
        return view(*args, **kwargs)

    return wrapper


def operator_required(view):
    """Every console view: a signed-in operator of this site, or off to the login page."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        account = _current_operator()
        if account is None:
            target = request.path if request.method == "GET" else None
            return redirect(url_for("admin.login", next=target))
        g.operator = account
        return view(*args, **kwargs)

    return wrapper


def _safe_next(target: str | None) -> str:
    if target:
        parts = urlsplit(target)
        if (not parts.scheme and not parts.netloc and parts.path.startswith("/admin/")
                and "\\" not in target and "//" not in target):
            return target
    return url_for("admin.products")


@bp.after_request
def _console_headers(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    return response


def console_blueprint(name: str, import_name: str, url_prefix: str) -> Blueprint:
    """A blueprint for console pages (plugins' too): the console's headers (no-store, no framing,
    no script) and the layout's context (log-out form, menu). Views still need ``operator_required``."""
    blueprint = Blueprint(name, import_name, url_prefix=url_prefix)
    blueprint.after_request(_console_headers)
    blueprint.context_processor(_console_context)
    return blueprint


@bp.context_processor
def _console_context():
    # console_main: the layout's menu shows the main site's pages or the sub-site owner's.
    main = is_main_site()
    return {"logout_form": ActionForm(formdata=None), "console_main": main,
            "console_catalogue": main or (g.get("operator") is not None and sells_own_goods()),
            "plugin_menu": _plugin_menu() if g.get("operator") is not None else []}


def _plugin_menu() -> list[tuple[str, str]]:
    """Console links the site's plugins add (``admin_menu``): only endpoints this app really has."""
    from . import hooks

    site = current_site()
    answers = hooks.call_isolated(current_app.extensions["kamengsite.hook"].admin_menu, "admin_menu",
                                  site_id=site.site_id, site=site.config)
    return [(str(label), endpoint) for answer in answers for label, endpoint in answer or ()
            if endpoint in current_app.view_functions]


@bp.errorhandler(413)
def _too_large(exc):
    back = request.path if request.endpoint == "admin.keys" else url_for("admin.products")
    return render_template("admin/too_large.html", limit=_size_label(_upload_limit()), back=back), 413


def _upload_limit() -> int:
    return int(current_app.config.get("ADMIN_MAX_UPLOAD", MAX_UPLOAD))


def _size_label(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):g} MB"
    return f"{max(1, size // 1024)} KB"


def _raise_upload_limits():
    """Before anything reads the form (the CSRF check does): the key import may send a large body."""
    if request.endpoint == "admin.keys":
        request.max_content_length = _upload_limit() + FORM_OVERHEAD
        request.max_form_memory_size = _upload_limit()


# -- login / logout ------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
@limited("login", "10/minute")
def login():
    # Throttling, the second step (TOTP) and the session row: admin_account / account_security.
    from . import account_security, admin_account

    form = LoginForm()
    if form.validate_on_submit():
        check = account_security.check_password_login(_site_id(), form.username.data, form.password.data,
                                                      request.remote_addr or "-")
        if check.wait_until is not None:
            form.password.errors.append(account_security.wait_message(check.wait_until))
        elif check.ok and check.account.role in CONSOLE_ROLES:
            target = _safe_next(request.args.get("next"))
            if account_security.two_factor_enabled(_site_id(), check.account.id):
                return admin_account.ask_for_code(check.account, target)
            admin_account.sign_in(check.account)
            return redirect(target)
        else:
            form.password.errors.append("用户名或密码错误")
    elif _current_operator() is not None and request.method == "GET":
        return redirect(url_for("admin.products"))
    return render_template("admin/login.html", form=form)


@bp.post("/logout")
def logout():
    form = ActionForm()
    if form.validate_on_submit():
        from .account_security import end_token

        data = session.get(SESSION_KEY)
        if isinstance(data, dict):
            end_token(_site_id(), data.get("s"))  # copies of this cookie die with its session row
        session.clear()
        flash("已退出登录", "ok")
    return redirect(url_for("admin.login"))


# -- catalogue pages ------------------------------------------------------------------


def _categories() -> list[Category]:
    return list(Category.select().where(Category.site == _site_id()).order_by(Category.sort, Category.id))


def _category_labels(categories) -> dict[int, str]:
    by_id = {c.id: c for c in categories}

    def label(category, depth=0):
        parent = by_id.get(category.parent_id)
        if parent is None or depth > 5:
            return category.name
        return f"{label(parent, depth + 1)} / {category.name}"

    return {c.id: label(c) for c in categories}


def _product_or_404(product_id: int) -> Product:
    product = Product.get_or_none((Product.id == product_id) & (Product.site == _site_id()))
    if product is None:
        abort(404)
    return product


def _skus(product_id: int) -> list[Sku]:
    return list(Sku.select().where(Sku.product == product_id).order_by(Sku.sort, Sku.id))


def _uses_key_rows(kind: str, loop_key: bool) -> bool:
    return kind == "card" and not loop_key


@bp.get("/products")
@bp.get("/")  # the main site's console opens here; on sub-sites "/" is the owner's overview
@catalogue_required
@operator_required
def products():
    items = list(Product.select().where(Product.site == _site_id()).order_by(Product.sort, Product.id).limit(1000))
    skus: dict[int, list[Sku]] = {}
    if items:
        for sku in Sku.select().where(Sku.product.in_([p.id for p in items])).order_by(Sku.sort, Sku.id):
            skus.setdefault(sku.product_id, []).append(sku)
    labels = _category_labels(_categories())
    return render_template("admin/products.html", products=items, skus=skus, category_labels=labels,
                           kinds=KIND_LABELS, statuses=STATUS_LABELS)


@bp.route("/categories", methods=["GET", "POST"])
@catalogue_required
@operator_required
def categories():
    existing = _categories()
    labels = _category_labels(existing)
    form = CategoryForm()
    form.parent.choices = [_option(0, "（无，顶级分类）")] + [_option(c.id, labels[c.id]) for c in existing]
    if form.validate_on_submit():
        Category.create(site=_site_id(), name=form.name.data, parent=form.parent.data or None, sort=form.sort.data)
        flash(f"已创建分类“{form.name.data}”", "ok")
        return redirect(url_for("admin.categories"))
    counts = dict(Product.select(Product.category, fn.COUNT(Product.id)).where(Product.site == _site_id())
                  .group_by(Product.category).tuples())
    return render_template("admin/categories.html", form=form, categories=existing, labels=labels, counts=counts)


def _category_choices(form: ProductForm):
    existing = _categories()
    labels = _category_labels(existing)
    form.category.choices = [_option(0, "（不分类）")] + [_option(c.id, labels[c.id]) for c in existing]


def _product_fields(form: ProductForm) -> dict:
    return {
        "name": form.name.data, "category": form.category.data or None, "kind": form.kind.data,
        "summary": (form.summary.data or "").strip(), "description": form.description.data or "",
        "min_qty": form.min_qty.data, "max_qty": form.max_qty.data, "per_buyer_limit": form.per_buyer_limit.data,
        "members_only": bool(form.members_only.data), "delivery_order": form.delivery_order.data,
        "loop_key": bool(form.loop_key.data), "low_stock_threshold": form.low_stock_threshold.data,
        "status": form.status.data,
    }


@bp.route("/products/new", methods=["GET", "POST"])
@catalogue_required
@operator_required
def product_new():
    form = ProductForm()
    _category_choices(form)
    if form.validate_on_submit():
        fields = _product_fields(form)
        rows = [((row.form.name.data or "").strip(), row.form.price.data) for row in form.skus]
        counter = not _uses_key_rows(fields["kind"], fields["loop_key"])
        name, kind, category = fields.pop("name"), fields.pop("kind"), fields.pop("category")
        with database.atomic():
            product = create_product(_site_id(), name, rows[0][1], category=category, kind=kind,
                                     skus=rows + list(form.extra_skus), **fields)
            for sku, row in zip(_skus(product.id), form.skus):
                changes = {"status": row.form.status.data}
                if counter:
                    changes["stock"] = row.form.stock.data
                Sku.update(**changes).where(Sku.id == sku.id).execute()
        flash(f"已创建商品“{product.name}”", "ok")
        if _uses_key_rows(kind, fields["loop_key"]):
            return redirect(url_for("admin.keys", product_id=product.id))
        return redirect(url_for("admin.product_edit", product_id=product.id))
    return render_template("admin/product_form.html", form=form, product=None, key_rows=False)


class _Refused(Exception):
    """Undo the edit's transaction; the reason is already on the form."""


@bp.route("/products/<int:product_id>/edit", methods=["GET", "POST"])
@catalogue_required
@operator_required
def product_edit(product_id):
    product = _product_or_404(product_id)
    skus = _skus(product.id)
    initial = {name: getattr(product, name) for name in (
        "name", "kind", "summary", "description", "min_qty", "max_qty", "per_buyer_limit", "members_only",
        "delivery_order", "loop_key", "low_stock_threshold", "status")}
    initial["category"] = product.category_id or 0
    initial["skus"] = [{"id": str(s.id), "name": s.name, "price": s.price_fen, "stock": s.stock,
                        "stock_seen": str(s.stock), "status": s.status} for s in skus]
    form = ProductForm(data=initial)
    _category_choices(form)
    key_rows = _uses_key_rows(product.kind, product.loop_key)
    if form.validate_on_submit() and _save_product(product, skus, form):
        flash(f"已保存“{form.name.data}”", "ok")
        from .alerts import check_low_stock

        check_low_stock(product.id, instance=current_site().instance)
        return redirect(url_for("admin.product_edit", product_id=product.id))
    sold = {str(s.id): s.sold for s in skus}
    return render_template("admin/product_form.html", form=form, product=product, key_rows=key_rows, sold=sold)


def _save_product(product: Product, skus: list[Sku], form: ProductForm) -> bool:
    by_id = {str(s.id): s for s in skus}
    submitted = [row.form.id.data for row in form.skus]
    if sorted(submitted) != sorted(by_id):
        flash("规格列表在你编辑期间变了，请刷新页面后重试", "error")
        return False
    fields = _product_fields(form)
    mode_before = (product.kind, product.loop_key)
    mode_after = (fields["kind"], fields["loop_key"])
    if mode_after != mode_before and CardKey.select().where(CardKey.sku.in_([s.id for s in skus])).exists():
        form.kind.errors.append("该商品已有卡密，不能再修改商品类型或循环卡密设置")
        return False
    counter = not _uses_key_rows(*mode_after)
    try:
        with database.atomic():
            Product.update(**fields, updated_at=utcnow()).where(
                (Product.id == product.id) & (Product.site == _site_id())).execute()
            for row in form.skus:
                sku = by_id[row.form.id.data]
                Sku.update(name=(row.form.name.data or "").strip(), price_fen=row.form.price.data,
                           status=row.form.status.data).where(Sku.id == sku.id).execute()
                if counter and row.form.stock.raw_data and str(row.form.stock.data) != row.form.stock_seen.data:
                    # Only if nobody bought meanwhile: the operator set the number they saw change.
                    seen = _int_or_none(row.form.stock_seen.data)
                    changed = Sku.update(stock=row.form.stock.data).where(
                        (Sku.id == sku.id) & (Sku.stock == seen)).execute()
                    if not changed:
                        now = Sku.get_by_id(sku.id).stock
                        row.form.stock.errors.append(f"库存在你编辑期间变成了 {now}，请核对后再保存")
                        raise _Refused
            if not counter and not _uses_key_rows(*mode_before):
                # Into card-key mode with no keys yet: stock is the count of available keys, none.
                Sku.update(stock=0).where(Sku.product == product.id).execute()
            next_sort = max([s.sort for s in skus], default=-1) + 1
            for offset, (name, price_fen) in enumerate(form.extra_skus):
                Sku.create(product=product.id, name=name, price_fen=price_fen, sort=next_sort + offset)
    except _Refused:
        return False
    return True


def _int_or_none(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


# -- card keys ------------------------------------------------------------------------


_REASONS = {
    "contains control characters": "含有控制字符",
    "not valid UTF-8": "不是有效的 UTF-8 或 GB18030 文本",
}


def _reason(text: str) -> str:
    if text.startswith("longer than "):
        return text.replace("longer than ", "超过 ").replace(" characters", " 个字符")
    return _REASONS.get(text, text)


def _cipher() -> CardKeyCipher:
    cipher = current_app.extensions.get("kamengsite.cipher")
    if cipher is None:
        cipher = current_app.extensions["kamengsite.cipher"] = CardKeyCipher.from_instance(current_site().instance)
    return cipher


class _TooLarge(Exception):
    pass


def _spool_upload(storage, suffix: str, limit: int, folder: str) -> Path:
    """Copy an upload to ``folder`` as UTF-8 (GB18030 files are converted); lines and their numbers unchanged.

    A file that is neither valid UTF-8 nor valid GB18030 is kept as it is: its
    undecodable lines are then reported as invalid, one by one.
    """
    raw = Path(folder) / f"upload{suffix}"
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, size = True, 0
    with open(raw, "wb") as out:
        while chunk := storage.stream.read(1 << 16):
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            out.write(chunk)
            if utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    if utf8 or _starts_with_utf8_bom(raw):  # a UTF-8 file with a few broken lines is still UTF-8
        return raw
    converted = Path(folder) / f"converted{suffix}"
    decoder = codecs.getincrementaldecoder("gb18030")()
    try:
        with open(raw, "rb") as src, open(converted, "w", encoding="utf-8", newline="") as dst:
            while chunk := src.read(1 << 16):
                dst.write(decoder.decode(chunk))
            dst.write(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        return raw
    return converted


def _starts_with_utf8_bom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(3) == codecs.BOM_UTF8


def _import_upload(product: Product, sku: Sku, storage, skip_header: bool):
    from .keys_cli import import_key_file

    suffix = Path(storage.filename or "").suffix.lower()
    with tempfile.TemporaryDirectory(prefix="kamengsite-import-") as folder:
        path = _spool_upload(storage, suffix, _upload_limit(), folder)
        _, _, report = import_key_file(current_site().instance, product.id, path, sku_id=sku.id,
                                       skip_header=skip_header, cipher=_cipher())
    return report


def _import_paste(product: Product, sku: Sku, text: str):
    from .alerts import check_low_stock

    report = import_keys(sku, text.splitlines(), _cipher())
    check_low_stock(product.id, instance=current_site().instance)
    return report


def _sku_choices(skus) -> list[tuple[int, str]]:
    return [_option(s.id, f"{s.name or '默认规格'}（{format_fen(s.price_fen)} 元，库存 {s.stock}）") for s in skus]


def _loop_key_status(skus) -> dict[int, bool]:
    ids = [s.id for s in skus]
    if not ids:
        return {}
    present = {sku_id for (sku_id,) in CardKey.select(CardKey.sku).where(
        CardKey.sku.in_(ids) & (CardKey.status != "void")).tuples()}
    return {sku_id: sku_id in present for sku_id in ids}


@bp.route("/products/<int:product_id>/keys", methods=["GET", "POST"])
@catalogue_required
@operator_required
def keys(product_id):
    product = _product_or_404(product_id)
    skus = _skus(product.id)
    choices = _sku_choices(skus)
    report = None
    if product.kind != "card":
        return render_template("admin/keys.html", product=product, skus=skus, form=None, loop_form=None,
                               report=None, kinds=KIND_LABELS)
    if product.loop_key:
        return _loop_key_page(product, skus, choices)
    form = ImportForm()
    form.sku.choices = choices
    if form.validate_on_submit():
        text = form.text.data or ""
        upload = form.file.data
        sku = next(s for s in skus if s.id == form.sku.data)
        if upload and text.strip():
            form.file.errors.append("请只选一种方式：粘贴或上传文件")
        elif upload:
            suffix = Path(upload.filename or "").suffix.lower()
            if suffix not in (".txt", ".csv"):
                form.file.errors.append("只支持 .txt 或 .csv 文件")
            else:
                try:
                    report = _import_upload(product, sku, upload, bool(form.skip_header.data))
                except _TooLarge:
                    form.file.errors.append(f"文件太大：上限 {_size_label(_upload_limit())}，请拆分后分批导入")
        elif text.strip():
            report = _import_paste(product, sku, text)
        else:
            form.text.errors.append("请粘贴卡密，或选择要上传的文件")
        if report is not None:
            skus = _skus(product.id)
            form.sku.choices = _sku_choices(skus)
    form.text.data = ""  # keys are never echoed back into the page
    invalid = [(number, _reason(reason)) for number, reason in (report.invalid if report else [])[:SHOW_INVALID]]
    return render_template("admin/keys.html", product=product, skus=skus, form=form, loop_form=None,
                           report=report, invalid=invalid, show_invalid=SHOW_INVALID, kinds=KIND_LABELS)


def _loop_key_page(product: Product, skus: list[Sku], choices):
    form = LoopKeyForm()
    form.sku.choices = choices
    status = _loop_key_status(skus)
    if form.validate_on_submit():
        secret = normalize_secret(form.secret.data or "")
        problem = check_key_line(secret) if secret else "请填写卡密"
        if problem:
            form.secret.errors.append(_reason(problem))
        elif status.get(form.sku.data):
            form.sku.errors.append("这个规格已经设置了循环卡密（更换会影响已售订单，将在完整后台中提供）")
        else:
            cipher = _cipher()
            CardKey.create(sku=form.sku.data, sealed=cipher.seal(secret, form.sku.data),
                           digest=cipher.digest(secret), batch="loop")
            flash("循环卡密已设置", "ok")
            return redirect(url_for("admin.keys", product_id=product.id))
    form.secret.data = ""
    return render_template("admin/keys.html", product=product, skus=skus, form=None, loop_form=form,
                           loop_status=status, report=None, kinds=KIND_LABELS)


# -- plugin ---------------------------------------------------------------------------


@hookimpl(trylast=True)
def prepare_site_app(app, site):
    """Register the console on every site (login and log-out with the site's own accounts).

    ``trylast``: on a sub-site, the owner's console (``admin_sites``) claims ``/admin/``,
    ``/admin/login`` and ``/admin/logout`` first — Flask serves the first rule registered —
    so these views are its fallback there; the catalogue pages are ``catalogue_required``.
    """
    if app.extensions.get("kamengsite.site") is None:
        return
    app.config.setdefault("ADMIN_MAX_UPLOAD", MAX_UPLOAD)
    # First of the app's before-request functions: the limits must be set before the CSRF check reads the form.
    app.before_request_funcs.setdefault(None, []).insert(0, _raise_upload_limits)
    app.register_blueprint(bp)
