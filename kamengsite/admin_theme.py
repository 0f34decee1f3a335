"""The console's page editor and theme pages (a core plugin, on every site): ``/admin/theme/``.

An owner (or the main site's operator, for the main site) edits their own site only: every
view needs a console session of *this* site (``admin._current_operator``: accounts and
session cookies are per site), every write is CSRF-checked (forms carry the token, the
editor's JSON requests send it in ``X-CSRFToken``), page keys are checked against the site's
pages, and every layout is validated on the server (``layouts.save_layout``) — what the
browser sends is never trusted.

- 页面编辑: the draft of one page (``layouts/<page>.draft.json``, started from the published
  layout or the theme's default on the first change), saved on every change; one section
  re-rendered for the live preview (``storefront.render_section``); publish, discard, undo
  and the published versions with restore (``layout_history``).
- 主题: switch the site's theme (``site.toml``, through the site registry) and list what of the
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
from .ratelimit import limited

bp = Blueprint("admin_theme", __name__, url_prefix="/admin/theme",
               static_folder="static/editor", static_url_path="/assets")
bp.context_processor(admin._console_context)  # the layout's log-out form and menu

#: The editor's own policy (contract 5): scripts from this site only, framed by nobody, frames of this site.
EDITOR_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
              "font-src 'self' data:; connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; "
              "form-action 'self'; base-uri 'self'; object-src 'none'")
MAX_JSON = 512 * 1024  # a layout of 100 sections × 50 blocks fits many times over
PAGE_LABELS = {"home": "首页", "category": "分类页", "product": "商品页", "checkout": "下单页", "order": "订单结果页",
               "lookup": "订单查询页", "member": "会员中心", "custom": "自定义页面"}


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
            return jsonify(error="请先登录后台"), 401
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
        return f"{titles.get(handle, handle)}（/pages/{handle}）"
    return PAGE_LABELS.get(key, key)


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
        return jsonify(error="页面已过期，请刷新后重试"), 400
    return "页面已过期，请刷新后重试", 400


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
        shown, _ = layouts.check_layout(theme.section_types, layouts.page_type(key), data,
                                        f"layouts/{key}.json", strict=False)
        data = layouts.layout_data(shown) if shown is not None else layout_history.theme_default(theme, key)
    return data, source, problems


def _section_types(kind: str) -> dict:
    """The section types that may be placed on pages of type ``kind``, with their schema."""
    return {name: stype.describe() for name, stype in sorted(_theme().section_types.items()) if kind in stype.pages}


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
        return [[s.name, s.label] for s in storefront._site_sections()]
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
        theme_label=_label(_theme()))


def _error_fields(exc: ConfigError) -> dict:
    """Where a ``ConfigError`` of a layout points: its section, block and setting (from its key)."""
    found = {"section": None, "block": None, "setting": None}
    parts = (exc.key or "").split(".")
    for name, value in zip(parts[::2], parts[1::2]):
        found[{"sections": "section", "blocks": "block", "settings": "setting"}.get(name, name)] = value
    return found


REASONS = (  # the validator's words, for an owner
    (re.compile(r"must be a colour like .*"), "须为 #rrggbb 格式的颜色，如 #1a2b3c"),
    (re.compile(r"must be between (\S+) and (\S+)"), r"须在 \1 到 \2 之间"),
    (re.compile(r"longer than (\d+) characters"), r"不能超过 \1 个字"),
    (re.compile(r"must be one line"), "只能写一行"),
    (re.compile(r"must be an http\(s\):// address.*"), "须为 https:// 开头的网址，或以 / 开头的本站路径"),
    (re.compile(r"must be a number"), "须为数字"),
    (re.compile(r"must be one of .*"), "不是可选的值"),
    (re.compile(r"must be (\S+) plus a multiple of (\S+)"), r"须为 \1 加 \2 的整数倍"),
    (re.compile(r"the theme has no section of this type"), "当前主题没有这种区块"),
    (re.compile(r"this section cannot be placed on .*"), "这种区块不能放在这个页面上"),
    (re.compile(r"more than (\d+) blocks"), r"小块不能超过 \1 个"),
)


def owner_reason(reason: str) -> str:
    """A validation reason in Chinese where it is a known one, else as it is."""
    for pattern, chinese in REASONS:
        match = pattern.search(reason)
        if match:
            return match.expand(chinese)
    return reason


def _error_message(key: str, data: dict, exc: ConfigError, where: dict) -> str:
    """"区块“公告栏”（announcement）的设置“背景颜色”：须为 …" — names the section and the setting."""
    theme = _theme()
    section = (data.get("sections") or {}).get(where["section"]) if isinstance(data, dict) else None
    stype = theme.section_types.get(section.get("type")) if isinstance(section, dict) else None
    parts = []
    if where["section"]:
        name = stype.name if stype else where["section"]
        parts.append(f"区块“{name}”（{where['section']}）")
    specs = stype.settings if stype else ()
    if where["block"]:
        parts.append(f"小块 {where['block']}")
        block = ((section or {}).get("blocks") or {}).get(where["block"]) or {}
        specs = (stype.blocks.get(block.get("type")) or {}).get("settings", ()) if stype else ()
    if where["setting"]:
        label = next((s.get("label") for s in specs if s["id"] == where["setting"]), None) or where["setting"]
        parts.append(f"设置“{label}”（{where['setting']}）")
    reason = re.sub(r"\s*\([a-z_]+\)$", "", exc.reason)  # the section type, already named
    return ("的".join(parts) or f"页面 {key}") + "：" + owner_reason(reason)


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
    data, _, problems = working_layout(key)
    try:
        layout_history.publish(_folder(), key, data, theme=_theme(), by=_who())
    except ConfigError as exc:
        flash(f"未发布：{owner_reason(exc.reason)}（{exc}）", "error")
    else:
        flash("已发布，前台已显示新版式" + ("（不适合当前主题的部分已去掉）" if problems else ""), "ok")
    return _back(key)


@bp.post("/discard")
@admin.operator_required
def discard():
    _check_form()
    key = _page_key(request.form.get("page"))
    if layout_history.discard_draft(_folder(), key, by=_who()):
        flash("已放弃草稿（可撤销）", "ok")
    else:
        flash("没有草稿", "error")
    return _back(key)


@bp.post("/undo")
@admin.operator_required
def undo():
    _check_form()
    key = _page_key(request.form.get("page"))
    if layout_history.undo(_folder(), key):
        flash("已撤销上一步修改", "ok")
    else:
        flash("没有可以撤销的修改", "error")
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
        flash(f"未能恢复：这个版本不适合当前主题（{owner_reason(exc.reason)}；{exc}）", "error")
    else:
        flash(f"已恢复并发布 {version} 的版本", "ok")
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
        flash(f"未能创建页面：{'地址只能用小写字母、数字和 -，最多 40 个字' if exc.key == 'handle' else ''}"
              f"{'标题须为一行，1 到 ' + str(layouts.TITLE_LIMIT) + ' 个字' if exc.key == 'title' else ''}"
              f"（{exc.reason}）", "error")
        return _back("home")
    flash(f"已创建页面 /pages/{handle}", "ok")
    return _back(layouts.CUSTOM_PREFIX + handle)


@bp.post("/pages/delete")
@admin.operator_required
def page_delete():
    _check_form()
    key = _page_key(request.form.get("page"))
    if not key.startswith(layouts.CUSTOM_PREFIX):
        abort(404)
    layouts.delete_custom_page(_folder(), key[len(layouts.CUSTOM_PREFIX):])
    flash("页面已删除（历史版本仍保留在站点文件夹中）", "ok")
    return _back("home")


# -- themes -------------------------------------------------------------------------------------------


def _registry():
    return opening.registry_for(current_site().instance)


def _label(theme) -> str:
    return theme.label.get("zh_CN") or next(iter(theme.label.values()), theme.name)


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
        fix = "暂不显示；内容仍保存在站点文件里，换回原主题即恢复。若不再需要，在编辑器中发布一次即去掉"
    elif problem.setting:
        fix = "改用默认值显示；在编辑器中重新选择并发布即可"
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
        flash(f"未能切换主题：{exc}", "error")
    else:
        flash(f"已切换到主题“{_label(offered[name])}”。你保存的内容都还在；下面列出新主题暂不能显示的部分。", "ok")
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
            flash("未保存：请修改标红的设置", "error")
        else:
            flash("全站外观已保存", "ok")
            return redirect(url_for(".theme_settings"))
    return render_template("admin/theme_settings.html", theme=theme, groups=theme.settings_groups, values=values,
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
        return jsonify(error=f"文件太大，图片不能超过 {assets.MAX_BYTES // (1024 * 1024)} MB"), 413
    return jsonify(error="请求太大"), 413


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
        return jsonify(error="请选择一张图片"), 400
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
        return jsonify(error="这张图片正在使用（" + "、".join(used) + "），请先在页面里换掉它再删除", used=used), 409
    if not assets.delete_image(folder, name):
        abort(404)
    return jsonify(ok=True)


# -- plugin -------------------------------------------------------------------------------------------


@hookimpl
def admin_menu(site):
    return [("页面编辑", "admin_theme.editor"), ("主题", "admin_theme.themes")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
