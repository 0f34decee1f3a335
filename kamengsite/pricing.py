"""What a SKU costs each site and what its buyers pay: the price chain of the site tree.

Every site sells the main site's catalogue. For a SKU whose main-site price is the *base*:

* A site directly under the main site pays its **level's** cost: the level's tier price
  for that SKU if set, else ``base × (1 + cost_percent_bp) + cost_fixed_fen``.
* A deeper site pays its **parent's** cost plus the parent's ``children`` markup, which
  is capped by the parent level's ``max_child_markup_bp``. Each site up the chain earns
  the difference between its child's cost and its own.
* Buyers on a sub-site pay the site's cost plus the owner's markup (a ``PriceRule`` for the
  product, else its category, else everything), rounded up by the rule's rounding; with
  no rule, the base price. **Never below the site's cost** (the price floor).
* Buyers on the main site pay the base price.

Percentages are basis points (10000 = 100 %) and always round *up* to the fen, so a
site's cost never falls below what its own level rule says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import peewee

from .catalog import Product, Sku
from .errors import KamengsiteError
from .i18n import _l
from .levels import BP, Level, LevelPrice
from .db import Statement, arg
from .models import Site, utcnow
from .pagecache import StampedModel
from .tenancy import TenantModel, all_sites, site_scope

SCOPES = ("all", "category", "product", "children")
ROUNDINGS = {"none": _l("No rounding"), "jiao": _l("Round up to 0.10"), "yuan": _l("Round up to the yuan"),
             "nine": _l("End in .9")}
MAX_MARKUP_BP = 10 * BP  # +1000 %: a typo, not a price


class PricingError(KamengsiteError):
    """A price rule cannot be saved as given; the message names the field."""


class PriceRule(TenantModel, StampedModel):
    """An owner's markup and display choice for everything, a category, a product, or (scope
    ``children``) what the site's child sites pay on top of its own cost."""

    scope = peewee.CharField(max_length=12)
    target_id = peewee.IntegerField(default=0)
    markup_percent_bp = peewee.IntegerField(default=0)
    markup_fixed_fen = peewee.BigIntegerField(default=0)
    rounding = peewee.CharField(max_length=8, default="none")
    hidden = peewee.BooleanField(default=False)
    rename = peewee.CharField(max_length=120, default="")
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "price_rule"
        indexes = ((("site", "scope", "target_id"), True),)


# -- arithmetic ------------------------------------------------------------------------


def percent_of(amount_fen: int, bp: int) -> int:
    """``amount × bp / 10000`` rounded towards +∞ (a markup) — exact integer arithmetic."""
    return -((-amount_fen * bp) // BP)


def round_up(amount_fen: int, rounding: str) -> int:
    """Round a price up: to the jiao, to the yuan, or to the next price ending in .9 yuan."""
    if rounding == "jiao":
        return -(-amount_fen // 10) * 10
    if rounding == "yuan":
        return -(-amount_fen // 100) * 100
    if rounding == "nine":
        nines = amount_fen - amount_fen % 100 + 90
        return nines if nines >= amount_fen else nines + 100
    return amount_fen


def level_cost(level: Level | None, base_fen: int, tier_fen: int | None = None) -> int:
    """What a site directly under the main site pays for one unit."""
    if tier_fen is not None:
        return tier_fen
    if level is None:
        return base_fen
    return max(0, base_fen + percent_of(base_fen, level.cost_percent_bp) + level.cost_fixed_fen)


def child_markup(cost_fen: int, rule: PriceRule | None, parent_level: Level | None) -> int:
    """What a parent adds on top of its own cost for its child sites, within its level's cap."""
    if rule is None or parent_level is None or not parent_level.may_open_children:
        return 0
    wanted = percent_of(cost_fen, rule.markup_percent_bp) + rule.markup_fixed_fen
    cap = percent_of(cost_fen, parent_level.max_child_markup_bp)
    return max(0, min(wanted, cap))


def retail_price(cost_fen: int, base_fen: int, rule: PriceRule | None) -> int:
    """What a sub-site's buyers pay: the owner's markup on the cost, never below the cost."""
    if rule is None:
        return max(base_fen, cost_fen)
    price = cost_fen + percent_of(cost_fen, rule.markup_percent_bp) + rule.markup_fixed_fen
    return max(cost_fen, round_up(price, rule.rounding))


# -- one site's view of the catalogue -----------------------------------------------------


@dataclass(frozen=True)
class ChainSite:
    site_id: int
    level: Level | None
    children_rule: PriceRule | None
    own_rules: tuple = ()  # the site's rules for its own buyers (all / category / product)


@dataclass(frozen=True)
class Quote:
    """One unit's price for a buyer of ``site_id`` and what every site of the chain pays for it."""

    unit_price_fen: int
    base_fen: int
    #: ``[(site_id, unit_cost_fen), …]`` from the selling site up to the one under the main site;
    #: empty for the main site. Costs never increase going up.
    costs: tuple = ()

    @property
    def chain_json(self) -> list:
        return [list(pair) for pair in self.costs]


@dataclass
class Pricer:
    """The prices of the main catalogue as one site sells it (load once per request)."""

    site_id: int
    chain: list = field(default_factory=list)  # ChainSite, selling site first; [] on the main site
    rules: dict = field(default_factory=dict)  # (scope, target_id) -> PriceRule of the selling site

    @classmethod
    def for_site(cls, site_id: int) -> "Pricer":
        chain = _chain(site_id)
        rules = {(r.scope, r.target_id): r for r in chain[0].own_rules} if chain else {}
        return cls(site_id=site_id, chain=chain, rules=rules)

    @property
    def is_main(self) -> bool:
        return not self.chain

    @property
    def sells_own_goods(self) -> bool:
        """Whether this sub-site's level lets it list goods of its own next to the main catalogue."""
        level = self.chain[0].level if self.chain else None
        return bool(level and level.may_list_own_goods)

    def own_goods_quote(self, base_fen: int) -> Quote:
        """A sub-site's own product: its own price; the platform keeps the level's commission,
        recorded as the site's "cost" so the split needs no special case. Parents earn nothing on it."""
        commission = min(base_fen, percent_of(base_fen, self.chain[0].level.own_goods_commission_bp))
        return Quote(base_fen, base_fen, ((self.site_id, commission),))

    def rule_for(self, product) -> PriceRule | None:
        """The most specific of the owner's rules for ``product``: product, then category, then all."""
        return (self.rules.get(("product", product.id))
                or (self.rules.get(("category", product.category_id)) if product.category_id else None)
                or self.rules.get(("all", 0)))

    def visible(self, product) -> bool:
        if self.is_main or getattr(product, "site_id", None) == self.site_id:
            return True
        own = self.rules.get(("product", product.id))
        category = self.rules.get(("category", product.category_id)) if product.category_id else None
        return not ((own and own.hidden) or (category and category.hidden))

    def display_name(self, product) -> str:
        own = self.rules.get(("product", product.id))
        return own.rename if own and own.rename else product.name

    def quote(self, product, sku_id: int, base_fen: int, tier_prices: dict | None = None) -> Quote:
        """The unit price and cost chain of one SKU. ``tier_prices``: {(level_id, sku_id): fen}."""
        if self.is_main:
            return Quote(base_fen, base_fen)
        if getattr(product, "site_id", None) == self.site_id:
            return self.own_goods_quote(base_fen)
        tiers = tier_prices if tier_prices is not None else self.tier_prices([sku_id])
        costs = self.unit_costs(sku_id, base_fen, tiers)
        return Quote(retail_price(costs[0], base_fen, self.rule_for(product)), base_fen,
                     tuple(zip((c.site_id for c in self.chain), costs)))

    def unit_costs(self, sku_id: int, base_fen: int, tiers: dict) -> list[int]:
        """Each chain site's cost of one unit, selling site first."""
        top = self.chain[-1]
        tier = tiers.get((top.level.id, sku_id)) if top.level else None
        costs = [level_cost(top.level, base_fen, tier)]
        for parent, child in zip(reversed(self.chain), list(reversed(self.chain))[1:]):
            costs.append(costs[-1] + child_markup(costs[-1], parent.children_rule, parent.level))
        return list(reversed(costs))

    def tier_prices(self, sku_ids) -> dict:
        if self.is_main or self.chain[-1].level is None or not sku_ids:
            return {}
        level = self.chain[-1].level
        return {(level.id, sku): fen for sku, fen in LevelPrice.select(LevelPrice.sku, LevelPrice.price_fen)
                .where((LevelPrice.level == level.id) & LevelPrice.sku.in_(list(sku_ids))).tuples()}

    def listing(self, products: list[dict]) -> list[dict]:
        """Storefront listing rows (``storefront_products``) with this site's names and cheapest price."""
        if self.is_main:
            return products
        own = [p for p in products if p.get("site") == self.site_id]
        products = [p for p in products if p.get("site") != self.site_id]
        ids = [p["id"] for p in products]
        if not ids:
            return own
        skus = list(Sku.select(Sku.id, Sku.product, Sku.price_fen)
                    .where(Sku.product.in_(ids) & (Sku.status == "on")).tuples())
        categories = dict(Product.select(Product.id, Product.category).where(Product.id.in_(ids)).tuples())
        tiers = self.tier_prices([s[0] for s in skus])
        cheapest: dict[int, int] = {}
        for sku_id, product_id, base in skus:
            shell = Product(id=product_id, category=categories.get(product_id))
            price = self.quote(shell, sku_id, base, tiers).unit_price_fen
            cheapest[product_id] = min(price, cheapest.get(product_id, price))
        shown = []
        for row in products:
            shell = Product(id=row["id"], category=categories.get(row["id"]), name=row["name"])
            if self.visible(shell) and row["id"] in cheapest:
                shown.append(dict(row, name=self.display_name(shell), price_fen=cheapest[row["id"]]))
        return shown + own


def _unscoped(build):
    """A statement on a tenant table that names its site itself, compiled without the scope filter."""
    def build_unscoped():
        with all_sites():
            return build()

    return Statement(build_unscoped)


# Every storefront request builds its site's chain: compiled once per database (see db.Statement).
_LEVEL_FIELDS = tuple(Level._meta.sorted_fields)
_RULE_FIELDS = tuple(PriceRule._meta.sorted_fields)
_PARENT = Site.alias("parent_site")
# A site with its level and whether its parent is the root: one query per site of the chain.
_SITE_NODE = Statement(lambda: Site.select(Site.parent, _PARENT.parent, *_LEVEL_FIELDS)
                       .join_from(Site, _PARENT, peewee.JOIN.LEFT_OUTER, on=(Site.parent == _PARENT.id))
                       .join_from(Site, Level, peewee.JOIN.LEFT_OUTER, on=(Level.code == Site.level))
                       .where(Site.id == arg("id")))
_RULES = _unscoped(lambda: PriceRule.select(*_RULE_FIELDS).where(PriceRule.site == arg("site")))


def _row_model(model, fields, row):
    instance = model(**{f.name: f.python_value(v) for f, v in zip(fields, row)})
    instance._dirty.clear()
    return instance


def _chain(site_id: int) -> list[ChainSite]:
    """The selling site and its ancestors below the main site (the root), with levels and rules."""
    nodes, seen, current = [], set(), site_id
    while current is not None and current not in seen:
        seen.add(current)
        row = _SITE_NODE.first(id=current)
        if row is None or row[0] is None:  # unknown, or the root (the main site)
            break
        parent, grandparent, level_row = row[0], row[1], row[2:]
        nodes.append((current, _row_model(Level, _LEVEL_FIELDS, level_row) if level_row[0] is not None else None))
        current = parent if grandparent is not None else None  # a parent without a parent is the root
    chain = []
    for node_id, level in nodes:
        rules = [_row_model(PriceRule, _RULE_FIELDS, r) for r in _RULES.all(site=node_id)]
        children = next((r for r in rules if r.scope == "children"), None)
        chain.append(ChainSite(node_id, level, children, tuple(r for r in rules if r.scope != "children")))
    return chain


def quote_sku(site_id: int, sku_id: int) -> Quote | None:
    """The quote of one SKU on one site (None if the SKU is gone); for tools and tests."""
    row = Sku.select(Sku.price_fen, Product.id, Product.category).join(Product).where(Sku.id == sku_id).tuples().first()
    if row is None:
        return None
    base, product_id, category_id = row
    return Pricer.for_site(site_id).quote(Product(id=product_id, category=category_id), sku_id, base)


# -- owners' rules ----------------------------------------------------------------------


def set_rule(site_id: int, scope: str, target_id: int = 0, *, markup_percent_bp: int = 0, markup_fixed_fen: int = 0,
             rounding: str = "none", hidden: bool = False, rename: str = "") -> PriceRule:
    """Create or replace one of a site's price rules (validated; PricingError names the field)."""
    if scope not in SCOPES:
        raise PricingError(f"scope: one of {', '.join(SCOPES)}")
    if scope in ("all", "children"):
        target_id = 0
    elif not isinstance(target_id, int) or target_id <= 0:
        raise PricingError(f"target_id: a {scope} id")
    for name, value, low, high in (("markup_percent_bp", markup_percent_bp, -BP, MAX_MARKUP_BP),
                                   ("markup_fixed_fen", markup_fixed_fen, -10**9, 10**9)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise PricingError(f"{name}: a whole number between {low} and {high}")
    if rounding not in ROUNDINGS:
        raise PricingError(f"rounding: one of {', '.join(ROUNDINGS)}")
    if len(rename) > 120:
        raise PricingError("rename: at most 120 characters")
    if scope == "children" and (markup_percent_bp < 0 or markup_fixed_fen < 0):
        raise PricingError("a child site never pays less than its parent's cost")
    values = dict(markup_percent_bp=markup_percent_bp, markup_fixed_fen=markup_fixed_fen, rounding=rounding,
                  hidden=bool(hidden), rename=rename.strip(), updated_at=utcnow())
    with site_scope(site_id):
        rule = PriceRule.get_or_none((PriceRule.scope == scope) & (PriceRule.target_id == target_id))
        if rule is None:
            return PriceRule.create(scope=scope, target_id=target_id, **values)
        PriceRule.update(**values).where(PriceRule.id == rule.id).execute()
        return PriceRule.get_by_id(rule.id)


def delete_rule(site_id: int, scope: str, target_id: int = 0) -> bool:
    with site_scope(site_id):
        return PriceRule.delete().where((PriceRule.scope == scope) & (PriceRule.target_id == target_id)).execute() > 0
