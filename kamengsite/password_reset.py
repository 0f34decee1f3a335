"""Forgotten console passwords: a link by e-mail, valid 30 minutes, good for one reset.

``/admin/login/forgot`` takes a username or an e-mail address and always answers the same
("if … a link was sent"), so it tells nobody which accounts exist. An account with an
e-mail address (set by itself under 账号安全, or by its operator under 员工) gets a link.

The link is a signed token (``itsdangerous``, a key of this site and purpose only) naming the
account, its session version and a fingerprint of its password hash. Setting a new password
changes both, so a used link is void, and so is every older link; the new password also ends
every session of the account. Two-step login still applies after a reset: the reset proves the
mailbox, not the authenticator. Only the account id travels through the job queue; the worker
makes the link when it writes the mail.
"""

from __future__ import annotations

import hashlib

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from wtforms import StringField
from wtforms.validators import InputRequired, Length

from . import accounts, admin
from .admin_account import NewPasswordForm
from .app import current_site, site_secret
from .hookspecs import hookimpl
from .i18n import _, _l
from .ratelimit import allow, client_ip, limited
from .tenancy import acting_for

LINK_MAX_AGE = 30 * 60  # seconds
SALT = "kamengsite-password-reset"

bp = admin.console_blueprint("admin_recovery", __name__, "/admin/login")


# -- tokens --------------------------------------------------------------------------


def _serializer(instance, slug: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(site_secret(instance.secret_key, slug, "password-reset"), salt=SALT)


def _fingerprint(account) -> str:
    return hashlib.sha256(account.password_hash.encode()).hexdigest()[:16]


def make_token(instance, slug: str, account) -> str:
    return _serializer(instance, slug).dumps({"a": account.id, "v": account.session_version,
                                              "h": _fingerprint(account)})


def account_for_token(instance, slug: str, site_id: int, token: str, *, max_age: int = LINK_MAX_AGE):
    """The account a still-valid, unused link of this site is for, else None."""
    try:
        data = _serializer(instance, slug).loads(token, max_age=max_age)
    except (SignatureExpired, BadSignature):
        return None
    if not isinstance(data, dict):
        return None
    with acting_for(site_id):
        account = accounts.Account.get_or_none(accounts.Account.id == data.get("a"))
    if (account is None or account.session_version != data.get("v") or _fingerprint(account) != data.get("h")
            or account.role not in admin.CONSOLE_ROLES):
        return None
    return account


# -- the mail ------------------------------------------------------------------------


def find_by_name_or_email(site_id: int, text: str):
    """The console account of the site called ``text``, or the one whose e-mail it is (only if unique)."""
    text = (text or "").strip()
    if not text or len(text) > 254:
        return None
    if "@" not in text:
        return accounts.find_account(site_id, text)
    with acting_for(site_id):
        found = list(accounts.Account.select().where(accounts.Account.email == text.lower()).limit(2))
    return found[0] if len(found) == 1 else None


LINK = "\x00link\x00"  # where the worker puts the link: the mail's text is translated in the request


def reset_texts(site_name: str, username: str) -> tuple[str, str]:
    """(subject, body) in the request's language, with ``LINK`` where the link goes."""
    body = _("Someone (hopefully you) asked to reset the password of the console account %(name)s of %(site)s.\n\n"
             "Open this link within 30 minutes to choose a new password:\n%(link)s\n\n"
             "If it was not you, ignore this mail: your password stays as it is.",
             name=username, site=site_name, link=LINK)
    return _("Reset your %(site)s console password", site=site_name), body


def send_reset_mail(instance, slug: str, site_id: int, account_id: int, base_url: str,
                    subject: str, body: str, from_name: str) -> str:
    """Job body: mail the link to the account's address; 'skipped' when it has none or there is no SMTP."""
    from .mail import build_message, send_message

    with acting_for(site_id):
        account = accounts.Account.get_or_none(accounts.Account.id == account_id)
    if account is None or not account.email:
        return "skipped"
    link = base_url.rstrip("/") + "/admin/login/reset/" + make_token(instance, slug, account)
    message = build_message(instance, to=account.email, subject=subject, body=body.replace(LINK, link),
                            from_name=from_name)
    return "sent" if send_message(instance, message) else "skipped"


# -- pages ---------------------------------------------------------------------------


class ForgotForm(FlaskForm):
    who = StringField(_l("Username or e-mail"), validators=[InputRequired(_l("Enter your username or e-mail")),
                                                            Length(max=254)])


@bp.route("/forgot", methods=["GET", "POST"])
@limited("password_reset", "5/minute")
def forgot():
    from .jobs import jobs_for

    form = ForgotForm()
    if form.validate_on_submit():
        site = current_site()
        account = find_by_name_or_email(site.site_id, form.who.data)
        # One mail per account per 15 minutes at most, so the form cannot be used to flood a mailbox.
        if account is not None and account.email and allow("3/15 minutes", "password_reset_mail", site.slug,
                                                           str(account.id)):
            subject, body = reset_texts(site.config.name, account.username)
            jobs_for(site.instance).send_password_reset(site.slug, site.site_id, account.id, request.host_url,
                                                        subject, body, site.config.name)
        current_app.logger.info("password reset asked for on %s from %s", site.slug, client_ip())
        flash(_("If that account has an e-mail address, a link to reset its password is on its way. "
                "It works for 30 minutes."), "ok")
        return redirect(url_for("admin.login"))
    return render_template("admin/password_forgot.html", form=form), 200 if request.method == "GET" else 400


@bp.route("/reset/<token>", methods=["GET", "POST"])
@limited("password_reset", "5/minute")
def reset(token):
    site = current_site()
    account = account_for_token(site.instance, site.slug, site.site_id, token)
    if account is None:
        return render_template("admin/password_reset.html", form=None), 400
    form = NewPasswordForm()
    if form.validate_on_submit():
        accounts.set_password(site.site_id, account.username, form.new.data)  # ends every session too
        flash(_("Password changed: sign in with the new one"), "ok")
        return redirect(url_for("admin.login"))
    return render_template("admin/password_reset.html", form=form, account=account), \
        200 if request.method == "GET" else 400


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
