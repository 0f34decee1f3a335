"""Languages: Chinese (zh_CN) by default, English on request, with Flask-Babel.

Source strings are English and wrapped where they are written: ``_("…")`` in
Python (``gettext``, at request time), ``_l("…")`` for module-level constants
and form labels (``lazy_gettext``, translated when shown), ``{{ _("…") }}`` in
templates. The Chinese text lives in the zh_CN catalog
(``kamengsite/translations/zh_CN/LC_MESSAGES/messages.po``); a plugin package
ships its own ``translations/`` next to its module and the host merges them.
``tests/test_i18n.py`` fails on any extracted string missing from a catalog.

Which language a request gets:

1. ``?lang=en`` (or ``zh_CN``) on any URL: the visitor's choice, kept in the
   ``ks_lang`` cookie for a year;
2. the ``ks_lang`` cookie;
3. the site's ``locale`` in ``site.toml`` (the owner's choice, ``zh_CN`` by default).

The browser's Accept-Language is not consulted: a shop's language is its owner's
decision, and a visitor switches with one click.

Catalogs are compiled (``.po`` → ``.mo``) by ``make install`` and again, when a
``.po`` is newer than its ``.mo``, whenever the host starts, so there is never a
manual step. Every ``*.po`` of a locale folder is merged into its one ``.mo``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from decimal import Decimal
from pathlib import Path

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import has_request_context, request
from flask_babel import Babel, format_datetime, format_decimal, get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext as _n

__all__ = ["_", "_l", "_n", "format_money", "format_when", "current_locale", "install"]

log = logging.getLogger(__name__)

LOCALES = ("zh_CN", "en")
DEFAULT_LOCALE = "zh_CN"
LOCALE_NAMES = {"zh_CN": "简体中文", "en": "English"}  # i18n: keep - each language named in itself
COOKIE = "ks_lang"
COOKIE_MAX_AGE = 365 * 24 * 3600
DEFAULT_TIMEZONE = "Asia/Shanghai"
HOST_TRANSLATIONS = Path(__file__).parent / "translations"
DOMAIN = "messages"

#: Patterns per locale; Chinese keeps the plain ISO-like form its users expect in a console.
_DATETIME_FORMATS = {"zh_CN": "yyyy-MM-dd HH:mm", "en": "d MMM yyyy, HH:mm"}
_DATE_FORMATS = {"zh_CN": "yyyy-MM-dd", "en": "d MMM yyyy"}


# -- which language ---------------------------------------------------------------


def chosen_locale(cookie_header: str | None, site_locale: str) -> str:
    """The language of a request from its ``Cookie`` header alone (the page cache keys on this)."""
    if cookie_header and COOKIE + "=" in cookie_header:
        for part in cookie_header.split(";"):
            name, _sep, value = part.strip().partition("=")
            if name == COOKIE and value in LOCALES:
                return value
    return site_locale if site_locale in LOCALES else DEFAULT_LOCALE


def _select_locale() -> str:
    from .app import current_site

    asked = request.args.get("lang")
    if asked in LOCALES:
        return asked
    return chosen_locale(request.headers.get("Cookie"), current_site().config.locale)


def _select_timezone() -> str:
    from .app import current_site

    return getattr(current_site().config, "timezone", None) or DEFAULT_TIMEZONE


def _remember_choice(response):
    """``?lang=`` sets the cookie, so the choice holds on the next page."""
    chosen = request.args.get("lang")
    if chosen in LOCALES and request.cookies.get(COOKIE) != chosen:
        response.set_cookie(COOKIE, chosen, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax",
                            secure=request.is_secure)
    return response


def current_locale() -> str:
    """``'zh_CN'`` or ``'en'``; the default outside a request."""
    if not has_request_context():
        return DEFAULT_LOCALE
    locale = get_locale()
    if locale is None:
        return DEFAULT_LOCALE
    return next((code for code in LOCALES if catalog_folder(code) == str(locale)), DEFAULT_LOCALE)


def catalog_folder(code: str) -> str:
    """The folder of a locale's catalog: Babel spells ``zh_CN`` as ``zh_Hans_CN`` when it looks one up."""
    return str(Locale.parse(code))


def language_links() -> list[tuple[str, str, bool]]:
    """``[(code, name, is_current)]`` for a language switcher (template global ``language_links()``)."""
    here = current_locale()
    return [(code, LOCALE_NAMES[code], code == here) for code in LOCALES]


# -- formatting ---------------------------------------------------------------------


def format_money(fen: int) -> str:
    """Integer fen as the current language writes yuan: ``1234.50`` / ``1,234.50`` (no symbol)."""
    if current_locale() == DEFAULT_LOCALE:
        sign = "-" if fen < 0 else ""
        yuan, cents = divmod(abs(int(fen)), 100)
        return f"{sign}{yuan}.{cents:02d}"
    return format_decimal(Decimal(int(fen)) / 100, format="#,##0.00")


def format_when(value) -> str:
    """A stored UTC datetime in the site's timezone, written the current language's way."""
    if value is None:
        return ""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return format_datetime(value, _DATETIME_FORMATS.get(current_locale(), "medium"))
    if isinstance(value, _dt.date):
        from flask_babel import format_date

        return format_date(value, _DATE_FORMATS.get(current_locale(), "medium"))
    return str(value)


# -- wiring -------------------------------------------------------------------------

_BABEL = Babel(configure_jinja=False)  # one instance: its translations cache is shared by every site app


def translation_dirs(plugins=None, themes=None) -> list[Path]:
    """The host's catalogs, then every installed plugin's and theme's ``translations/`` folder.

    All of them for every site (not just its own plugins and theme): Flask-Babel keeps one
    merged catalog per language for the process, and unused strings cost nothing.
    """
    dirs = [HOST_TRANSLATIONS]
    extra = list(plugins.translation_dirs()) if plugins is not None else []
    if themes is not None:
        extra += [theme.path / "translations" for theme in themes.themes.values()]
    for folder in extra:
        if folder not in dirs and folder.is_dir():
            dirs.append(folder)
    return dirs


def install(app, plugins=None, themes=None):
    """Languages for one site app: Flask-Babel, the Jinja ``_`` and the locale filters."""
    dirs = compiled_dirs(translation_dirs(plugins, themes))
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = ";".join(str(d) for d in dirs)
    app.config["BABEL_DEFAULT_LOCALE"] = DEFAULT_LOCALE
    _BABEL.init_app(app, locale_selector=_select_locale, timezone_selector=_select_timezone)
    install_jinja(app.jinja_env)
    app.after_request(_remember_choice)


def install_jinja(env):
    """``_``/``gettext``/``ngettext`` and the ``money``/``when`` filters in a (shared) Jinja environment."""
    if "jinja2.ext.InternationalizationExtension" in env.extensions:
        return
    from flask_babel import get_translations

    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(
        gettext=lambda s: get_translations().ugettext(s),
        ngettext=lambda s, p, n: get_translations().ungettext(s, p, n),
        newstyle=True,
    )
    env.filters["money"] = format_money
    env.filters["when"] = format_when
    env.globals["current_locale"] = current_locale
    env.globals["language_links"] = language_links


# -- catalogs -----------------------------------------------------------------------


def compiled_dirs(dirs) -> list[Path]:
    """Compile each folder's catalogs when stale; where a folder is read-only, into a cache folder."""
    return [compile_catalogs(Path(d)) for d in dirs]


def compile_catalogs(source: Path) -> Path:
    """``<source>/<locale>/LC_MESSAGES/*.po`` → ``messages.mo`` (all ``.po`` of a locale merged).

    Returns the folder that holds the ``.mo`` files: ``source`` itself, or a mirror
    under the temp folder when ``source`` cannot be written (an installed wheel).
    """
    if not source.is_dir():
        return source
    target = source
    for locale_dir in sorted(p for p in source.iterdir() if (p / "LC_MESSAGES").is_dir()):
        pos = sorted((locale_dir / "LC_MESSAGES").glob("*.po"))
        if not pos:
            continue
        mo = locale_dir / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if not os.access(locale_dir / "LC_MESSAGES", os.W_OK):
            target = _mirror(source)
            mo = target / locale_dir.name / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if mo.exists() and mo.stat().st_mtime >= max(p.stat().st_mtime for p in pos):
            continue
        _write_catalog(pos, locale_dir.name, mo)
    return target


def _mirror(source: Path) -> Path:
    import hashlib

    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "kamengsite-translations" / digest


def load_catalog(pos, locale: str):
    """The messages of ``pos`` merged into one catalog (a later file wins on a duplicate)."""
    merged = None
    for po in pos:
        with open(po, "rb") as fh:
            catalog = read_po(fh, locale=locale)
        if merged is None:
            merged = catalog
            continue
        for message in catalog:
            if message.id:
                merged[message.id] = message
    return merged


def _write_catalog(pos, locale: str, mo: Path):
    catalog = load_catalog(pos, locale)
    mo.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=mo.parent, prefix=".messages-", suffix=".mo")
    try:
        with os.fdopen(fd, "wb") as out:
            write_mo(out, catalog, use_fuzzy=False)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from an app server running as another user
        os.replace(tmp, mo)  # atomic: two processes compiling at once both leave a whole file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("compiled %s (%d messages)", mo, len(catalog))
