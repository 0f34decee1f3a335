"""The member pages of every site: a core plugin.

* ``/member/register``, ``/member/login``, ``POST /member/logout`` — Flask-WTF forms (CSRF),
  rate limited per site and IP like the storefront's forms.
* ``/member/`` — the account page: my orders on this site, wallet balance and statement.
* ``/member/order/<order_no>`` — opens one of my orders on the order page (keys included),
  from any browser I am signed in on.

The session holds the member id, its ``session_version`` and the login time; every
request re-reads the member, so a log-out elsewhere, a disabled member or a member of
another site ends the session at once. Other modules ask ``current_member()`` /
``current_member_id()``.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import (Blueprint, abort, flash, g, has_request_context, redirect, render_template, request, session,
                   url_for)
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import EqualTo, InputRequired, Length, Optional, ValidationError

from . import accounts, members, orders
from .app import current_site
from .catalog import Product
from .hookspecs import hookimpl
from .i18n import _, _l
from .ratelimit import limited

bp = Blueprint("member", __name__, url_prefix="/member")

SESSION_KEY = "member"
SESSION_DAYS = 30
ORDERS_SHOWN = 50
HISTORY_SHOWN = 50
_CACHE = "kamengsite_member"  # flask.g attribute: the member of this request, looked up once


class RegisterForm(FlaskForm):
    email = StringField(_l("Email"), validators=[InputRequired(_l("Please enter your email address")),
                                               Length(max=members.EMAIL_MAX, message=_l("The email address is too long"))])
    display_name = StringField(_l("Nickname (optional)"), validators=[
        Optional(), Length(max=members.DISPLAY_NAME_MAX, message=members.NICKNAME_TOO_LONG)])
    password = PasswordField(_l("Password (at least %(min)s characters)", min=accounts.MIN_PASSWORD),
                             validators=[InputRequired(_l("Please choose a password"))])
    confirm = PasswordField(_l("Repeat the password"), validators=[InputRequired(_l("Please enter the password again")),
                                                               EqualTo("password", message=_l("The two passwords do not match"))])

    def validate_email(self, field):
        try:
            members.check_email(field.data)  # normalised by register(); the form shows what was typed
        except members.MemberError as exc:
            raise ValidationError(str(exc)) from None

    def validate_password(self, field):
        try:
            members.check_password(field.data)
        except members.MemberError as exc:
            raise ValidationError(str(exc)) from None


class LoginForm(FlaskForm):
    email = StringField(_l("Email"), validators=[InputRequired(_l("Please enter your email address")),
                                               Length(max=members.EMAIL_MAX, message=_l("The email address is too long"))])
    password = PasswordField(_l("Password"), validators=[InputRequired(_l("Enter your password")),
                                                         Length(max=accounts.MAX_PASSWORD, message=_l("The password is too long"))])


class ActionForm(FlaskForm):
    """A form with nothing but its CSRF token (log-out)."""


# -- who is signed in --------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _site_id() -> int:
    return current_site().site_id


def _member_from_session():
    data = session.get(SESSION_KEY)
    if data is None:
        return None
    try:
        member_id, version, since = int(data["id"]), int(data["v"]), float(data["t"])
    except (TypeError, KeyError, ValueError):
        member_id = None
    fresh = member_id is not None and 0 <= _now() - since < SESSION_DAYS * 86400
    member = members.get_member(_site_id(), member_id) if fresh else None
    if member is None or not member.active or member.session_version != version:
        session.pop(SESSION_KEY, None)  # logged out elsewhere, disabled, expired, or not of this site
        return None
    return member


def current_member():
    """The signed-in, active member of this site for this request, or None (also outside a request)."""
    if not has_request_context():
        return None
    if not hasattr(g, _CACHE):
        setattr(g, _CACHE, _member_from_session())
    return getattr(g, _CACHE)


def current_member_id() -> int | None:
    member = current_member()
    return member.id if member is not None else None


def _check_session():
    """Every request: a stale member session is dropped before any view sees it."""
    if SESSION_KEY in session and request.endpoint != "static":
        current_member()


def _log_in(member):
    from .storefront import OWNED_ORDERS

    # The orders this browser placed as a guest stay visible (they were its own already).
    owned = [no for no in session.get(OWNED_ORDERS, []) if isinstance(no, str)]
    session.clear()  # fixation: nothing else from before the login survives; a fresh CSRF token too
    session[SESSION_KEY] = {"id": member.id, "v": member.session_version, "t": _now()}
    if owned:
        session[OWNED_ORDERS] = owned
    setattr(g, _CACHE, member)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if target:
        parts = urlsplit(target)
        if (not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//")
                and "\\" not in target):
            return target
    return url_for("member.account")


# -- pages ---------------------------------------------------------------------------------


def _layout() -> dict:
    """The ``member`` page layout's sections around the page (login, register and account share it)."""
    from .storefront import page_layout  # storefront imports this module

    parts = page_layout("member")
    return {"layout_before": parts["layout_before"], "layout_after": parts["layout_after"]}


@bp.after_request
def _private(response):
    response.headers["Cache-Control"] = "no-store"  # orders and balances of one person
    return response


@bp.route("/register", methods=["GET", "POST"])
@limited("member_register", "5/minute")
def register():
    if request.method == "GET" and current_member() is not None:
        return redirect(url_for("member.account"))
    form = RegisterForm()
    if form.validate_on_submit():
        from . import risk  # many accounts from one IP: refused (kamengsite/risk.py)

        refusal = risk.signup_refusal(_site_id(), request.remote_addr or "")
        try:
            if refusal:
                raise members.MemberError(refusal)
            member = members.register(_site_id(), form.email.data, form.password.data, form.display_name.data)
        except members.MemberError as exc:
            getattr(form, exc.field or "email", form.email).errors.append(str(exc))
        else:
            risk.record_signup(_site_id(), request.remote_addr or "")
            _log_in(member)
            flash(_("Welcome! Your account is ready."), "ok")
            return redirect(_safe_next(request.args.get("next")))
    return render_template("member/register.html", form=form, **_layout())


@bp.route("/login", methods=["GET", "POST"])
@limited("member_login", "10/minute")
def login():
    if request.method == "GET" and current_member() is not None:
        return redirect(_safe_next(request.args.get("next")))
    form = LoginForm()
    if form.validate_on_submit():
        member = members.authenticate(_site_id(), form.email.data, form.password.data)
        if member is not None:
            _log_in(member)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors.append(_("Wrong email or password"))
    return render_template("member/login.html", form=form, **_layout())


@bp.post("/logout")
def logout():
    form = ActionForm()
    if form.validate_on_submit():
        member = current_member()
        if member is not None:
            members.end_sessions(_site_id(), member.id)  # copies of this cookie die with it
        session.clear()
        setattr(g, _CACHE, None)
        flash(_("You have signed out"), "ok")
    return redirect(url_for("storefront.home"))


@bp.get("/")
def account():
    member = current_member()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    site_id = _site_id()
    my_orders = list(orders.Order.select(orders.Order, Product.name.alias("product_name"))
                     .join(Product).where(orders.Order.member_id == member.id)
                     .order_by(orders.Order.id.desc()).limit(ORDERS_SHOWN).objects())
    return render_template("member/account.html", member=member, orders=my_orders,
                           balance_fen=members.wallet_balance(site_id, member.id),
                           history=members.wallet_history(site_id, member.id, limit=HISTORY_SHOWN),
                           logout_form=ActionForm(formdata=None), **_layout())


@bp.get("/order/<order_no>")
def order(order_no):
    """One of my orders, opened on the order page with its keys, from any browser I am signed in on."""
    from .storefront import _remember

    member = current_member()
    if member is None:
        return redirect(url_for("member.login", next=request.path))
    found = orders.find_order(order_no, site_id=_site_id())
    if found is None or found.member_id != member.id:
        abort(404)
    _remember(order_no)
    return redirect(url_for("storefront.order", order_no=order_no))


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(bp)
    app.before_request(_check_session)  # after the site scope is entered (registered earlier)
    app.context_processor(lambda: {"current_member": current_member})
