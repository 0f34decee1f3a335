"""员工 (/admin/staff): a site's operator adds staff accounts and chooses what each may do.

A core plugin, on every site's console. Only the site's operators (role ``operator``) see it;
staff accounts are accounts of this site only, each with its areas (``permissions.AREAS``).
A new staff account gets a generated password, shown once to the operator, who passes it on;
"reset password" makes a new one and signs the account out everywhere. Every page here also
installs the area check (``permissions.enforce``) that keeps staff inside their areas.
"""

from __future__ import annotations

import peewee
from flask import abort, flash, g, redirect, render_template, url_for
from flask_wtf import FlaskForm
from wtforms import SelectMultipleField, StringField, widgets
from wtforms.validators import InputRequired, Length, Optional, ValidationError

from . import accounts, admin, permissions
from .mail import is_email
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l
from .tenancy import acting_for

bp = admin.console_blueprint("admin_staff", __name__, "/admin/staff")


class AreasField(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


def email_address(form, field):
    if field.data and not is_email(field.data):
        raise ValidationError(_("Not an e-mail address"))


def _area_choices():
    return [(key, str(label)) for key, label in permissions.AREAS.items()]


class StaffForm(FlaskForm):
    username = StringField(_l("Username"), validators=[InputRequired(_l("Enter a username")), Length(max=32)])
    email = StringField(_l("E-mail (for password resets)"), validators=[Optional(), Length(max=254), email_address])
    areas = AreasField(_l("May use"))

    def validate_username(self, field):
        try:
            field.data = accounts.check_username(field.data)
        except accounts.AccountError:
            raise ValidationError(_("2–32 characters: lowercase letters, digits, '_', '.', '-'")) from None


class AreasForm(FlaskForm):
    email = StringField(_l("E-mail (for password resets)"), validators=[Optional(), Length(max=254), email_address])
    areas = AreasField(_l("May use"))


class ActionForm(FlaskForm):
    pass


def _site_id() -> int:
    return current_site().site_id


def _staff_or_404(account_id: int) -> accounts.Account:
    with acting_for(_site_id()):
        found = accounts.Account.get_or_none((accounts.Account.id == account_id) & (accounts.Account.role == "staff"))
    if found is None:
        abort(404)
    return found


def operators_only(view):
    """Staff management is for the site's operators; a staff account gets a 403 (also from ``enforce``)."""
    import functools

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if g.operator.role != "operator":
            abort(403)
        return view(*args, **kwargs)

    return wrapper


def _accounts() -> list[accounts.Account]:
    with acting_for(_site_id()):
        return list(accounts.Account.select().order_by(accounts.Account.role, accounts.Account.username))


def _save_areas(account_id: int, form):
    with acting_for(_site_id()):
        accounts.Account.update(permissions=permissions.format_areas(form.areas.data or ()),
                                email=(form.email.data or "").strip().lower()).where(
            accounts.Account.id == account_id).execute()


def _render(form=None, status=200, new_password=None, created=None):
    form = form or StaffForm(formdata=None)
    form.areas.choices = _area_choices()
    return render_template("admin/staff.html", form=form, rows=_accounts(), areas=permissions.AREAS,
                           parse_areas=permissions.parse_areas, action=ActionForm(formdata=None),
                           new_password=new_password, created=created), status


@bp.get("/")
@admin.operator_required
@operators_only
def index():
    return _render()


@bp.post("/")
@admin.operator_required
@operators_only
def create():
    form = StaffForm()
    form.areas.choices = _area_choices()
    if not form.validate_on_submit():
        return _render(form, 400)
    password = accounts.generate_password()
    try:
        account = accounts.create_account(_site_id(), form.username.data, password, role="staff")
    except accounts.AccountError:
        form.username.errors.append(_("An account with this username already exists"))
        return _render(form, 400)
    _save_areas(account.id, form)
    return _render(new_password=password, created=account.username)


@bp.post("/<int:account_id>")
@admin.operator_required
@operators_only
def update(account_id):
    staff = _staff_or_404(account_id)
    form = AreasForm()
    form.areas.choices = _area_choices()
    if not form.validate_on_submit():
        flash(_("Nothing changed: %(errors)s", errors="; ".join(
            str(e) for errors in form.errors.values() for e in errors)), "error")
        return redirect(url_for("admin_staff.index"))
    _save_areas(staff.id, form)
    flash(_("Saved what %(name)s may use", name=staff.username), "ok")
    return redirect(url_for("admin_staff.index"))


@bp.post("/<int:account_id>/password")
@admin.operator_required
@operators_only
def reset_password(account_id):
    staff = _staff_or_404(account_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    password = accounts.generate_password()
    accounts.set_password(_site_id(), staff.username, password)  # ends every session of the account
    return _render(new_password=password, created=staff.username)


@bp.post("/<int:account_id>/delete")
@admin.operator_required
@operators_only
def delete(account_id):
    staff = _staff_or_404(account_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    accounts.end_sessions(_site_id(), staff.id)
    with acting_for(_site_id()):
        try:
            accounts.Account.delete().where(accounts.Account.id == staff.id).execute()
        except peewee.IntegrityError:
            abort(409)
    flash(_("Removed %(name)s", name=staff.username), "ok")
    return redirect(url_for("admin_staff.index"))


# -- plugin ----------------------------------------------------------------------------------------


@hookimpl
def admin_menu(site):
    return [(_l("Staff"), "admin_staff.index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.before_request(permissions.enforce)
    app.jinja_env.globals["can"] = permissions.can
    app.register_blueprint(bp)
