"""Upstream docking (上游对接): sell goods another shop supplies, at a price that follows its price.

The operator of the main site adds upstream suppliers on the console page ``/admin/upstreams/``
(上游对接): another kamengsite shop (its reseller API), an 异次元 acg-faka shop (shared-store
protocol) or a dujiao-next shop (upstream API); tests the connection; browses the upstream's
products and maps one to a new local product (``supplier="upstreams"``) with a repricing rule
and an optional fallback supplier. From then on ``sync.sync_all`` (every 5 minutes, or "sync
now") keeps each linked SKU's price and stock on the upstream's; paid orders of those products
reach ``supply_order`` and are forwarded upstream by ``forwarding.py``.

Connector secrets (settings the connector's schema marks ``writeOnly``) are sealed with the
instance's card-key cipher and never shown back. The page is the main site's only (a 404 on
sub-sites) and belongs to the console area ``catalogue``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from decimal import Decimal, InvalidOperation

from flask import abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import InputRequired, Length, Optional

from kamengsite import admin
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _, _l
from kamengsite.permissions import area

from . import forwarding, sync
from .connectors import Connector, UpstreamError, builtin_connectors
from .models import RULES, Upstream, UpstreamForward, UpstreamLink

log = logging.getLogger(__name__)
PLUGIN = "upstreams"
SUPPLIER = "upstreams"  # product.supplier of the goods this plugin supplies
SYNC_MINUTES = 5
MAX_BROWSE = 500

bp = admin.console_blueprint("upstreams", __name__, "/admin/upstreams")


# -- connectors ------------------------------------------------------------------------------


def connector_classes(instance=None) -> dict[str, type[Connector]]:
    """Every protocol the installed plugins speak (``upstream_connectors``), the built-in ones first."""
    classes = {cls.protocol: cls for cls in builtin_connectors()}
    try:
        from kamengsite import hooks

        answers = hooks.instance_plugins().pm.hook.upstream_connectors(instance=instance)
    except Exception:  # noqa: BLE001 - another plugin's connectors must not hide ours
        log.exception("upstream_connectors failed; using the built-in connectors")
        answers = []
    for answer in answers or ():
        for cls in answer or ():
            if isinstance(cls, type) and getattr(cls, "protocol", "") and cls.protocol not in classes:
                classes[cls.protocol] = cls
    return classes


def secret_keys(cls) -> list[str]:
    return [k for k, v in cls.settings_schema.get("properties", {}).items() if v.get("writeOnly")]


def _cipher(instance):
    from kamengsite.crypto import CardKeyCipher

    return CardKeyCipher.from_instance(instance)


def seal_settings(upstream_id: int, cls, values: dict, instance) -> dict:
    """``values`` with the connector's secrets sealed (``seal(value, -id)``, base64) for storing."""
    cipher = _cipher(instance)
    stored = dict(values)
    for key in secret_keys(cls):
        if stored.get(key):
            stored[key] = base64.b64encode(cipher.seal(str(stored[key]), -upstream_id)).decode("ascii")
    return stored


def open_settings(upstream: Upstream, cls, instance) -> dict:
    """The stored settings with the secrets opened (only to build the connector)."""
    values = json.loads(upstream.settings or "{}")
    cipher = _cipher(instance)
    for key in secret_keys(cls):
        if values.get(key):
            try:
                values[key] = cipher.open(base64.b64decode(values[key], validate=True), -upstream.id)
            except (binascii.Error, ValueError) as exc:
                raise UpstreamError(f"the stored {key} cannot be opened: {exc}") from None
    return values


def loopback_allowed(instance) -> bool:
    """127.0.0.1 upstreams (tests, a local demo): only with KAMENGSITE_API_ALLOW_LOOPBACK=1 outside production."""
    return os.environ.get("KAMENGSITE_API_ALLOW_LOOPBACK") == "1" and not getattr(instance, "production", True)


def connector_for(upstream: Upstream, instance) -> Connector:
    """The connector of a docked upstream, its sealed settings opened; UpstreamError if it cannot be built."""
    cls = connector_classes(instance).get(upstream.protocol)
    if cls is None:
        raise UpstreamError(f"no connector speaks {upstream.protocol!r} (is its plugin installed?)")
    from kamengsite.errors import KamengsiteError

    try:
        settings = open_settings(upstream, cls, instance)
    except KamengsiteError as exc:
        raise UpstreamError(str(exc)) from None
    return cls(settings, allow_loopback=loopback_allowed(instance))


# -- hooks -----------------------------------------------------------------------------------


@hookimpl
def upstream_connectors(instance):
    return builtin_connectors()


@hookimpl
def supply_order(order):
    return forwarding.on_supply_order(order)


#: An active upstream whose sync failed this many times in a row is an operational problem (故障预警).
ALERT_FAILURES = 3


@hookimpl
def operational_checks(instance):
    """``("upstream_failing", "upstream/<id>", detail)`` for each active upstream failing ``ALERT_FAILURES``+ times."""
    failing = Upstream.select().where((Upstream.status == "active") & (Upstream.failures >= ALERT_FAILURES))
    return [("upstream_failing", f"upstream/{u.id}",
             f"{u.name} ({u.protocol}): {u.failures} × {' '.join((u.last_error or '').split())[:300]}")
            for u in failing.order_by(Upstream.id)]


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute=f"*/{SYNC_MINUTES}"), name="upstreams_sync")
    def upstreams_sync():
        """Prices and stock of linked products follow their upstreams."""
        counts = sync.sync_all(instance)
        if counts["failed"] or counts["changed"] or counts["alerts"]:
            log.info("upstreams sync: %s", counts)
        return counts

    forwarding.register_jobs(huey, instance)


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(bp)


@hookimpl
def admin_menu(site):
    try:
        if not admin.is_main_site():
            return []
    except (RuntimeError, KeyError):
        return []
    return [(_("Upstreams"), "upstreams.index")]


# -- the console page: /admin/upstreams/ -------------------------------------------------------


def console_page(view):
    """The main site's operators, and staff with the ``catalogue`` area; a 404 elsewhere."""
    return admin.main_site_only(admin.operator_required(area("catalogue")(view)))


def _instance():
    from kamengsite.app import current_site

    return current_site().instance


def _main_site():
    from kamengsite.app import current_site
    from kamengsite.models import Site

    return Site.get_by_id(current_site().site_id)


class UpstreamForm(FlaskForm):
    name = StringField(_l("Name"), validators=[InputRequired(_l("Enter a name")), Length(max=60)])
    protocol = admin.ChoiceField(_l("Protocol"))


class MapForm(FlaskForm):
    ref = StringField(_l("Upstream item"), validators=[InputRequired(), Length(max=64)])
    rule = admin.ChoiceField(_l("Pricing rule"))
    value = StringField(_l("Amount or percent"), validators=[InputRequired(_l("Enter the markup")), Length(max=12)])
    fallback = admin.ChoiceField(_l("Fallback supplier"), coerce=int, default=0)
    fallback_ref = StringField(_l("Fallback item"), validators=[Optional(), Length(max=64)])


def parse_rule_value(rule: str, text: str) -> int:
    """The markup as stored: fen for a margin ("2.50" yuan → 250), basis points for a percent ("15" → 1500)."""
    if rule == "percent":
        try:
            percent = Decimal((text or "").strip().rstrip("%"))
            basis = percent * 100
            whole = percent.is_finite() and basis == basis.to_integral_value() and 0 <= basis <= 1000000
        except InvalidOperation:
            whole = False
        if not whole:
            raise ValueError(_("Enter a percent such as 15 or 12.5"))
        return int(basis)
    return admin.parse_yuan(text)  # PriceError (a ValueError) says what is wrong


def _upstream_or_404(upstream_id: int) -> Upstream:
    upstream = Upstream.get_or_none(Upstream.id == upstream_id)
    if upstream is None:
        abort(404)
    return upstream


def _action_or_400():
    if not admin.ActionForm().validate_on_submit():
        abort(400)


def _settings_from_form(cls, kept_secrets: dict | None = None) -> tuple[dict, list[str]]:
    """The connection settings typed for ``cls`` (fields ``setting_<protocol>_<key>``) and what is wrong.

    ``kept_secrets``: when editing, the stored (sealed) secrets a left-empty field keeps."""
    values, problems = {}, []
    schema = cls.settings_schema
    for key, spec in schema.get("properties", {}).items():
        text = (request.form.get(f"setting_{cls.protocol}_{key}") or "").strip()
        if len(text) > int(spec.get("maxLength", 300)):
            problems.append(_("%(field)s is too long", field=spec.get("title", key)))
        if text:
            values[key] = text
    for key in schema.get("required", ()):
        if not values.get(key) and not (kept_secrets or {}).get(key):
            problems.append(_("Fill in %(field)s", field=schema["properties"][key].get("title", key)))
    url = values.get("base_url", "")
    if url and not url.lower().startswith(("http://", "https://")):
        problems.append(_("The shop URL must start with http:// or https://"))
    return values, problems


@bp.route("/", methods=["GET", "POST"])
@console_page
def index():
    classes = connector_classes(_instance())
    form = UpstreamForm()
    form.protocol.choices = [(p, c.label) for p, c in classes.items()]
    if form.validate_on_submit():
        cls = classes[form.protocol.data]
        values, problems = _settings_from_form(cls)
        if problems:
            for problem in problems:
                flash(problem, "error")
        else:
            upstream = add_upstream(form.name.data.strip(), cls, values, _instance())
            flash(_("Upstream %(name)s added; test its connection, then map its products", name=upstream.name),
                  "ok")
            return redirect(url_for("upstreams.index"))
    upstreams = list(Upstream.select().order_by(Upstream.id))
    return render_template("upstreams/index.html", form=form, classes=classes, upstreams=upstreams,
                           names={u.id: u.name for u in upstreams}, links=_link_rows(),
                           forwards=_forward_rows(), action_form=admin.ActionForm(), now=sync.utcnow(),
                           shown={u.id: shown_settings(u, classes[u.protocol]) for u in upstreams
                                  if u.protocol in classes})


def add_upstream(name: str, cls, values: dict, instance) -> Upstream:
    from kamengsite.db import database

    with database.atomic():
        upstream = Upstream.create(name=name[:60], protocol=cls.protocol, settings="{}")
        stored = seal_settings(upstream.id, cls, values, instance)
        Upstream.update(settings=json.dumps(stored, ensure_ascii=False)).where(Upstream.id == upstream.id).execute()
    return Upstream.get_by_id(upstream.id)


def _link_rows() -> list[dict]:
    from kamengsite.catalog import Product, Sku

    rows = []
    for link in UpstreamLink.select().order_by(UpstreamLink.id.desc()).limit(500):
        product = Product.get_or_none(Product.id == link.product_id)
        sku = Sku.get_or_none(Sku.id == link.sku_id)
        rows.append({"link": link, "product": product, "sku": sku})
    return rows


def _forward_rows() -> list[dict]:
    from kamengsite.catalog import Product
    from kamengsite.orders import Order
    from kamengsite.tenancy import all_sites

    rows = []
    with all_sites():
        for forward in UpstreamForward.select().order_by(UpstreamForward.id.desc()).limit(100):
            order = Order.get_or_none(Order.id == forward.order_id)
            product = Product.get_or_none(Product.id == order.product_id) if order is not None else None
            rows.append({"forward": forward, "order": order, "product": product})
    return rows


@bp.post("/<int:upstream_id>/settings")
@console_page
def edit(upstream_id):
    """New connection settings for an upstream; a secret field left empty keeps the stored secret."""
    _action_or_400()
    upstream = _upstream_or_404(upstream_id)
    cls = connector_classes(_instance()).get(upstream.protocol)
    if cls is None:
        abort(404)
    stored = json.loads(upstream.settings or "{}")
    kept = {key: stored[key] for key in secret_keys(cls) if stored.get(key)}
    values, problems = _settings_from_form(cls, kept)
    if problems:
        for problem in problems:
            flash(problem, "error")
        return redirect(url_for("upstreams.index"))
    sealed = seal_settings(upstream.id, cls, values, _instance())
    for key, value in kept.items():
        sealed.setdefault(key, value)
    Upstream.update(settings=json.dumps(sealed, ensure_ascii=False)).where(Upstream.id == upstream.id).execute()
    flash(_("Settings of %(name)s saved", name=upstream.name), "ok")
    return redirect(url_for("upstreams.index"))


def shown_settings(upstream: Upstream, cls) -> dict:
    """The settings the page may show again: everything but the secrets."""
    stored = json.loads(upstream.settings or "{}")
    hidden = set(secret_keys(cls))
    return {key: value for key, value in stored.items() if key not in hidden}


@bp.post("/<int:upstream_id>/test")
@console_page
def test(upstream_id):
    _action_or_400()
    upstream = _upstream_or_404(upstream_id)
    try:
        connector = connector_for(upstream, _instance())
        if hasattr(connector, "ping"):
            info = connector.ping() or {}
            name = info.get("name") or info.get("site_name") or ""
            flash(_("Connected to %(upstream)s %(name)s", upstream=upstream.name, name=name), "ok")
        else:
            count = len(connector.products())
            flash(_("Connected to %(upstream)s: %(count)s products", upstream=upstream.name, count=count), "ok")
    except UpstreamError as exc:
        flash(_("Connection to %(upstream)s failed: %(error)s", upstream=upstream.name, error=exc), "error")
    return redirect(url_for("upstreams.index"))


@bp.post("/<int:upstream_id>/toggle")
@console_page
def toggle(upstream_id):
    _action_or_400()
    upstream = _upstream_or_404(upstream_id)
    new = "paused" if upstream.status == "active" else "active"
    Upstream.update(status=new).where(Upstream.id == upstream.id).execute()
    flash(_("Upstream %(name)s paused", name=upstream.name) if new == "paused"
          else _("Upstream %(name)s resumed", name=upstream.name), "ok")
    return redirect(url_for("upstreams.index"))


@bp.post("/sync")
@console_page
def sync_now():
    _action_or_400()
    counts = sync.sync_all(_instance())
    flash(_("Synced: %(links)s links, %(changed)s changed, %(failed)s upstreams failing",
            links=counts["links"], changed=counts["changed"], failed=counts["failed"]), "ok")
    return redirect(url_for("upstreams.index"))


@bp.post("/links/<int:link_id>/clear-alert")
@console_page
def clear_alert(link_id):
    _action_or_400()
    if not sync.clear_alert(link_id):
        abort(404)
    flash(_("Price alert cleared"), "ok")
    return redirect(url_for("upstreams.index"))


@bp.route("/<int:upstream_id>/products", methods=["GET", "POST"])
@console_page
def products(upstream_id):
    upstream = _upstream_or_404(upstream_id)
    others = list(Upstream.select().where(Upstream.id != upstream.id).order_by(Upstream.id))
    form = MapForm()
    form.rule.choices = [("margin", _("Cost + fixed amount (yuan)")), ("percent", _("Cost + percent"))]
    form.fallback.choices = [(0, _("None"))] + [(u.id, u.name) for u in others]
    items, error = [], None
    try:
        items = connector_for(upstream, _instance()).products()[:MAX_BROWSE]
    except UpstreamError as exc:
        error = str(exc)
    if form.validate_on_submit() and error is None:
        try:
            value = parse_rule_value(form.rule.data, form.value.data)
            item = next((i for i in items if i.ref == form.ref.data), None)
            if item is None:
                raise ValueError(_("The upstream has no item %(ref)s", ref=form.ref.data))
            fallback_id = form.fallback.data or None
            if fallback_id and not (form.fallback_ref.data or "").strip():
                raise ValueError(_("Name the fallback supplier's item"))
            link = map_product(upstream, item, form.rule.data, value, _main_site(),
                               fallback_upstream_id=fallback_id, fallback_ref=(form.fallback_ref.data or "").strip())
        except ValueError as exc:
            flash(_("Not mapped: %(error)s", error=exc), "error")
        else:
            flash(_("%(name)s is on sale as product #%(id)s", name=item.name, id=link.product_id), "ok")
            return redirect(url_for("upstreams.index"))
    linked = {link.ref for link in UpstreamLink.select(UpstreamLink.ref).where(UpstreamLink.upstream == upstream.id)}
    return render_template("upstreams/products.html", upstream=upstream, items=items, error=error, form=form,
                           linked=linked)


def map_product(upstream: Upstream, item, rule: str, rule_value: int, site, *, fallback_upstream_id=None,
                fallback_ref: str = "") -> UpstreamLink:
    """A new local product (``supplier="upstreams"``) selling ``item`` of ``upstream``, and its link."""
    from kamengsite.catalog import Sku, create_product
    from kamengsite.db import database

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}")
    price = sync.price_for(rule, rule_value, item.price_fen)
    kind = item.kind if item.kind in ("card", "topup", "manual") else "card"
    extra = {}
    if kind == "topup":
        fields = [{"name": f["name"], "label": str(f.get("label") or f["name"])[:40]} for f in item.fields
                  if isinstance(f, dict) and _topup_name(f.get("name"))][:8]
        if fields:
            extra["topup_fields"] = fields
    with database.atomic():
        product = create_product(site, item.name[:120], price, kind=kind, supplier=SUPPLIER, **extra)
        sku = product.skus[0]
        Sku.update(stock=max(0, int(item.stock))).where(Sku.id == sku.id).execute()
        return UpstreamLink.create(sku=sku.id, product=product.id, upstream=upstream.id, ref=item.ref,
                                   fallback_upstream=fallback_upstream_id, fallback_ref=fallback_ref if
                                   fallback_upstream_id else "", rule=rule, rule_value=rule_value,
                                   cost_fen=item.price_fen, upstream_stock=max(0, int(item.stock)),
                                   synced_at=sync.utcnow())


def _topup_name(name) -> bool:
    import re

    return isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,30}", name) is not None


__all__ = ["connector_for", "connector_classes", "map_product", "add_upstream", "Upstream", "UpstreamLink",
           "UpstreamForward"]
