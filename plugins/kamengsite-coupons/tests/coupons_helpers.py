"""Shared setup of the coupons plugin's tests: a shop tree, and a checkout run the way the storefront runs it.

``main`` sells a manual product (``BASE`` fen, stock counter) and a card product; ``shop`` is a
silver sub-site (cost −10 %: 9000 of 10000) selling them at +20 % (10800).
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pluggy

import kamengsite_coupons
from kamengsite import checkout as checkouts
from kamengsite import hookspecs, levels, orders, pricing
from kamengsite.catalog import Category, Product, Sku, create_product
from kamengsite.checkout import Checkout
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import all_sites

BASE = 10000
SHOP_PRICE = 10800  # silver: cost 9000, +20 %
SHOP_COST = 9000
SITE = SimpleNamespace(settings={}, config_file="site.toml")


def relay():
    pm = pluggy.PluginManager("kamengsite")
    pm.add_hookspecs(hookspecs)
    pm.register(kamengsite_coupons, name="coupons")
    return pm.hook


RELAY = relay()


def make_shop(stock=1000):
    levels.seed_default_levels()
    main = Site.create(slug="main")
    shop = Site.create(slug="shop", parent=main, level="silver")
    games = Category.create(site=main, name="游戏")
    other = Category.create(site=main, name="其他")
    product = create_product(main, "月卡", BASE, kind="manual", category=games, max_qty=50)
    second = create_product(main, "周卡", 3000, kind="manual", category=other, max_qty=50)
    for p in (product, second):
        Sku.update(stock=stock).where(Sku.product == p.id).execute()
    pricing.set_rule(shop.id, "all", markup_percent_bp=2000)
    return SimpleNamespace(main=main.id, shop=shop.id, product=product, sku=product.skus[0].id, second=second,
                           second_sku=second.skus[0].id, games=games.id, other=other.id)


def hours(n) -> datetime.datetime:
    return utcnow() + datetime.timedelta(hours=n)


def checkout_for(site_id, sku_id, quantity=1, *, code="", member_id=None, contact="buyer@example.com",
                 preview=False) -> Checkout:
    """Priced the way the storefront prices: the site's quote, then the plugin's stages."""
    quote = pricing.quote_sku(site_id, sku_id)
    product = Product.get_by_id(Sku.get_by_id(sku_id).product_id)
    checkout = Checkout(site_id=site_id, site=SITE, product=product, sku_id=sku_id, quantity=quantity,
                        list_unit_fen=quote.unit_price_fen, floor_unit_fen=quote.costs[0][1] if quote.costs else 0,
                        member_id=member_id, contact=contact, inputs={"coupon": code} if code else {},
                        preview=preview)
    checkout.costs = quote.costs
    return checkouts.price(RELAY, checkout)


def place(checkout: Checkout) -> orders.Order:
    """Vet the checkout (CheckoutRefused) and create its order with the plugin's reservation."""
    checkouts.vet(RELAY, checkout)
    return orders.create_order(site_id=checkout.site_id, sku_id=checkout.sku_id, quantity=checkout.quantity,
                               contact=checkout.contact, unit_price_fen=checkout.unit_price_fen,
                               discount_fen=checkout.discount_fen, costs=checkout.costs, member_id=checkout.member_id,
                               reserving=checkouts.reserver(RELAY, checkout), channel="epay", channel_profile="main")


def buy(site_id, sku_id, quantity=1, **kwargs) -> orders.Order:
    return place(checkout_for(site_id, sku_id, quantity, **kwargs))


def expire(order):
    """Expire one order now, the way the job does (``order_expiring`` inside the expiry transaction)."""
    with all_sites():
        orders.Order.update(expires_at=utcnow() - datetime.timedelta(minutes=1)).where(
            orders.Order.id == order.id).execute()
    return orders.expire_due(expiring=lambda o: RELAY.order_expiring(order=o))
