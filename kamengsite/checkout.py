"""A buyer's checkout as the plugins see it: the price pipeline, validation and risk checks.

The storefront builds one ``Checkout`` per order attempt (and one per SKU, with
``preview=True``, to show prices on the product page) and runs it through the plugins
the site enables, in a fixed order:

1. ``adjust_price(checkout, stage)`` once per stage of ``PRICE_STAGES``, in that order:
   ``quantity`` (wholesale tiers), ``member`` (member-level discounts), ``promotion``
   (flash sales, new-customer prices), ``coupon`` (codes, 满减). Unit-price offers keep the
   lowest; money off the total accumulates. Nothing ever goes below ``floor_unit_fen``:
   the selling site's own unit cost, so a discount only ever spends the seller's margin.
2. ``validate_checkout(checkout)``: a plugin refuses with ``CheckoutRefused(message)``.
3. ``assess_risk(checkout)``: a plugin returns a reason to refuse, or None.

Then the order is created, and ``order_reserving(order, checkout)`` runs inside its
transaction: what a plugin takes there (a flash-sale unit, a coupon use) is taken
atomically with the stock, or the order is not created.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import KamengsiteError

#: The price pipeline's stages, in the order they run.
PRICE_STAGES = ("quantity", "member", "promotion", "coupon")


class CheckoutRefused(KamengsiteError):
    """A plugin refuses this checkout; the message is shown to the buyer as it is."""

    code = "checkout_refused"


@dataclass(frozen=True)
class PriceLine:
    """One change a plugin made to the price, shown to the buyer (``saved_fen`` off the total)."""

    source: str  # the plugin's name, e.g. "coupons"
    label: str  # for the buyer, e.g. "秒杀价" or "优惠券 NEW10"
    saved_fen: int


@dataclass(frozen=True)
class CheckoutInput:
    """An extra input on the buy form that a plugin reads from ``checkout.inputs`` (e.g. a coupon code)."""

    name: str  # [a-z_]+, the form field's name
    label: str
    placeholder: str = ""
    max_length: int = 64
    #: Carried by links (``/p/12?groupbuy=join:3``), not typed: a hidden field, shown only with a value.
    hidden: bool = False


@dataclass(eq=False)
class Checkout:
    """One order attempt. Plugins read it and change the price only through its methods."""

    site_id: int
    site: object  # the selling site's SiteConfig
    product: object  # kamengsite.catalog.Product
    sku_id: int
    quantity: int
    list_unit_fen: int  # the site's normal unit price (levels, markups) before any plugin
    floor_unit_fen: int = 0  # the selling site's unit cost: no price goes below it
    member_id: int | None = None
    contact: str = ""
    buyer_ip: str = ""
    inputs: dict = field(default_factory=dict)  # the plugins' extra form inputs, stripped strings
    preview: bool = False  # the product page's price display: no order follows, nothing may be written
    unit_price_fen: int = -1
    discount_fen: int = 0
    lines: list = field(default_factory=list)
    #: Plugin-private notes from pricing to ``order_reserving``, keyed by plugin name.
    notes: dict = field(default_factory=dict)
    #: Set by a plugin (its name) that delivers the order itself later (a group-buy waits for its group).
    hold_delivery: str = ""

    def __post_init__(self):
        if self.unit_price_fen < 0:
            self.unit_price_fen = self.list_unit_fen
        self.floor_unit_fen = min(self.floor_unit_fen, self.list_unit_fen)

    @property
    def list_goods_fen(self) -> int:
        return self.list_unit_fen * self.quantity

    @property
    def goods_fen(self) -> int:
        """What the goods cost the buyer now: unit price × quantity − money off."""
        return self.unit_price_fen * self.quantity - self.discount_fen

    @property
    def floor_goods_fen(self) -> int:
        """The lowest the goods may cost: the seller's cost, and at least 1 fen (no free orders)."""
        return min(self.list_goods_fen, max(self.floor_unit_fen * self.quantity, 1))

    @property
    def room_fen(self) -> int:
        """How much more can still come off the total before it reaches the floor."""
        return max(0, self.goods_fen - self.floor_goods_fen)

    def offer_unit_price(self, unit_fen: int, *, source: str, label: str) -> bool:
        """Offer a lower unit price (a tier, a member price, a flash-sale price).

        Taken if it is lower than the current one; never below the floor. Returns whether
        it was taken. Money already taken off the total stays off as far as the floor allows.
        """
        _check_fen(unit_fen, "unit price")
        unit_fen = max(unit_fen, self.floor_unit_fen)
        if unit_fen >= self.unit_price_fen:
            return False
        saved = (self.unit_price_fen - unit_fen) * self.quantity
        self.unit_price_fen = unit_fen
        self.discount_fen = max(0, min(self.discount_fen, self.unit_price_fen * self.quantity - self.floor_goods_fen))
        self.lines.append(PriceLine(source, label, saved))
        return True

    def take_off(self, fen: int, *, source: str, label: str) -> int:
        """Take money off the total (a coupon, 满减), at most down to the floor; returns what came off."""
        _check_fen(fen, "discount")
        taken = min(fen, self.room_fen)
        if taken:
            self.discount_fen += taken
            self.lines.append(PriceLine(source, label, taken))
        return taken

    def note(self, plugin: str, **values):
        """Keep values for this plugin's ``order_reserving`` (e.g. which coupon was applied)."""
        self.notes.setdefault(plugin, {}).update(values)


def _check_fen(value, what: str):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be whole fen ≥ 0, got {value!r}")


# -- running a checkout through a site's plugins ---------------------------------------------


def has_pipeline(relay) -> bool:
    """Whether any enabled plugin takes part in checkouts (else the storefront skips the pipeline)."""
    return any(getattr(relay, name).get_hookimpls() for name in
               ("adjust_price", "validate_checkout", "assess_risk", "order_reserving"))


def price(relay, checkout: Checkout) -> Checkout:
    """Run the price pipeline (``adjust_price`` once per stage); a plugin that raises is skipped."""
    from .hooks import call_isolated

    for stage in PRICE_STAGES:
        call_isolated(relay.adjust_price, "adjust_price", site_id=checkout.site_id, checkout=checkout, stage=stage)
    return checkout


def vet(relay, checkout: Checkout) -> str | None:
    """``validate_checkout`` (raises CheckoutRefused) then ``assess_risk``: a risk reason, or None."""
    from .hooks import call_isolated

    call_isolated(relay.validate_checkout, "validate_checkout", site_id=checkout.site_id,
                  passthrough=(CheckoutRefused,), checkout=checkout)
    reasons = call_isolated(relay.assess_risk, "assess_risk", site_id=checkout.site_id, checkout=checkout)
    return next((str(r) for r in reasons if r), None)


def reserver(relay, checkout: Checkout):
    """The ``reserving`` callback of ``orders.create_order``: ``order_reserving`` hooks, failing closed."""
    from .hooks import call_isolated

    if not relay.order_reserving.get_hookimpls():
        return None

    def reserving(order):
        call_isolated(relay.order_reserving, "order_reserving", site_id=checkout.site_id, fail_closed=True,
                      passthrough=(CheckoutRefused,), order=order, checkout=checkout)

    return reserving


def read_inputs(declared, values) -> dict:
    """The declared plugin inputs' values from a form or query mapping: stripped and cut to length."""
    return {i.name: (values.get(i.name) or "").strip()[:i.max_length] for i in declared}
