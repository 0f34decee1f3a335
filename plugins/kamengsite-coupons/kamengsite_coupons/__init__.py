"""Coupons and promotions (优惠营销) for a site: coupon codes, flash sales (秒杀), new-customer
prices (新人专享) and quantity tiers (批发价).

Enabled per site (``plugins = ["coupons"]`` in ``site.toml``). Everything is per site: a
sub-site's owner sets up their own promotions in ``/admin/coupons/``; every discount comes out
of the selling site's own margin (the checkout never prices below the site's cost).

Price pipeline stages used: ``quantity`` (tiers), ``promotion`` (flash sale or newcomer
price, the lower one), ``coupon`` (the code typed in the buy form's 优惠码 field).
``order_reserving`` takes a flash sale's units and a coupon's use with conditional UPDATEs
in the order's own transaction; ``order_expiring`` gives them back; ``order_paid`` takes
them again for an expired order that was paid late at its frozen price.
"""

from __future__ import annotations

import logging

from kamengsite.checkout import CheckoutInput, CheckoutRefused
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _, _l
from kamengsite.plugin_settings import settings_for
from kamengsite.sections import Section

from . import rules
from .models import Coupon, CouponUse, FlashSale, FlashSaleUse, NewcomerPrice, QuantityTier  # noqa: F401

log = logging.getLogger(__name__)
PLUGIN = rules.PLUGIN

SETTINGS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "show_flash_banner": {"type": "boolean", "default": True,
                              "title": _l("Show the “Flash sales” section on the home and product pages")},
        "coupon_field": {"type": "boolean", "default": True,
                         "title": _l("Show the “Coupon code” field on the order form")},
    },
}


def settings(site) -> dict:
    return settings_for(site, PLUGIN, SETTINGS_SCHEMA)


# -- the hooks --------------------------------------------------------------------------------


@hookimpl
def plugin_settings_schema():
    return SETTINGS_SCHEMA


@hookimpl
def prepare_site_app(app, site):
    from .admin import bp

    app.register_blueprint(bp)


@hookimpl
def admin_menu(site):
    return [(_("Promotions"), "coupons.index")]


@hookimpl
def checkout_inputs(site):
    if not settings(site)["coupon_field"]:
        return []
    return [CheckoutInput(rules.INPUT, _l("Coupon code"), placeholder=_l("Have a coupon code? Enter it here"),
                          max_length=32)]


@hookimpl
def adjust_price(checkout, stage):
    if stage == "quantity":
        rules.price_quantity(checkout)
    elif stage == "promotion":
        rules.price_promotion(checkout)
    elif stage == "coupon":
        rules.price_coupon(checkout)


@hookimpl
def validate_checkout(checkout):
    message = rules.refusal(checkout)
    if message:
        raise CheckoutRefused(message)


@hookimpl
def order_reserving(order, checkout):
    rules.reserve(order, checkout)


@hookimpl
def order_expiring(order):
    rules.release(order)


@hookimpl
def order_paid(order, site):
    rules.retake(order)  # only does something for an expired order that was paid late


@hookimpl
def theme_sections(site):
    if not settings(site)["show_flash_banner"]:
        return []
    from .sections import render_flash_sales

    return [Section("flash_sales", _l("Flash sales"), render_flash_sales, pages=("home", "product"))]


__all__ = ["SETTINGS_SCHEMA", "Coupon", "CouponUse", "FlashSale", "FlashSaleUse", "NewcomerPrice", "QuantityTier",
           "rules"]
