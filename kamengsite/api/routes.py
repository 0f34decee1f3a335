"""The API's endpoints under ``/api/v1`` on every site (a core plugin). See docs/api.md.

Every ``/api/v1`` request is rate-limited per client IP, then authenticated (``auth``), then
rate-limited per app key; it acts for the key's member on the site whose domain it reached.
Everything under ``/api`` answers JSON, errors included (404, 405, a broken body, a crash):
``{"ok": false, "error": {"code", "message"}}``. ``/api/openapi.json`` and ``/api/docs``
describe the endpoints and need no signature.

Orders are priced exactly as the storefront prices them for that member (the site's pricer,
then the checkout pipeline of its plugins), created with the caller's ``out_trade_no`` in the
same transaction (the unique pair makes creating idempotent, even concurrently), and paid at
once from the member's wallet (``kamengsite.wallet_pay``).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from dataclasses import dataclass

import peewee
from flask import Blueprint, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .. import checkout as checkouts
from .. import hooks, members, orders, outbound, ratelimit, refunds, risk, storefront, topup, wallet_pay
from ..app import current_site
from ..catalog import Category, Product, Sku, product_on_sale, skus_on_sale, storefront_products
from ..hookspecs import hookimpl
from ..i18n import _
from . import auth, callbacks, openapi
from .errors import ApiError, error_response
from .models import ApiOrder

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api")
storefront.csrf.exempt(bp)  # signed requests, not browser forms

OUT_TRADE_NO_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: "$" would let a trailing newline in
PUBLIC_ENDPOINTS = {"api.openapi_document", "api.docs_page"}
DEFAULT_KEY_RULE = "120/minute"
DEFAULT_IP_RULE = "600/minute"
PER_PAGE_MAX = 100
LISTED_MAX = 5000  # products a listing considers; a shop sells far fewer
STOCK_IDS_MAX = 100
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL and MariaDB: a larger one names nothing
CREATE_ATTEMPTS = 3  # a concurrent duplicate whose payment failed frees its out_trade_no: try again


# -- answers -------------------------------------------------------------------------------------


def ok(data):
    return jsonify(ok=True, data=data)


def order_json(order, out_trade_no: str, keys: list[str]) -> dict:
    """An order as the API shows it (the ``Order`` schema): the same document the callbacks send."""
    return callbacks.order_document(order, out_trade_no, keys)


def _is_api_request() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


# -- the signature and the limits, before every endpoint -------------------------------------------


@bp.before_request
def _guard():
    site = current_site()
    limits = site.instance.rate_limits
    if not ratelimit.allow(limits.get("api_ip", DEFAULT_IP_RULE), "api_ip", site.slug, ratelimit.client_ip()):
        raise ApiError("rate_limited", _("Too many requests: slow down and try again in a minute"))
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    key = auth.authenticate(request, site_id=site.site_id, instance_secret=site.instance.secret_key)
    if not ratelimit.allow(limits.get("api", DEFAULT_KEY_RULE), "api", site.slug, key.app_key):
        raise ApiError("rate_limited", _("Too many requests: slow down and try again in a minute"))
    member = members.get_member(site.site_id, key.member_id)
    if member is None or not member.active:
        raise ApiError("forbidden", _("The member account of this key is disabled"))
    g.api_key, g.api_member = key, member
    return None


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return exc.response()


def _json_http_error(exc: HTTPException):
    """An HTTP error under /api as the API's JSON error (404 not_found; others invalid_request)."""
    if exc.code == 404:
        return error_response("not_found", _("No such endpoint or object"))
    if exc.code == 429:
        return error_response("rate_limited", _("Too many requests: slow down and try again in a minute"))
    if exc.code is not None and exc.code >= 500:
        return error_response("internal_error", _("Something went wrong on our side; please try again later"))
    return error_response("invalid_request", exc.description or exc.name, exc.code or 400)


def _json_under_api(original):
    """Wrap a site app's HTML error handler: JSON under /api, the page elsewhere."""

    def handler(exc):
        if _is_api_request():
            if not isinstance(exc, HTTPException):
                return error_response("internal_error", _("Something went wrong on our side; please try again later"))
            return _json_http_error(exc)
        return original(exc)

    return handler


def _http_error_fallback(exc: HTTPException):
    """HTTP errors without a page of their own (405, 400, 413 …): JSON under /api, the default elsewhere."""
    return _json_http_error(exc) if _is_api_request() else exc


def install_json_errors(app):
    """Make the site app answer JSON for every error under /api, keeping its HTML pages elsewhere."""
    for code in (404, 500):
        handlers = app.error_handler_spec[None].get(code) or {}
        for exc_class, original in list(handlers.items()):
            handlers[exc_class] = _json_under_api(original)
    existing = (app.error_handler_spec[None].get(None) or {}).get(HTTPException)  # another plugin's: keep it
    app.register_error_handler(HTTPException, _json_under_api(existing) if existing else _http_error_fallback)


# -- the catalogue as this site sells it to the key's member ----------------------------------------


def _product_as_sold(product_id: int):
    """The product as this site sells it (its name as renamed), or None: hidden, off sale, not sold here."""
    owners = storefront.catalog_owners()
    product = next(filter(None, (product_on_sale(product_id, owner) for owner in owners)), None)
    if product is None or not storefront.pricer().visible(product):
        return None
    product.name = storefront.pricer().display_name(product)
    return product


def _caller_prices(product, skus) -> dict:
    """{sku id: (quote, the caller's unit price)}: the site's price, then its plugins' for this member."""
    site_pricer = storefront.pricer()
    tiers = site_pricer.tier_prices([s.id for s in skus])
    prices = {}
    for sku in skus:
        quote = site_pricer.quote(product, sku.id, sku.price_fen, tiers)
        quantity = max(1, product.min_qty)
        checkout = storefront._checkout(product, sku.id, quote, quantity, {}, preview=True,
                                        member_id=g.api_key.member_id)
        prices[sku.id] = (quote, checkout.goods_fen // checkout.quantity)
    return prices


def _topup_fields(product) -> list:
    if product.kind != "topup":
        return []
    try:
        return topup.parse_fields(product.topup_fields)
    except ValueError:  # a broken definition: the storefront refuses such a product the same way
        log.warning("product %s has invalid topup_fields", product.id)
        return []


def product_json(product) -> dict:
    skus = skus_on_sale(product.id)
    prices = _caller_prices(product, skus)
    return {"id": product.id, "name": product.name, "summary": product.summary,
            "category_id": product.category_id, "kind": product.kind,
            "min_qty": product.min_qty, "max_qty": product.max_qty,
            "fields": [{"name": f.name, "label": f.label, "required": True} for f in _topup_fields(product)],
            "skus": [{"id": s.id, "name": s.name, "price_fen": prices[s.id][1], "stock": max(0, s.stock)}
                     for s in skus]}


def _shown_categories() -> list:
    """The visible categories of the catalogues this site sells, without those its owner hides."""
    hidden = {target for (scope, target), rule in storefront.pricer().rules.items()
              if scope == "category" and getattr(rule, "hidden", False)}
    rows = (Category.select(Category.id, Category.name, Category.parent)
            .where(Category.site.in_(storefront.catalog_owners()) & Category.visible)
            .order_by(Category.sort, Category.id))
    return [c for c in rows if c.id not in hidden]


def _listed_product_ids(category_id: int | None) -> list[int]:
    """The ids of the products this site lists (in the storefront's order), in a category if given."""
    rows = storefront.pricer().listing(storefront_products(storefront.catalog_owners(), limit=LISTED_MAX))
    ids = [row["id"] for row in rows]
    if category_id is None or not ids:
        return ids
    family = {category_id, *(c.id for c in Category.select(Category.id).where(Category.parent == category_id))}
    in_family = {pid for pid, in Product.select(Product.id).where(Product.id.in_(ids)
                                                                     & Product.category.in_(list(family))).tuples()}
    return [pid for pid in ids if pid in in_family]


def _int_arg(name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        limit = f"{low}-{high}" if high is not None else f">= {low}"
        raise ApiError("invalid_request", _("%(name)s must be a whole number (%(limit)s)", name=name, limit=limit))
    return int(raw)


# -- reading endpoints ---------------------------------------------------------------------------


@bp.get("/v1/ping")
def ping():
    site = current_site()
    return ok({"site": site.slug, "name": site.config.name, "time": int(time.time())})


@bp.get("/v1/categories")
def categories():
    return ok([{"id": c.id, "name": c.name, "parent_id": c.parent_id} for c in _shown_categories()])


@bp.get("/v1/products")
def products():
    category_id = _int_arg("category_id", None, 1, MAX_ID)
    page = _int_arg("page", 1, 1, 100000)
    per_page = _int_arg("per_page", 50, 1, PER_PAGE_MAX)
    ids = _listed_product_ids(category_id)
    items = []
    for product_id in ids[(page - 1) * per_page:page * per_page]:
        product = _product_as_sold(product_id)
        if product is not None:
            items.append(product_json(product))
    return ok({"items": items, "page": page, "per_page": per_page, "total": len(ids)})


@bp.get("/v1/products/<int:product_id>")
def product(product_id):
    found = _product_as_sold(product_id) if product_id <= MAX_ID else None
    if found is None:
        raise ApiError("not_found", _("No such product on sale here"))
    return ok(product_json(found))


def _sku_ids_arg() -> list[int]:
    raw = request.args.get("sku_ids", "")
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts or len(parts) > STOCK_IDS_MAX or not all(p.isdigit() and int(p) <= MAX_ID for p in parts):
        raise ApiError("invalid_request", _("sku_ids must be 1-%(n)s SKU ids separated by commas", n=STOCK_IDS_MAX))
    return list(dict.fromkeys(int(p) for p in parts))


def _sku_as_sold(sku_id: int):
    """(product as this site sells it, the SKU on sale), or (None, None)."""
    sku = Sku.get_or_none(Sku.id == sku_id) if 0 < sku_id <= MAX_ID else None
    if sku is None or sku.status != "on":
        return None, None
    product = _product_as_sold(sku.product_id)
    return (product, sku) if product is not None else (None, None)


@bp.get("/v1/stock")
def stock():
    answer = []
    for sku_id in _sku_ids_arg():
        product, sku = _sku_as_sold(sku_id)
        # Another site's goods are not on sale here: their stock is nobody's business here.
        answer.append({"sku_id": sku_id, "stock": max(0, sku.stock) if sku else 0, "on_sale": sku is not None})
    return ok(answer)


@bp.get("/v1/balance")
def balance():
    return ok({"balance_fen": members.wallet_balance(current_site().site_id, g.api_key.member_id),
               "currency": "CNY"})


# -- orders --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    out_trade_no: str
    sku_id: int
    quantity: int
    fields: dict
    callback_url: str


def _json_body() -> dict:
    try:
        body = json.loads(request.get_data(cache=True) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError("invalid_request", _("The body must be a JSON object")) from None
    if not isinstance(body, dict):
        raise ApiError("invalid_request", _("The body must be a JSON object"))
    return body


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _order_request(body: dict) -> OrderRequest:
    out_trade_no = body.get("out_trade_no")
    if not isinstance(out_trade_no, str) or not OUT_TRADE_NO_RE.fullmatch(out_trade_no):
        raise ApiError("invalid_request", _("out_trade_no must be 1-64 letters, digits, '-' or '_'"))
    sku_id, quantity = body.get("sku_id"), body.get("quantity")
    if not _whole(sku_id) or not 0 < sku_id < 2**63:
        raise ApiError("invalid_request", _("sku_id must be a positive whole number"))
    if not _whole(quantity) or not 0 < quantity <= 100000:
        raise ApiError("invalid_request", _("quantity must be a positive whole number"))
    fields = body.get("fields") or {}
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise ApiError("invalid_request", _("fields must be an object of text values"))
    callback_url = body.get("callback_url") or ""
    if not isinstance(callback_url, str) or len(callback_url) > 500:
        raise ApiError("invalid_request", _("callback_url must be a URL of at most 500 characters"))
    if callback_url:
        _check_callback_url(callback_url)
    return OrderRequest(out_trade_no, sku_id, quantity, fields, callback_url)


def _check_callback_url(url: str):
    """Refused: not http(s), or a private, loopback or reserved address. A name that does not
    resolve now is kept: the delivery checks it again and retries."""
    try:
        callbacks.check_callback_url(url, current_site().instance)
    except outbound.OutboundError as exc:
        if exc.refused:
            raise ApiError("callback_url_refused", _("The callback URL is refused: %(why)s", why=str(exc))) from None


def _api_order(out_trade_no: str) -> ApiOrder | None:
    return ApiOrder.get_or_none((ApiOrder.api_key == g.api_key.id) & (ApiOrder.out_trade_no == out_trade_no))


def _order_of(api_order: ApiOrder):
    return _load_order(orders.Order.id == api_order.order_id)


def _load_order(condition):
    """The whole order row (``find_order`` leaves its times out) of this site, with its product."""
    found = orders.Order.get_or_none(condition & (orders.Order.site == current_site().site_id))
    if found is not None:
        found.product = Product.get_by_id(found.product_id)
    return found


def _answer(order, out_trade_no: str):
    keys = orders.delivered_keys(order, storefront._cipher(), order.product)
    return ok(order_json(order, out_trade_no, keys))


@bp.post("/v1/orders")
def create_order():
    wanted = _order_request(_json_body())
    for _attempt in range(CREATE_ATTEMPTS):
        existing = _api_order(wanted.out_trade_no)
        if existing is None:
            created = _create(wanted)
            if created is not None:
                return created
        else:
            return _repeat(existing, wanted)
    raise ApiError("idempotency_conflict", _("Another request with this out_trade_no is in progress; try again"))


def _repeat(existing: ApiOrder, wanted: OrderRequest):
    """The same out_trade_no again: the same order (paid now if its first request stopped short)."""
    order = _order_of(existing)
    if order is None or order.sku_id != wanted.sku_id or order.quantity != wanted.quantity:
        raise ApiError("idempotency_conflict", _("This out_trade_no was used for another order"))
    if order.status == "created":
        order = _pay(order, existing.id)
    return _answer(order, wanted.out_trade_no)


def _create(wanted: OrderRequest):
    """Price, vet, create and pay a new order; None when a concurrent duplicate came first and gave up."""
    site = current_site()
    product, sku = _sku_as_sold(wanted.sku_id)
    if sku is None:
        raise ApiError("not_on_sale", _("This SKU is not on sale here"))
    fields = _topup_values(product, wanted.fields)
    quote = storefront.pricer().quote(product, sku.id, sku.price_fen)
    checkout = storefront._checkout(product, sku.id, quote, wanted.quantity, {}, preview=False,
                                    contact=g.api_member.email, member_id=g.api_key.member_id)
    relay = storefront._hook()
    pipeline = storefront._uses_pipeline()
    try:
        if pipeline and checkouts.vet(relay, checkout):
            raise ApiError("forbidden", _("The order was flagged as risky and refused"))
        risk.screen(site.site_id, buyer_ip=request.remote_addr or "", contact=g.api_member.email,
                    member_id=g.api_key.member_id)  # blacklists: refused with a generic message
        order = orders.create_order(
            unit_price_fen=checkout.unit_price_fen, discount_fen=checkout.discount_fen, hold=checkout.hold_delivery,
            reserving=_reserving(risk.reserving(checkout, checkouts.reserver(relay, checkout) if pipeline else None,
                                                relay=relay), wanted),
            costs=quote.costs, prepaid=site.config.settlement == "direct" and bool(quote.costs),
            site_id=site.site_id, sku_id=sku.id, quantity=wanted.quantity, contact=g.api_member.email,
            fields=fields or None, ttl=datetime.timedelta(minutes=site.instance.order_ttl_minutes),
            buyer_ip=request.remote_addr or "", channel=wallet_pay.CHANNEL_ID, member_id=g.api_key.member_id)
    except peewee.IntegrityError:
        existing = _api_order(wanted.out_trade_no)  # a concurrent identical request created it first
        log.debug("concurrent create of %s by key %s: answering with the first", wanted.out_trade_no,
                  g.api_key.app_key)
        return _repeat(existing, wanted) if existing is not None else None
    except checkouts.CheckoutRefused as exc:
        raise ApiError("invalid_request", str(exc)) from None
    except orders.OutOfStock:
        raise ApiError("out_of_stock", _("Not enough stock for this quantity")) from None
    except orders.InvalidOrder as exc:
        raise ApiError("invalid_request", str(exc)) from None
    except ApiError:
        raise
    except Exception as exc:
        if not hooks.record_closed_failure(exc, site.site_id):
            raise
        # A plugin of this shop failed closed while reserving (it is on record): nothing was created.
        raise ApiError("internal_error", _("The order failed: a plugin of this shop went wrong. "
                                           "Please try again later")) from None
    order.product = product
    hooks.notify("order_created", order)
    api_order = ApiOrder.get(ApiOrder.order == order.id)
    return _answer(_pay(order, api_order.id), wanted.out_trade_no)


def _reserving(plugin_reserving, wanted: OrderRequest):
    """Inside the order's creating transaction: the plugins' reservations, then the caller's order number."""
    key = g.api_key

    def reserving(order):
        if plugin_reserving is not None:
            plugin_reserving(order)
        ApiOrder.create(site=order.site_id, api_key=key.id, out_trade_no=wanted.out_trade_no, order=order.id,
                        callback_url=wanted.callback_url)

    return reserving


def _topup_values(product, given: dict) -> dict:
    fields = _topup_fields(product)
    if not fields:
        return {}
    values, errors = topup.collect(fields, {f"topup_{name}": value for name, value in given.items()})
    if errors:
        raise ApiError("invalid_request", next(iter(errors.values())))
    return values


def _pay(order, api_order_id: int):
    """Pay the order from the member's wallet; the order as it stands afterwards.

    Short of money: the order is cancelled (its stock and keys go back) and its out_trade_no
    freed for a later retry, then 402.
    """
    try:
        result = wallet_pay.pay_from_wallet(order)
    except wallet_pay.InsufficientFunds:
        orders.cancel_unpaid(order.order_no, expiring=hooks.expiring_callback())
        ApiOrder.delete().where(ApiOrder.id == api_order_id).execute()
        raise ApiError("insufficient_balance", _("Insufficient balance: top up the wallet and try again")) from None
    except wallet_pay.OrderNotPayable as exc:
        if exc.status == "cancelled":  # a concurrent duplicate was short of money first
            raise ApiError("insufficient_balance",
                           _("Insufficient balance: top up the wallet and try again")) from None
        result = None
    except orders.PaymentRejected:
        log.exception("API payment of %s refused", order.order_no)
        raise ApiError("internal_error", _("The payment could not be recorded; please try again later")) from None
    if result is not None:
        storefront.after_payment(result, order)
    return _load_order(orders.Order.id == order.id)


@bp.get("/v1/orders/<out_trade_no>")
def get_order(out_trade_no):
    api_order = _api_order(out_trade_no) if OUT_TRADE_NO_RE.fullmatch(out_trade_no) else None
    order = _order_of(api_order) if api_order is not None else None
    if order is None:
        raise ApiError("not_found", _("No order with this out_trade_no"))
    return _answer(order, out_trade_no)


@bp.post("/v1/orders/<out_trade_no>/cancel")
def cancel_order(out_trade_no):
    api_order = _api_order(out_trade_no) if OUT_TRADE_NO_RE.fullmatch(out_trade_no) else None
    order = _order_of(api_order) if api_order is not None else None
    if order is None:
        raise ApiError("not_found", _("No order with this out_trade_no"))
    if order.status != "paid" or order.product.supplier or order.member_id != g.api_key.member_id:
        raise ApiError("not_cancellable", _("Only a paid order that is not delivered or being fulfilled "
                                            "upstream can be cancelled"))
    try:
        refunds.refund_order(order.order_no, reason="cancelled through the API", to="balance")
    except refunds.RefundError:
        raise ApiError("not_cancellable", _("Only a paid order that is not delivered or being fulfilled "
                                            "upstream can be cancelled")) from None
    return _answer(_load_order(orders.Order.id == order.id), out_trade_no)


# -- the description -----------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document(request.host_url.rstrip("/")))


@bp.get("/docs")
def docs_page():
    document = openapi.document(request.host_url.rstrip("/"))
    return render_template("api/docs.html", doc=document, operations=openapi.operations(document),
                           error_codes=openapi.error_codes(), site=current_site().config)


# -- wiring --------------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
    install_json_errors(app)


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute="*/5"), name="api_sweep_nonces")
    def api_sweep_nonces():
        """Forget nonces that can no longer pass the time check."""
        return auth.sweep_nonces()

