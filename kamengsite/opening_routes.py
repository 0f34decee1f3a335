"""``/open``: apply for a sub-site, or open one at once by paying from the wallet. A core plugin.

Served on the main site, and on a sub-site whose level may open child sites (the new
site is then opened under it; checked per request, so a level change applies at once).
The work is done by ``opening.py``; this module is the form and its pages.
"""

from __future__ import annotations

import secrets

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import EqualTo, InputRequired, Length, Regexp

from . import opening
from .admin import _option  # WTForms' SelectChoice where it exists
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l, _n, format_money
from .levels import all_levels, get_level
from .models import Site
from .ratelimit import limited

bp = Blueprint("opening", __name__)


class OpenForm(FlaskForm):
    slug = StringField(_l("Sub-domain"), validators=[InputRequired(_l("Please enter a sub-domain")),
                                                     Length(max=32, message=_l("At most 32 characters"))])
    name = StringField(_l("Shop name"), validators=[InputRequired(_l("Please enter a shop name")),
                                                    Length(max=60, message=_l("At most 60 characters"))])
    template = SelectField(_l("Site template"), validate_choice=False)
    level = SelectField(_l("Sub-site level"), validate_choice=False)
    contact = StringField(_l("Contact (email or mobile number)"), validators=[
        InputRequired(_l("Please enter an email address or mobile number")), Length(max=120),
        Regexp(opening.CONTACT_RE, message=_l("Please enter a valid email address or 11-digit mobile number"))])
    real_name = StringField(_l("Real name"), validators=[Length(max=60, message=_l("At most 60 characters"))])
    business_info = TextAreaField(_l("Business information (name, unified social credit code)"),
                                  validators=[Length(max=500, message=_l("At most 500 characters"))])
    username = StringField(_l("Console username"), validators=[InputRequired(_l("Please enter a console username")),
                                                                Length(max=32)])
    password = PasswordField(_l("Console password (at least 10 characters)"),
                             validators=[InputRequired(_l("Please set a console password")), Length(max=256)])
    password2 = PasswordField(_l("Confirm password"), validators=[
        EqualTo("password", message=_l("The two passwords do not match"))])
    pay_now = BooleanField(_l("Pay the opening fee from my balance and open now (self-service levels only; "
                              "members must sign in)"))
    submit_key = HiddenField()


def signed_in_member_id() -> int | None:
    """The main-site member signed in on this request, if members exist on this instance."""
    try:
        from . import member_routes
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.member_routes":
            raise
        return None
    current = getattr(member_routes, "current_member_id", None)
    return current() if current is not None else None


def _registry():
    return opening.registry_for(current_site().instance)


def _main_config():
    registry = _registry()
    if current_site().slug == registry.main_site:
        return current_site().config
    try:
        return registry.load(registry.main_site)
    except Exception:  # noqa: BLE001 - a broken main site folder: the defaults apply
        return None


def _parent_here() -> str | None:
    """None on the main site; this site's slug where its level may open children; else 404."""
    here = current_site()
    if here.slug == here.instance.main_site:
        return None
    site = Site.get_or_none(Site.id == here.site_id)
    level = get_level(site.level) if site else None
    if level is None or not level.may_open_children:
        abort(404)
    return here.slug


def _level_label(level) -> str:
    fee = (_("opening fee ¥%(amount)s", amount=format_money(level.opening_fee_fen)) if level.opening_fee_fen
           else _("no opening fee"))
    term = _n_days(level.term_days) if level.term_days else _("no time limit")
    mode = _("self-service") if level.self_service else _("needs review")
    return _("%(level)s (%(fee)s, %(term)s, %(mode)s)", level=level.name, fee=fee, term=term, mode=mode)


def _n_days(days: int) -> str:
    return _n("%(num)d day", "%(num)d days", days)


@bp.route("/open", methods=["GET", "POST"])
@limited("open", "10/minute")
def open_site():
    parent = _parent_here()
    registry = _registry()
    settings = opening.opening_settings(_main_config())
    form = OpenForm()
    levels = all_levels()
    form.template.choices = [_option(t, t) for t in opening.offered_templates(registry, settings)]
    form.level.choices = [_option(lv.code, _level_label(lv)) for lv in levels]
    if not form.is_submitted():
        form.submit_key.data = secrets.token_urlsafe(24)
    elif form.validate_on_submit():
        application = _submit(form, registry, settings, parent)
        if application is not None:
            return redirect(url_for("opening.status", submit_key=application.submit_key))
    return render_template("opening/open.html", form=form, levels=levels, settings=settings,
                           field_labels=opening.FIELD_LABELS, base_domain=registry.base_domain,
                           member_signed_in=signed_in_member_id() is not None)


def _submit(form: OpenForm, registry, settings, parent):
    """Hand the form to opening.py; None (with the reason on the form) when refused."""
    applicant = {name: getattr(form, name).data for name in (
        "slug", "name", "template", "level", "contact", "real_name", "business_info", "username", "password")}
    common = dict(submit_key=form.submit_key.data or "", settings=settings, parent_slug=parent,
                  applicant_ip=request.remote_addr or "")
    member_id = signed_in_member_id()
    try:
        if form.pay_now.data:
            if member_id is None:
                form.pay_now.errors.append(_("Sign in to your member account to open a site yourself"))
                return None
            return opening.open_self_service(registry, applicant, member_id=member_id, **common)
        return opening.submit_application(registry, applicant, member_id=member_id, **common)
    except opening.OpeningError as exc:
        field = form.slug if exc.field == "slug" else form.submit_key
        field.errors = [*field.errors, str(exc)]
        return None


@bp.get("/open/status/<submit_key>")
def status(submit_key):
    application = opening.find_by_submit_key(submit_key)
    if application is None or application.parent_id != current_site().site_id:  # filed with another site
        abort(404)
    host = f"{application.slug}.{_registry().base_domain}"
    return render_template("opening/status.html", application=application, site_host=host)


@hookimpl
def prepare_site_app(app, site):
    """Every site gets the routes; sub-sites answer them only while their level may open children."""
    app.register_blueprint(bp)
