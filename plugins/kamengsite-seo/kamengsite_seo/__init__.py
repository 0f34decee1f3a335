"""SEO for a site: ``/sitemap.xml``, ``/robots.txt`` and the head tags of its pages.

Enabled per site (``plugins = ["seo"]`` in ``site.toml``); settings come from the
site's ``[settings.seo]`` table. Everything a search engine sees is what a buyer of
*this* site sees: products, names and prices go through the storefront's own
per-site pricer, so a product hidden on a sub-site never leaks into its sitemap.
"""

from __future__ import annotations

import json
import logging
from xml.sax.saxutils import escape as xml_escape

import jsonschema
from flask import Blueprint, Response, current_app, g, has_request_context, request, url_for
from markupsafe import Markup

from kamengsite import storefront
from kamengsite.catalog import product_on_sale, skus_on_sale, storefront_products
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _l

log = logging.getLogger(__name__)
bp = Blueprint("seo", __name__)

EXTENSION = "kamengsite_seo.settings"
SITEMAP_LIMIT = 10000  # far below the 50 000 URLs a sitemap may hold
#: Pages with a buyer's data or the console: never worth crawling.
PRIVATE_PATHS = ("/admin/", "/member/", "/order/", "/pay/")
_PATH = r"^/[^\s<>]*\Z"  # no whitespace: a newline would inject lines into robots.txt

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 120, "title": _l("Site title (empty: the site name)")},
        "description": {"type": "string", "maxLength": 500, "title": _l("Site description (empty: the site tagline)")},
        "keywords": {"title": _l("Keywords (comma-separated)"), "anyOf": [
            {"type": "string", "maxLength": 300},
            {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 30},
        ]},
        "og_image": {"type": "string", "maxLength": 500, "title": _l("Share image address (https:// or /static/…)"),
                     "pattern": r"^(https?://[^\s<>\"]+|/[^\s<>\"]*)\Z"},
        "robots_disallow": {"type": "array", "title": _l("Paths search engines may not crawl (comma-separated, e.g. /lookup)"),
                            "items": {"type": "string", "maxLength": 200, "pattern": _PATH},
                            "maxItems": 100},
        "products": {"type": "array", "maxItems": 500, "title": _l("Search settings of single products (the product number is in its link /p/<number>)"),
                     "items": {"type": "object", "required": ["product_id"], "additionalProperties": False,
                               "properties": {
                                   "product_id": {"type": "integer", "minimum": 1, "title": _l("Product number")},
                                   "title": {"type": "string", "maxLength": 120, "title": _l("Title")},
                                   "description": {"type": "string", "maxLength": 500, "title": _l("Meta description")},
                                   "keywords": {"type": "string", "maxLength": 300, "title": _l("Keywords")}}}},
    },
    "additionalProperties": False,
}
DEFAULTS = {"title": "", "description": "", "keywords": "", "og_image": "", "robots_disallow": [], "products": []}


# -- settings ---------------------------------------------------------------------------


@hookimpl
def plugin_settings_schema():
    """The console's 插件 page renders this as the SEO settings form of each site."""
    return SETTINGS_SCHEMA


def load_settings(site) -> dict:
    """The site's ``[settings.seo]`` merged over the defaults; an invalid key is logged and ignored.

    A typo in one value must not take the shop down, nor throw away the owner's other values.
    """
    raw = (site.settings or {}).get("seo") or {}
    bad = set()
    for error in jsonschema.Draft202012Validator(SETTINGS_SCHEMA).iter_errors(raw):
        where = ".".join(str(p) for p in error.absolute_path) or "(table)"
        log.error("site %s: [settings.seo] %s: %s; using the default", site.slug, where, error.message)
        if error.absolute_path:
            bad.add(error.absolute_path[0])
    settings = {key: raw[key] for key in DEFAULTS if key in raw and key not in bad}
    merged = dict(DEFAULTS, **settings)
    if isinstance(merged["keywords"], list):
        merged["keywords"] = ", ".join(k.strip() for k in merged["keywords"] if k.strip())
    merged["title"] = merged["title"] or site.name
    merged["description"] = merged["description"] or site.tagline
    merged["products"] = {entry["product_id"]: entry for entry in merged["products"]}
    return merged


def _settings(site) -> dict:
    return current_app.extensions.get(EXTENSION) or load_settings(site)


# -- routes -----------------------------------------------------------------------------


def visible_products() -> list[dict]:
    """What this site's home page lists: its visibility rules and renames applied."""
    owners = storefront.catalog_owners()
    return storefront.pricer().listing(storefront_products(owners, limit=SITEMAP_LIMIT))


@bp.get("/sitemap.xml")
def sitemap():
    urls = [url_for("storefront.home", _external=True)]
    urls += [url_for("storefront.product", product_id=p["id"], _external=True) for p in visible_products()]
    body = "".join(f"  <url><loc>{xml_escape(u)}</loc></url>\n" for u in urls)
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n' + body + "</urlset>\n")
    return Response(xml, mimetype="application/xml")


@bp.get("/robots.txt")
def robots():
    settings = _settings(current_app.extensions["kamengsite.site"].config)
    paths = list(dict.fromkeys([*PRIVATE_PATHS, *settings["robots_disallow"]]))
    lines = ["User-agent: *", *(f"Disallow: {p}" for p in paths),
             f"Sitemap: {url_for('seo.sitemap', _external=True)}"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain")


# -- head tags --------------------------------------------------------------------------


def yuan(fen: int) -> str:
    """Integer fen as a yuan string ("15.00"); no float ever touches a price."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def json_for_script(data) -> str:
    """JSON safe inside ``<script>``: a product named ``</script>…`` cannot close the tag."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def absolute(url: str) -> str:
    return request.host_url.rstrip("/") + url if url.startswith("/") else url


def current_product():
    """The product of a product page as this site sells it, or None (any other page, or not on sale)."""
    if request.endpoint != "storefront.product":
        return None
    product_id = (request.view_args or {}).get("product_id")
    pricer = storefront.pricer()
    for owner in storefront.catalog_owners():
        product = product_on_sale(product_id, owner)
        if product is not None:
            return product if pricer.visible(product) else None
    return None


def product_json_ld(product, canonical: str) -> dict:
    """schema.org ``Product`` with one offer per SKU at this site's price."""
    pricer = storefront.pricer()
    skus = skus_on_sale(product.id)
    tiers = pricer.tier_prices([s.id for s in skus])
    offers = [{
        "@type": "Offer",
        **({"name": sku.name} if sku.name else {}),
        "price": yuan(pricer.quote(product, sku.id, sku.price_fen, tiers).unit_price_fen),
        "priceCurrency": "CNY",
        "availability": "https://schema.org/InStock" if sku.stock > 0 else "https://schema.org/OutOfStock",
        "url": canonical,
    } for sku in skus]
    data = {"@context": "https://schema.org", "@type": "Product", "name": pricer.display_name(product),
            "description": product.summary or product.description or "", "url": canonical, "offers": offers}
    if product.image:
        data["image"] = absolute(product.image)
    return data


def _product_safely():
    # SEO is decoration: a failing lookup must never take the page itself down.
    try:
        return current_product()
    except Exception:  # noqa: BLE001
        current_app.logger.exception("seo: product data of %s not built", request.path)
        return None


def head_tags(site) -> Markup:
    settings = _settings(site)
    canonical = request.base_url  # the request URL without its query string
    product = _product_safely()
    own = settings["products"].get(product.id, {}) if product else {}  # the owner's words for this product
    title = own.get("title") or (storefront.pricer().display_name(product) if product else settings["title"])
    description = own.get("description") or (product.summary if product and product.summary
                                              else settings["description"])
    keywords = own.get("keywords") or settings["keywords"]
    tags = [Markup('<link rel="canonical" href="{}">').format(canonical)]
    if description:
        tags.append(Markup('<meta name="description" content="{}">').format(description))
    if keywords:
        tags.append(Markup('<meta name="keywords" content="{}">').format(keywords))
    og = [("og:title", title), ("og:description", description), ("og:url", canonical),
          ("og:type", "product" if product else "website"), ("og:site_name", site.name)]
    if settings["og_image"]:
        og.append(("og:image", absolute(settings["og_image"])))
    tags += [Markup('<meta property="{}" content="{}">').format(k, v) for k, v in og if v]
    if product is not None:
        tags.append(Markup('<script type="application/ld+json">{}</script>').format(
            Markup(json_for_script(product_json_ld(product, canonical)))))
    return Markup("\n").join(tags)


# -- hooks ------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    app.extensions[EXTENSION] = load_settings(site)  # validated (and logged) once per app build
    app.register_blueprint(bp)


@hookimpl
def site_template_context(site):
    # Called for every render without the request: only pages served to a request get tags.
    if not has_request_context():
        return {}
    if "kamengsite_seo_head" not in g:
        g.kamengsite_seo_head = head_tags(site)
    return {"seo_head": g.kamengsite_seo_head}
