"""Member levels (会员等级) for a site: levels by cumulative spend or granted by the owner, with discounts.

Enabled per site (``plugins = ["member_levels"]``); levels come from ``[settings.member_levels]``
(see ``levels.SETTINGS_SCHEMA``). A signed-in member's level takes ``discount_bp`` basis points
off the unit price at the ``member`` stage of the checkout pipeline (never below the seller's
cost: the host clamps at the floor). Members see their level at ``/member/level``; owners list
members and grant levels at ``/admin/member-levels/``.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from flask import (Blueprint, abort, current_app, flash, g, has_request_context, redirect, render_template_string,
                   request, url_for)
from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField
from wtforms.validators import InputRequired

from kamengsite import admin
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _, _l
from kamengsite.member_routes import current_member
from kamengsite.members import Member

from . import levels
from .levels import PLUGIN, SETTINGS_SCHEMA, Level, MemberLevel  # noqa: F401

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates" / "member_levels"
MEMBERS_SHOWN = 200
_G_CACHE = "kamengsite_member_levels"

# The member's page and the owner's console: two blueprints (the console's has the console headers).
member_bp = Blueprint("member_level", __name__, url_prefix="/member")
bp = Blueprint("member_levels", __name__, url_prefix="/admin/member-levels")
bp.after_request(admin._console_headers)
bp.context_processor(admin._console_context)


class GrantForm(FlaskForm):
    member_id = IntegerField(validators=[InputRequired()])
    level = SelectField(_l("Level"), choices=[], validate_choice=True)


def _site():
    return current_app.extensions["kamengsite.site"]


def _config(site=None) -> levels.Config:
    """The site's levels: once per request inside a request of that site, else from ``site``."""
    if site is None or (has_request_context() and site is _site().config):
        cached = g.setdefault(_G_CACHE, {})
        if "config" not in cached:
            cached["config"] = levels.load_config(_site().config)
        return cached["config"]
    return levels.load_config(site)


@cache
def _source(name: str) -> str:
    # Site apps share one Jinja environment per theme, which does not search blueprint folders.
    return (TEMPLATES / name).read_text(encoding="utf-8")


# -- the hooks --------------------------------------------------------------------------


@hookimpl
def plugin_settings_schema():
    return SETTINGS_SCHEMA


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(member_bp)
    app.register_blueprint(bp)


@hookimpl
def site_template_context(site):
    return {"member_levels_enabled": True}  # the account page links to /member/level


@hookimpl
def admin_menu(site):
    return [(_l("Member levels"), "member_levels.index")]


@hookimpl
def adjust_price(checkout, stage):
    """At the ``member`` stage, a signed-in member's level discount (reads only)."""
    if stage != "member" or checkout.member_id is None:
        return
    level = member_level(checkout.site, checkout.site_id, checkout.member_id)
    if level is None or not level.discount_bp:
        return
    unit = checkout.unit_price_fen
    checkout.offer_unit_price(levels.discounted(unit, level.discount_bp), source=PLUGIN, label=_("%(level)s price", level=level.name))


@hookimpl
def order_paid(order, site):
    _refresh(order, site)


@hookimpl
def order_refunded(order, refund, site):
    _refresh(order, site)


def _refresh(order, site):
    if order.member_id is None:
        return
    config = _config(site) if site is not None else levels.Config(levels.SPEND, ())
    levels.refresh(config, order.site_id, order.member_id)


def member_level(site, site_id: int, member_id: int) -> Level | None:
    """The member's level now (cached for the request: the product page prices every SKU)."""
    if has_request_context():
        cached = g.setdefault(_G_CACHE, {})
        key = ("level", site_id, member_id)
        if key not in cached:
            cached[key] = levels.standing(levels.load_config(site), site_id, member_id).level
        return cached[key]
    return levels.standing(levels.load_config(site), site_id, member_id).level


# -- /member/level ----------------------------------------------------------------------


@member_bp.after_request
def _private(response):
    response.headers["Cache-Control"] = "no-store"
    return response


@member_bp.get("/level")
def page():
    member = current_member()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    config = _config()
    now = levels.standing(config, _site().site_id, member.id)
    return render_template_string(_source("level.html"), config=config, standing=now, bought=config.basis == levels.BOUGHT)


# -- /admin/member-levels/ ------------------------------------------------------------


@bp.get("/")
@admin.operator_required
def index():
    site_id = _site().site_id
    config = _config()
    q = (request.args.get("q") or "").strip()[:120]
    query = Member.select(Member.id, Member.email, Member.display_name, Member.status)
    if q:
        query = query.where(Member.email.contains(q))
    rows = list(query.order_by(Member.id.desc()).limit(MEMBERS_SHOWN))
    ids = [m.id for m in rows]
    spend, granted = levels.spends(site_id, ids), levels.grants(site_id, ids)
    members = [{"member": m, "standing": levels.standing_of(config, spend[m.id], granted.get(m.id, "")),
                "granted_level": granted.get(m.id, "")} for m in rows]
    return render_template_string(_source("admin.html"), config=config, members=members, q=q,
                                  form=_grant_form(config, formdata=None), shown=MEMBERS_SHOWN)


def _grant_form(config: levels.Config, **kwargs) -> GrantForm:
    form = GrantForm(**kwargs)
    form.level.choices = [("", _("Automatic (by the rules)"))] + [(lv.name, lv.name) for lv in config.levels]
    return form


@bp.post("/grant")
@admin.operator_required
def grant():
    config = _config()
    form = _grant_form(config)
    if not form.validate_on_submit():
        flash(_("Could not set the level: please reload the page and try again"), "error")
        return redirect(url_for("member_levels.index"))
    member = Member.get_or_none(Member.id == form.member_id.data)  # scoped: this site's members only
    if member is None:
        abort(404)
    try:
        levels.grant(config, _site().site_id, member.id, form.level.data or "")
    except ValueError:
        flash(_("Could not set the level: no such level"), "error")
    else:
        log.info("site %s: operator %s set member %s's level to %r", _site().slug, g.operator.username,
                 member.id, form.level.data or "(auto)")
        flash(_("Set the level of %(email)s to “%(level)s”", email=member.email,
                level=form.level.data or _("Automatic (by the rules)")), "ok")
    return redirect(url_for("member_levels.index"))


__all__ = ["GrantForm", "Level", "MemberLevel", "SETTINGS_SCHEMA", "adjust_price", "admin_menu", "member_level",
           "order_paid", "order_refunded", "plugin_settings_schema", "prepare_site_app", "site_template_context"]
