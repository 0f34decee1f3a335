"""The rules of coupons, flash sales, new-customer prices and quantity tiers, as plain functions.

The hooks in ``__init__`` call these. Pricing (``price_*``) only reads; ``reserve`` runs inside
the order's creating transaction and takes a coupon use / flash-sale units with conditional
UPDATEs (the row lock of that UPDATE also serialises the per-member counts that follow it);
``release`` gives them back when the order expires, once; ``retake`` takes them again when an
expired order is paid late (its price was frozen with the discount).
"""

from __future__ import annotations

import datetime
import re
import unicodedata

import peewee

from kamengsite.checkout import CheckoutRefused
from kamengsite.db import database, is_sqlite
from kamengsite.i18n import _, _n, format_when
from kamengsite.models import utcnow
from kamengsite.tenancy import acting_for, all_sites

from .models import BP, KINDS, Coupon, CouponUse, FlashSale, FlashSaleUse, NewcomerPrice, QuantityTier, dump_ids

PLUGIN = "coupons"
INPUT = "coupon"  # the buy form's field
CODE_RE = re.compile(r"^[A-Z0-9_-]{2,32}$")
#: Orders that make a member no longer new on a site (an expired or cancelled order does not count).
NOT_NEW_STATUSES = ("created", "paid", "delivered", "refund_pending", "refunded")
MAX_FEN = 10**10


def normalize_code(text) -> str:
    """What a buyer typed, as stored: full-width folded, spaces dropped, upper case."""
    return unicodedata.normalize("NFKC", text or "").strip().replace(" ", "").upper()


def yuan(fen: int) -> str:
    yuan_, cents = divmod(int(fen), 100)
    return f"{yuan_}" if not cents else f"{yuan_}.{cents:02d}"


# -- owners: creating and switching off ----------------------------------------------------------


def create_coupon(site_id: int, code: str, kind: str, value: int, *, min_spend_fen: int = 0,
                  max_discount_fen: int = 0, product_ids=(), category_ids=(), total_limit: int = 0,
                  per_member_limit: int = 0, starts_at=None, ends_at=None, stackable: bool = False,
                  members_only: bool = False, note: str = "") -> Coupon:
    """A new coupon; ValueError (for the owner, in their language) when a rule does not make sense."""
    code = normalize_code(code)
    if not CODE_RE.match(code):
        raise ValueError(_("A coupon code is 2–32 letters, digits, - or _"))
    if kind not in KINDS:
        raise ValueError(_("The type must be money off or percent off"))
    for name, v in (("value", value), ("min_spend_fen", min_spend_fen), ("max_discount_fen", max_discount_fen),
                    ("total_limit", total_limit), ("per_member_limit", per_member_limit)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > MAX_FEN:
            raise ValueError(_("%(name)s must be a whole number of at least 0", name=name))
    if value == 0:
        raise ValueError(_("The discount must be more than 0"))
    if kind == "percent" and value >= BP:
        raise ValueError(_("A percent off must be less than 100%"))
    if starts_at and ends_at and ends_at <= starts_at:
        raise ValueError(_("The end time must be after the start time"))
    with acting_for(site_id):
        if Coupon.select(Coupon.id).where(Coupon.code == code).exists():
            raise ValueError(_("Coupon code %(code)s already exists", code=code))
        return Coupon.create(site=site_id, code=code, kind=kind, value=value, min_spend_fen=min_spend_fen,
                             max_discount_fen=max_discount_fen, product_ids=dump_ids(product_ids),
                             category_ids=dump_ids(category_ids), total_limit=total_limit,
                             per_member_limit=per_member_limit, starts_at=starts_at, ends_at=ends_at,
                             stackable=stackable, members_only=members_only, note=(note or "")[:120])


def create_flash_sale(site_id: int, sku_id: int, price_fen: int, cap: int, starts_at, ends_at, *,
                      per_member_limit: int = 0) -> FlashSale:
    from kamengsite.catalog import Sku

    sku = Sku.get_or_none(Sku.id == sku_id)
    if sku is None:
        raise ValueError(_("No such SKU"))
    _whole(price_fen, _("Flash sale price"))
    _whole(cap, _("Quantity"))
    _whole(per_member_limit, _("Limit per customer"))
    if cap < 1:
        raise ValueError(_("A flash sale needs at least 1 unit"))
    if not (starts_at and ends_at) or ends_at <= starts_at:
        raise ValueError(_("Enter a start and an end time; the end must be after the start"))
    with acting_for(site_id):
        return FlashSale.create(site=site_id, product_id=sku.product_id, sku_id=sku_id, price_fen=price_fen, cap=cap,
                                per_member_limit=per_member_limit, starts_at=starts_at, ends_at=ends_at)


def set_newcomer_price(site_id: int, sku_id: int, price_fen: int) -> NewcomerPrice:
    _whole(price_fen, _("Newcomer price"))
    with acting_for(site_id), database.atomic():
        NewcomerPrice.delete().where(NewcomerPrice.sku_id == sku_id).execute()
        return NewcomerPrice.create(site=site_id, sku_id=sku_id, price_fen=price_fen)


def set_tier(site_id: int, sku_id: int, min_qty: int, unit_price_fen: int) -> QuantityTier:
    _whole(unit_price_fen, _("Wholesale price"))
    _whole(min_qty, _("Wholesale minimum"))
    if min_qty < 2:
        raise ValueError(_("The wholesale minimum must be at least 2"))
    with acting_for(site_id), database.atomic():
        QuantityTier.delete().where((QuantityTier.sku_id == sku_id) & (QuantityTier.min_qty == min_qty)).execute()
        return QuantityTier.create(site=site_id, sku_id=sku_id, min_qty=min_qty, unit_price_fen=unit_price_fen)


def _whole(v, what):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > MAX_FEN:
        raise ValueError(_("%(what)s must be a whole number of at least 0", what=what))


# -- pricing (reads only) ------------------------------------------------------------------------


def price_quantity(checkout) -> bool:
    """Stage "quantity": the best tier this quantity reaches."""
    with acting_for(checkout.site_id):
        row = (QuantityTier.select(peewee.fn.MIN(QuantityTier.unit_price_fen))
               .where((QuantityTier.sku_id == checkout.sku_id) & (QuantityTier.min_qty <= checkout.quantity)).scalar())
    if row is None:
        return False
    return checkout.offer_unit_price(int(row), source=PLUGIN, label=_("Wholesale price"))


def active_flash_sales(site_id: int, sku_id: int | None = None, now=None) -> list[FlashSale]:
    now = now or utcnow()
    with acting_for(site_id):
        query = FlashSale.select().where(FlashSale.active & (FlashSale.starts_at <= now) & (FlashSale.ends_at > now))
        if sku_id is not None:
            query = query.where(FlashSale.sku_id == sku_id)
        return list(query.order_by(FlashSale.price_fen, FlashSale.id))


def is_newcomer(site_id: int, member_id, *, excluding_order: int | None = None) -> bool:
    """A signed-in member with no order on this site that is open, paid or refunded."""
    if member_id is None:
        return False
    from kamengsite.orders import Order

    with acting_for(site_id):
        query = Order.select(Order.id).where((Order.member_id == member_id) & Order.status.in_(NOT_NEW_STATUSES))
        if excluding_order is not None:
            query = query.where(Order.id != excluding_order)
        return not query.exists()


def _buyer_filter(model, member_id, contact):
    if member_id is not None:
        return model.member_id == member_id
    return (model.member_id.is_null()) & (model.contact == contact)


def flash_units_held(site_id: int, sale_id: int, member_id, contact: str) -> int:
    with acting_for(site_id):
        return int(FlashSaleUse.select(peewee.fn.COALESCE(peewee.fn.SUM(FlashSaleUse.quantity), 0)).where(
            (FlashSaleUse.sale == sale_id) & ~FlashSaleUse.released
            & _buyer_filter(FlashSaleUse, member_id, contact)).scalar() or 0)


def coupon_uses_held(site_id: int, coupon_id: int, member_id, contact: str) -> int:
    with acting_for(site_id):
        return CouponUse.select().where((CouponUse.coupon == coupon_id) & ~CouponUse.released
                                        & _buyer_filter(CouponUse, member_id, contact)).count()


def price_promotion(checkout, now=None) -> str | None:
    """Stage "promotion": the lower of a running flash sale's price and a newcomer's price.

    Returns what was applied ("flash" / "newcomer") or None. A flash sale that cannot serve this
    checkout (fewer units left than asked, the buyer's limit reached) notes why: the checkout is
    refused rather than quietly charged the normal price. A sold-out sale is simply over.
    """
    now = now or utcnow()
    candidates = []
    problem = None
    for sale in active_flash_sales(checkout.site_id, checkout.sku_id, now):
        if sale.remaining <= 0:
            continue
        if sale.remaining < checkout.quantity:
            problem = problem or _("Only %(n)s left at the flash sale price; please buy fewer", n=sale.remaining)
            continue
        if sale.per_member_limit:
            if checkout.member_id is None and not checkout.contact and not checkout.preview:
                problem = problem or _("Flash sale items are limited per customer: "
                                         "sign in or enter your contact")
                continue
            held = flash_units_held(checkout.site_id, sale.id, checkout.member_id, checkout.contact)
            if held + checkout.quantity > sale.per_member_limit:
                problem = problem or _("Flash sale limit: %(n)s per customer", n=sale.per_member_limit)
                continue
        candidates.append((sale.price_fen, "flash", sale.id))
        break  # the cheapest sale that can serve the buyer
    if checkout.member_id is not None:
        with acting_for(checkout.site_id):
            newcomer = NewcomerPrice.get_or_none((NewcomerPrice.sku_id == checkout.sku_id) & NewcomerPrice.active)
        if newcomer is not None and is_newcomer(checkout.site_id, checkout.member_id):
            candidates.append((newcomer.price_fen, "newcomer", newcomer.id))
    if not candidates:
        if problem:
            checkout.note(PLUGIN, flash_error=problem)
        return None
    price, kind, ident = min(candidates)
    label = _("Flash sale price") if kind == "flash" else _("Newcomer special price")
    if not checkout.offer_unit_price(price, source=PLUGIN, label=label):
        return None
    if kind == "flash":
        checkout.note(PLUGIN, flash_sale_id=ident)
    else:
        checkout.note(PLUGIN, newcomer=True)
    return kind


def find_coupon(site_id: int, code: str) -> Coupon | None:
    code = normalize_code(code)
    if not CODE_RE.match(code):
        return None
    with acting_for(site_id):
        return Coupon.get_or_none(Coupon.code == code)


def discount_of(coupon: Coupon, goods_fen: int) -> int:
    """The coupon's money off ``goods_fen``: fixed fen, or basis points rounded down (capped)."""
    if coupon.kind == "fixed":
        return min(int(coupon.value), goods_fen)
    off = goods_fen * int(coupon.value) // BP
    if coupon.max_discount_fen:
        off = min(off, int(coupon.max_discount_fen))
    return off


def _in_scope(coupon: Coupon, product) -> bool:
    products, categories = coupon.products, coupon.categories
    if not products and not categories:
        return True
    if product.id in products:
        return True
    if categories:
        from kamengsite.catalog import Product

        category = Product.select(Product.category).where(Product.id == product.id).scalar()
        return category is not None and int(category) in categories
    return False


def coupon_problem(coupon: Coupon | None, checkout, now=None) -> str | None:
    """Why ``coupon`` cannot be used on this checkout (for the buyer), or None."""
    now = now or utcnow()
    if coupon is None:
        return _("No such coupon code; please check it and try again")
    if not coupon.active:
        return _("This coupon has been disabled")
    if coupon.starts_at and now < coupon.starts_at:
        return _("This coupon is not valid yet (usable from %(when)s)", when=_when(coupon.starts_at))
    if coupon.ends_at and now >= coupon.ends_at:
        return _("This coupon has expired")
    if coupon.members_only and checkout.member_id is None:
        return _("This coupon is for members only; please sign in")
    if not _in_scope(coupon, checkout.product):
        return _("This coupon does not apply to this product")
    notes = checkout.notes.get(PLUGIN, {})
    if not coupon.stackable and (notes.get("flash_sale_id") or notes.get("newcomer")):
        return _("This coupon cannot be combined with a flash sale or newcomer price")
    if checkout.goods_fen < coupon.min_spend_fen:
        return _("Minimum spend not reached: usable from ¥%(amount)s", amount=yuan(coupon.min_spend_fen))
    if coupon.total_limit and coupon.used >= coupon.total_limit:
        return _("This coupon has run out")
    if coupon.per_member_limit:
        if checkout.member_id is None and not checkout.contact:
            if checkout.preview:
                return None
            return _("This coupon is limited per customer: sign in or enter your contact")
        held = coupon_uses_held(checkout.site_id, coupon.id, checkout.member_id, checkout.contact)
        if held >= coupon.per_member_limit:
            return _used_up(coupon.per_member_limit)
    if checkout.room_fen <= 0 or discount_of(coupon, checkout.goods_fen) <= 0:
        return _("This product is already at its lowest price; no coupon can be used")
    return None


def _used_up(limit: int) -> str:
    return _n("This coupon can be used %(num)d time per customer, and you have used it",
              "This coupon can be used %(num)d times per customer, and you have used them all", limit)


def price_coupon(checkout, now=None) -> int:
    """Stage "coupon": the code the buyer typed, if it applies; returns the fen taken off."""
    code = (checkout.inputs or {}).get(INPUT, "")
    if not code:
        return 0
    coupon = find_coupon(checkout.site_id, code)
    problem = coupon_problem(coupon, checkout, now)
    if problem:
        checkout.note(PLUGIN, coupon_error=problem)
        return 0
    label = _("Coupon %(code)s", code=coupon.code)
    taken = checkout.take_off(discount_of(coupon, checkout.goods_fen), source=PLUGIN, label=label)
    checkout.note(PLUGIN, coupon_id=coupon.id, coupon_discount=taken)
    return taken


def refusal(checkout) -> str | None:
    """What ``validate_checkout`` refuses this checkout with (never in a preview)."""
    if checkout.preview:
        return None
    notes = checkout.notes.get(PLUGIN, {})
    if notes.get("flash_error"):
        return notes["flash_error"]
    if notes.get("coupon_error"):
        return notes["coupon_error"]
    if (checkout.inputs or {}).get(INPUT) and not notes.get("coupon_id"):
        # pricing failed: never charge without it silently
        return _("The coupon code cannot be used right now; try again later or clear it")
    return None


# -- the order's transaction: take, give back, take again -----------------------------------------


def reserve(order, checkout, now=None):
    """Inside the order's creating transaction: take flash units / a coupon use; CheckoutRefused if gone."""
    notes = checkout.notes.get(PLUGIN)
    if not notes:
        return
    now = now or utcnow()
    contact = (order.contact or "")[:120]
    with acting_for(order.site_id):
        sale_id = notes.get("flash_sale_id")
        if sale_id:
            q = order.quantity
            taken = FlashSale.update(sold=FlashSale.sold + q).where(
                (FlashSale.id == sale_id) & FlashSale.active & (FlashSale.sold + q <= FlashSale.cap)
                & (FlashSale.starts_at <= now) & (FlashSale.ends_at > now)).execute()
            if taken != 1:
                sale = FlashSale.get_or_none(FlashSale.id == sale_id)
                if sale is None or not sale.active or not sale.starts_at <= now < sale.ends_at:
                    raise CheckoutRefused(_("The flash sale has ended; refresh the page for the current price"))
                raise CheckoutRefused(_("The flash sale is sold out"))
            sale = FlashSale.get_by_id(sale_id)  # our row lock is held: the count below is exact
            if sale.per_member_limit:
                held = flash_units_held(order.site_id, sale_id, order.member_id, contact)
                if held + q > sale.per_member_limit:
                    raise CheckoutRefused(_("Flash sale limit: %(n)s per customer", n=sale.per_member_limit))
            FlashSaleUse.create(site=order.site_id, sale=sale_id, order_id=order.id, member_id=order.member_id,
                                contact=contact, quantity=q, created_at=now)
        coupon_id = notes.get("coupon_id")
        if coupon_id:
            taken = Coupon.update(used=Coupon.used + 1).where(
                (Coupon.id == coupon_id) & Coupon.active
                & ((Coupon.total_limit == 0) | (Coupon.used < Coupon.total_limit))).execute()
            if taken != 1:
                coupon = Coupon.get_or_none(Coupon.id == coupon_id)
                raise CheckoutRefused(_("This coupon has been disabled") if coupon is None or not coupon.active
                                      else _("This coupon has run out"))
            coupon = Coupon.get_by_id(coupon_id)
            if coupon.per_member_limit and \
                    coupon_uses_held(order.site_id, coupon_id, order.member_id, contact) >= coupon.per_member_limit:
                raise CheckoutRefused(_used_up(coupon.per_member_limit))
            CouponUse.create(site=order.site_id, coupon=coupon_id, order_id=order.id, member_id=order.member_id,
                             contact=contact, discount_fen=int(notes.get("coupon_discount", 0)), created_at=now)
        if notes.get("newcomer"):
            if order.member_id is None:
                raise CheckoutRefused(_("Newcomer prices are for signed-in members only"))
            if not is_sqlite():  # one member's orders queue here (SQLite's write lock already does)
                from kamengsite.members import Member

                list(Member.select(Member.id).where(Member.id == order.member_id).for_update().tuples())
            if not is_newcomer(order.site_id, order.member_id, excluding_order=order.id):
                raise CheckoutRefused(_("The newcomer price is only for your first order on this site"))


def release(order) -> bool:
    """The order expired: give its coupon use and flash-sale units back, once. Returns whether any came back."""
    gave = False
    with all_sites():  # the rows are named by the order's id; the job runs unscoped, a payment on any domain
        use = CouponUse.get_or_none((CouponUse.order_id == order.id) & ~CouponUse.released)
        if use is not None and CouponUse.update(released=True).where(
                (CouponUse.id == use.id) & ~CouponUse.released).execute() == 1:
            Coupon.update(used=Coupon.used - 1).where((Coupon.id == use.coupon_id) & (Coupon.used > 0)).execute()
            gave = True
        flash = FlashSaleUse.get_or_none((FlashSaleUse.order_id == order.id) & ~FlashSaleUse.released)
        if flash is not None and FlashSaleUse.update(released=True).where(
                (FlashSaleUse.id == flash.id) & ~FlashSaleUse.released).execute() == 1:
            FlashSale.update(sold=FlashSale.sold - flash.quantity).where(
                (FlashSale.id == flash.sale_id) & (FlashSale.sold >= flash.quantity)).execute()
            gave = True
    return gave


def retake(order) -> bool:
    """An expired order was paid late at its frozen (discounted) price: count its use again, once."""
    took = False
    with all_sites(), database.atomic():
        use = CouponUse.get_or_none((CouponUse.order_id == order.id) & CouponUse.released)
        if use is not None and CouponUse.update(released=False).where(
                (CouponUse.id == use.id) & CouponUse.released).execute() == 1:
            Coupon.update(used=Coupon.used + 1).where(Coupon.id == use.coupon_id).execute()
            took = True
        flash = FlashSaleUse.get_or_none((FlashSaleUse.order_id == order.id) & FlashSaleUse.released)
        if flash is not None and FlashSaleUse.update(released=False).where(
                (FlashSaleUse.id == flash.id) & FlashSaleUse.released).execute() == 1:
            FlashSale.update(sold=FlashSale.sold + flash.quantity).where(FlashSale.id == flash.sale_id).execute()
            took = True
    return took


def _when(value) -> str:
    """A stored UTC time for a buyer: the site's time and language in a request, plain UTC outside one."""
    from flask import has_request_context

    return format_when(value) if has_request_context() else f"{value:%Y-%m-%d %H:%M} UTC"


def parse_local(text: str, tz: datetime.tzinfo = datetime.timezone.utc) -> datetime.datetime | None:
    """'2026-11-22 10:00' (or the browser's 'T' form) in ``tz`` (the site's time zone in the console)
    → naive UTC datetime, as stored; '' → None; ValueError otherwise."""
    text = (text or "").strip().replace("T", " ")
    if not text:
        return None
    for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            typed = datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
        return typed.replace(tzinfo=tz).astimezone(datetime.timezone.utc).replace(tzinfo=None)
    raise ValueError(_("Write times as 2026-11-22 10:00"))
