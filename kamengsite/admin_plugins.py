"""The console's Plugins page (a core plugin, on every site): turn plugins on and off, edit their settings.

An owner (or the operator, on the main site) sees the installed site plugins — payment
channels are instance-wide and configured by the operator, so they are not listed — with
whether each is on for this site, a switch, and a form built from the plugin's
``plugin_settings_schema``. Both write the site's own ``site.toml`` (``plugins = [...]``,
``[settings.<plugin>]``) through the site registry: validated first, written atomically,
and every app process rebuilds the site on its next request. Secrets (``writeOnly``) are
never shown back; left empty they keep their value; ``env:NAME`` names an environment
variable. On the main site the page also lists plugins that failed to load or raised in a hook.
"""

from __future__ import annotations

import json
import re

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import BooleanField, Field, IntegerField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import NumberRange, Optional

from . import admin, opening
from .app import current_site
from .errors import ConfigError, KamengsiteError
from .hookspecs import hookimpl
from .i18n import _, _l
from .plugin_settings import ENV_PREFIX, check_settings, secret_keys, with_defaults
from .plugins import recent_failures

bp = Blueprint("admin_plugins", __name__, url_prefix="/admin/plugins")
bp.after_request(admin._console_headers)
bp.context_processor(admin._console_context)


def _host():
    return current_app.extensions["kamengsite.plugins"]


def site_plugins() -> list[str]:
    """Installed plugins a site may switch on: all but the payment channels (instance-wide)."""
    host = _host()
    channel_plugins = {impl.plugin_name for impl in host.pm.hook.payment_channels.get_hookimpls()}
    return [name for name in host.names() if name not in channel_plugins]


def _registry():
    return opening.registry_for(current_site().instance)


def _raw_settings(name: str) -> dict:
    return dict((current_site().config.settings or {}).get(name) or {})


# -- the settings form, built from a JSON schema ----------------------------------------------


def settings_form(schema: dict, stored: dict, formdata=None):
    """A WTForms form with one field per schema property, filled from ``stored`` (secrets left empty)."""
    secrets_ = secret_keys(schema)
    values = with_defaults(schema, stored)

    class SettingsForm(FlaskForm):
        pass

    for key, prop in schema.get("properties", {}).items():
        setattr(SettingsForm, key, _field_for(key, prop, key in secrets_))
    form = SettingsForm(formdata=formdata)
    if formdata is None:
        for key, field in form._fields.items():
            if key == "csrf_token" or key in secrets_:
                continue
            value = values.get(key)
            field.data = json.dumps(value, ensure_ascii=False, indent=1) if _is_json(schema["properties"][key]) \
                and value is not None else value
    return form


def _is_json(prop: dict) -> bool:
    """Objects and arrays a friendlier field cannot show: edited as JSON text."""
    return prop.get("type") in ("array", "object") and not (_is_list(prop) or _is_table(prop))


_SCALARS = ("string", "integer")


def _is_list(prop: dict) -> bool:
    """An array of numbers or words (distribution rates, keywords): one comma-separated line."""
    return prop.get("type") == "array" and (prop.get("items") or {}).get("type") in _SCALARS


def _is_table(prop: dict) -> bool:
    """An array of flat objects (member levels): a table, one row per item."""
    items = prop.get("items") or {}
    columns = items.get("properties") or {}
    return (prop.get("type") == "array" and items.get("type") == "object" and bool(columns)
            and all((c.get("type") in _SCALARS + ("boolean",)) for c in columns.values()))


def _whole(text: str, where: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,12}", text):
        raise ValueError(_("%(where)s must be a whole number", where=where))
    return int(text)


class ListField(Field):
    """``10, 5`` ⇄ ``[10, 5]`` (Chinese commas and spaces too)."""

    def __init__(self, label=None, validators=None, item_type="string", **kwargs):
        super().__init__(label, validators, **kwargs)
        self.item_type = item_type

    def _value(self):
        return ", ".join(str(v) for v in self.data or [])

    def process_formdata(self, valuelist):
        parts = [p for p in re.split(r"[,，、\s]+", valuelist[0] if valuelist else "") if p]  # i18n: keep
        if self.item_type == "integer":
            self.data = [_whole(p, _("Item %(n)s", n=i)) for i, p in enumerate(parts, 1)]
        else:
            self.data = parts

    def __call__(self, **kwargs):
        return Markup('<input type="text" name="{}" value="{}" placeholder="{}">').format(
            self.name, self._value(), _("Separate with commas"))


class TableField(Field):
    """An array of flat objects as a table of inputs; every cell input is named after the field, row by row."""

    BLANK_ROWS = 2

    def __init__(self, label=None, validators=None, columns=None, **kwargs):
        super().__init__(label, validators, **kwargs)
        self.columns = columns or {}

    def process_formdata(self, valuelist):
        width = len(self.columns)
        rows = []
        for start in range(0, len(valuelist) - width + 1, width):
            cells = [v.strip() for v in valuelist[start:start + width]]
            kinds = [column.get("type") for column in self.columns.values()]
            if not any(cell for cell, kind in zip(cells, kinds) if kind != "boolean"):
                continue  # a blank row (its yes/no selects say nothing on their own): nothing to keep
            row = {}
            for (key, column), cell in zip(self.columns.items(), cells):
                where = _("Row %(n)s “%(column)s”", n=len(rows) + 1, column=column.get("title") or key)
                if column.get("type") == "integer":
                    if cell:
                        row[key] = _whole(cell, where)
                elif column.get("type") == "boolean":
                    row[key] = cell == "1"
                elif cell:
                    row[key] = cell
            rows.append(row)
        self.data = rows

    def __call__(self, **kwargs):
        head = Markup("").join(Markup("<th>{}</th>").format(c.get("title") or k) for k, c in self.columns.items())
        body = Markup("")
        for row in list(self.data or []) + [{}] * self.BLANK_ROWS:
            cells = Markup("")
            for key, column in self.columns.items():
                value = row.get(key, "")
                if column.get("type") == "boolean":
                    cells += Markup('<td><select name="{}"><option value="0">{}</option>'
                                    '<option value="1"{}>{}</option></select></td>').format(
                        self.name, _("No"), Markup(" selected") if value is True else "", _("Yes"))
                else:
                    cells += Markup('<td><input name="{}" value="{}"></td>').format(self.name, value)
            body += Markup("<tr>{}</tr>").format(cells)
        return Markup('<table class="settings-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>'
                      '<small class="hint">{}</small>').format(
            head, body, _("Leave a whole row empty to delete it; save to get more empty rows."))


def _field_for(key: str, prop: dict, secret: bool):
    label = prop.get("title") or key
    description = prop.get("description", "")
    kind = prop.get("type")
    if secret:
        return PasswordField(label, description=description or _(
            "Leave empty to keep the current value; env:NAME refers to an environment variable"))
    if "enum" in prop:
        names = prop.get("enumNames") or [str(v) for v in prop["enum"]]  # labels for owners, as rjsf reads them
        return SelectField(label, description=description,
                           choices=[admin._option(value, name) for value, name in zip(prop["enum"], names)],
                           coerce=type(prop["enum"][0]) if prop["enum"] else str)
    if kind == "boolean":
        return BooleanField(label, description=description)
    if kind == "integer":
        return IntegerField(label, description=description, validators=[
            Optional(), NumberRange(min=prop.get("minimum"), max=prop.get("maximum"),
                                    message=_("Out of the allowed range"))])
    if _is_list(prop):
        return ListField(label, description=description, item_type=prop["items"]["type"])
    if _is_table(prop):
        return TableField(label, description=description, columns=prop["items"]["properties"])
    if _is_json(prop):
        return TextAreaField(label, description=description or _("JSON format"))
    return StringField(label, description=description)


def submitted_settings(schema: dict, form, stored: dict) -> dict:
    """The settings a submitted form says, as they will be written (secrets kept when left empty).

    Raises ConfigError naming the field when a JSON field does not parse.
    """
    secrets_ = secret_keys(schema)
    values = {}
    for key, prop in schema.get("properties", {}).items():
        data = form[key].data
        if key in secrets_:
            if data:
                values[key] = data
            elif key in stored:
                values[key] = stored[key]
            continue
        if _is_json(prop):
            try:
                data = json.loads(data) if (data or "").strip() else prop.get("default")
            except ValueError as exc:
                raise ConfigError(_("form"), key, _("Invalid JSON: %(error)s", error=exc)) from None
        if data is None or data == "":
            if "default" in prop:
                continue  # empty means the default
            continue
        values[key] = data
    return values


# -- pages --------------------------------------------------------------------------------------


@bp.get("/")
@admin.operator_required
def index():
    enabled = set(current_site().config.plugins)
    schemas = _host().settings_schemas()
    rows = [{"name": name, "enabled": name in enabled, "configurable": name in schemas,
             "version": _version(name)} for name in site_plugins()]
    failures = recent_failures() if admin.is_main_site() else []
    return render_template("admin/plugins.html", rows=rows, toggle_form=admin.ActionForm(),
                           broken=_host().broken if admin.is_main_site() else {}, failures=failures)


def _version(name: str) -> str:
    plugin = _host().pm.get_plugin(name)
    from importlib.metadata import PackageNotFoundError, version

    package = (getattr(plugin, "__name__", "") or "").split(".")[0].replace("_", "-")
    try:
        return version(package)
    except (PackageNotFoundError, ValueError):
        return ""


@bp.post("/<name>/toggle")
@admin.operator_required
def toggle(name):
    if name not in site_plugins():
        abort(404)
    form = admin.ActionForm()
    if not form.validate_on_submit():
        abort(400)
    site = current_site()
    plugins = list(site.config.plugins)
    on = name not in plugins
    plugins = plugins + [name] if on else [p for p in plugins if p != name]
    try:
        _registry().update(site.slug, plugins=plugins)
    except KamengsiteError as exc:
        flash(_("Not turned on: %(error)s", error=exc) if on else _("Not turned off: %(error)s", error=exc), "error")
    else:
        flash(_("Plugin %(name)s turned on", name=name) if on else _("Plugin %(name)s turned off", name=name), "ok")
    return redirect(url_for(".index"))


@bp.route("/<name>/settings", methods=["GET", "POST"])
@admin.operator_required
def settings(name):
    schema = _host().settings_schemas().get(name)
    if name not in site_plugins() or schema is None:
        abort(404)
    stored = _raw_settings(name)
    form = settings_form(schema, stored, formdata=None)
    if request.method == "POST":
        form = settings_form(schema, stored, formdata=request.form)
        if form.validate_on_submit() and _save(name, schema, form, stored):
            flash(_("Settings saved"), "ok")
            return redirect(url_for(".settings", name=name))
    secrets_set = {k for k in secret_keys(schema) if stored.get(k)}
    env_refs = {k for k in secrets_set if isinstance(stored[k], str) and stored[k].startswith(ENV_PREFIX)}
    return render_template("admin/plugin_settings.html", name=name, form=form, schema=schema,
                           secrets_set=secrets_set, env_refs=env_refs,
                           enabled=name in current_site().config.plugins)


def _save(name: str, schema: dict, form, stored: dict) -> bool:
    site = current_site()
    try:
        values = submitted_settings(schema, form, stored)
        check_settings(schema, values, where=_("form"), plugin=name)  # env references must resolve too
        settings_ = dict(site.config.settings or {})
        settings_[name] = values
        _registry().update(site.slug, settings=settings_)
    except ConfigError as exc:
        path = exc.key.removeprefix(f"settings.{name}.")
        field = path.split(".")[0]
        reason = _for_owner(exc, path)
        if field in form._fields and field != "csrf_token":
            form[field].errors = list(form[field].errors) + [reason]
        else:
            flash(_("Not saved: %(error)s", error=reason), "error")
        return False
    except KamengsiteError as exc:
        flash(_("Not saved: %(error)s", error=exc), "error")
        return False
    return True


_RULES = {  # a JSON-schema rule for an owner; %(limit)s is the rule's value
    "required": _l("Required"), "maximum": _l("May not be more than %(limit)s"),
    "minimum": _l("May not be less than %(limit)s"), "exclusiveMaximum": _l("Must be less than %(limit)s"),
    "exclusiveMinimum": _l("Must be more than %(limit)s"), "maxLength": _l("At most %(limit)s characters"),
    "minLength": _l("At least %(limit)s characters"), "maxItems": _l("At most %(limit)s items"),
    "minItems": _l("At least %(limit)s items"), "pattern": _l("Invalid format"), "enum": _l("Not one of the choices"),
    "type": _l("Wrong type"), "uniqueItems": _l("Has duplicate items"), "additionalProperties": _l("Unknown setting"),
}


def _for_owner(exc: ConfigError, path: str) -> str:
    """A schema error for the owner: which rule, where inside a list ("Row 2 “Name”: …")."""
    rule = getattr(exc, "validator", None)
    text = str(_RULES[rule]) % {"limit": getattr(exc, "limit", "")} if rule in _RULES else exc.reason
    parts = path.split(".")[1:]  # below the field itself
    if len(parts) >= 1 and parts[0].isdigit():
        if len(parts) > 1:
            return _("Row %(n)s “%(column)s”: %(error)s", n=int(parts[0]) + 1, column=parts[1], error=text)
        return _("Item %(n)s: %(error)s", n=int(parts[0]) + 1, error=text)
    return text


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(bp)
