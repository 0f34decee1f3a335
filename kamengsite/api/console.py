"""App keys in the member's account page and in the shop's console (a core plugin).

* ``/member/api/`` (every site, signed-in members): my keys (app key, label, created, last used,
  status), a new key (label, optional default callback URL) whose secret is shown on the page that
  created it and never again, revoking a key, changing a key's default callback URL.
* ``/admin/api/`` (the console, area ``members``): every key of this site's members, with revoke,
  and the callback delivery log with "retry now" for failed callbacks.

Callback URLs are checked with ``callbacks.check_callback_url`` (the SSRF guard and the loopback
switch the delivery itself uses) and a refusal is shown next to the field. Everything is confined
to the current site: another site's (or, for a member, another member's) key or callback is a 404.
"""

from __future__ import annotations

import peewee
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import Length, Optional

from .. import admin, members, outbound
from ..app import current_site
from ..hookspecs import hookimpl
from ..i18n import _, _l
from ..permissions import area
from ..tenancy import acting_for
from . import callbacks, keys
from .models import ApiCallback, ApiKey, ApiOrder

member_bp = Blueprint("member_api", __name__, url_prefix="/member/api")
console_bp = admin.console_blueprint("admin_api", __name__, "/admin/api")

KEY_STATUS_LABELS = {"active": _l("Active"), "revoked": _l("Revoked")}
# Not "Delivered": that msgid is an order's state (shipped), this is the reseller's server having said 2xx.
CALLBACK_STATE_LABELS = {"pending": _l("Waiting to be sent"), "delivered": _l("Received"), "failed": _l("Failed")}
LOG_SHOWN = 200
KEYS_SHOWN = 500


class NewKeyForm(FlaskForm):
    label = StringField(_l("Label"), validators=[Optional(), Length(max=60, message=_l("At most %(max)d characters"))])
    callback_url = StringField(_l("Default callback URL (optional)"),
                               validators=[Optional(), Length(max=callbacks.MAX_URL,
                                                              message=_l("At most %(max)d characters"))])


class CallbackUrlForm(FlaskForm):
    callback_url = StringField(_l("Default callback URL"),
                               validators=[Optional(), Length(max=callbacks.MAX_URL,
                                                              message=_l("At most %(max)d characters"))])


class ActionForm(FlaskForm):
    """A form with nothing but its CSRF token (revoke, retry)."""


def _site_id() -> int:
    return current_site().site_id


def url_refusal(url: str) -> str | None:
    """Why a callback URL is refused (shown next to its field), or None when it may be used."""
    if not (url or "").strip():
        return None
    try:
        callbacks.check_callback_url(url, current_site().instance)
    except outbound.OutboundError as exc:
        if exc.refused:
            return _("This URL is refused: %(reason)s", reason=str(exc))
        return _("This URL cannot be checked: %(reason)s", reason=str(exc))
    return None


# -- the member's page ------------------------------------------------------------------------


def _member_or_login():
    from ..member_routes import current_member

    return current_member()


def _member_page(member, *, form=None, new_secret=None, new_key=None, edit_errors=None, status=200):
    from ..member_routes import _layout  # the member pages' layout sections around the page

    return render_template("api/member_keys.html", member=member, keys=keys.keys_of(_site_id(), member.id),
                           form=form or NewKeyForm(formdata=None), action=ActionForm(formdata=None),
                           edit_form=CallbackUrlForm(formdata=None), new_secret=new_secret, new_key=new_key,
                           edit_errors=edit_errors or {}, statuses=KEY_STATUS_LABELS,
                           max_keys=keys.MAX_KEYS_PER_MEMBER, **_layout()), status


@member_bp.after_request
def _private(response):
    response.headers["Cache-Control"] = "no-store"  # a secret is shown on this page once
    return response


@member_bp.route("/", methods=["GET", "POST"])
def index():
    member = _member_or_login()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    form = NewKeyForm()
    if not form.validate_on_submit():
        return _member_page(member, form=form, status=400 if form.errors else 200)
    refusal = url_refusal(form.callback_url.data)
    if refusal:
        form.callback_url.errors.append(refusal)
        return _member_page(member, form=form, status=400)
    try:
        key, secret = keys.issue_key(_site_id(), member.id, current_site().instance.secret_key,
                                     label=form.label.data or "", callback_url=form.callback_url.data or "")
    except keys.ApiKeyError:
        form.label.errors.append(_("You already have %(n)s active keys: revoke one first",
                                   n=keys.MAX_KEYS_PER_MEMBER))
        return _member_page(member, form=form, status=400)
    # Rendered, not redirected: the secret goes into this one response and nowhere else (no session, no flash).
    return _member_page(member, new_secret=secret, new_key=key)


def _own_key_or_404(member, key_id: int) -> ApiKey:
    with acting_for(_site_id()):
        key = ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.member_id == member.id))
    if key is None:
        abort(404)
    return key


@member_bp.post("/<int:key_id>/revoke")
def revoke(key_id):
    member = _member_or_login()
    if member is None:
        return redirect(url_for("member.login"))
    _own_key_or_404(member, key_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    if keys.revoke(_site_id(), key_id, member_id=member.id):
        flash(_("Key revoked: requests signed with it are refused from now on"), "ok")
    return redirect(url_for("member_api.index"))


@member_bp.post("/<int:key_id>/callback")
def edit_callback(key_id):
    member = _member_or_login()
    if member is None:
        return redirect(url_for("member.login"))
    key = _own_key_or_404(member, key_id)
    form = CallbackUrlForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors or not form.errors:
            abort(400)
        return _member_page(member, edit_errors={key.id: form.callback_url.errors}, status=400)
    if not key.active:
        abort(404)
    url = (form.callback_url.data or "").strip()
    refusal = url_refusal(url)
    if refusal:
        return _member_page(member, edit_errors={key.id: [refusal]}, status=400)
    with acting_for(_site_id()):
        ApiKey.update(callback_url=url).where((ApiKey.id == key.id) & (ApiKey.member_id == member.id)).execute()
    flash(_("Default callback URL saved") if url else _("Default callback URL removed"), "ok")
    return redirect(url_for("member_api.index"))


# -- the console ---------------------------------------------------------------------------


def _emails(site_id: int, member_ids) -> dict[int, str]:
    ids = sorted(set(member_ids))
    if not ids:
        return {}
    with acting_for(site_id):
        return dict(members.Member.select(members.Member.id, members.Member.email)
                    .where(members.Member.id.in_(ids)).tuples())


def _callback_log(site_id: int, state: str) -> list:
    from ..orders import Order

    with acting_for(site_id):
        query = (ApiCallback.select(ApiCallback, Order.order_no.alias("order_no"),
                                    ApiOrder.out_trade_no.alias("out_trade_no"))
                 .join(Order, on=(ApiCallback.order == Order.id))
                 .switch(ApiCallback).join(ApiOrder, peewee.JOIN.LEFT_OUTER, on=(ApiOrder.order == ApiCallback.order)))
        if state:
            query = query.where(ApiCallback.state == state)
        return list(query.order_by(ApiCallback.id.desc()).limit(LOG_SHOWN).objects())


@console_bp.get("/")
@area("members")
@admin.operator_required
def console_index():
    site_id = _site_id()
    state = request.args.get("state") if request.args.get("state") in callbacks.STATES else ""
    with acting_for(site_id):
        all_keys = list(ApiKey.select().order_by(ApiKey.id.desc()).limit(KEYS_SHOWN))
    return render_template("admin/api_keys.html", keys=all_keys,
                           emails=_emails(site_id, [k.member_id for k in all_keys]),
                           log=_callback_log(site_id, state), state=state, statuses=KEY_STATUS_LABELS,
                           states=CALLBACK_STATE_LABELS, action=ActionForm(formdata=None))


@console_bp.post("/keys/<int:key_id>/revoke")
@area("members")
@admin.operator_required
def console_revoke(key_id):
    site_id = _site_id()
    with acting_for(site_id):
        if ApiKey.get_or_none(ApiKey.id == key_id) is None:
            abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    if keys.revoke(site_id, key_id):
        flash(_("Key revoked: requests signed with it are refused from now on"), "ok")
    return redirect(url_for("admin_api.console_index"))


@console_bp.post("/callbacks/<int:callback_id>/retry")
@area("members")
@admin.operator_required
def console_retry(callback_id):
    site_id = _site_id()
    with acting_for(site_id):
        if ApiCallback.get_or_none(ApiCallback.id == callback_id) is None:
            abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    callback = callbacks.retry_now(site_id, callback_id)
    if callback is None:
        flash(_("Only a failed callback can be retried"), "error")
    else:
        callbacks.queue(callback.id, current_site().instance)
        flash(_("Callback queued: it is sent again now"), "ok")
    return redirect(url_for("admin_api.console_index", state=request.args.get("state") or None))


@hookimpl
def admin_menu(site):
    return [(_l("API keys"), "admin_api.console_index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(member_bp)
    app.register_blueprint(console_bp)
