"""Price and stock follow the upstreams: the periodic sync, its back-off, price alerts and failover.

``sync_all`` (the job, every 5 minutes, and "sync now" on the console page) asks every active
upstream that is not backing off for the current price and stock of the refs linked to it (as
primary or as fallback), then settles every link:

* the source is the primary's quote, unless the primary failed (this round or still backing
  off), no longer has the item, or has none in stock, and a fallback is set whose quote has
  stock: then the fallback's (``link.via_fallback``, shown on the page);
* the SKU's price is the rule applied to the source's cost — margin: cost + fen; percent:
  cost × (1 + bp/10000) rounded up to the fen — and never below the cost; its stock is the
  source's stock (0 when no source answers). Both go through ``Sku.update``, which moves the
  row's ``rev`` and so the page cache's catalogue stamp; unchanged values are not rewritten;
* a cost that moves more than 20 % either way sets ``price_alert`` and notifies the operator
  (a notice on the main site and a mail), once: the alert is set by a conditional update on an
  empty alert, and cleared by the operator on the page.

An upstream that fails gets ``failures`` + 1 and backs off 1, 2, 4 … minutes (at most an hour),
with its last error kept for the page; the next success resets it. Every write is a conditional
or idempotent update, so two syncs at once do no harm.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from kamengsite.catalog import Product, Sku
from kamengsite.db import retry_transient
from kamengsite.models import Site, utcnow

from .connectors import UpstreamError
from .models import Upstream, UpstreamLink

log = logging.getLogger(__name__)

ALERT_RATIO_PERCENT = 20
MAX_BACKOFF_MINUTES = 60
MAX_ERROR = 500


# -- pure rules -------------------------------------------------------------------------------


def price_for(rule: str, rule_value: int, cost_fen: int) -> int:
    """The selling price of one unit that costs ``cost_fen`` upstream; never below the cost."""
    if rule == "percent":
        price = -(-cost_fen * (10000 + rule_value) // 10000)  # rounded up to the fen
    else:
        price = cost_fen + rule_value
    return max(price, cost_fen)


def backoff_minutes(failures: int) -> int:
    """1, 2, 4, … minutes after the 1st, 2nd, 3rd … failure in a row, at most an hour."""
    return min(2 ** max(0, failures - 1), MAX_BACKOFF_MINUTES)


def big_change(old_fen: int, new_fen: int) -> bool:
    """More than 20 % up or down (from a known, non-zero cost)."""
    return old_fen > 0 and abs(new_fen - old_fen) * 100 > ALERT_RATIO_PERCENT * old_fen


# -- one round --------------------------------------------------------------------------------


@dataclass
class Round:
    quotes: dict = field(default_factory=dict)  # (upstream id, ref) -> UpstreamProduct
    failed: set = field(default_factory=set)  # upstream ids that failed or were skipped (backing off, paused)
    counts: dict = field(default_factory=lambda: {"upstreams": 0, "failed": 0, "links": 0, "changed": 0,
                                                  "alerts": 0, "fallback": 0})


def sync_all(instance=None, *, connector_for=None, now=None) -> dict:
    """One sync of every upstream and every link; returns counts for the log."""
    from . import connector_for as default_connector_for

    connector_for = connector_for or (lambda upstream: default_connector_for(upstream, instance))
    now = now or utcnow()
    state = Round()
    links = list(UpstreamLink.select())
    wanted: dict[int, set] = {}
    for link in links:
        wanted.setdefault(link.upstream_id, set()).add(link.ref)
        if link.fallback_upstream_id and link.fallback_ref:
            wanted.setdefault(link.fallback_upstream_id, set()).add(link.fallback_ref)
    for upstream in Upstream.select().order_by(Upstream.id):
        if upstream.status != "active" or upstream.in_backoff(now):
            state.failed.add(upstream.id)  # paused or still backing off: its links look elsewhere
            continue
        refs = sorted(wanted.get(upstream.id, ()))
        state.counts["upstreams"] += 1
        try:
            connector = connector_for(upstream)
            quotes = connector.stock(refs) if refs else {}
        except UpstreamError as exc:
            record_failure(upstream, str(exc), now)
            state.failed.add(upstream.id)
            state.counts["failed"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - a broken connector must not stop the other upstreams
            log.exception("upstream %s: sync failed", upstream.id)
            record_failure(upstream, f"{type(exc).__name__}: {exc}", now)
            state.failed.add(upstream.id)
            state.counts["failed"] += 1
            continue
        record_success(upstream, now)
        for ref, quote in quotes.items():
            state.quotes[(upstream.id, ref)] = quote
    for link in links:
        settle_link(link, state, instance, now)
    return state.counts


def record_failure(upstream: Upstream, error: str, now) -> None:
    failures = upstream.failures + 1
    until = now + datetime.timedelta(minutes=backoff_minutes(failures))
    retry_transient(lambda: Upstream.update(failures=Upstream.failures + 1, backoff_until=until,
                                            last_error=error[:MAX_ERROR], last_sync_at=now)
                    .where(Upstream.id == upstream.id).execute())
    log.warning("upstream %s (%s) failed %s time(s), backing off until %s: %s", upstream.id, upstream.name,
                failures, until, error)


def record_success(upstream: Upstream, now) -> None:
    retry_transient(lambda: Upstream.update(failures=0, backoff_until=None, last_error="", last_sync_at=now,
                                            last_ok_at=now).where(Upstream.id == upstream.id).execute())


def source_of(link: UpstreamLink, state: Round):
    """(quote, via_fallback) for ``link`` this round; (None, False) when neither supplier answers."""
    primary = None if link.upstream_id in state.failed else state.quotes.get((link.upstream_id, link.ref))
    if primary is not None and primary.stock > 0:
        return primary, False
    if link.fallback_upstream_id and link.fallback_ref and link.fallback_upstream_id not in state.failed:
        fallback = state.quotes.get((link.fallback_upstream_id, link.fallback_ref))
        if fallback is not None and fallback.stock > 0:
            return fallback, True
    return primary, False


def settle_link(link: UpstreamLink, state: Round, instance, now) -> None:
    state.counts["links"] += 1
    quote, via_fallback = source_of(link, state)
    if quote is None:
        if link.upstream_id in state.failed:
            return  # the primary is down and nothing replaces it: keep the last known price and stock
        _write_sku(link.sku_id, None, 0)
        retry_transient(lambda: UpstreamLink.update(upstream_stock=0, via_fallback=False, synced_at=now).where(
            UpstreamLink.id == link.id).execute())
        return
    cost = int(quote.price_fen)
    price = price_for(link.rule, link.rule_value, cost)
    if _write_sku(link.sku_id, price, quote.stock):
        state.counts["changed"] += 1
    if via_fallback:
        state.counts["fallback"] += 1
    if big_change(int(link.cost_fen), cost) and raise_alert(link, int(link.cost_fen), cost, via_fallback, instance):
        state.counts["alerts"] += 1
    retry_transient(lambda: UpstreamLink.update(cost_fen=cost, upstream_stock=quote.stock, via_fallback=via_fallback,
                                                synced_at=now).where(UpstreamLink.id == link.id).execute())


def _write_sku(sku_id: int, price_fen: int | None, stock: int) -> bool:
    """Set the SKU's price (unless None) and stock when they differ; ``Sku.update`` moves its ``rev``."""
    changes = {Sku.stock: stock}
    condition = Sku.stock != stock
    if price_fen is not None:
        changes[Sku.price_fen] = price_fen
        condition = condition | (Sku.price_fen != price_fen)
    return bool(retry_transient(lambda: Sku.update(changes).where((Sku.id == sku_id) & condition).execute()))


# -- price alerts -----------------------------------------------------------------------------


def raise_alert(link: UpstreamLink, old_fen: int, new_fen: int, via_fallback: bool, instance) -> bool:
    """Set the link's alert and notify the operator, unless an alert is already pending (then nothing)."""
    from kamengsite.i18n import format_money

    text = f"{format_money(old_fen)} -> {format_money(new_fen)}"
    won = UpstreamLink.update(price_alert=text).where((UpstreamLink.id == link.id)
                                                      & (UpstreamLink.price_alert == "")).execute()
    if not won:
        return False
    notify_operator(link, old_fen, new_fen, via_fallback, instance)
    return True


def notify_operator(link: UpstreamLink, old_fen: int, new_fen: int, via_fallback: bool, instance) -> None:
    from kamengsite import alerts, jobs, mail
    from kamengsite.i18n import format_money

    try:
        instance = instance or jobs.current_instance()
        main_slug = instance.main_site if instance is not None else "main"
        main = Site.get_or_none(Site.slug == main_slug)
        product = Product.get_or_none(Product.id == link.product_id)
        if main is None or product is None:
            return
        gettext = mail.site_gettext(mail.site_locale(main.id, instance))
        title = gettext("Upstream price changed by more than 20%%: %(product)s", product=product.name)
        body = gettext("The upstream's price of %(product)s went from %(old)s to %(new)s; the selling price "
                       "follows the rule. Check the link on the Upstreams page.", product=product.name,
                       old=format_money(old_fen), new=format_money(new_fen))
        if via_fallback:
            body += "\n" + gettext("This price is the fallback supplier's.")
        alerts.add_notice(main.id, kind="upstream_price", title=title, body=body, ref=f"upstream_link:{link.id}")
        if instance is not None:
            mail.queue_operator_mail(instance, title, body)
    except Exception:  # noqa: BLE001 - the alert is recorded on the link; the notice is best effort
        log.exception("upstream price alert for link %s could not be sent", link.id)


def clear_alert(link_id: int) -> bool:
    return bool(UpstreamLink.update(price_alert="").where(UpstreamLink.id == link_id).execute())
