"""账号安全 (/admin/account): a core plugin, on every site's console.

The signed-in account (operator or sub-site owner, of this site only) turns two-step login (TOTP)
on and off, sees its recovery codes once, lists its console sessions and ends one or all others,
and changes its password. Also the login's second step (``/admin/login/code``) and the check, before
every request of the site, that a console cookie's session row still exists (``account_security``).

Every write is a POST form with a CSRF token; the account is always ``g.operator`` (from the
session, on this site), never an id from the form, and a session id from the URL is only ever
matched together with that account.
"""

from __future__ import annotations

import segno
from flask import abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length, ValidationError

from . import account_security as security
from . import accounts, admin
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l, _n
from .ratelimit import client_ip, limited
from .tenancy import acting_for

bp = admin.console_blueprint("admin_account", __name__, "/admin")

PENDING_KEY = "operator_2fa"  # between the password and the code: who, which version, since when, where to
PENDING_SECONDS = 300


class CodeForm(FlaskForm):
    code = StringField(_l("Verification code"), validators=[InputRequired(_l("Enter the verification code")),
                                                          Length(max=32)])


class NewPasswordForm(FlaskForm):
    """A new password typed twice, checked as ``accounts`` requires (also the reset-by-mail form)."""

    new = PasswordField(_l("New password"), validators=[InputRequired(_l("Enter a new password"))])
    again = PasswordField(_l("New password again"), validators=[InputRequired(_l("Enter the new password again"))])

    def validate_new(self, field):
        try:
            accounts.check_password_strength(field.data or "")
        except accounts.AccountError:
            raise ValidationError(_("The new password needs %(min)s to %(max)s characters and must not start or "
                                    "end with a space", min=accounts.MIN_PASSWORD, max=accounts.MAX_PASSWORD)) from None

    def validate_again(self, field):
        if field.data != self.new.data:
            raise ValidationError(_("The two new passwords do not match"))


class PasswordChangeForm(NewPasswordForm):
    current = PasswordField(_l("Current password"), validators=[InputRequired(_l("Enter your current password")),
                                                                Length(max=accounts.MAX_PASSWORD)])


def _site_id() -> int:
    return current_site().site_id


def _cipher() -> security.TotpCipher:
    return security.TotpCipher.from_instance(current_site().instance)


def _token() -> str | None:
    data = session.get(admin.SESSION_KEY)
    return data.get("s") if isinstance(data, dict) else None


# -- signing in ----------------------------------------------------------------------------------


def sign_in(account: accounts.Account):
    """A fresh session (fixation: nothing from before survives, a new CSRF secret) with its own row."""
    token = security.start_session(_site_id(), account.id, request.remote_addr, request.user_agent.string)
    security.finish_login(_site_id(), account)
    session.clear()
    session[admin.SESSION_KEY] = {"id": account.id, "v": account.session_version, "t": admin._now(), "s": token}


def ask_for_code(account: accounts.Account, target: str):
    """The password was right and the account has 2FA: remember who for a few minutes, ask for the code."""
    session.clear()
    session[PENDING_KEY] = {"id": account.id, "v": account.session_version, "t": admin._now(), "next": target}
    return redirect(url_for("admin_account.login_code"))


def _pending_account() -> accounts.Account | None:
    data = session.get(PENDING_KEY)
    try:
        account_id, version, since = int(data["id"]), int(data["v"]), float(data["t"])
    except (TypeError, KeyError, ValueError):
        return None
    if not 0 <= admin._now() - since < PENDING_SECONDS:
        return None
    with acting_for(_site_id()):
        account = accounts.Account.get_or_none(accounts.Account.id == account_id)
    if account is None or account.session_version != version or account.role not in admin.CONSOLE_ROLES:
        return None
    return account


@bp.route("/login/code", methods=["GET", "POST"])
@limited("login", "10/minute")
def login_code():
    account = _pending_account()
    if account is None:
        session.pop(PENDING_KEY, None)
        flash(_("Please enter your username and password again"), "error")
        return redirect(url_for("admin.login"))
    form = CodeForm()
    if form.validate_on_submit():
        ip = client_ip()
        wait = security.locked_until(_site_id(), account.username, ip)
        if wait is not None:
            form.code.errors.append(security.wait_message(wait))
        elif security.use_second_factor(_site_id(), account.id, form.code.data, _cipher()):
            target = session[PENDING_KEY].get("next") or url_for("admin.home")
            sign_in(account)
            return redirect(admin._safe_next(target))
        else:
            security.record_failure(_site_id(), account.username, ip)
            form.code.errors.append(_("The code is wrong or has already been used"))
    return render_template("admin/account_login_code.html", form=form)


def check_console_session():
    """Before every request with a session cookie: a console login whose row is gone (ended, revoked)
    signs out. Every path, since plugins' console pages may live anywhere; a request without the
    cookie (an anonymous visitor) is left alone: no query, no ``Vary: Cookie``."""
    if current_app.config["SESSION_COOKIE_NAME"] not in request.cookies:
        return
    data = session.get(admin.SESSION_KEY)
    if data is None:
        return
    try:
        account_id = int(data["id"])
    except (TypeError, KeyError, ValueError):
        account_id = None
    token = data.get("s") if isinstance(data, dict) else None
    if account_id is None or not security.session_alive(_site_id(), account_id, token):
        session.pop(admin.SESSION_KEY, None)


# -- 账号安全 --------------------------------------------------------------------------------------


def _qr_svg(uri: str) -> Markup:
    # segno writes only path data built from the bits and our fixed attributes: no text from the URI.
    return Markup(segno.make(uri, error="m").svg_inline(scale=5, border=2, dark="#1f2328", light="#fff"))


@bp.get("/account")
@admin.operator_required
def overview():
    return _render_overview()


class EmailForm(FlaskForm):
    email = StringField(_l("E-mail (for password resets)"), validators=[Length(max=254)])

    def validate_email(self, field):
        from .mail import is_email

        field.data = (field.data or "").strip().lower()
        if field.data and not is_email(field.data):
            raise ValidationError(_("Not an e-mail address"))


def _render_overview(password_form=None, email_form=None, **extra):
    account, site_id = g.operator, _site_id()
    token = _token()
    sessions = security.list_sessions(site_id, account.id)
    return render_template(
        "admin/account_security.html", account=account,
        two_factor=security.two_factor_enabled(site_id, account.id),
        codes_left=security.recovery_codes_left(site_id, account.id),
        sessions=sessions, current={row.id for row in sessions if security.is_current(row, token)},
        action=admin.ActionForm(formdata=None), code_form=CodeForm(formdata=None),
        password_form=password_form or PasswordChangeForm(formdata=None),
        email_form=email_form or EmailForm(formdata=None, data={"email": account.email}),
        min_password=accounts.MIN_PASSWORD, **extra)


@bp.post("/account/2fa/start")
@admin.operator_required
def two_factor_start():
    if admin.ActionForm().validate_on_submit():
        try:
            security.begin_setup(_site_id(), g.operator, _cipher())
        except security.SecurityError as exc:
            flash(str(exc), "error")
            return redirect(url_for("admin_account.overview"))
        return redirect(url_for("admin_account.two_factor_setup"))
    return redirect(url_for("admin_account.overview"))


@bp.route("/account/2fa/setup", methods=["GET", "POST"])
@admin.operator_required
def two_factor_setup():
    secret = security.pending_secret(_site_id(), g.operator.id, _cipher())
    if secret is None:
        return redirect(url_for("admin_account.overview"))
    form = CodeForm()
    if form.validate_on_submit():
        try:
            codes = security.confirm_setup(_site_id(), g.operator.id, form.code.data, _cipher())
        except security.SecurityError as exc:
            form.code.errors.append(str(exc))
        else:
            # Shown in this answer only (no-store); the database keeps digests.
            return render_template("admin/account_recovery_codes.html", codes=codes, just_enabled=True)
    uri = security.provisioning_uri(secret, g.operator.username, current_site().config.name)
    return render_template("admin/account_2fa_setup.html", form=form, qr=_qr_svg(uri), secret=secret)


@bp.post("/account/2fa/disable")
@admin.operator_required
def two_factor_disable():
    form = CodeForm()
    if form.validate_on_submit():
        try:
            security.disable(_site_id(), g.operator.id, form.code.data, _cipher())
        except security.SecurityError as exc:
            flash(str(exc), "error")
        else:
            flash(_("Two-step verification is off"), "ok")
    else:
        flash(_("Enter the verification code"), "error")
    return redirect(url_for("admin_account.overview"))


@bp.post("/account/recovery-codes")
@admin.operator_required
def recovery_codes():
    form = CodeForm()
    if form.validate_on_submit():
        if security.use_totp(_site_id(), g.operator.id, form.code.data, _cipher()):
            codes = security.regenerate_recovery_codes(_site_id(), g.operator.id, _cipher())
            return render_template("admin/account_recovery_codes.html", codes=codes, just_enabled=False)
        flash(_("The code is wrong or has already been used"), "error")
    return redirect(url_for("admin_account.overview"))


@bp.post("/account/sessions/<session_id>/end")
@admin.operator_required
def end_session(session_id):
    if admin.ActionForm().validate_on_submit():
        if not security.end_session(_site_id(), g.operator.id, session_id[:64]):
            abort(404)  # not a session of this account (or already over): nothing to end here
        flash(_("That session is signed out"), "ok")
    return redirect(url_for("admin_account.overview"))


@bp.post("/account/sessions/end-others")
@admin.operator_required
def end_other_sessions():
    if admin.ActionForm().validate_on_submit():
        ended = security.end_other_sessions(_site_id(), g.operator.id, _token())
        flash(_n("Signed out %(num)d other session", "Signed out %(num)d other sessions", ended), "ok")
    return redirect(url_for("admin_account.overview"))


@bp.post("/account/password")
@admin.operator_required
def change_password():
    form = PasswordChangeForm()
    if form.validate_on_submit():
        if not accounts.verify_password(form.current.data, g.operator.password_hash):
            form.current.errors.append(_("The current password is wrong"))
        else:
            # Every session ends with the old password (version and rows); this browser gets a fresh one.
            changed = accounts.set_password(_site_id(), g.operator.username, form.new.data)
            sign_in(changed)
            flash(_("Password changed; all other sessions are signed out"), "ok")
            return redirect(url_for("admin_account.overview"))
    return _render_overview(password_form=form), 200


@bp.post("/account/email")
@admin.operator_required
def change_email():
    form = EmailForm()
    if not form.validate_on_submit():
        return _render_overview(email_form=form), 400
    with acting_for(_site_id()):
        accounts.Account.update(email=form.email.data).where(accounts.Account.id == g.operator.id).execute()
    flash(_("E-mail saved") if form.email.data else _("E-mail removed: resets by mail are off"), "ok")
    return redirect(url_for("admin_account.overview"))


# -- plugin ----------------------------------------------------------------------------------------


@hookimpl
def admin_menu(site):
    return [(_l("Account security"), "admin_account.overview")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.before_request(check_console_session)
    app.register_blueprint(bp)
