"""Distribution (分销) for a site: invite links, a referral tree, commissions out of the seller's margin.

Enabled per site (``plugins = ["distribution"]`` in ``site.toml``); settings come from the
site's ``[settings.distribution]`` table (``rates = [10, 5]``: percents of the seller's
margin per depth; ``depth``: 1–3 levels, default 2; ``freeze_days``: default 7). The host
credits the commissions this plugin names to the members' frozen accounts in the payment's
own ledger transaction, and takes them back on refund (frozen first, then the wallet); this
plugin only reads when a payment is recorded. ``release_due_commissions`` (a periodic job,
and right after a payment when ``freeze_days = 0``) moves them to the members' wallets once
their freeze period is over. ``/member/invite/poster/<id>.png``: a share poster per product.

How a member gets a referrer: a visit with ``?ref=CODE`` keeps the code in the session;
when that browser registers a member, the new member is bound to the code's owner right
after the registration committed (an ``after_request`` on ``member.register``: no change
to the host's member code). The bond is permanent and never crosses sites.
"""

from __future__ import annotations

import datetime
import logging
from functools import cache
from pathlib import Path

import peewee
from flask import Blueprint, abort, current_app, g, redirect, render_template_string, request, session, url_for

from kamengsite import ledger, members, settlement
from kamengsite.hookspecs import hookimpl
from kamengsite.member_routes import current_member, current_member_id
from kamengsite.members import Member
from kamengsite.tenancy import acting_for

from . import referrals
from . import poster as posters
from .referrals import (DEFAULT_DEPTH, DEFAULT_FREEZE_DAYS, DEFAULT_RATES, MAX_DEPTH, SETTINGS_SCHEMA,  # noqa: F401
                        InviteCode, Referral, ReferralRefused, Settings)

log = logging.getLogger(__name__)
bp = Blueprint("distribution", __name__, url_prefix="/member")
# Site apps share one Jinja environment per theme (theme over host templates), which does not
# search blueprint folders: the page is rendered from its source, extending the theme's base.html.
INVITE_TEMPLATE = Path(__file__).parent / "templates" / "distribution" / "invite.html"

EXTENSION = "kamengsite_distribution.settings"
SESSION_REF = "distribution_ref"  # the invite code this browser arrived with
_PENDING = "kamengsite_distribution_pending"  # flask.g: (code, member id) before a registration request
TEAM_SHOWN = 50
EARNINGS_SHOWN = 50
PRODUCTS_SHOWN = 100
POSTER_MAX_AGE = 300  # seconds a member's browser may keep a poster


def _site():
    return current_app.extensions["kamengsite.site"]


# -- the hooks --------------------------------------------------------------------------


@hookimpl
def plugin_settings_schema():
    return SETTINGS_SCHEMA


@hookimpl
def prepare_site_app(app, site):
    app.extensions[EXTENSION] = referrals.load_settings(site)  # checked once per app build; errors logged
    app.register_blueprint(bp)
    app.before_request(_remember_ref)
    app.before_request(_before_register)
    app.after_request(_after_register)


@hookimpl
def site_template_context(site):
    # The account page links to /member/invite and shows the member's frozen commissions.
    return {"distribution_enabled": True, "distribution_frozen_fen": _frozen_of}


def _frozen_of(member_id) -> int:
    return members.frozen_commissions(_site().site_id, member_id) if isinstance(member_id, int) else 0


@hookimpl
def order_commissions(order, margin_fen):
    """The buyer's referrer chain shares the seller's margin at the selling site's rates (reads only)."""
    return referrals.commissions(order, margin_fen, _selling_site_settings(order).rates)


@hookimpl
def order_paid(order, site):
    """``freeze_days = 0``: the commissions go to the members' wallets right away (the job is the backstop)."""
    if referrals.load_settings(site).freeze_days == 0:
        settlement.release_commissions(order.order_no)


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute="*/15"), name="distribution_release_commissions")
    def distribution_release_commissions():
        """Move commissions whose freeze period is over to the members' wallets (every 15 minutes)."""
        return release_due_commissions(instance=instance)


def release_due_commissions(now=None, *, instance=None) -> int:
    """Release the commissions of every site whose freeze period (its ``freeze_days``) is over.

    Idempotent: one ledger transaction per order, ``("release", "commission:<order_no>")``;
    a rerun, or two workers at once, post nothing twice. Returns how many orders were released.
    """
    days: dict[int, int] = {}

    def freeze_days_for(site_id: int) -> int:
        if site_id not in days:
            days[site_id] = _freeze_days(site_id, instance)
        return days[site_id]

    return settlement.release_due_commissions(now, freeze_days_for)


def _freeze_days(site_id: int, instance=None) -> int:
    """A site's ``freeze_days`` (the default when its folder cannot be read: never released early)."""
    try:
        config = _site_config(site_id, instance)
    except Exception:  # noqa: BLE001
        log.exception("site %s: settings unreadable; commissions freeze for %s days", site_id, DEFAULT_FREEZE_DAYS)
        config = None
    return referrals.load_settings(config).freeze_days if config is not None else DEFAULT_FREEZE_DAYS


def _site_config(site_id: int, instance=None):
    if instance is not None:
        from kamengsite.models import Site
        from kamengsite.opening import registry_for

        return registry_for(instance).load(Site.get_by_id(site_id).slug)
    from kamengsite.hooks import site_config

    return site_config(site_id)


def _selling_site_settings(order) -> Settings:
    # A gateway may notify on another site's domain: the settings are the selling site's.
    from kamengsite.storefront import selling_site_config

    if order.site_id == _site().site_id and EXTENSION in current_app.extensions:
        return current_app.extensions[EXTENSION]
    return referrals.load_settings(selling_site_config(order))


def _settings() -> Settings:
    return current_app.extensions.get(EXTENSION) or Settings(())


# -- ?ref=CODE and registration ---------------------------------------------------------


def _remember_ref():
    """A visit with ``?ref=CODE`` of this site keeps the code for a registration later (last code wins)."""
    code = referrals.normalize_code(request.args.get("ref"))
    if code and referrals.member_of_code(_site().site_id, code) is not None:
        session[SESSION_REF] = code


def _before_register():
    # Signing in clears the session (fixation), so the code is read before the view runs.
    if request.endpoint == "member.register" and request.method == "POST" and session.get(SESSION_REF):
        setattr(g, _PENDING, (session[SESSION_REF], current_member_id()))


def _after_register(response):
    """Once a registration committed and signed the new member in, bind them to the code's owner."""
    pending = getattr(g, _PENDING, None)
    member_id = current_member_id() if pending else None
    if pending and member_id is not None and member_id != pending[1]:
        # Only a successful registration signs a (different) member in on this endpoint.
        try:
            referrals.bind_by_code(_site().site_id, member_id, pending[0])
        except ReferralRefused as exc:
            log.info("site %s: member %s not bound: %s", _site().slug, member_id, exc)
        except Exception:  # noqa: BLE001 — the member is registered either way
            log.exception("site %s: binding member %s to a referrer failed", _site().slug, member_id)
    return response


# -- /member/invite ---------------------------------------------------------------------


@bp.after_request
def _private(response):
    response.headers.setdefault("Cache-Control", "no-store")  # one member's team and earnings
    return response


@bp.get("/invite")
def invite():
    member = current_member()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    site_id = _site().site_id
    code = referrals.invite_code(site_id, member.id)
    settings = _settings()
    return render_template_string(_invite_source(), code=code,
                                  invite_url=f"https://{request.host}/?ref={code}",
                                  rates=[bp_ / 100 for bp_ in settings.rates], depth=settings.depth,
                                  freeze_days=settings.freeze_days, team=team(site_id, member.id),
                                  team_counts=team_counts(site_id, member.id, settings.depth),
                                  frozen_fen=members.frozen_commissions(site_id, member.id),
                                  wallet_fen=members.wallet_balance(site_id, member.id),
                                  earnings=earnings(site_id, member.id, settings.freeze_days),
                                  products=_products_on_sale(), code_for_links=code, day=_day)


def _day(value) -> str:
    """A stored UTC time as its date in the site's timezone, written the current language's way."""
    from flask_babel import to_user_timezone

    from kamengsite.i18n import format_when

    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return format_when(to_user_timezone(value).date())


def _products_on_sale() -> list[dict]:
    """What this site sells, as its storefront lists it (names and prices of this site)."""
    from kamengsite import storefront
    from kamengsite.catalog import storefront_products

    return storefront.pricer().listing(storefront_products(storefront.catalog_owners()))[:PRODUCTS_SHOWN]


@bp.get("/invite/poster/<int:product_id>.png")
def share_poster(product_id: int):
    """The member's share poster of a product this site sells: PNG, private to the member."""
    member = current_member()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    from kamengsite import storefront
    from kamengsite.catalog import skus_on_sale

    item = storefront.on_sale_product(product_id)  # 404 unless on sale (and shown) on this site
    skus = skus_on_sale(item.id)
    if not skus:
        abort(404)
    pricer = storefront.pricer()
    tiers = pricer.tier_prices([s.id for s in skus])
    price = min(pricer.quote(item, s.id, s.price_fen, tiers).unit_price_fen for s in skus)
    code = referrals.invite_code(_site().site_id, member.id)
    url = product_invite_url(request.host, item.id, code)
    png = posters.render(_site().config.name, item.name, price, url)
    response = current_app.response_class(png, mimetype="image/png")
    response.headers["Cache-Control"] = f"private, max-age={POSTER_MAX_AGE}"
    response.headers["Content-Disposition"] = f'inline; filename="poster-{item.id}.png"'
    return response


def product_invite_url(host: str, product_id: int, code: str) -> str:
    return f"https://{host}/p/{product_id}?ref={code}"


@cache
def _invite_source() -> str:
    return INVITE_TEMPLATE.read_text(encoding="utf-8")


def team(site_id: int, member_id: int) -> list[Member]:
    """The members this member brought in directly, newest first."""
    with acting_for(site_id):
        return list(Member.select(Member.display_name, Member.created_at).join(Referral, on=(Referral.member == Member.id))
                    .where(Referral.referrer == member_id).order_by(Member.id.desc()).limit(TEAM_SHOWN))


def team_counts(site_id: int, member_id: int, depth: int) -> list[int]:
    """How many members at each depth below this member (depth 1 first)."""
    counts, level = [], [member_id]
    with acting_for(site_id):
        for _ in range(max(depth, 1)):
            level = [m for (m,) in Referral.select(Referral.member).where(Referral.referrer.in_(level)).tuples()] \
                if level else []
            counts.append(len(level))
    return counts


def earnings(site_id: int, member_id: int, freeze_days: int = DEFAULT_FREEZE_DAYS) -> dict:
    """The member's commissions, newest first: frozen (until about when), in the wallet, or taken back.

    Commissions are the payment splits' credits to the member's frozen account (splits recorded
    before commissions were frozen: to the wallet). ``total_fen``: what the member keeps of them.
    """
    Account, Entry, Txn = ledger.LedgerAccount, ledger.LedgerEntry, ledger.LedgerTxn
    kinds = dict(Account.select(Account.id, Account.kind).where(
        Account.kind.in_(settlement.COMMISSION_KINDS) & (Account.site == site_id) & (Account.member_id == member_id))
        .tuples())
    if not kinds:
        return {"total_fen": 0, "lines": []}
    mine = Entry.account.in_(list(kinds))
    credits = Entry.select(Entry.id).join(Txn).where(mine & (Txn.kind == "payment") & (Entry.amount_fen > 0))
    commission_refs = Txn.select(Txn.reference).join(Entry).where(Entry.id.in_(credits))
    credited = Entry.select(peewee.fn.COALESCE(peewee.fn.SUM(Entry.amount_fen), 0)).where(Entry.id.in_(credits)).scalar()
    taken = (Entry.select(peewee.fn.COALESCE(peewee.fn.SUM(Entry.amount_fen), 0)).join(Txn)
             .where(mine & (Txn.kind == "refund") & (Entry.amount_fen < 0) & Txn.reference.in_(commission_refs))
             .scalar())
    rows = list(Entry.select(Entry.account, Entry.amount_fen, Txn.reference, Txn.created_at).join(Txn)
                .where(Entry.id.in_(credits)).order_by(Entry.id.desc()).limit(EARNINGS_SHOWN).tuples())
    refs = [ref for _, _, ref, _ in rows]
    refunded = {r for (r,) in Txn.select(Txn.reference).where((Txn.kind == "refund") & Txn.reference.in_(refs))
                .tuples()} if refs else set()
    released = {r.split(":", 1)[1] for (r,) in Txn.select(Txn.reference).where(
        (Txn.kind == "release") & Txn.reference.in_([settlement.commission_release_reference(x) for x in refs]))
        .tuples()} if refs else set()
    lines = []
    for account_id, amount, ref, at in rows:
        if ref in refunded:
            status = "refunded"
        elif ref in released or kinds[account_id] == settlement.COMMISSION_WALLET:
            status = "released"
        else:
            status = "frozen"
        lines.append({"order_no": ref, "amount_fen": int(amount), "created_at": at, "status": status,
                      "refunded": status == "refunded",
                      "release_at": at + datetime.timedelta(days=freeze_days) if status == "frozen" else None})
    return {"total_fen": int(credited or 0) + int(taken or 0), "lines": lines}


__all__ = ["DEFAULT_DEPTH", "DEFAULT_FREEZE_DAYS", "DEFAULT_RATES", "MAX_DEPTH", "SETTINGS_SCHEMA", "InviteCode",
           "Referral", "ReferralRefused", "Settings", "order_commissions", "order_paid", "plugin_settings_schema",
           "prepare_site_app", "register_jobs", "release_due_commissions", "site_template_context"]
