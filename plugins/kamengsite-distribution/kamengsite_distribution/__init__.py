"""Distribution (分销) for a site: invite links, a referral tree, commissions out of the seller's margin.

Enabled per site (``plugins = ["distribution"]`` in ``site.toml``); rates come from the
site's ``[settings.distribution]`` table (``rates = [10, 5]``: percents of the seller's
margin per depth, at most 3 levels). The host credits the commissions this plugin names
to the members' wallets in the payment's own ledger transaction, and takes them back on
refund; this plugin only reads when a payment is recorded.

How a member gets a referrer: a visit with ``?ref=CODE`` keeps the code in the session;
when that browser registers a member, the new member is bound to the code's owner right
after the registration committed (an ``after_request`` on ``member.register``: no change
to the host's member code). The bond is permanent and never crosses sites.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from flask import Blueprint, current_app, g, redirect, render_template_string, request, session, url_for

from kamengsite import ledger
from kamengsite.hookspecs import hookimpl
from kamengsite.member_routes import current_member, current_member_id
from kamengsite.members import WALLET, Member
from kamengsite.tenancy import acting_for

from . import referrals
from .referrals import DEFAULT_RATES, MAX_DEPTH, SETTINGS_SCHEMA, InviteCode, Referral, ReferralRefused  # noqa: F401

log = logging.getLogger(__name__)
bp = Blueprint("distribution", __name__, url_prefix="/member")
# Site apps share one Jinja environment per theme (theme over host templates), which does not
# search blueprint folders: the page is rendered from its source, extending the theme's base.html.
INVITE_TEMPLATE = Path(__file__).parent / "templates" / "distribution" / "invite.html"

EXTENSION = "kamengsite_distribution.rates"
SESSION_REF = "distribution_ref"  # the invite code this browser arrived with
_PENDING = "kamengsite_distribution_pending"  # flask.g: (code, member id) before a registration request
TEAM_SHOWN = 50
EARNINGS_SHOWN = 50


def _site():
    return current_app.extensions["kamengsite.site"]


# -- the hooks --------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    app.extensions[EXTENSION] = referrals.load_rates(site)  # validated once per app build; errors logged
    app.register_blueprint(bp)
    app.before_request(_remember_ref)
    app.before_request(_before_register)
    app.after_request(_after_register)


@hookimpl
def site_template_context(site):
    return {"distribution_enabled": True}  # the account page links to /member/invite


@hookimpl
def order_commissions(order, margin_fen):
    """The buyer's referrer chain shares the seller's margin at the selling site's rates (reads only)."""
    return referrals.commissions(order, margin_fen, _selling_site_rates(order))


def _selling_site_rates(order) -> tuple[int, ...]:
    # A gateway may notify on another site's domain: the rates are the selling site's.
    from kamengsite.storefront import selling_site_config

    if order.site_id == _site().site_id and EXTENSION in current_app.extensions:
        return current_app.extensions[EXTENSION]
    return referrals.load_rates(selling_site_config(order))


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
    response.headers["Cache-Control"] = "no-store"  # one member's team and earnings
    return response


@bp.get("/invite")
def invite():
    member = current_member()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    site_id = _site().site_id
    code = referrals.invite_code(site_id, member.id)
    rates = current_app.extensions.get(EXTENSION, ())
    return render_template_string(_invite_source(), code=code,
                           invite_url=f"https://{request.host}/?ref={code}",
                           rates=[bp_ / 100 for bp_ in rates], team=team(site_id, member.id),
                           team_counts=team_counts(site_id, member.id, len(rates)),
                           earnings=earnings(site_id, member.id))


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


def earnings(site_id: int, member_id: int) -> dict:
    """Commissions credited to the member's wallet (payment splits), and what refunds took back."""
    Account, Entry, Txn = ledger.LedgerAccount, ledger.LedgerEntry, ledger.LedgerTxn
    wallet = Account.get_or_none((Account.kind == WALLET) & (Account.site == site_id) & (Account.member_id == member_id))
    if wallet is None:
        return {"total_fen": 0, "lines": []}
    rows = list(Entry.select(Txn.kind, Txn.reference, Entry.amount_fen, Entry.created_at).join(Txn)
                .where((Entry.account == wallet.id) & (Txn.kind.in_(["payment", "refund"])))
                .order_by(Entry.id).tuples())
    # A payment split credits a wallet only with a commission; a refund of that order takes it back.
    credited = {ref: (int(amount), at) for kind, ref, amount, at in rows if kind == "payment"}
    taken = {ref: int(amount) for kind, ref, amount, _ in rows if kind == "refund" and ref in credited and amount < 0}
    lines = [{"order_no": ref, "amount_fen": fen, "created_at": at, "refunded": ref in taken}
             for ref, (fen, at) in credited.items()]
    total = sum(fen for fen, _ in credited.values()) + sum(taken.values())
    return {"total_fen": total, "lines": lines[::-1][:EARNINGS_SHOWN]}



__all__ = ["DEFAULT_RATES", "MAX_DEPTH", "SETTINGS_SCHEMA", "InviteCode", "Referral", "ReferralRefused",
           "order_commissions", "prepare_site_app", "site_template_context"]
