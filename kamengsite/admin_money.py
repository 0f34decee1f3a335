"""The money pages of the console: a core plugin, on every site.

A sub-site's owner, in the console of their own site (its own accounts, ``admin.operator_required``):

* 价格 ``/admin/prices`` — the main catalogue as this site sells it (its cost, the base price, its
  price; "按成本价" where the price floor applied) and its markup rules: for everything, a
  category or a product (percent, fixed amount, rounding, hide, rename), and — if the site's
  level may open child sites — what its children pay on top of its cost, within the level's cap;
* 余额 ``/admin/balance`` — frozen / available / in payout / prepaid-hold balances, the latest
  ledger entries of the site's accounts, a withdrawal request, the site's withdrawals;
* 订单 ``/admin/orders`` — the site's own orders (also on the main site, with a refund link).

The operator, on the main site only (``admin.main_site_only``): 提现审核 ``/admin/withdrawals``,
对账 ``/admin/reconcile`` (and ``.csv``), 退款 ``/admin/refunds``.

Tenant isolation: a sub-site's pages take the site from the request (its host), never from a
form or a URL; tenant rows are read inside the request's site scope, and platform-wide rows
(ledger accounts, withdrawals) are filtered by that site's id explicitly. Every write is a POST
form with a CSRF token. Money is integer fen; ``Decimal`` parses what the owner typed, at the
form boundary only.
"""

from __future__ import annotations

import csv
import datetime
import functools
import io
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, StringField, TextAreaField
from wtforms.validators import InputRequired, Length

from . import admin, ledger, orders, pricing, reconcile, refunds, withdrawals
from .app import current_site
from .catalog import Category, Product, Sku
from .hookspecs import hookimpl
from .i18n import _, _l, format_money
from .levels import BP, Level, get_level
from .models import Site, utcnow
from .settlement import site_balances
from .tenancy import all_sites
from .themes import format_fen

bp = Blueprint("admin_money", __name__, url_prefix="/admin")
bp.after_request(admin._console_headers)  # no-store, no framing, no script: as every console page
bp.context_processor(admin._console_context)  # the layout's log-out form and menu

MAX_PRODUCTS = 500
ORDERS_PER_PAGE = 50
LEDGER_ROWS = 50
RECENT_ROWS = 20
MAX_REPORT_DAYS = 366
MAX_FIXED_FEN = 10**9  # pricing.set_rule's bound: ±10,000,000 元

SCOPE_LABELS = {"all": _l("All products"), "category": _l("Category"), "product": _l("Product"),
                "children": _l("Child sites")}
ORDER_STATUS_LABELS = {"created": _l("Awaiting payment"), "paid": _l("Paid, processing"), "delivered": _l("Delivered"),
                       "expired": _l("Expired"), "refund_pending": _l("Refund pending"), "refunded": _l("Refunded"),
                       "cancelled": _l("Cancelled")}
ACCOUNT_LABELS = {"site_frozen": _l("Frozen"), "site_available": _l("Available"), "site_payout": _l("In payout"),
                  "prepaid_hold": _l("Prepaid hold")}
TXN_LABELS = {"payment": _l("Order commission"), "refund": _l("Refund clawback"), "release": _l("Unfrozen"),
              "withdrawal": _l("Withdrawal"), "adjustment": _l("Adjustment"), "prepay": _l("Prepaid cost"),
              "wallet_pay": _l("Balance payment"), "wallet_topup": _l("Top-up")}
WITHDRAWAL_LABELS = {"requested": _l("Awaiting review"), "approved": _l("Approved, awaiting payout"),
                     "paid": _l("Paid out"), "rejected": _l("Rejected")}
REFUND_STATUS_LABELS = {"pending": _l("Processing"), "done": _l("Completed"), "failed": _l("Failed")}
DESTINATION_LABELS = {
    "auto": _l("Automatic (back the way it was paid if possible, else to the member balance, else manual)"),
    "channel": _l("Back the way it was paid"), "balance": _l("The buyer's member balance"),
    "manual": _l("Manual refund (pay offline, then click “Confirm refunded”)")}
#: The ledger accounts that belong to a site (what its owner may see).
SITE_ACCOUNT_KINDS = tuple(ACCOUNT_LABELS)


# -- parsing what the owner typed ---------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?\d{1,9}(?:\.\d{1,2})?$")


def _clean_number(text: str, *units: str) -> str:
    value = unicodedata.normalize("NFKC", text or "").strip().replace(" ", "")  # full-width digits, ％ and ￥ too
    value = value.removeprefix("¥")
    for unit in units:
        value = value.removesuffix(unit)
    return value


def _hundredths(text: str, unit: str, error) -> int:
    """A signed decimal with at most two places, ×100 as an int ('' is 0); ValueError(error) otherwise."""
    value = _clean_number(text, unit)
    if not value:
        return 0
    if not _NUMBER.match(value):
        raise ValueError(str(error))
    return int(Decimal(value) * 100)


def parse_percent_bp(text: str) -> int:
    """'12.5' → 1250 basis points, '-5' → -500, '' → 0; at most two decimals (0.01 % is one basis point)."""
    return _hundredths(text, "%", _l("Invalid percentage: enter e.g. 12.5 or -5 (at most two decimals)"))


def parse_fixed_fen(text: str) -> int:
    """'1.50' → 150 fen, '-1' → -100, '' → 0; at most two decimals (to the fen)."""
    return _hundredths(text, "元",  # i18n: keep - the unit an owner may type after the number
                       _l("Invalid amount: enter e.g. 1.50 or -2 (yuan, at most two decimals)"))


def percent_text(bp: int) -> str:
    """1250 → '12.5', 3000 → '30', -500 → '-5'."""
    return f"{(Decimal(bp) / 100).normalize():f}"


class _ParsedField(StringField):
    """A number typed as text, ``data`` as an integer; what was typed is shown again on errors."""

    parse = staticmethod(lambda text: 0)
    show = staticmethod(str)

    def process_formdata(self, valuelist):
        if valuelist:
            self.data = None
            self.data = self.parse(valuelist[0])  # ValueError → the field's error, in Chinese

    def _value(self):
        if self.raw_data:
            return self.raw_data[0]
        return self.show(self.data) if isinstance(self.data, int) and self.data else ""


class PercentField(_ParsedField):
    parse = staticmethod(parse_percent_bp)
    show = staticmethod(percent_text)


class FixedYuanField(_ParsedField):
    parse = staticmethod(parse_fixed_fen)
    show = staticmethod(format_fen)


# -- forms ------------------------------------------------------------------------------------


class RuleForm(FlaskForm):
    scope = HiddenField()
    target = StringField(_l("Target"))
    percent = PercentField(_l("Markup (%)"), default=0)
    fixed = FixedYuanField(_l("Fixed extra (¥)"), default=0)
    rounding = admin.ChoiceField(_l("Rounding"), choices=[admin._option(k, v) for k, v in pricing.ROUNDINGS.items()],
                                 default="none")
    hidden = BooleanField(_l("Hide on this site"))
    rename = StringField(_l("Name shown on this site (blank: the original name)"),
                         validators=[Length(max=120, message=_l("At most 120 characters"))])


class WithdrawForm(FlaskForm):
    amount = admin.YuanField(_l("Amount to withdraw (¥)"))
    payee = TextAreaField(_l("Payee details (e.g. Alipay account + real name)"), validators=[
        InputRequired(_l("Please enter the payee details")), Length(max=500, message=_l("At most 500 characters"))])


class NoteForm(FlaskForm):
    note = StringField(_l("Note"), validators=[Length(max=500, message=_l("A note has at most 500 characters"))])


class RefundForm(FlaskForm):
    order_no = StringField(_l("Order number"), validators=[
        InputRequired(_l("Please enter the order number")),
        Length(max=32, message=_l("An order number has at most 32 characters"))])
    destination = admin.ChoiceField(_l("Refund to"), default="auto", choices=[
        admin._option(k, DESTINATION_LABELS[k]) for k in ("auto", "balance", "manual")])
    absorb = BooleanField(_l("If a sub-site's balance cannot give back its commission, the platform covers the difference"))
    reason = StringField(_l("Refund reason"), validators=[Length(max=500, message=_l("At most 500 characters"))])


def _submitted(form) -> bool:
    """A valid POST of ``form``; a missing or wrong CSRF token is a 400 (CSRFProtect usually answers first)."""
    if form.validate_on_submit():
        return True
    if form.is_submitted() and "csrf_token" in form.errors:
        abort(400)
    return False


# -- where we are ---------------------------------------------------------------------------


def _site_id() -> int:
    return current_site().site_id


def sub_site_only(view):
    """A page of a sub-site owner's console: a 404 on the main site (it has no cost, no margin)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if admin.is_main_site():
            abort(404)
        return view(*args, **kwargs)

    return wrapper


def _main_site_id() -> int:
    """The site whose catalogue every site sells."""
    cache = current_app.extensions.setdefault("kamengsite.catalog_owner", {})
    if "id" not in cache:
        cache["id"] = Site.get(Site.slug == current_site().instance.main_site).id
    return cache["id"]


def _level() -> Level | None:
    return get_level(Site.get_by_id(_site_id()).level)


def _may_open_children(level: Level | None) -> bool:
    return bool(level and level.may_open_children)


# -- 价格 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceRow:
    product_id: int
    name: str  # as this site shows it
    original_name: str
    category: str
    sku_name: str
    cost_fen: int
    base_fen: int
    price_fen: int
    at_cost: bool  # the markup would go below the cost: the floor applied
    hidden: bool
    rule: str  # which rule sets the price
    child_cost_fen: int | None  # what a child site pays (sites that may open children)


def _main_catalogue():
    """(products on sale, {product id: [SKUs on sale]}, categories) of the main site."""
    main_id = _main_site_id()
    products = list(Product.select().where((Product.site == main_id) & (Product.status == "on"))
                    .order_by(Product.sort, Product.id).limit(MAX_PRODUCTS))
    skus: dict[int, list[Sku]] = {}
    if products:
        for sku in (Sku.select().where(Sku.product.in_([p.id for p in products]) & (Sku.status == "on"))
                    .order_by(Sku.sort, Sku.id)):
            skus.setdefault(sku.product_id, []).append(sku)
    categories = list(Category.select().where(Category.site == main_id).order_by(Category.sort, Category.id))
    return products, skus, categories


def _wanted_price(cost_fen: int, base_fen: int, rule) -> int:
    """The price before the floor (pricing.retail_price without its ``max``)."""
    if rule is None:
        return base_fen
    markup = pricing.percent_of(cost_fen, rule.markup_percent_bp) + rule.markup_fixed_fen
    return pricing.round_up(cost_fen + markup, rule.rounding)


def _rule_source(pricer: pricing.Pricer, product) -> str:
    if pricer.rules.get(("product", product.id)):
        return _("Product rule")
    if product.category_id and pricer.rules.get(("category", product.category_id)):
        return _("Category rule")
    return _("All products") if pricer.rules.get(("all", 0)) else _("No markup (main site price)")


def _price_rows(level: Level | None, products, skus, category_labels) -> list[PriceRow]:
    pricer = pricing.Pricer.for_site(_site_id())
    children_rule = pricing.PriceRule.get_or_none(pricing.PriceRule.scope == "children")  # this site's only
    tiers = pricer.tier_prices([s.id for rows in skus.values() for s in rows])
    rows = []
    for product in products:
        rule = pricer.rule_for(product)
        for sku in skus.get(product.id, []):
            quote = pricer.quote(product, sku.id, sku.price_fen, tiers)
            cost = quote.costs[0][1] if quote.costs else sku.price_fen
            child_cost = None
            if _may_open_children(level):
                child_cost = cost + pricing.child_markup(cost, children_rule, level)
            rows.append(PriceRow(
                product_id=product.id, name=pricer.display_name(product), original_name=product.name,
                category=category_labels.get(product.category_id, "—"), sku_name=sku.name or _("Default variant"),
                cost_fen=cost, base_fen=sku.price_fen, price_fen=quote.unit_price_fen,
                at_cost=_wanted_price(cost, sku.price_fen, rule) < cost, hidden=not pricer.visible(product),
                rule=_rule_source(pricer, product), child_cost_fen=child_cost))
    return rows


def _rule_values(rule) -> dict:
    if rule is None:
        return {}
    return {"percent": rule.markup_percent_bp, "fixed": rule.markup_fixed_fen, "rounding": rule.rounding,
            "hidden": rule.hidden, "rename": rule.rename}


def _prefill(scope: str, target: int, rules: dict, products_by_id: dict) -> dict:
    """What the form of ``scope`` starts with: the rule it would replace (for a product or a
    category without its own rule: the rule in effect, so a rename does not drop the markup)."""
    own = rules.get((scope, target))
    if own is not None or scope in ("all", "children"):
        return _rule_values(own)
    category_id = products_by_id[target].category_id if scope == "product" and target in products_by_id else None
    inherited = (rules.get(("category", category_id)) if category_id else None) or rules.get(("all", 0))
    return dict(_rule_values(inherited), hidden=False, rename="")


def _rule_forms(rules: dict, products_by_id: dict, submitted: RuleForm | None = None) -> dict[str, RuleForm]:
    """One form per scope; the one just submitted keeps what was typed and its errors."""
    wanted_scope = request.args.get("scope", "")
    wanted_target = _int_or_zero(request.args.get("target"))
    forms = {}
    for scope in pricing.SCOPES:
        if submitted is not None and submitted.scope.data == scope:
            forms[scope] = submitted
            continue
        target = wanted_target if scope == wanted_scope else 0
        data = dict(_prefill(scope, target, rules, products_by_id), scope=scope, target=str(target or ""))
        forms[scope] = RuleForm(formdata=None, data=data)
    return forms


def _int_or_zero(text) -> int:
    try:
        return max(0, int(text or 0))
    except (TypeError, ValueError):
        return 0


def _check_target(form: RuleForm, products_by_id: dict, category_ids: set) -> int | None:
    scope = form.scope.data
    if scope in ("all", "children"):
        return 0
    target = _int_or_zero(form.target.data)
    if scope == "category" and target not in category_ids:
        form.target.errors.append(_("Please choose a category"))
        return None
    if scope == "product" and target not in products_by_id:
        form.target.errors.append(_("Please choose a product"))
        return None
    return target


def _check_markup(form: RuleForm, level: Level | None) -> bool:
    percent, fixed = form.percent.data, form.fixed.data
    if form.scope.data == "children":
        cap = level.max_child_markup_bp if level else 0
        if percent < 0 or fixed < 0:
            form.percent.errors.append(_("A child site's cost cannot be below this site's cost: "
                                         "the markup cannot be negative"))
        elif percent > cap:
            form.percent.errors.append(_("Your level allows a markup of at most %(cap)s%%", cap=percent_text(cap)))
    elif not -BP <= percent <= pricing.MAX_MARKUP_BP:
        form.percent.errors.append(_("The markup must be between -100%% and %(max)s%%",
                                     max=percent_text(pricing.MAX_MARKUP_BP)))
    if abs(fixed) > MAX_FIXED_FEN:
        form.fixed.errors.append(_("The amount cannot exceed ¥%(amount)s", amount=format_money(MAX_FIXED_FEN)))
    return not (form.percent.errors or form.fixed.errors)


def _save_rule(form: RuleForm, level, products_by_id, category_ids) -> bool:
    scope = form.scope.data
    if scope not in pricing.SCOPES or (scope == "children" and not _may_open_children(level)):
        abort(404)  # the page never offers these: a hand-made request
    target = _check_target(form, products_by_id, category_ids)
    if target is None or not _check_markup(form, level):
        return False
    try:
        pricing.set_rule(_site_id(), scope, target, markup_percent_bp=form.percent.data,
                         markup_fixed_fen=form.fixed.data,
                         rounding=form.rounding.data if scope != "children" else "none",
                         hidden=bool(form.hidden.data) and scope in ("category", "product"),
                         rename=(form.rename.data or "") if scope == "product" else "")
    except pricing.PricingError as exc:  # the checks above should have caught it; show it anyway
        form.percent.errors.append(str(exc))
        return False
    return True


@bp.route("/prices", methods=["GET", "POST"])
@sub_site_only
@admin.operator_required
def prices():
    level = _level()
    products, skus, categories = _main_catalogue()
    products_by_id = {p.id: p for p in products}
    labels = admin._category_labels(categories)
    submitted = None
    if request.method == "POST":
        submitted = RuleForm()
        if _submitted(submitted) and _save_rule(submitted, level, products_by_id, set(labels)):
            flash(_("Price rule saved: %(scope)s", scope=SCOPE_LABELS[submitted.scope.data]), "ok")
            return redirect(url_for("admin_money.prices"))
    rules = {(r.scope, r.target_id): r for r in pricing.PriceRule.select()}  # confined to this site
    return render_template(
        "admin/money_prices.html", rows=_price_rows(level, products, skus, labels),
        forms=_rule_forms(rules, products_by_id, submitted),
        rules=sorted(rules.values(), key=lambda r: (pricing.SCOPES.index(r.scope), r.target_id)),
        products=products, product_names={p.id: p.name for p in products}, categories=categories,
        category_labels=labels, level=level,
        may_open_children=_may_open_children(level), scopes=SCOPE_LABELS, roundings=pricing.ROUNDINGS,
        percent_text=percent_text, delete_form=admin.ActionForm(formdata=None))


@bp.post("/prices/rules/<int:rule_id>/delete")
@sub_site_only
@admin.operator_required
def delete_rule(rule_id):
    if not _submitted(admin.ActionForm()):
        abort(400)
    rule = pricing.PriceRule.get_or_none(pricing.PriceRule.id == rule_id)  # another site's rule is not found
    if rule is None:
        abort(404)
    pricing.delete_rule(_site_id(), rule.scope, rule.target_id)
    flash(_("Price rule deleted: %(scope)s", scope=SCOPE_LABELS.get(rule.scope, rule.scope)), "ok")
    return redirect(url_for("admin_money.prices"))


# -- 余额 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRow:
    at: datetime.datetime
    account: str
    what: str
    note: str
    amount_fen: int


def _entry_note(txn_kind: str, reference: str, own_orders: set) -> str:
    """What an entry is about, without naming anything of another site (a child's order number)."""
    order_no = reference.removeprefix("prepay:")
    if txn_kind in ("payment", "refund", "prepay"):
        if order_no in own_orders:
            return _("Order %(no)s", no=order_no)
        return _("A child site's order") if txn_kind != "prepay" else ""
    if txn_kind == "withdrawal" and ":" in reference:
        return _("Withdrawal #%(id)s", id=reference.rsplit(":", 1)[1])
    return ""


def _recent_entries(site_id: int) -> list[EntryRow]:
    rows = list(ledger.LedgerEntry
                .select(ledger.LedgerEntry.created_at, ledger.LedgerEntry.amount_fen, ledger.LedgerAccount.kind,
                        ledger.LedgerTxn.kind, ledger.LedgerTxn.reference)
                .join(ledger.LedgerAccount).switch(ledger.LedgerEntry).join(ledger.LedgerTxn)
                .where((ledger.LedgerAccount.site == site_id) & ledger.LedgerAccount.kind.in_(SITE_ACCOUNT_KINDS))
                .order_by(ledger.LedgerEntry.id.desc()).limit(LEDGER_ROWS).tuples())
    references = {ref.removeprefix("prepay:") for *_, ref in rows}
    own_orders = set()
    if references:
        own_orders = {no for (no,) in orders.Order.select(orders.Order.order_no).where(
            (orders.Order.site == site_id) & orders.Order.order_no.in_(list(references))).tuples()}
    return [EntryRow(at, ACCOUNT_LABELS.get(account, account), TXN_LABELS.get(kind, kind),
                     _entry_note(kind, ref, own_orders), amount) for at, amount, account, kind, ref in rows]


@bp.route("/balance", methods=["GET", "POST"])
@sub_site_only
@admin.operator_required
def balance():
    site_id = _site_id()
    form = WithdrawForm()
    if _submitted(form):
        try:
            if form.amount.data <= 0:
                raise withdrawals.WithdrawalError(_("The amount must be greater than 0"))
            found = withdrawals.request_withdrawal(site_id, form.amount.data, form.payee.data)
        except withdrawals.WithdrawalError as exc:
            form.amount.errors.append(str(exc))
        else:
            flash(_("Withdrawal of ¥%(amount)s requested; waiting for the platform's review",
                    amount=format_money(found.amount_fen)), "ok")
            return redirect(url_for("admin_money.balance"))
    level = _level()
    return render_template(
        "admin/money_balance.html", balances=site_balances(site_id), entries=_recent_entries(site_id), form=form,
        withdrawals=withdrawals.site_withdrawals(site_id), statuses=WITHDRAWAL_LABELS,
        minimum=level.withdraw_min_fen if level else withdrawals.DEFAULT_MIN_FEN,
        fee=percent_text(level.withdraw_fee_bp) if level else "0")


# -- 订单 ---------------------------------------------------------------------------------------


@bp.get("/orders")
@admin.operator_required
def order_list():
    site_id = _site_id()
    status = request.args.get("status", "")
    if status not in orders.STATUSES:
        status = ""
    search = (request.args.get("q") or "").strip()[:120]
    since, until = _local_day(request.args.get("from")), _local_day(request.args.get("to"))
    page = max(1, _int_or_zero(request.args.get("page")) or 1)
    query = orders.Order.select().where(orders.Order.site == site_id)  # and the request's site scope
    if status:
        query = query.where(orders.Order.status == status)
    if search:
        # An order number (or its start, as read off a screenshot) or the buyer's contact, exactly.
        query = query.where(orders.Order.order_no.startswith(search.upper()) | (orders.Order.contact == search))
    if since:
        query = query.where(orders.Order.created_at >= since)
    if until:
        query = query.where(orders.Order.created_at < until + datetime.timedelta(days=1))
    found = list(query.order_by(orders.Order.id.desc()).offset((page - 1) * ORDERS_PER_PAGE).limit(ORDERS_PER_PAGE + 1))
    names = _product_names({o.product_id for o in found})
    filters = {"status": status or None, "q": search or None, "from": request.args.get("from") if since else None,
               "to": request.args.get("to") if until else None}
    return render_template("admin/money_orders.html", orders=found[:ORDERS_PER_PAGE], names=names, status=status,
                           statuses=ORDER_STATUS_LABELS, page=page, more=len(found) > ORDERS_PER_PAGE,
                           main=admin.is_main_site(), refundable=refunds.REFUNDABLE, search=search,
                           filters=filters, action=admin.ActionForm(formdata=None))


def _local_day(text: str | None) -> datetime.datetime | None:
    """``YYYY-MM-DD`` as the site's day starts, in UTC (naive, as stored); None if blank or not a date."""
    import zoneinfo

    try:
        day = datetime.date.fromisoformat((text or "").strip())
    except ValueError:
        return None
    start = datetime.datetime.combine(day, datetime.time(), zoneinfo.ZoneInfo(current_site().config.timezone))
    return start.astimezone(datetime.timezone.utc).replace(tzinfo=None)


@bp.post("/orders/<order_no>/resend")
@admin.operator_required
def order_resend(order_no):
    """Mail a delivered order's keys to its buyer again (the same job as at delivery; audited)."""
    from .mail import queue_order_mail

    if not admin.ActionForm().validate_on_submit():
        abort(400)
    order = orders.find_order(order_no, site_id=_site_id())
    if order is None:
        abort(404)
    if order.status != "delivered":
        flash(_("Only delivered orders have keys to send"), "error")
    elif queue_order_mail(order, current_site().config, current_site().instance):
        flash(_("The card keys of order %(no)s are being mailed to the buyer again", no=order_no), "ok")
    else:
        flash(_("Not sent: the buyer's contact is not an e-mail address, or no mail server is set up"), "error")
    return redirect(request.referrer if _same_console(request.referrer) else url_for("admin_money.order_list"))


def _same_console(target: str | None) -> bool:
    from urllib.parse import urlsplit

    if not target:
        return False
    parts = urlsplit(target)
    return parts.netloc == request.host and parts.path.startswith("/admin/")


def _product_names(product_ids: set) -> dict[int, str]:
    """Product names as this site shows them (an owner's rename)."""
    if not product_ids:
        return {}
    pricer = pricing.Pricer.for_site(_site_id())
    return {p.id: pricer.display_name(p) for p in Product.select(Product.id, Product.name)
            .where(Product.id.in_(list(product_ids)))}


# -- 提现审核 (operator) -----------------------------------------------------------------------------


def _site_slugs(site_ids) -> dict[int, str]:
    ids = list(set(site_ids))
    return dict(Site.select(Site.id, Site.slug).where(Site.id.in_(ids)).tuples()) if ids else {}


@bp.get("/withdrawals")
@admin.main_site_only
@admin.operator_required
def withdrawal_list():
    waiting = withdrawals.open_withdrawals()
    recent = list(withdrawals.Withdrawal.select().where(withdrawals.Withdrawal.status.not_in(withdrawals.OPEN))
                  .order_by(withdrawals.Withdrawal.id.desc()).limit(RECENT_ROWS))
    return render_template("admin/money_withdrawals.html", waiting=waiting, recent=recent,
                           slugs=_site_slugs(w.site_id for w in waiting + recent), statuses=WITHDRAWAL_LABELS,
                           note_form=NoteForm(formdata=None))


_WITHDRAWAL_ACTIONS = {"approve": (withdrawals.approve, _l("approved")),
                       "pay": (withdrawals.mark_paid, _l("marked as paid out")),
                       "reject": (withdrawals.reject, _l("rejected; the amount is back in the sub-site's available balance"))}


@bp.post("/withdrawals/<int:withdrawal_id>/<any(approve, pay, reject):action>")
@admin.main_site_only
@admin.operator_required
def withdrawal_action(withdrawal_id, action):
    form = NoteForm()
    if not _submitted(form):
        flash(" ".join(form.note.errors) or _("Please try again"), "error")  # at most one error: Length
        return redirect(url_for("admin_money.withdrawal_list"))
    move, done = _WITHDRAWAL_ACTIONS[action]
    try:
        found = move(withdrawal_id, (form.note.data or "").strip())
    except withdrawals.WithdrawalError:
        current = withdrawals.Withdrawal.get_or_none(withdrawals.Withdrawal.id == withdrawal_id)
        if current is None:
            abort(404)
        flash(_("Withdrawal #%(id)s is now “%(status)s”: this action is not possible", id=withdrawal_id,
                status=WITHDRAWAL_LABELS.get(current.status, current.status)), "error")
    else:
        flash(_("Withdrawal #%(id)s (¥%(amount)s) %(done)s", id=found.id, amount=format_money(found.amount_fen),
                done=done), "ok")
    return redirect(url_for("admin_money.withdrawal_list"))


# -- 对账 (operator) ----------------------------------------------------------------------------


def _report_range() -> tuple[datetime.date, datetime.date, str]:
    """The report's days from ``?start=&end=`` (UTC dates, default today) and an error to show, if any."""
    today = utcnow().date()
    try:
        start = datetime.date.fromisoformat(request.args.get("start") or today.isoformat())
        end = datetime.date.fromisoformat(request.args.get("end") or start.isoformat())
    except ValueError:
        return today, today, _("Invalid date: use the form 2026-01-31. Showing today.")
    if end < start:
        return start, start, _("The end date is before the start date. Showing the start day only.")
    if (end - start).days >= MAX_REPORT_DAYS:
        return start, start, _("At most %(days)s days at a time. Showing the start day only.", days=MAX_REPORT_DAYS)
    return start, end, ""


@bp.get("/reconcile")
@admin.main_site_only
@admin.operator_required
def reconcile_page():
    start, end, error = _report_range()
    if error:
        flash(error, "error")
    rows = reconcile.report(start, end)
    return render_template("admin/money_reconcile.html", rows=rows, total=reconcile.totals(rows), start=start,
                           end=end, columns=reconcile.COLUMNS)


@bp.get("/reconcile.csv")
@admin.main_site_only
@admin.operator_required
def reconcile_csv():
    start, end, _ = _report_range()
    rows = reconcile.report(start, end)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["day", "channel", "site", "orders", *reconcile.COLUMNS])
    for row in rows + [reconcile.totals(rows)]:
        writer.writerow([row.day, row.channel, row.site, row.orders,
                         *(format_fen(getattr(row, column)) for column in reconcile.COLUMNS)])
    name = f"reconcile-{start.isoformat()}-{end.isoformat()}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


# -- 退款 (operator) ----------------------------------------------------------------------------


def _payments_registry():
    return current_app.extensions.get("kamengsite.payments")


def _order_summary(order_no: str):
    """(order, its site's slug, its refund) of any site, for the operator's refund page."""
    if not order_no:
        return None
    with all_sites():
        order = orders.find_order(order_no)
    if order is None:
        return None
    return {"order": order, "site": _site_slugs([order.site_id]).get(order.site_id, "?"),
            "refund": refunds.Refund.get_or_none(refunds.Refund.order == order.id)}


@bp.route("/refunds", methods=["GET", "POST"])
@admin.main_site_only
@admin.operator_required
def refund_page():
    form = RefundForm()
    if request.method == "GET":
        form.order_no.data = (request.args.get("order_no") or "").strip()[:32]
    elif _submitted(form):
        order_no = form.order_no.data.strip()
        summary = _order_summary(order_no)
        try:
            if summary and summary["refund"] is not None:
                raise refunds.RefundError(_("Order %(no)s has already been refunded (%(refund)s)", no=order_no,
                                            refund=summary["refund"].refund_no))
            refund = refunds.refund_order(order_no, reason=(form.reason.data or "").strip(), to=form.destination.data,
                                          absorb=bool(form.absorb.data), registry=_payments_registry())
        except refunds.RefundError as exc:
            form.order_no.errors.append(_("Refund failed: %(error)s", error=str(exc)))
        else:
            flash(_("Refunded %(no)s: ¥%(amount)s to %(destination)s, %(status)s", no=refund.refund_no,
                    amount=format_money(refund.amount_fen),
                    destination=DESTINATION_LABELS.get(refund.destination, refund.destination),
                    status=REFUND_STATUS_LABELS.get(refund.status, refund.status)),
                  "ok" if refund.status != "failed" else "error")
            return redirect(url_for("admin_money.refund_page", order_no=order_no))
    recent = list(refunds.Refund.select().order_by(refunds.Refund.id.desc()).limit(RECENT_ROWS))
    with all_sites():
        order_nos = dict(orders.Order.select(orders.Order.id, orders.Order.order_no)
                         .where(orders.Order.id.in_([r.order_id for r in recent] or [0])).tuples())
    return render_template("admin/money_refunds.html", form=form, summary=_order_summary(form.order_no.data or ""),
                           recent=recent, order_nos=order_nos, slugs=_site_slugs(r.site_id for r in recent),
                           statuses=REFUND_STATUS_LABELS, destinations=DESTINATION_LABELS,
                           order_statuses=ORDER_STATUS_LABELS, note_form=NoteForm(formdata=None))


@bp.post("/refunds/<refund_no>/<any(confirm, retry):action>")
@admin.main_site_only
@admin.operator_required
def refund_action(refund_no, action):
    form = NoteForm()
    if not _submitted(form):
        flash(" ".join(form.note.errors) or _("Please try again"), "error")  # at most one error: Length
        return redirect(url_for("admin_money.refund_page"))
    try:
        if action == "confirm":
            refund = refunds.confirm_manual(refund_no, (form.note.data or "").strip())
        else:
            refund = refunds.retry(refund_no, _payments_registry())
    except refunds.RefundError as exc:
        flash(_("Action failed: %(error)s", error=str(exc)), "error")
    else:
        flash(_("Refund %(no)s: %(status)s", no=refund.refund_no,
                status=REFUND_STATUS_LABELS.get(refund.status, refund.status)),
              "ok" if refund.status == "done" else "error")
    return redirect(url_for("admin_money.refund_page"))


# -- plugin -----------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    """On every site; each view says whose it is (``sub_site_only`` / ``admin.main_site_only``)."""
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
