"""What the recommendations are computed from: product views and paid orders of one site.

* ``ProductView``: the products a visitor (``m<member id>`` or ``g<token>`` of a guest's
  session) viewed on a site; one row per product, written anew on each view so the newest
  view has the highest id; the newest ``KEEP_VIEWS`` per visitor are kept.
* ``bought_together``: the products the buyers of a product also bought on the same site
  (paid or delivered orders; a buyer is a member, or a guest's contact), one aggregate query,
  cached per process for ``TOGETHER_TTL`` seconds per (site, product).

Every query names its site: nothing of one site is ever read for another.
"""

from __future__ import annotations

import threading
import time

import peewee

from kamengsite.catalog import Product
from kamengsite.db import database, retry_transient
from kamengsite.models import utcnow
from kamengsite.orders import Order
from kamengsite.tenancy import TenantModel, all_sites

KEEP_VIEWS = 20
VISITOR_MAX = 40
PAID_STATUSES = ("paid", "delivered")
TOGETHER_TTL = 300.0  # seconds
TOGETHER_LIMIT = 20  # rows fetched per product (more than shown: some may be off sale)
_CACHE_MAX = 4096


class ProductView(TenantModel):
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE", backref="+")
    visitor = peewee.CharField(max_length=VISITOR_MAX)
    viewed_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "recommend_product_view"
        indexes = ((("site", "visitor", "product"), True),)


# -- views ------------------------------------------------------------------------------


def record_view(site_id: int, visitor: str, product_id: int, keep: int = KEEP_VIEWS):
    """Remember that ``visitor`` viewed ``product_id`` on ``site_id`` (deduplicated; newest ``keep`` kept)."""
    if not visitor or len(visitor) > VISITOR_MAX:
        raise ValueError("a visitor key is 1 to 40 characters")
    mine = (ProductView.site == site_id) & (ProductView.visitor == visitor)
    def write():
        try:
            with database.atomic():
                ProductView.delete().where(mine & (ProductView.product == product_id)).execute()
                ProductView.create(site=site_id, visitor=visitor, product=product_id, viewed_at=utcnow())
        except peewee.IntegrityError:
            pass  # the same visitor viewed it concurrently: that view stands

    with all_sites():
        retry_transient(write)  # a deadlock between two tabs of one visitor: once more
        stale = [row_id for (row_id,) in ProductView.select(ProductView.id).where(mine)
                 .order_by(ProductView.id.desc()).offset(keep).limit(1000).tuples()]
        if stale:
            ProductView.delete().where(mine & ProductView.id.in_(stale)).execute()


def recent_views(site_id: int, visitor: str, limit: int = KEEP_VIEWS) -> list[int]:
    """The products ``visitor`` viewed on ``site_id``, newest first."""
    if not visitor:
        return []
    with all_sites():
        return [product_id for (product_id,) in ProductView.select(ProductView.product)
                .where((ProductView.site == site_id) & (ProductView.visitor == visitor))
                .order_by(ProductView.id.desc()).limit(limit).tuples()]


def forget_visitor(site_id: int, visitor: str) -> int:
    with all_sites():
        return ProductView.delete().where((ProductView.site == site_id) & (ProductView.visitor == visitor)).execute()


# -- bought together ----------------------------------------------------------------------


def bought_together_query(site_id: int, product_id: int, limit: int = TOGETHER_LIMIT) -> list[tuple[int, int]]:
    """``[(product_id, buyers), …]``: other products bought by the buyers of ``product_id`` on ``site_id``.

    One query: this product's paid orders joined to the same buyer's other paid orders of the
    same site; a buyer is the member, or for a guest order the contact. Ranked by how many
    distinct buyers bought both, then by product id.
    """
    mine, theirs = Order.alias("mine"), Order.alias("theirs")
    same_buyer = ((theirs.member_id == mine.member_id)
                  | (mine.member_id.is_null() & theirs.member_id.is_null() & (theirs.contact == mine.contact)
                     & (mine.contact != "")))
    buyers = (peewee.fn.COUNT(theirs.member_id.distinct())
              + peewee.fn.COUNT(peewee.Case(None, [(theirs.member_id.is_null(), theirs.contact)]).distinct()))
    query = (mine.select(theirs.product, buyers.alias("buyers"))
             .join(theirs, on=((theirs.site == mine.site) & same_buyer & (theirs.product != mine.product)
                               & theirs.status.in_(PAID_STATUSES)))
             .where((mine.site == site_id) & (mine.product == product_id) & mine.status.in_(PAID_STATUSES)
                    & (theirs.site == site_id))
             .group_by(theirs.product)
             .order_by(buyers.desc(), theirs.product)
             .limit(limit))
    with all_sites():
        return [(int(p), int(n)) for p, n in query.tuples()]


_cache: dict = {}
_cache_lock = threading.Lock()


def bought_together(site_id: int, product_id: int, now: float | None = None) -> list[tuple[int, int]]:
    """``bought_together_query``, remembered by this process for ``TOGETHER_TTL`` seconds."""
    now = time.monotonic() if now is None else now
    key = (site_id, product_id)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    rows = bought_together_query(site_id, product_id)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = (now + TOGETHER_TTL, rows)
    return rows


def clear_cache():
    with _cache_lock:
        _cache.clear()
