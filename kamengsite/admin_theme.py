"""The console's page editor and theme pages (a core plugin, on every site): ``/admin/theme/``.

An owner (or the main site's operator, for the main site) edits their own site only: every
view needs a console session of *this* site (``admin._current_operator``: accounts and
session cookies are per site), every write is CSRF-checked (forms carry the token, the
editor's JSON requests send it in ``X-CSRFToken``), page keys are checked against the site's
pages, and every layout is validated on the server (``layouts.save_layout``) — what the
browser sends is never trusted.

- Page editor: the draft of one page (``layouts/<page>.draft.json``, started from the published
  layout or the theme's default on the first change), saved on every change; one section
  re-rendered for the live preview (``storefront.render_section``); publish, discard, undo
  and the published versions with restore (``layout_history``).
- Themes: switch the site's theme (``site.toml``, through the site registry) and list what of the
  owner's content does not fit the new one (``layouts.layout_problems``); the theme-wide settings.
- The preview: a GET of a storefront page with ``?_preview=draft`` from a console session of the
  site shows its drafts (``g.layout_draft``, contract 2) and is never cached.

The editor's script and styles are static files of this blueprint (``/admin/theme/assets/``),
on the site's own host; its pages allow scripts from the site only (no inline script).
"""

from __future__ import annotations

import functools
import re

from flask import (Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request,
                   url_for)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from markupsafe import Markup
from werkzeug.routing import BuildError
from wtforms.validators import ValidationError

from . import admin, assets, layout_history, layouts, opening
from .app import current_site
from .catalog import Category
from .errors import ConfigError, KamengsiteError
from .hookspecs import hookimpl
from .i18n import _, _l, current_locale
from .ratelimit import limited

bp = Blueprint("admin_theme", __name__, url_prefix="/admin/theme",
               static_folder="static/editor", static_url_path="/assets")
bp.context_processor(admin._console_context)  # the layout's log-out form and menu

#: The editor's own policy (contract 5): scripts from this site only, framed by nobody, frames of this site.
EDITOR_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
              "font-src 'self' data:; connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; "
              "form-action 'self'; base-uri 'self'; object-src 'none'")
MAX_JSON = 512 * 1024  # a layout of 100 sections × 50 blocks fits many times over
PAGE_LABELS = {"home": _l("Home page"), "category": _l("Category page"), "product": _l("Product page"),
               "checkout": _l("Checkout page"), "order": _l("Order result page"), "lookup": _l("Order lookup page"),
               "member": _l("Member centre"), "custom": _l("Custom page")}


@bp.after_request
def _editor_headers(response):
    """The console's headers (no-store, no framing), with a policy that lets the editor's own script run."""
    if request.endpoint == "admin_theme.static":
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response  # the editor's script and styles: no secret, may be cached
    admin._console_headers(response)
    response.headers["Content-Security-Policy"] = EDITOR_CSP
    return response


# -- the owner's draft preview (contract 2) --------------------------------------------------------


@bp.before_app_request
def _draft_preview():
    """A storefront GET with ``?_preview=draft`` from a console session of this site shows the drafts."""
    if (request.method == "GET" and request.args.get("_preview") == "draft"
            and not request.path.startswith("/admin/") and admin._current_operator() is not None):
        g.layout_draft = True


@bp.after_app_request
def _preview_not_cached(response):
    if g.get("layout_draft"):
        response.headers["Cache-Control"] = "no-store"
    return response


# -- who, which site, which page ---------------------------------------------------------------------


def _json_operator_required(view):
    """``operator_required`` for the editor's JSON requests: a 401 answer instead of the login page."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        account = admin._current_operator()
        if account is None:
            return jsonify(error=_("Please log in to the console first")), 401
        g.operator = account
        return view(*args, **kwargs)

    return wrapper


def _folder():
    return current_site().config.path


def _theme():
    return current_site().theme


def _who() -> str:
    return g.operator.username


def _page_keys() -> list[str]:
    return layouts.page_keys(_folder())


def _page_key(value) -> str:
    """``value`` if it is one of this site's pages, else a 404 (a key also becomes a file name)."""
    if not isinstance(value, str) or value not in _page_keys():
        abort(404)
    return value


def _page_label(key: str, titles: dict) -> str:
    if key.startswith(layouts.CUSTOM_PREFIX):
        handle = key[len(layouts.CUSTOM_PREFIX):]
        return _("%(title)s (/pages/%(handle)s)", title=titles.get(handle, handle), handle=handle)
    return str(PAGE_LABELS.get(key, key))


def _check_form():
    """A form POST: its CSRF token (else 400)."""
    if not admin.ActionForm().validate_on_submit():
        abort(400)


def _json_body() -> dict:
    """The editor's JSON request, CSRF-checked from its header (the app's CSRFProtect checks it too)."""
    try:
        validate_csrf(request.headers.get("X-CSRFToken", ""))
    except ValidationError:
        raise CSRFError("CSRF token missing or invalid") from None
    if (request.content_length or 0) > MAX_JSON:
        abort(413)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400)
    return body


@bp.errorhandler(CSRFError)
def _csrf_refused(exc):
    if request.is_json or request.accept_mimetypes.best == "application/json":  # the editor's fetch()es
        return jsonify(error=_("The page has expired; reload it and try again")), 400
    return _("The page has expired; reload it and try again"), 400


# -- the layout being edited -------------------------------------------------------------------------


def working_layout(key: str) -> tuple[dict, str, list]:
    """(the layout the editor starts from, where it came from, the problems that made it adjusted).

    The draft, else the published layout, else the theme's default. A stored layout that no longer
    fits the theme (another theme's sections, values out of range) is shown as it can be shown now;
    its file is not changed until the owner saves.
    """
    folder, theme = _folder(), _theme()
    data, source = layout_history.draft(folder, key), "draft"
    if data is None:
        data, source = layout_history.published(folder, key), "published"
    if data is None:
        data, source = layout_history.theme_default(theme, key), "default"
    problems = layouts.validate_layout(theme, key, data)
    if problems:
        shown, _problems = layouts.check_layout(theme.section_types, layouts.page_type(key), data,
                                        f"layouts/{key}.json", strict=False)
        data = layouts.layout_data(shown) if shown is not None else layout_history.theme_default(theme, key)
    return data, source, problems


# -- a schema's words in the page's language ---------------------------------------------------------


def _schema_word(text: str) -> str:
    """One interface text of a schema (written in English) in the page's language; "" stays ""
    (``gettext("")`` would be the catalog's header)."""
    return _(text) if text else text


def shown_schema(stype) -> dict:
    """``stype.describe()`` with its name, labels, infos, options, block and preset names translated
    for this request: the one place a section schema's words are translated for display. Ids,
    defaults and presets' content are unchanged (stored layouts and validation use ids only)."""
    return layouts.map_section_words(stype.describe(), _schema_word)


def shown_settings_groups(theme) -> list:
    """The theme's ``settings_schema`` groups with their words translated for this request."""
    return layouts.map_settings_groups(theme.settings_groups, _schema_word)


def _section_types(kind: str) -> dict:
    """The section types that may be placed on pages of type ``kind``, with their schema (translated)."""
    return {name: shown_schema(stype) for name, stype in sorted(_theme().section_types.items()) if kind in stype.pages}


def _products() -> list:
    from . import storefront

    try:
        return [[p["id"], p["name"]] for p in storefront._listed_products()][:500]
    except Exception:  # noqa: BLE001 - the editor still works without the product list
        current_app.logger.exception("editor: cannot list products")
        return []


def _categories() -> list:
    from . import storefront

    try:
        rows = (Category.select(Category.id, Category.name)
                .where(Category.site.in_(list(storefront.catalog_owners())) & Category.visible)
                .order_by(Category.sort, Category.id).limit(500))
        return [[c.id, c.name] for c in rows]
    except Exception:  # noqa: BLE001
        current_app.logger.exception("editor: cannot list categories")
        return []


def _plugin_sections() -> list:
    from . import storefront

    try:
        return [[s.name, str(s.label)] for s in storefront._site_sections()]  # lazy labels: tojson needs text
    except Exception:  # noqa: BLE001
        return []


def _preview_path(key: str, products: list, categories: list) -> str | None:
    """The storefront page that shows page ``key``, or None when it needs something to show (an order)."""
    try:
        if key == "home":
            return url_for("storefront.home")
        if key == "product":
            return url_for("storefront.product", product_id=products[0][0]) if products else None
        if key == "category":
            return url_for("storefront.category", category_id=categories[0][0]) if categories else None
        if key == "lookup":
            return url_for("storefront.lookup")
        if key == "member":
            return url_for("member.home")
        if key.startswith(layouts.CUSTOM_PREFIX):
            return url_for("storefront.custom_page", handle=key[len(layouts.CUSTOM_PREFIX):])
    except BuildError:
        return None
    return None


# -- the editor ---------------------------------------------------------------------------------------


def editor_messages() -> dict:
    """The words of editor.js in the page's language (it cannot call gettext): ``{key: text}``, with
    ``{name}`` where the script fills in a value. The page renders them as a JSON data block."""
    return {
        "not_saved": _("Not saved: %(error)s", error="{error}"),
        "check_input": _("Check your input"),
        "saving": _("Saving the draft…"),
        "saved": _("Draft saved"),
        "save_failed": _("Saving failed (%(status)s); reload the page and try again", status="{status}"),
        "net_draft": _("Network error: the draft was not saved"),
        "all_plugin_sections": _("All plugin sections"),
        "no_choice": _("(none)"),
        "all_categories": _("(all categories)"),
        "too_many": _("Too many requests; try again later"),
        "failed": _("Failed (%(status)s); reload the page and try again", status="{status}"),
        "uploaded_images": _("Uploaded images"),
        "upload": _("Upload an image"),
        "choose_uploaded": _("Choose an uploaded image"),
        "uploading": _("Uploading…"),
        "uploaded": _("Uploaded"),
        "not_uploaded": _("Not uploaded: %(error)s", error="{error}"),
        "net_upload": _("Network error: the image was not uploaded"),
        "loading": _("Loading…"),
        "no_images": _("No images uploaded yet."),
        "image_chosen": _("Image chosen"),
        "use_image": _("Use image %(n)s (%(name)s)", n="{n}", name="{name}"),
        "delete": _("Delete"),
        "confirm_delete_image": _("Delete this image? This cannot be undone."),
        "image_deleted": _("Image deleted"),
        "not_deleted": _("Not deleted: %(error)s", error="{error}"),
        "net_delete": _("Network error: the image was not deleted"),
        "delete_image": _("Delete image %(n)s", n="{n}"),
        "in_use": _("In use: %(files)s", files="{files}"),
        "list_separator": "、" if current_locale() == "zh_CN" else ", ",  # i18n: keep - the list separator
        "net_list": _("Network error: cannot load the image list"),
        "drag": _("Drag to reorder"),
        "hidden": _("Hidden"),
        "up": _("Move up"),
        "down": _("Move down"),
        "up_named": _("Move up %(name)s", name="{name}"),
        "down_named": _("Move down %(name)s", name="{name}"),
        "show": _("Unhide"),
        "hide": _("Hide"),
        "show_named": _("Unhide %(name)s", name="{name}"),
        "hide_named": _("Hide %(name)s", name="{name}"),
        "delete_named": _("Delete %(name)s", name="{name}"),
        "section_deleted": _("Section “%(name)s” deleted (this can be undone)", name="{name}"),
        "no_settings": _("This section has no settings to adjust."),
        "blocks_count": _("Blocks (%(count)s / %(max)s)", count="{count}", max="{max}"),
        "add_block": _("Add “%(name)s”", name="{name}"),
        "preset_label": _("%(preset)s (%(type)s)", preset="{preset}", type="{type}"),
        "section_added": _("Section “%(name)s” added", name="{name}"),
        "nothing_to_undo": _("Nothing to undo"),
    }


@bp.get("/")
@admin.operator_required
def editor():
    keys = _page_keys()
    key = request.args.get("page", "home")
    if key not in keys:
        abort(404)
    folder = _folder()
    data, source, problems = working_layout(key)
    kind = layouts.page_type(key)
    products, categories = _products(), _categories()
    preview = _preview_path(key, products, categories)
    titles = dict(layouts.custom_pages(folder))
    state = {
        "page": key, "layout": data, "types": _section_types(kind), "products": products,
        "categories": categories, "plugin_sections": _plugin_sections(),
        "preview": f"{preview}?_preview=draft" if preview else "",
        "urls": {"draft": url_for(".save_draft"), "render": url_for(".render")},
    }
    return render_template(
        "admin/theme_editor.html", state=state, page_key=key, pages=[(k, _page_label(k, titles)) for k in keys],
        source=source, problems=problems, versions=layout_history.versions(folder, key),
        undo_depth=layout_history.undo_depth(folder, key), action=admin.ActionForm(),
        csrf=generate_csrf(), custom=key.startswith(layouts.CUSTOM_PREFIX), preview=preview,
        theme_label=_label(_theme()), messages=editor_messages())


def _error_fields(exc: ConfigError) -> dict:
    """Where a ``ConfigError`` of a layout points: its section, block and setting (from its key)."""
    found = {"section": None, "block": None, "setting": None}
    parts = (exc.key or "").split(".")
    for name, value in zip(parts[::2], parts[1::2]):
        found[{"sections": "section", "blocks": "block", "settings": "setting"}.get(name, name)] = value
    return found


REASONS = (  # the validator's words, for an owner (the named groups fill the placeholders)
    (re.compile(r"must be a colour like .*"), _l("Must be a colour in #rrggbb form, e.g. #1a2b3c")),
    (re.compile(r"must be between (?P<low>\S+) and (?P<high>\S+)"), _l("Must be between %(low)s and %(high)s")),
    (re.compile(r"longer than (?P<limit>\d+) characters"), _l("May not be longer than %(limit)s characters")),
    (re.compile(r"must be one line"), _l("Must be a single line")),
    (re.compile(r"must be an http\(s\):// address.*"),
     _l("Must be an address starting with https://, or a path on this site starting with /")),
    (re.compile(r"must be a number"), _l("Must be a number")),
    (re.compile(r"must be one of .*"), _l("Not one of the choices")),
    (re.compile(r"must be (?P<base>\S+) plus a multiple of (?P<step>\S+)"),
     _l("Must be %(base)s plus a multiple of %(step)s")),
    (re.compile(r"the theme has no section of this type"), _l("The current theme has no section of this type")),
    (re.compile(r"this section cannot be placed on .*"), _l("This kind of section cannot be placed on this page")),
    (re.compile(r"more than (?P<limit>\d+) blocks"), _l("No more than %(limit)s blocks")),
)


def owner_reason(reason: str) -> str:
    """A validation reason in the owner's language where it is a known one, else as it is."""
    for pattern, words in REASONS:
        match = pattern.search(reason)
        if match:
            return str(words) % match.groupdict()
    return reason


def _error_message(key: str, data: dict, exc: ConfigError, where: dict) -> str:
    """"Section “Announcement” (announcement) › setting “Background” (bg): Must be …" — names the section
    and the setting."""
    theme = _theme()
    section = (data.get("sections") or {}).get(where["section"]) if isinstance(data, dict) else None
    stype = theme.section_types.get(section.get("type")) if isinstance(section, dict) else None
    shown = shown_schema(stype) if stype else None
    parts = []
    if where["section"]:
        name = shown["name"] if shown else where["section"]
        parts.append(_("Section “%(name)s” (%(id)s)", name=name, id=where["section"]))
    specs = shown["settings"] if shown else ()
    if where["block"]:
        parts.append(_("Block %(id)s", id=where["block"]))
        block = ((section or {}).get("blocks") or {}).get(where["block"]) or {}
        kind = block.get("type") if isinstance(block, dict) else None
        specs = next((b["settings"] for b in shown["blocks"] if b["type"] == kind), ()) if shown else ()
    if where["setting"]:
        label = next((s.get("label") for s in specs if s["id"] == where["setting"]), None) or where["setting"]
        parts.append(_("Setting “%(label)s” (%(id)s)", label=label, id=where["setting"]))
    reason = re.sub(r"\s*\([a-z_]+\)$", "", exc.reason)  # the section type, already named
    place = functools.reduce(lambda outer, inner: _("%(outer)s › %(inner)s", outer=outer, inner=inner), parts) \
        if parts else _("Page %(key)s", key=key)
    return _("%(where)s: %(reason)s", where=place, reason=owner_reason(reason))


@bp.post("/draft")
@_json_operator_required
def save_draft():
    body = _json_body()
    key = _page_key(body.get("page"))
    data = body.get("layout")
    try:
        layout_history.save_draft(_folder(), key, data, theme=_theme(), by=_who())
    except ConfigError as exc:
        where = _error_fields(exc)
        return jsonify(error=_error_message(key, data, exc, where), **where), 400
    return jsonify(ok=True, undo_depth=layout_history.undo_depth(_folder(), key))


@bp.post("/render")
@_json_operator_required
def render():
    """One section of a candidate layout, as the storefront draws it (the live preview)."""
    from . import storefront

    body = _json_body()
    key = _page_key(body.get("page"))
    section_id, data = body.get("section"), body.get("layout")
    if not isinstance(section_id, str) or not isinstance(data, dict):
        abort(400)
    product = None
    if layouts.page_type(key) == "product":
        products = _products()
        product = storefront.on_sale_product(products[0][0]) if products else None
    html = storefront.render_section(current_app, key, section_id, layout=data, product=product)
    return current_app.response_class(str(html or Markup("")), mimetype="text/html")


def _back(key: str):
    return redirect(url_for(".editor", page=key))


@bp.post("/publish")
@admin.operator_required
def publish():
    _check_form()
    key = _page_key(request.form.get("page"))
    data, _source, problems = working_layout(key)
    try:
        layout_history.publish(_folder(), key, data, theme=_theme(), by=_who())
    except ConfigError as exc:
        flash(_("Not published: %(reason)s (%(error)s)", reason=owner_reason(exc.reason), error=exc), "error")
    else:
        flash(_("Published: the shop now shows the new layout (the parts that do not fit the current theme "
                "were removed)") if problems else _("Published: the shop now shows the new layout"), "ok")
    return _back(key)


@bp.post("/discard")
@admin.operator_required
def discard():
    _check_form()
    key = _page_key(request.form.get("page"))
    if layout_history.discard_draft(_folder(), key, by=_who()):
        flash(_("Draft discarded (this can be undone)"), "ok")
    else:
        flash(_("There is no draft"), "error")
    return _back(key)


@bp.post("/undo")
@admin.operator_required
def undo():
    _check_form()
    key = _page_key(request.form.get("page"))
    if layout_history.undo(_folder(), key):
        flash(_("Last change undone"), "ok")
    else:
        flash(_("Nothing to undo"), "error")
    return _back(key)


@bp.post("/restore")
@admin.operator_required
def restore():
    _check_form()
    key = _page_key(request.form.get("page"))
    version = request.form.get("version", "")
    try:
        layout_history.restore(_folder(), key, version, theme=_theme(), by=_who())
    except KeyError:
        abort(404)
    except ConfigError as exc:
        flash(_("Not restored: this version does not fit the current theme (%(reason)s; %(error)s)",
                reason=owner_reason(exc.reason), error=exc), "error")
    else:
        flash(_("Version %(version)s restored and published", version=version), "ok")
    return _back(key)


@bp.post("/pages")
@admin.operator_required
def page_new():
    _check_form()
    handle = (request.form.get("handle") or "").strip().lower()
    title = (request.form.get("title") or "").strip()
    try:
        layouts.create_custom_page(_folder(), handle, title, theme=_theme())
    except ConfigError as exc:
        if exc.key == "handle":
            detail = _("the address may only use lowercase letters, digits and -, at most 40 characters")
        elif exc.key == "title":
            detail = _("the title must be one line of 1 to %(limit)s characters", limit=layouts.TITLE_LIMIT)
        else:
            detail = ""
        flash(_("Page not created: %(detail)s (%(reason)s)", detail=detail, reason=exc.reason), "error")
        return _back("home")
    flash(_("Page /pages/%(handle)s created", handle=handle), "ok")
    return _back(layouts.CUSTOM_PREFIX + handle)


@bp.post("/pages/delete")
@admin.operator_required
def page_delete():
    _check_form()
    key = _page_key(request.form.get("page"))
    if not key.startswith(layouts.CUSTOM_PREFIX):
        abort(404)
    layouts.delete_custom_page(_folder(), key[len(layouts.CUSTOM_PREFIX):])
    flash(_("Page deleted (its earlier versions stay in the site folder)"), "ok")
    return _back("home")


# -- themes -------------------------------------------------------------------------------------------


def _registry():
    return opening.registry_for(current_site().instance)


def _label(theme) -> str:
    """A theme's name in the page's language (``theme.json`` ``label`` by locale), else in Chinese, else any."""
    return (theme.label.get(current_locale()) or theme.label.get("zh_CN")
            or next(iter(theme.label.values()), theme.name))


def _offered() -> list:
    themes = _registry().themes
    themes.scan()  # a theme installed or upgraded since: offered at once
    return [themes.get(name) for name in themes.names()]


@bp.get("/themes")
@admin.operator_required
def themes():
    problems = layouts.layout_problems(current_app)
    return render_template("admin/theme_themes.html", themes=_offered(), current=_theme().name,
                           problems=[_problem_row(p) for p in problems], action=admin.ActionForm())


def _problem_row(problem) -> dict:
    """A ``layouts.Problem`` for an owner: which page and section, what is wrong, what to do."""
    folder = str(_folder())
    file = problem.file.replace(folder, "").lstrip("/")
    if problem.reason == "the theme has no section of this type" or "cannot be placed" in problem.reason:
        fix = _("Not shown for now; the content stays in the site files and comes back when you switch back to "
                "the previous theme. If you no longer need it, publish the page once in the editor to remove it")
    elif problem.setting:
        fix = _("Shown with the default value; choose again in the editor and publish")
    else:
        fix = problem.fix
    return {"file": file, "section": problem.section, "type": problem.type, "setting": problem.setting,
            "block": problem.block, "reason": owner_reason(problem.reason), "fix": fix}


@bp.post("/themes/switch")
@admin.operator_required
def switch_theme():
    _check_form()
    name = request.form.get("theme", "")
    offered = {t.name: t for t in _offered()}
    if name not in offered:
        abort(404)
    try:
        _registry().update(current_site().slug, theme=name)
    except KamengsiteError as exc:
        flash(_("Theme not switched: %(error)s", error=exc), "error")
    else:
        flash(_("Switched to the theme “%(theme)s”. Everything you saved is still there; below is what the new "
                "theme cannot show yet.", theme=_label(offered[name])), "ok")
    return redirect(url_for(".themes"))


# -- theme-wide settings ------------------------------------------------------------------------------


def _setting_value(spec: dict, form):
    """A theme setting from a form as the schema stores it (a wrong value is left for the validator)."""
    raw = form.get(spec["id"])
    kind = spec["type"]
    if kind == "checkbox":
        return raw is not None
    if raw is None:
        return layouts.implicit_default(spec)
    if kind in ("number", "range"):
        try:
            number = float(raw)
        except ValueError:
            return raw
        return int(number) if number.is_integer() else number
    if kind in ("product", "category"):
        return int(raw) if raw.isdigit() else None if raw == "" else raw
    return raw.replace("\r\n", "\n")


@bp.route("/settings", methods=["GET", "POST"])
@admin.operator_required
def theme_settings():
    theme = _theme()
    values = layouts.site_layouts(current_app).theme_settings()
    errors = {}
    if request.method == "POST":
        _check_form()
        values = {spec["id"]: _setting_value(spec, request.form) for spec in theme.settings_schema}
        try:
            layouts.save_theme_settings(_folder(), values, theme=theme)
        except ConfigError as exc:
            setting = _error_fields(exc)["setting"]
            errors[setting] = owner_reason(exc.reason)
            flash(_("Not saved: correct the settings marked in red"), "error")
        else:
            flash(_("Site appearance saved"), "ok")
            return redirect(url_for(".theme_settings"))
    return render_template("admin/theme_settings.html", theme=theme, groups=shown_settings_groups(theme), values=values,
                           errors=errors, action=admin.ActionForm(), products=_products(),
                           categories=_categories(), theme_label=_label(theme))


# -- uploaded images (kamengsite/assets.py) ------------------------------------------------------------


def _csrf_checked():
    """A write from the editor's script: the token in the form or in ``X-CSRFToken`` (else 400)."""
    try:
        validate_csrf(request.form.get("csrf_token") or request.headers.get("X-CSRFToken", ""))
    except ValidationError:
        raise CSRFError("CSRF token missing or invalid") from None


@bp.errorhandler(413)
def _too_large(exc):
    """Over the size limit: an image upload (``assets._limit_upload``) or a layout (``MAX_JSON``)."""
    if request.endpoint == assets.UPLOAD_ENDPOINT:
        return jsonify(error=_("File too large: an image may not exceed %(max)s MB",
                               max=assets.MAX_BYTES // (1024 * 1024))), 413
    return jsonify(error=_("Request too large")), 413


@bp.get("/images")
@_json_operator_required
def images():
    """The site's uploaded images, newest first; ``used`` when a page or the theme settings show it."""
    folder = _folder()
    used = assets.images_in_use(folder)
    return jsonify(images=[dict(image, used=used.get(image["name"], [])) for image in assets.list_images(folder)])


@bp.post("/images")
@_json_operator_required
@limited("image-upload", "30/minute")  # each upload decodes up to 4096×4096 pixels
def upload_image():
    """One image (multipart field ``image``) → ``{"url": "/assets/<name>"}``, or 400 with the reason."""
    _csrf_checked()
    upload = request.files.get("image")
    if upload is None or not upload.filename:
        return jsonify(error=_("Choose an image")), 400
    data = upload.stream.read(assets.MAX_BYTES + 1)  # one byte more: "too large" is told, not truncated
    try:
        url = assets.store_image(_folder(), data, upload.filename)
    except ConfigError as exc:
        return jsonify(error=exc.reason), 400
    return jsonify(url=url, name=url.rsplit("/", 1)[1])


@bp.post("/images/<name>/delete")
@_json_operator_required
def delete_image(name):
    """Delete an uploaded image no page uses (a used one would leave a broken image on the shop)."""
    _csrf_checked()
    if not assets.NAME_RE.match(name):
        abort(404)
    folder = _folder()
    used = assets.images_in_use(folder).get(name)
    if used:
        files = ("、" if current_locale() == "zh_CN" else ", ").join(used)  # i18n: keep - the list separator
        return jsonify(error=_("This image is in use (%(files)s); replace it on the page before deleting it",
                               files=files), used=used), 409
    if not assets.delete_image(folder, name):
        abort(404)
    return jsonify(ok=True)


# -- plugin -------------------------------------------------------------------------------------------


@hookimpl
def admin_menu(site):
    return [(_("Page editor"), "admin_theme.editor"), (_("Themes"), "admin_theme.themes")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
