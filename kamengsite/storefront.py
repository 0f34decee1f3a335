"""The storefront: a core plugin that gives every site its shop pages.

Buyer flow: product page → order (stock reserved) → pay → keys on the order
page. Keys are shown only to the buyer: the browser session that placed the
order, or whoever proves contact + query password on the lookup page.
"""

from __future__ import annotations

import datetime

from flask import Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from flask_wtf.csrf import CSRFProtect
from wtforms import IntegerField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp

from . import alerts, checkout as checkouts, hooks, layouts, orders, payment_routes, topup
from . import risk as risk_control
from .pagecache import cached_page
from .app import current_site, site_secret
from .catalog import Category, Product, product_on_sale, sku_stock, skus_on_sale, storefront_products
from .crypto import CardKeyCipher
from .hookspecs import hookimpl
from .i18n import _, _l
from .models import Site
from .pricing import Pricer
from .settlement import SettlementError
from .member_routes import current_member_id
from .ratelimit import limited
from .sections import Section, render_sections
from .tenancy import all_sites

# The host's shared storefront stylesheet (sections.css), under a path no theme or site uses.
bp = Blueprint("storefront", __name__, static_folder="static/storefront", static_url_path="/_kamengsite")
csrf = CSRFProtect()

CONTACT_RE = r"^(?:[^@\s]+@[^@\s]+\.[^@\s]+|1\d{10})$"
OWNED_ORDERS = "orders"  # session key: order numbers this browser placed
MAX_OWNED = 30


class BuyForm(FlaskForm):
    sku = IntegerField(_l("Variant"), validators=[DataRequired()])
    quantity = IntegerField(_l("Quantity"), default=1, validators=[DataRequired(), NumberRange(min=1, max=1000)])
    contact = StringField(_l("Contact (email or mobile number)"), validators=[
        DataRequired(message=_l("Please enter an email address or mobile number")), Length(max=120),
        Regexp(CONTACT_RE, message=_l("Please enter a valid email address or 11-digit mobile number"))])
    query_password = PasswordField(_l("Lookup password"), validators=[
        DataRequired(message=_l("Please set a lookup password for finding your order")),
        Length(min=4, max=64, message=_l("The lookup password must be 4-64 characters"))])
    pay = StringField(_l("Payment method"), validators=[Optional(), Length(max=80)])  # "channel/profile", see payment_routes


class LookupForm(FlaskForm):
    order_no = StringField(_l("Order number"), validators=[Optional(), Length(max=32)])
    contact = StringField(_l("Contact"), validators=[Optional(), Length(max=120)])
    query_password = PasswordField(_l("Lookup password"), validators=[Optional(), Length(max=64)])


def _catalog_owner_id() -> int:
    """The site whose catalogue this site sells: the main site (sub-site pricing layers on top)."""
    instance = current_site().instance
    cache = current_app.extensions.setdefault("kamengsite.catalog_owner", {})
    if "id" not in cache:
        cache["id"] = Site.get(Site.slug == instance.main_site).id
    return cache["id"]


def _cipher() -> CardKeyCipher:
    cipher = current_app.extensions.get("kamengsite.cipher")
    if cipher is None:
        cipher = current_app.extensions["kamengsite.cipher"] = CardKeyCipher.from_instance(current_site().instance)
    return cipher


def _query_secret() -> bytes:
    """Key of the query-password hashes: from the instance secret, never stored in the database."""
    secret = current_app.extensions.get("kamengsite.query_secret")
    if secret is None:
        secret = site_secret(current_site().instance.secret_key, "*", purpose="query-password").encode()
        current_app.extensions["kamengsite.query_secret"] = secret
    return secret


def pricer() -> Pricer:
    """This site's prices of the main catalogue (its level, its parents' cuts, its owner's markups)."""
    if "kamengsite_pricer" not in g:
        g.kamengsite_pricer = Pricer.for_site(current_site().site_id)
    return g.kamengsite_pricer


def catalog_owners() -> tuple:
    """The catalogues this site sells: the main site's, and its own goods where its level allows."""
    site_id = current_site().site_id
    main = _catalog_owner_id()
    return (main, site_id) if site_id != main and pricer().sells_own_goods else (main,)


def on_sale_product(product_id: int):
    """The product as this site sells it (its name as renamed), or a 404: hidden, off sale, not sold here.

    ``pricer``, ``catalog_owners`` and this are the storefront's view of the catalogue that plugins
    use to show products exactly as the site lists them.
    """
    owners = catalog_owners()
    product = next(filter(None, (product_on_sale(product_id, owner) for owner in owners)), None)
    if product is None or not pricer().visible(product):
        abort(404)
    product.name = pricer().display_name(product)
    return product


def _remember(order_no: str):
    owned = [no for no in session.get(OWNED_ORDERS, []) if no != order_no]
    session[OWNED_ORDERS] = (owned + [order_no])[-MAX_OWNED:]


def _owns(order_no: str) -> bool:
    return order_no in session.get(OWNED_ORDERS, [])


def _draft() -> bool:
    """Whether this request previews the owner's drafts (set only by the editor, contract 2)."""
    return bool(g.get("layout_draft"))


@bp.get("/")
@cached_page("home")
def home():
    """The home page: the site's published layout (or the theme's default), section by section."""
    context = _section_context("home")
    html = [part for _section, part in layouts.render_layout_sections(
        current_app.jinja_env, layouts.site_layouts().layout("home", draft=_draft()), context)]
    return render_template("home.html", page_sections=Markup("\n").join(html))


@bp.get("/c/<int:category_id>")
@cached_page("category")
def category(category_id):
    """A category's products on this site, in its prices, among the category page's sections."""
    found = _shown_category(category_id)
    parts = page_layout("category", category=found)
    wanted = _category_family(found)
    data = parts["data"]
    products = [p for p in data.products if data.category_of.get(p["id"]) in wanted]
    return render_template("storefront/category.html", category=found, products=products, **parts)


def _shown_category(category_id: int):
    """The category if this site shows it: of a catalogue it sells, visible, not hidden by the owner; else 404."""
    found = Category.get_or_none(Category.id == category_id)
    if found is None or not found.visible or found.site_id not in catalog_owners():
        abort(404)
    rule = pricer().rules.get(("category", found.id))
    if rule is not None and getattr(rule, "hidden", False):
        abort(404)
    return found


def _category_family(found) -> set:
    """The category and its visible subcategories (a parent's page lists its children's products too)."""
    children = Category.select(Category.id).where((Category.parent == found.id) & Category.visible)
    return {found.id, *(c.id for c in children)}


def page_layout(page: str, *, product=None, category=None) -> dict:
    """The sections of page key ``page`` around the page's own content, for ``render_template``.

    ``layout_before``/``layout_after``: the sections before and after the ``main_<page>`` section,
    the page's own content (its template's ``body`` block) sitting between them in that section's
    wrapper (base.html prints them around the body). Also ``data``/``grid_products``: the catalogue as
    the sections saw it. Without a main section every section goes after the content.
    """
    layout = layouts.site_layouts().layout(page, draft=_draft())
    context = _section_context(layouts.page_type(page), product, category)
    rendered = layouts.render_layout_sections(current_app.jinja_env, layout, context)
    main = layout.main()
    position = {s.id: i for i, s in enumerate(layout.sections)}
    cut = position[main.id] if main is not None else -1
    before = [html for section, html in rendered if position[section.id] < cut]
    after = [html for section, html in rendered if position[section.id] > cut]
    opening = closing = Markup("")
    if main is not None:
        opening = Markup('<section id="section-{0}" class="section section-{1}" data-section-id="{0}" '
                         'data-section-type="{1}">').format(main.id, main.type)
        closing = Markup("</section>")
    return {"layout_before": Markup("").join(before) + opening, "layout_after": closing + Markup("").join(after),
            "data": context["data"], "grid_products": context["grid_products"]}


def _listed_products() -> list:
    return pricer().listing(storefront_products(catalog_owners()))


def _section_context(page: str, product=None, category=None) -> dict:
    """What section templates see: the template context of the site, and ``_section_extras``."""
    context = _section_extras(page, product, category)
    current_app.update_template_context(context)  # site, theme, plugin_sections, plugins' context
    return context


def _section_extras(page: str, product=None, category_row=None) -> dict:
    """The page, its product or category, and the catalogue, fetched only if a section asks."""
    data = layouts.PageData({"products": _listed_products})
    data.loaders["category_of"] = lambda: _categories_of([p["id"] for p in data.products])
    data.loaders["categories"] = lambda: _listed_categories(data.category_of)
    category = category_row.id if category_row is not None else request.args.get("category", type=int)

    def grid_products(chosen, count):
        items = data.products
        wanted = chosen or category
        if wanted:
            items = [p for p in items if data.category_of.get(p["id"]) == wanted]
        return items[:count]

    return {"page": page, "product": product, "data": data, "grid_products": grid_products,
            "request_category": category, "category": category_row}


def _categories_of(product_ids) -> dict:
    if not product_ids:
        return {}
    return dict(Product.select(Product.id, Product.category).where(Product.id.in_(product_ids)).tuples())


def _listed_categories(category_of: dict) -> list:
    """The visible categories that have a product listed on this site, in the catalogue's order."""
    ids = {c for c in category_of.values() if c}
    if not ids:
        return []
    return list(Category.select(Category.id, Category.name).where(Category.id.in_(ids) & Category.visible)
                .order_by(Category.sort, Category.id))


def render_section(site_app, page: str, section_id: str, layout=None, product=None) -> Markup:
    """One section of page key ``page`` alone (for an editor's live preview); within a request of the site's app.

    ``layout``: a candidate layout dict (checked leniently, as stored layouts are), else the published one
    (the draft when the request previews drafts).
    """
    store = layouts.site_layouts(site_app)
    kind = layouts.page_type(page)
    if layout is None:
        placed = store.layout(page, draft=_draft())
    else:
        placed, _problems = layouts.check_layout(store.theme.section_types, kind, layout, f"layouts/{page}.json", strict=False)
        if placed is None:
            return Markup("")
    parts = layouts.render_layout_sections(site_app.jinja_env, placed, _section_context(kind, product),
                                           only=[section_id])
    return parts[0][1] if parts else Markup("")


def _hook():
    return current_app.extensions["kamengsite.hook"]


def _per_app(key: str, build):
    """What ``build()`` returns, computed once per site app (a site's plugins are fixed while its app lives)."""
    cache = current_app.extensions.setdefault("kamengsite.storefront", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _plugin_answers(hook: str, kind) -> list:
    """The ``kind`` objects the site's plugins return from a list-returning hook about the site."""
    site = current_site()
    answers = hooks.call_isolated(getattr(_hook(), hook), hook, site_id=site.site_id, site=site.config)
    return [item for answer in answers for item in answer or () if isinstance(item, kind)]


def _checkout_inputs() -> list:
    """The extra buy-form inputs the site's plugins declare (``checkout_inputs``)."""
    return _per_app("inputs", lambda: _plugin_answers("checkout_inputs", checkouts.CheckoutInput))


def _uses_pipeline() -> bool:
    return _per_app("pipeline", lambda: checkouts.has_pipeline(_hook()))


def _checkout(item, sku_id: int, quote, quantity: int, inputs: dict, *, preview: bool, contact: str = "",
              member_id: int | None = None) -> checkouts.Checkout:
    """A ``Checkout`` of ``quantity`` × SKU at this site's quote, priced by the site's plugins.

    ``member_id``: the buyer (the reseller API's key holder); None means the signed-in member, if any.
    """
    checkout = checkouts.Checkout(
        site_id=current_site().site_id, site=current_site().config, product=item, sku_id=sku_id,
        quantity=quantity, list_unit_fen=quote.unit_price_fen,
        floor_unit_fen=quote.costs[0][1] if quote.costs else 0,
        member_id=current_member_id() if member_id is None else member_id,
        contact=contact, buyer_ip=request.remote_addr or "", inputs=inputs, preview=preview)
    if _uses_pipeline():
        checkouts.price(_hook(), checkout)
    return checkout


@bp.route("/p/<int:product_id>", methods=["GET", "POST"])
@limited("order", "60/minute")
def product(product_id):
    item = on_sale_product(product_id)
    skus = skus_on_sale(item.id)
    site_pricer = pricer()
    tiers = site_pricer.tier_prices([s.id for s in skus])
    quotes = {s.id: site_pricer.quote(item, s.id, s.price_fen, tiers) for s in skus}
    topup_fields = topup.parse_fields(item.topup_fields) if item.kind == "topup" else []
    form = BuyForm()
    pay_options = _pay_options()
    declared = _checkout_inputs()
    inputs = checkouts.read_inputs(declared, request.form if form.is_submitted() else request.args)
    previews = {s.id: _checkout(item, s.id, quotes[s.id], max(1, item.min_qty), inputs, preview=True)
                for s in skus} if _uses_pipeline() else {}
    topup_values, topup_errors = {}, {}
    if not form.is_submitted():
        form.sku.data = skus[0].id if skus else None
        form.pay.data = pay_options[0][0] if pay_options else ""
    elif topup_fields:
        topup_values, topup_errors = topup.collect(topup_fields, request.form)
    if form.validate_on_submit() and not topup_errors:
        if form.sku.data not in {s.id for s in skus}:
            form.sku.errors = [_("Please choose a variant")]
        elif pay_options and form.pay.data not in {value for value, _label in pay_options}:
            form.pay.errors = [_("Please choose a payment method")]
        else:
            order = _place_order(item, form, quotes[form.sku.data], inputs, pay_options, topup_values)
            if order is not None:
                _remember(order.order_no)
                _watch_stock(item, form.sku.data)
                return redirect(url_for("storefront.order", order_no=order.order_no))
    prices = {sku_id: q.unit_price_fen for sku_id, q in quotes.items()}
    prices.update({sku_id: c.goods_fen // c.quantity for sku_id, c in previews.items()})
    parts = page_layout("product", product=item)
    return render_template("storefront/product.html", product=item, skus=skus, form=form,
                           layout_before=parts["layout_before"], layout_after=parts["layout_after"],
                           topup_fields=topup_fields, topup_values=topup_values, topup_errors=topup_errors,
                           pay_options=pay_options, prices=prices,
                           list_prices={sku_id: q.unit_price_fen for sku_id, q in quotes.items()},
                           price_lines={sku_id: c.lines for sku_id, c in previews.items()},
                           checkout_inputs=declared, input_values=inputs)


def _place_order(item, form, quote, inputs: dict, pay_options, topup_values):
    """Price, vet and create the order of a valid buy form; None (with a message flashed) when refused."""
    channel, _sep, profile = (form.pay.data if pay_options else _default_channel()).partition("/")
    site = current_site()
    checkout = _checkout(item, form.sku.data, quote, form.quantity.data, inputs, preview=False,
                         contact=form.contact.data)
    relay = _hook()
    try:
        if _uses_pipeline():
            risk = checkouts.vet(relay, checkout)
            if risk:
                current_app.logger.warning("checkout on %s refused as risky: %s", site.slug, risk)
                flash(_("Cannot place the order: it was flagged as risky. Please try again later or contact support"), "error")
                return None
        risk_control.screen(site.site_id, buyer_ip=request.remote_addr or "", contact=form.contact.data,
                            member_id=checkout.member_id)  # blacklists: refused with a generic message
        order = orders.create_order(
            unit_price_fen=checkout.unit_price_fen, discount_fen=checkout.discount_fen, hold=checkout.hold_delivery,
            reserving=risk_control.reserving(checkout, checkouts.reserver(relay, checkout) if _uses_pipeline() else None,
                                             relay=relay, device=risk_control.device_of(request)),
            costs=quote.costs, fee=_channel_fee(channel, profile, checkout.goods_fen),
            prepaid=site.config.settlement == "direct" and bool(quote.costs),
            site_id=site.site_id, sku_id=form.sku.data, quantity=form.quantity.data,
            contact=form.contact.data, query_password=form.query_password.data,
            query_secret=_query_secret(), fields=topup_values or None,
            ttl=datetime.timedelta(minutes=site.instance.order_ttl_minutes),
            buyer_ip=request.remote_addr or "", channel=channel, channel_profile=profile,
            member_id=checkout.member_id,
        )
    except checkouts.CheckoutRefused as exc:
        flash(_("Cannot place the order: %(reason)s", reason=str(exc)), "error")
        return None
    except orders.OutOfStock:
        flash(_("Not enough stock: please order fewer or come back later"), "error")
        return None
    except orders.InvalidOrder as exc:
        flash(_("Cannot place the order: %(reason)s", reason=str(exc)), "error")
        return None
    except Exception as exc:
        if not hooks.record_closed_failure(exc, site.site_id):
            raise
        flash(_("The order failed: a plugin of this shop went wrong. Please try again later"), "error")  # the plugin's failure is on record
        return None
    order.product = item
    hooks.notify("order_created", order)
    return order


def _channel_fee(channel: str, profile: str, goods_fen: int) -> tuple[int, str]:
    """The fee of the chosen payment profile on this order, and who bears it."""
    found = payment_routes.registry().find(channel, profile) if channel else None
    return found[1].fee_for(goods_fen) if found else (0, "")


def _watch_stock(product, sku_id: int):
    """Raise the low-stock alert when this order took a SKU to its threshold (checked after commit)."""
    threshold = product.low_stock_threshold
    if threshold > 0 and not product.low_stock_alerted and (sku_stock(sku_id) or 0) <= threshold:
        try:
            alerts.check_low_stock(product.id, instance=current_site().instance)
        except Exception:  # an alert must never fail the buyer's order
            current_app.logger.exception("low-stock check failed for product %s", product.id)


def _pay_options() -> list[tuple[str, str]]:
    return payment_routes.buyer_options()


def _default_channel() -> str:
    # With no payment channel configured, non-production instances pay through "demo".
    return "" if current_site().instance.production or _pay_options() else "demo"


def _demo_payable(order) -> bool:
    return order.channel == "demo" and not current_site().instance.production


@bp.get("/order/<order_no>")
def order(order_no):
    found = orders.find_order(order_no, site_id=current_site().site_id)
    if found is None:
        abort(404)
    keys = orders.delivered_keys(found, _cipher(), found.product) if _owns(order_no) else []
    # Unpaid: the pay page (the "checkout" layout); afterwards the result and the keys (the "order" layout).
    parts = page_layout("checkout" if found.status == "created" else "order")
    return render_template("storefront/order.html", order=found, product=found.product, keys=keys,
                           layout_before=parts["layout_before"], layout_after=parts["layout_after"],
                           owner=_owns(order_no), demo_pay=_demo_payable(found),
                           pay_options=payment_routes.order_pay_options(found) if found.status == "created" else [])


@bp.post("/order/<order_no>/demo-pay")
def demo_pay(order_no):
    """The demo's stand-in for a payment gateway; refused on production instances."""
    if not _owns(order_no):
        abort(404)
    found = orders.find_order(order_no, site_id=current_site().site_id)
    if found is None or not _demo_payable(found):
        abort(404)
    try:
        result = orders.mark_paid(order_no, channel="demo", trade_no=f"DEMO-{order_no}", amount_fen=found.amount_fen,
                                  order=found)
    except SettlementError:  # a commission plugin failed: nothing was written
        current_app.logger.exception("demo payment of %s not recorded", order_no)
        flash(_("The payment could not be recorded. Please try again later"), "error")
        return redirect(url_for("storefront.order", order_no=order_no))
    after_payment(result, found)
    return redirect(url_for("storefront.order", order_no=order_no))


def after_payment(result, order=None):
    """After ``orders.mark_paid`` recorded a payment (demo or any channel): once per payment,
    the ``order_delivered`` hook (when delivered) and the low-stock check. Never raises.

    ``order`` is the order as loaded before the payment (from ``orders.find_order``), if the
    caller has it; it is loaded again otherwise.
    """
    if result is None or result.duplicate or result.refund_due or result.status not in ("paid", "delivered"):
        return  # a replay, or money owed back (the order was already paid): nothing new to deliver
    if order is None:
        try:
            with all_sites():
                order = orders.find_order(result.order_no)
        except Exception:  # noqa: BLE001 - the payment is recorded; what follows must not fail it
            current_app.logger.exception("could not load order %s after its payment", result.order_no)
            return
    order.status = result.status
    product = order.product
    site = selling_site_config(order)
    hooks.notify("order_paid", order, site=site)  # each plugin alone: a failure never undoes the payment
    if result.status == "delivered":
        hooks.notify("order_delivered", order, site=site)
    elif product.supplier:
        hooks.supply(order)  # the supplier plugin forwards it upstream (its sweep would, later)
    _watch_stock(product, order.sku_id)


def selling_site_config(order):
    """The selling site's config: a notification may arrive on another domain of the instance
    (this site's config if the seller's folder cannot be read; ``hooks.site_config`` logged why)."""
    return hooks.site_config(order.site_id) or current_site().config


@bp.route("/lookup", methods=["GET", "POST"])
@limited("lookup", "10/minute")
def lookup():
    form = LookupForm()
    found = None
    if form.validate_on_submit():
        order_no = (form.order_no.data or "").strip()
        contact = (form.contact.data or "").strip()
        password = form.query_password.data or ""
        if contact and password:
            candidates = (orders.Order.select().where(orders.Order.contact == contact)
                          .order_by(orders.Order.id.desc()).limit(20))
            found = [o for o in candidates if o.check_query_password(password, _query_secret())]
            for o in found:
                _remember(o.order_no)  # proved ownership: keys become visible
        elif order_no:
            o = orders.Order.get_or_none(orders.Order.order_no == order_no)
            found = [o] if o else []
        else:
            flash(_("Enter an order number, or your contact and lookup password"), "error")
        if found == []:
            flash(_("No order found. Please check what you entered"), "error")
    parts = page_layout("lookup")
    return render_template("storefront/lookup.html", form=form, found=found,
                           layout_before=parts["layout_before"], layout_after=parts["layout_after"])


@bp.get("/pages/<handle>")
def custom_page(handle):
    """An owner's own page (``sites/<slug>/layouts/custom/<handle>.json``); 404 until it is stored."""
    key = layouts.CUSTOM_PREFIX + handle
    store = layouts.site_layouts()
    if not layouts.HANDLE_RE.match(handle) or not store.has_page(key, draft=_draft()):
        abort(404)
    parts = page_layout(key)
    title = store.layout(key, draft=_draft()).title or handle
    return render_template("storefront/custom.html", page_title=title,
                           layout_before=parts["layout_before"], layout_after=parts["layout_after"])


@bp.get("/healthz")
def healthz():
    return jsonify(site=current_site().slug, ok=True)


def _site_sections() -> list:
    """The theme sections the site's plugins offer (``theme_sections``)."""
    return _per_app("sections", lambda: _plugin_answers("theme_sections", Section))


def plugin_sections(page: str, product=None, only=None):
    """The HTML of the plugins' sections for ``page`` (template global ``plugin_sections``)."""
    sections = _site_sections()
    if not sections:
        return Markup("")
    context = {"page": page, "site": current_site().config, "product": product, "member_id": current_member_id()}
    return render_sections(sections, context, only=only)


@hookimpl
def prepare_site_app(app, site):
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # token lives as long as the session
    csrf.init_app(app)
    app.register_blueprint(bp)
    app.context_processor(lambda: {"plugin_sections": plugin_sections})
