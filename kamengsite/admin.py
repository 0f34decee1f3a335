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
from .background import ConsoleJob
from .cardkeys import CardKey, check_key_line, import_keys
from .catalog import DELIVERY_ORDERS, KINDS, Category, Product, Sku, create_product
from .crypto import CardKeyCipher, normalize_secret
from .db import database
from .hookspecs import hookimpl
from .i18n import _, _l, format_money
from .models import utcnow
from .ratelimit import limited
from .themes import format_fen

bp = Blueprint("admin", __name__, url_prefix="/admin")

#: Largest key file (or pasted text) one import accepts; ``ADMIN_MAX_UPLOAD`` in the app config overrides it.
MAX_UPLOAD = 64 * 1024 * 1024  # a million keys of ~30 characters, with room
#: A key file larger than this is imported by the worker (``background.py``), with a progress page;
#: smaller ones at once, with the report on the same page.
BACKGROUND_IMPORT_BYTES = 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # the other fields and multipart boundaries around the file
SESSION_KEY = "operator"
SESSION_HOURS = 12
CONSOLE_ROLES = ("operator", "staff")  # what staff may use: permissions.py
MAX_SKUS = 50
MAX_PRICE_FEN = 1_000_000_000  # 10,000,000 元
SHOW_INVALID = 100

KIND_LABELS = {"card": _l("Card keys, delivered automatically"), "topup": _l("Top-up service"),
               "manual": _l("Manual delivery")}
DELIVERY_LABELS = {"fifo": _l("First in, first out (first imported, first delivered)"), "random": _l("Random")}
STATUS_LABELS = {"on": _l("Listed"), "off": _l("Unlisted")}
SKU_STATUS_LABELS = {"on": _l("On sale"), "off": _l("Not for sale")}
_MAX_CHARS = _l("No more than %(max)d characters")  # Length() fills in %(max)d


# -- money -------------------------------------------------------------------------


class PriceError(ValueError):
    pass


_YUAN = re.compile(r"^\d{1,12}(?:\.\d{1,2})?$")
_TOO_PRECISE = re.compile(r"^\d+\.\d{3,}$")


def parse_yuan(text: str) -> int:
    """'15' → 1500, '15.5' → 1550, '15.50' → 1550 fen; PriceError with a message for the operator."""
    value = unicodedata.normalize("NFKC", text or "").strip()  # full-width digits and ￥ too
    value = value.removeprefix("¥").removesuffix("元").strip()  # i18n: keep - how prices are typed
    if not value:
        raise PriceError(_("Enter a price"))
    if value.startswith("-"):
        raise PriceError(_("The price cannot be negative"))
    if _TOO_PRECISE.match(value):
        raise PriceError(_("A price has at most two decimal places (whole fen)"))
    if not _YUAN.match(value):
        raise PriceError(_("Invalid price: write it like 15 or 15.50"))
    fen = int(Decimal(value) * 100)
    if fen > MAX_PRICE_FEN:
        raise PriceError(_("The price cannot exceed ¥%(amount)s", amount=format_money(MAX_PRICE_FEN)))
    return fen


_SKU_LINE = re.compile(r"^(?P<name>.+?)[\s,，]+(?P<price>[^\s,，]+)$")  # i18n: keep - full-width commas too


def parse_sku_lines(text: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Lines "规格名 价格" → ([(name, fen)], [errors with line numbers])."""
    skus, errors = [], []
    for number, line in enumerate((text or "").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        match = _SKU_LINE.match(line)
        if not match:
            errors.append(_('Line %(line)s: write it as "name price", e.g. "Quarterly 42.50"', line=number))
            continue
        name = match["name"].strip()
        if len(name) > 60:
            errors.append(_("Line %(line)s: a variant name has at most 60 characters", line=number))
            continue
        try:
            skus.append((name, parse_yuan(match["price"])))
        except PriceError as exc:
            errors.append(_("Line %(line)s: %(error)s", line=number, error=exc))
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
            raise ValidationError(_("Enter a price"))

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
                raise ValueError(_("Enter a whole number"))
            self.data = int(text)

    def pre_validate(self, form):
        if self.data is None and not self.process_errors:
            raise ValidationError(_("Enter a whole number"))

    def _value(self):
        if self.raw_data:
            return self.raw_data[0]
        return "" if self.data is None else str(self.data)


class ChoiceField(SelectField):
    def process_formdata(self, valuelist):
        try:
            super().process_formdata(valuelist)
        except ValueError:
            raise ValueError(_("Choose a valid option")) from None

    def pre_validate(self, form):
        if self.data not in {next(iter(choice)) for choice in self.choices or ()}:
            raise ValidationError(_("Choose a valid option"))


def _range(low, high):
    return NumberRange(min=low, max=high, message=_l("Enter a whole number from %(min)s to %(max)s"))


# -- forms -------------------------------------------------------------------------


class LoginForm(FlaskForm):
    username = StringField(_l("Username"), validators=[InputRequired(_l("Enter a username")), Length(max=64)])
    password = PasswordField(_l("Password"), validators=[InputRequired(_l("Enter your password")),
                                                         Length(max=accounts.MAX_PASSWORD)])


class ActionForm(FlaskForm):
    """A form with nothing but its CSRF token (log-out)."""


class CategoryForm(FlaskForm):
    name = StringField(_l("Category name"), validators=[InputRequired(_l("Enter a category name")),
                                                        Length(max=60, message=_MAX_CHARS)])
    parent = ChoiceField(_l("Parent category"), coerce=int, default=0)
    sort = WholeNumberField(_l("Sort order (smaller first)"), default=0, validators=[_range(-9999, 9999)])

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError(_("Enter a category name"))


class SkuRow(Form):
    id = HiddenField()
    name = StringField(_l("Variant name"), validators=[Length(max=60, message=_MAX_CHARS)])
    price = YuanField(_l("Price (¥)"))
    stock = WholeNumberField(_l("Stock"), default=0, validators=[_range(0, 10_000_000)])
    stock_seen = HiddenField()
    status = ChoiceField(_l("Status"), choices=[_option(*item) for item in SKU_STATUS_LABELS.items()], default="on")


class ProductForm(FlaskForm):
    name = StringField(_l("Product name"), validators=[InputRequired(_l("Enter a product name")),
                                                       Length(max=120, message=_MAX_CHARS)])
    category = ChoiceField(_l("Category"), coerce=int, default=0)
    kind = ChoiceField(_l("Product type"), choices=[_option(k, KIND_LABELS[k]) for k in KINDS], default="card")
    summary = StringField(_l("One-line summary"), validators=[Length(max=255, message=_MAX_CHARS)])
    description = TextAreaField(_l("Full description"), validators=[Length(max=20000, message=_MAX_CHARS)])
    skus = FieldList(FormField(SkuRow), min_entries=1, max_entries=MAX_SKUS)
    more_skus = TextAreaField(_l('Add variants (one per line: name and price, e.g. "Quarterly 42.50")'))
    min_qty = WholeNumberField(_l("Minimum quantity"), default=1, validators=[_range(1, 10000)])
    max_qty = WholeNumberField(_l("Maximum quantity (0: no limit)"), default=10, validators=[_range(0, 10000)])
    per_buyer_limit = WholeNumberField(_l("Limit per buyer (0: no limit)"), default=0,
                                       validators=[_range(0, 1_000_000)])
    members_only = BooleanField(_l("Members only"))
    delivery_order = ChoiceField(_l("Key delivery order"),
                                 choices=[_option(d, DELIVERY_LABELS[d]) for d in DELIVERY_ORDERS], default="fifo")
    loop_key = BooleanField(_l("Loop key (one key sold again and again; the stock is a counter)"))
    low_stock_threshold = WholeNumberField(_l("Low-stock alert threshold (0: off)"), default=0,
                                           validators=[_range(0, 1_000_000)])
    status = ChoiceField(_l("Status"), choices=[_option(*item) for item in STATUS_LABELS.items()], default="on")

    extra_skus: list = ()

    def validate_name(self, field):
        field.data = (field.data or "").strip()
        if not field.data:
            raise ValidationError(_("Enter a product name"))

    def validate_max_qty(self, field):
        if field.data and isinstance(self.min_qty.data, int) and field.data < self.min_qty.data:
            raise ValidationError(_("Cannot be less than the minimum quantity"))

    def validate_more_skus(self, field):
        self.extra_skus, errors = parse_sku_lines(field.data)
        if errors:
            # i18n: joins the error messages of several lines
            shown = _("; ").join(errors[:10])
            raise ValidationError(_("%(errors)s…", errors=shown) if len(errors) > 10 else shown)
        if len(self.skus.entries) + len(self.extra_skus) > MAX_SKUS:
            raise ValidationError(_("A product has at most %(num)s variants", num=MAX_SKUS))


class ImportForm(FlaskForm):
    sku = ChoiceField(_l("Import into variant"), coerce=int)
    text = TextAreaField(_l("Paste card keys (one per line)"))
    file = FileField(_l("Or upload a file (.txt: one key per line; .csv: the first column; UTF-8 or GB18030)"))
    skip_header = BooleanField(_l("The file's first line is a header: skip it"))


class LoopKeyForm(FlaskForm):
    sku = ChoiceField(_l("Variant"), coerce=int)
    secret = PasswordField(_l("Loop key (every buyer receives this same key)"),
                           validators=[InputRequired(_l("Enter the card key"))])


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
    return url_for("admin.home")


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
    from .permissions import allowed, area_of

    views, account = current_app.view_functions, g.get("operator")
    return [(str(label), endpoint) for answer in answers for label, endpoint in answer or ()
            if endpoint in views and allowed(account, area_of(endpoint, views[endpoint]))]


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
            form.password.errors.append(_("Wrong username or password"))
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
        flash(_("You have signed out"), "ok")
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
@bp.get("/", endpoint="home")  # the main site's console opens here (on the dashboard); on sub-sites "/" is the owner's overview
@catalogue_required
@operator_required
def products():
    if request.endpoint == "admin.home":
        return _landing()
    items = list(Product.select().where(Product.site == _site_id()).order_by(Product.sort, Product.id).limit(1000))
    skus: dict[int, list[Sku]] = {}
    if items:
        for sku in Sku.select().where(Sku.product.in_([p.id for p in items])).order_by(Sku.sort, Sku.id):
            skus.setdefault(sku.product_id, []).append(sku)
    labels = _category_labels(_categories())
    return render_template("admin/products.html", products=items, skus=skus, category_labels=labels,
                           kinds=KIND_LABELS, statuses=STATUS_LABELS)


def _landing():
    """The main site's console opens on the dashboard; a staff member without it, on their first area."""
    from .permissions import can, first_allowed_endpoint

    if not can("dashboard"):
        return redirect(first_allowed_endpoint(g.operator))
    return current_app.view_functions["admin_dashboard.dashboard_page"]()


@bp.route("/categories", methods=["GET", "POST"])
@catalogue_required
@operator_required
def categories():
    existing = _categories()
    labels = _category_labels(existing)
    form = CategoryForm()
    form.parent.choices = [_option(0, _("(none: a top-level category)"))] + [_option(c.id, labels[c.id]) for c in existing]
    if form.validate_on_submit():
        Category.create(site=_site_id(), name=form.name.data, parent=form.parent.data or None, sort=form.sort.data)
        flash(_('Category "%(name)s" created', name=form.name.data), "ok")
        return redirect(url_for("admin.categories"))
    counts = dict(Product.select(Product.category, fn.COUNT(Product.id)).where(Product.site == _site_id())
                  .group_by(Product.category).tuples())
    return render_template("admin/categories.html", form=form, categories=existing, labels=labels, counts=counts)


def _category_choices(form: ProductForm):
    existing = _categories()
    labels = _category_labels(existing)
    form.category.choices = [_option(0, _("(no category)"))] + [_option(c.id, labels[c.id]) for c in existing]


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
        flash(_('Product "%(name)s" created', name=product.name), "ok")
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
        flash(_('Saved "%(name)s"', name=form.name.data), "ok")
        from .alerts import check_low_stock

        check_low_stock(product.id, instance=current_site().instance)
        return redirect(url_for("admin.product_edit", product_id=product.id))
    sold = {str(s.id): s.sold for s in skus}
    return render_template("admin/product_form.html", form=form, product=product, key_rows=key_rows, sold=sold)


def _save_product(product: Product, skus: list[Sku], form: ProductForm) -> bool:
    by_id = {str(s.id): s for s in skus}
    submitted = [row.form.id.data for row in form.skus]
    if sorted(submitted) != sorted(by_id):
        flash(_("The variant list changed while you were editing: reload the page and try again"), "error")
        return False
    fields = _product_fields(form)
    mode_before = (product.kind, product.loop_key)
    mode_after = (fields["kind"], fields["loop_key"])
    if mode_after != mode_before and CardKey.select().where(CardKey.sku.in_([s.id for s in skus])).exists():
        form.kind.errors.append(_("This product has card keys already: its type and loop key setting "
                                  "can no longer change"))
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
                        row.form.stock.errors.append(
                            _("The stock changed to %(stock)s while you were editing: check it and save again",
                              stock=now))
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
    "contains control characters": _l("Contains control characters"),
    "not valid UTF-8": _l("Not valid UTF-8 or GB18030 text"),
}
_LONGER = re.compile(r"^longer than (\d+) characters$")


def _reason(text: str) -> str:
    """A reason of ``check_key_line`` / ``KeyFile`` (English, for the CLI too) in the operator's language."""
    longer = _LONGER.match(text)
    if longer:
        return _("Longer than %(num)s characters", num=longer.group(1))
    return str(_REASONS.get(text, text))


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
    """The import's report, or for a file over ``BACKGROUND_IMPORT_BYTES`` the background job doing it."""
    from . import background
    from .keys_cli import import_key_file

    site = current_site()
    suffix = Path(storage.filename or "").suffix.lower()
    with tempfile.TemporaryDirectory(prefix="kamengsite-import-", dir=background.work_dir(site.instance)) as folder:
        path = _spool_upload(storage, suffix, _upload_limit(), folder)
        if path.stat().st_size > BACKGROUND_IMPORT_BYTES:
            return background.start_key_import(site.instance, site.site_id, g.operator.id, product.id, sku.id,
                                               path, skip_header)
        _, _, report = import_key_file(site.instance, product.id, path, sku_id=sku.id,
                                       skip_header=skip_header, cipher=_cipher())
    return report


def _import_paste(product: Product, sku: Sku, text: str):
    from .alerts import check_low_stock

    report = import_keys(sku, text.splitlines(), _cipher())
    check_low_stock(product.id, instance=current_site().instance)
    return report


def _sku_choices(skus) -> list[tuple[int, str]]:
    return [_option(s.id, _("%(name)s (¥%(price)s, stock %(stock)s)", name=s.name or _("Default variant"),
                            price=format_money(s.price_fen), stock=s.stock)) for s in skus]


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
            form.file.errors.append(_("Paste keys or upload a file, not both"))
        elif upload:
            suffix = Path(upload.filename or "").suffix.lower()
            if suffix not in (".txt", ".csv"):
                form.file.errors.append(_("Only .txt and .csv files can be imported"))
            else:
                try:
                    report = _import_upload(product, sku, upload, bool(form.skip_header.data))
                    if isinstance(report, ConsoleJob):  # a large file: the worker imports it, with progress
                        return redirect(url_for("admin_jobs.show", job_id=report.id))
                except _TooLarge:
                    form.file.errors.append(_("File too large: the limit is %(limit)s. Split it and import the "
                                              "parts one by one", limit=_size_label(_upload_limit())))
        elif text.strip():
            report = _import_paste(product, sku, text)
        else:
            form.text.errors.append(_("Paste card keys, or choose a file to upload"))
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
        problem = check_key_line(secret) if secret else _("Enter the card key")
        if problem:
            form.secret.errors.append(_reason(problem))
        elif status.get(form.sku.data):
            form.sku.errors.append(_("This variant has its loop key already (changing it would affect the orders "
                                     "sold; the full console will offer it)"))
        else:
            cipher = _cipher()
            CardKey.create(sku=form.sku.data, sealed=cipher.seal(secret, form.sku.data),
                           digest=cipher.digest(secret), batch="loop")
            flash(_("Loop key set"), "ok")
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
