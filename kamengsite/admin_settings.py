"""店铺设置 (/admin/settings): a site's name, tagline, logo, language and time zone (a core plugin).

What a new owner changes first, in one form. The values live in the site's ``site.toml``,
written through the site registry (validated first, written atomically); the site's app is
rebuilt on its next request, so the storefront shows the change at once. The logo is an
uploaded image, checked and re-encoded by ``assets.store_image`` like every image of the site.
Staff need the ``design`` area (``permissions.py``).
"""

from __future__ import annotations

import zoneinfo

from flask import flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, SelectField, StringField
from wtforms.validators import DataRequired, Length, ValidationError

from . import admin, assets, opening
from .app import current_site
from .errors import ConfigError
from .hookspecs import hookimpl
from .i18n import LOCALE_NAMES, _, _l

bp = admin.console_blueprint("admin_settings", __name__, "/admin/settings")

#: Time zones offered first; any IANA name is accepted.
COMMON_TIMEZONES = ("Asia/Shanghai", "Asia/Hong_Kong", "Asia/Taipei", "Asia/Singapore", "Asia/Tokyo", "UTC",
                    "Europe/London", "America/New_York", "America/Los_Angeles")


def _known_timezone(form, field):
    try:
        zoneinfo.ZoneInfo(field.data or "")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(_("Unknown time zone: use a name like Asia/Shanghai")) from None


class SettingsForm(FlaskForm):
    name = StringField(_l("Shop name"), validators=[DataRequired(_l("Enter the shop's name")), Length(max=60)])
    tagline = StringField(_l("Tagline"), validators=[Length(max=200)])
    logo = FileField(_l("Logo (PNG, JPEG, WebP or GIF, up to 5 MB)"))
    remove_logo = BooleanField(_l("Remove the logo"))
    locale = SelectField(_l("Language of the shop"), choices=[admin._option(code, name) for code, name in LOCALE_NAMES.items()])
    timezone = StringField(_l("Time zone"), validators=[DataRequired(), Length(max=64), _known_timezone])


def _store_logo(upload) -> str:
    return assets.store_image(current_site().config.path, upload.read(), upload.filename)


@bp.route("/", methods=["GET", "POST"])
@admin.operator_required
def index():
    config = current_site().config
    form = SettingsForm(data={"name": config.name, "tagline": config.tagline, "locale": config.locale,
                              "timezone": config.timezone})
    if form.validate_on_submit():
        changes = {"name": form.name.data.strip(), "tagline": (form.tagline.data or "").strip(),
                   "locale": form.locale.data, "timezone": form.timezone.data.strip()}
        try:
            if form.remove_logo.data:
                changes["logo"] = ""
            elif form.logo.data:
                changes["logo"] = _store_logo(form.logo.data)
            opening.registry_for(current_site().instance).update(config.slug, **changes)
        except ConfigError as exc:
            form.logo.errors.append(getattr(exc, "reason", None) or str(exc))
        else:
            flash(_("Saved: the shop shows the new settings now"), "ok")
            return redirect(url_for("admin_settings.index"))
    return render_template("admin/settings.html", form=form, logo=config.logo, timezones=COMMON_TIMEZONES), \
        400 if form.errors else 200


@hookimpl
def admin_menu(site):
    return [(_l("Shop settings"), "admin_settings.index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
