"""会员营销 (crm) for a site: automatic segments from paid orders, the owner's tags, and campaigns.

Enabled per site (``plugins = ["crm"]`` in ``site.toml``); segment rules come from the site's
``[settings.crm]`` table (see ``models.SETTINGS_SCHEMA``). Every 30 minutes a job refreshes
each site's segments (``segments.refresh_segments``) and fires its active campaigns
(``campaigns.run_site``): by email through the instance's SMTP server and as an in-site
message, at most once per member per campaign (per year for birthday campaigns).

Pages: ``/member/profile`` (the member's birthday), ``/member/messages`` (their inbox) and the
owner's console ``/admin/crm/`` (segments, tags, campaigns).
"""

from __future__ import annotations

import datetime
import logging
from functools import cache
from pathlib import Path

from flask import Blueprint, abort, current_app, flash, redirect, render_template_string, request, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import BooleanField, HiddenField, StringField, TextAreaField
from wtforms.validators import InputRequired, Length

from kamengsite import admin, members
from kamengsite.hookspecs import hookimpl
from kamengsite.i18n import _, _l
from kamengsite.member_routes import current_member
from kamengsite.models import utcnow
from kamengsite.sections import Section

from . import campaigns, segments
from .campaigns import CrmError
from .models import (SEGMENTS, SETTINGS_SCHEMA, Campaign, CampaignDelivery, MemberProfile, MemberSegment, MemberTag,
                     Message, Tag)

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates" / "crm"
MEMBERS_SHOWN = 200

member_bp = Blueprint("crm_member", __name__, url_prefix="/member")
bp = admin.console_blueprint("crm", __name__, "/admin/crm")


@cache
def _source(name: str) -> str:
    # Site apps share one Jinja environment per theme that does not search blueprint folders.
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _render(name: str, **context):
    return render_template_string(_source(name), **context)


def _site():
    return current_app.extensions["kamengsite.site"]


def _site_id() -> int:
    return _site().site_id


def _rules() -> dict:
    return segments.load_rules(_site().config)


# -- hooks ------------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(member_bp)
    app.register_blueprint(bp)


@hookimpl
def plugin_settings_schema():
    return SETTINGS_SCHEMA


@hookimpl
def site_template_context(site):
    return {"crm_enabled": True}  # a theme or the account page may link /member/messages


@hookimpl
def admin_menu(site):
    return [(_l("Member marketing"), "crm.index")]


@hookimpl
def theme_sections(site):
    return [Section("crm_inbox", _l("Messages and birthday"), _inbox_section, pages=("member",))]


def _inbox_section(context) -> Markup:
    member_id = context.get("member_id")
    if member_id is None:
        return Markup("")
    unread = campaigns.unread_count(_site_id(), member_id)
    return Markup('<p class="crm-links"><a href="{}">{}</a> · <a href="{}">{}</a></p>').format(
        url_for("crm_member.messages"), _("Messages (%(n)s unread)", n=unread) if unread else _("Messages"),
        url_for("crm_member.profile"), _("My profile (birthday)"))


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute="*/30"), name="crm_run")
    def crm_run():
        """Refresh every crm site's segments and fire its campaigns (every 30 minutes)."""
        return campaigns.run_all(instance)


# -- member pages -----------------------------------------------------------------------------


class ProfileForm(FlaskForm):
    birthday = StringField(_l("Birthday"), validators=[Length(max=10, message=_l("Please write it as year-month-day"))])


class ReadForm(FlaskForm):
    message_id = HiddenField()


def parse_birthday(text: str) -> datetime.date | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise CrmError(_("Please write the birthday as year-month-day, e.g. 1995-08-16")) from None


@member_bp.after_request
def _private(response):
    response.headers["Cache-Control"] = "no-store"  # one member's data
    return response


def _signed_in():
    member = current_member()
    if member is None:
        return None, redirect(url_for("member.login", next=request.path))
    return member, None


@member_bp.route("/profile", methods=["GET", "POST"])
def profile():
    member, away = _signed_in()
    if away:
        return away
    site_id = _site_id()
    form = ProfileForm()
    error = None
    if form.validate_on_submit():
        try:
            campaigns.set_birthday(site_id, member.id, parse_birthday(form.birthday.data),
                                   today=campaigns.local_date(utcnow(), _rules()))
        except CrmError as exc:
            error = str(exc)
        else:
            flash(_("Saved"), "ok")
            return redirect(url_for("crm_member.profile"))
    elif form.is_submitted() and "csrf_token" in form.errors:
        abort(400)
    if request.method == "GET":
        birthday = campaigns.birthday_of(site_id, member.id)
        form.birthday.data = birthday.isoformat() if birthday else ""
    return _render("profile.html", form=form, error=error, member=member)


@member_bp.get("/messages")
def messages():
    member, away = _signed_in()
    if away:
        return away
    site_id = _site_id()
    return _render("messages.html", items=campaigns.inbox(site_id, member.id), form=ReadForm(formdata=None),
                   unread=campaigns.unread_count(site_id, member.id))


@member_bp.post("/messages/read")
def messages_read():
    member, away = _signed_in()
    if away:
        return away
    form = ReadForm()
    if not form.validate_on_submit():
        abort(400)
    raw = (form.message_id.data or "").strip()
    message_id = int(raw) if raw.isdigit() else None
    if raw and message_id is None:
        abort(400)
    campaigns.mark_read(_site_id(), member.id, message_id)  # only ever this member's own messages
    return redirect(url_for("crm_member.messages"))


# -- the owner's console ------------------------------------------------------------------------


class TagForm(FlaskForm):
    name = StringField(_l("Tag name"), validators=[InputRequired(_l("Please enter a tag name")), Length(max=campaigns.TAG_MAX)])


class TagMemberForm(FlaskForm):
    email = StringField(_l("Member email"), validators=[InputRequired(_l("Please enter the member's email")),
                                                     Length(max=members.EMAIL_MAX)])


class CampaignForm(FlaskForm):
    name = StringField(_l("Campaign name"), validators=[InputRequired(_l("Please enter a campaign name")),
                                                        Length(max=campaigns.NAME_MAX)])
    fires_on = StringField(_l("Trigger"), validators=[InputRequired(_l("Please enter a trigger")), Length(max=48)])
    subject = StringField(_l("Subject"), validators=[InputRequired(_l("Please enter a subject")),
                                                    Length(max=campaigns.SUBJECT_MAX)])
    body = TextAreaField(_l("Message (plain text, may include coupon codes; {name} becomes the member's nickname)"),
                         validators=[Length(max=campaigns.BODY_MAX,
                                            message=_l("At most %(max)s characters", max=campaigns.BODY_MAX))])
    send_email = BooleanField(_l("Send email"), default=True)
    send_inbox = BooleanField(_l("Send in-site message"), default=True)
    active = BooleanField(_l("Enable now"))


def _check(form) -> bool:
    if form.validate_on_submit():
        return True
    if form.is_submitted() and "csrf_token" in form.errors:
        abort(400)
    return False


def _index_page(tag_form=None, campaign_form=None, error=None):
    site_id = _site_id()
    return _render("admin_index.html", segment_labels=SEGMENTS, counts=segments.segment_counts(site_id),
                   rules=_rules(), tags=campaigns.tags(site_id), items=campaigns.campaigns_with_counts(site_id),
                   tag_form=tag_form or TagForm(formdata=None), campaign_form=campaign_form or CampaignForm(formdata=None),
                   action_form=admin.ActionForm(formdata=None), email_labels=campaigns.EMAIL_LABELS, error=error)


@bp.get("/")
@admin.operator_required
def index():
    return _index_page()


@bp.post("/run")
@admin.operator_required
def run_now():
    if not _check(admin.ActionForm()):
        abort(400)
    result = campaigns.run_site(_site_id(), site=_site().config, instance=_site().instance)
    flash(_("Segments refreshed; reached %(reached)s members this time, retried %(retried)s emails",
            reached=result["reached"], retried=result["retried"]), "ok")
    return redirect(url_for("crm.index"))


@bp.get("/segment/<name>")
@admin.operator_required
def segment(name):
    if name not in SEGMENTS:
        abort(404)
    site_id = _site_id()
    rows = segments.segment_members(site_id, name, limit=MEMBERS_SHOWN)
    ids = [m for m, _ in rows]
    return _render("admin_members.html", title=_("Segment: %(name)s", name=SEGMENTS[name]), rows=_member_rows(site_id, rows),
                   tag=None, form=None, total=segments.segment_counts(site_id)[name], shown=len(ids))


def _member_rows(site_id, rows) -> list[dict]:
    ids = [m for m, _ in rows]
    stats = segments.order_stats(site_id, utcnow(), _rules(), ids)
    tags = campaigns.member_tags(site_id, ids)
    people = {}
    if ids:
        from kamengsite.tenancy import acting_for

        with acting_for(site_id):
            people = {m.id: m for m in members.Member.select().where(members.Member.id.in_(ids))}
    return [{"member": people[m], "since": since, "stats": stats.get(m), "tags": tags.get(m, [])}
            for m, since in rows if m in people]


@bp.post("/tags")
@admin.operator_required
def tag_create():
    form = TagForm()
    if not _check(form):
        return _index_page(tag_form=form), 400
    try:
        campaigns.create_tag(_site_id(), form.name.data)
    except CrmError as exc:
        form.name.errors = [str(exc)]
        return _index_page(tag_form=form), 400
    flash(_("Tag created"), "ok")
    return redirect(url_for("crm.index"))


def _tag_or_404(tag_id: int) -> Tag:
    from kamengsite.tenancy import acting_for

    with acting_for(_site_id()):
        tag = Tag.get_or_none(Tag.id == tag_id)
    if tag is None:
        abort(404)
    return tag


@bp.route("/tag/<int:tag_id>", methods=["GET", "POST"])
@admin.operator_required
def tag(tag_id):
    site_id = _site_id()
    found = _tag_or_404(tag_id)
    form = TagMemberForm()
    if _check(form):
        member = members.find_member(site_id, form.email.data)
        if member is None:
            form.email.errors = [_("This site has no such member")]
        else:
            campaigns.tag_member(site_id, found.id, member.id)
            flash(_("Tagged %(email)s", email=member.email), "ok")
            return redirect(url_for("crm.tag", tag_id=found.id))
    ids = campaigns.tagged_members(site_id, found.id, limit=MEMBERS_SHOWN)
    return _render("admin_members.html", title=_("Tag: %(name)s", name=found.name), rows=_member_rows(site_id, [(m, None) for m in ids]),
                   tag=found, form=form, action_form=admin.ActionForm(formdata=None), total=len(ids), shown=len(ids))


@bp.post("/tag/<int:tag_id>/remove/<int:member_id>")
@admin.operator_required
def tag_remove(tag_id, member_id):
    if not _check(admin.ActionForm()):
        abort(400)
    found = _tag_or_404(tag_id)
    campaigns.untag_member(_site_id(), found.id, member_id)
    flash(_("Tag removed"), "ok")
    return redirect(url_for("crm.tag", tag_id=found.id))


@bp.post("/tag/<int:tag_id>/delete")
@admin.operator_required
def tag_delete(tag_id):
    if not _check(admin.ActionForm()):
        abort(400)
    campaigns.delete_tag(_site_id(), _tag_or_404(tag_id).id)
    flash(_("Tag deleted"), "ok")
    return redirect(url_for("crm.index"))


@bp.post("/campaigns")
@admin.operator_required
def campaign_create():
    form = CampaignForm()
    if not _check(form):
        return _index_page(campaign_form=form), 400
    try:
        campaigns.create_campaign(_site_id(), name=form.name.data, fires_on=form.fires_on.data,
                                  subject=form.subject.data, body=form.body.data, send_email=form.send_email.data,
                                  send_inbox=form.send_inbox.data, active=form.active.data)
    except CrmError as exc:
        return _index_page(campaign_form=form, error=str(exc)), 400
    flash(_("Campaign created"), "ok")
    return redirect(url_for("crm.index"))


@bp.post("/campaign/<int:campaign_id>/<any(activate, deactivate):action>")
@admin.operator_required
def campaign_toggle(campaign_id, action):
    if not _check(admin.ActionForm()):
        abort(400)
    if not campaigns.set_active(_site_id(), campaign_id, action == "activate"):
        abort(404)
    flash(_("Campaign enabled") if action == "activate" else _("Campaign disabled"), "ok")
    return redirect(url_for("crm.index"))


__all__ = ["SEGMENTS", "SETTINGS_SCHEMA", "Campaign", "CampaignDelivery", "MemberProfile", "MemberSegment", "MemberTag",
           "Message", "Tag", "admin_menu", "plugin_settings_schema", "prepare_site_app", "register_jobs",
           "site_template_context", "theme_sections"]
