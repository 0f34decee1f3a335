"""Whole-page cache of the storefront's listing pages (home, category) for anonymous visitors.

The host runs as several stateless processes, so each keeps its own bounded LRU of rendered
pages and none is ever told to drop one: an entry's key holds everything the page is built
from, and a change anywhere makes a new key on its next request, in every process.

* **the site app**: a token made when the app is built; the host builds a new app whenever the
  site folder changes (``site.toml``: theme, name, locale, plugins, level…);
* **the page**: endpoint, view arguments, query string, host name and scheme, and the language
  (the ``ks_lang`` cookie, else the site's locale: ``i18n.chosen_locale``);
* **the layout**: ``SiteLayouts.stamp(page)`` (the published layout's file, the theme settings'
  file, the theme and its version);
* **the catalogue**: ``catalog_stamp()``, one query per request over the database. Every row
  a listing is built from (products, SKUs, categories, price rules, levels, tier prices)
  carries a ``rev`` that each UPDATE adds 1 to in the same statement (``StampedModel``), and
  deletes of such rows count in the one-row ``catalog_epoch``. Revisions only grow, so the
  sums change with every committed insert or update, whichever process wrote it, and an order
  locks nothing it did not lock before (the SKU row it already updates).

Plugins' sections may change with time alone (a flash sale starting) or with rows of their
own tables (a group-buy's progress): an entry lives at most ``ttl`` seconds (60 by default).

Only anonymous GETs are served or stored: no session data at all (no member, no console
user, no flashed message, no CSRF token, no order of this browser), no draft preview. A
response is stored only if it is a plain 200 HTML page that did not use the CSP nonce.
Writes that bypass peewee's model API (raw SQL) are not seen: they must add 1 to ``rev``.
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict

import peewee
from flask import current_app, g, request, session

from . import csp
from .i18n import chosen_locale
from .models import BaseModel

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL = 60
MAX_QUERY_STRING = 256  # longer query strings are served, never stored (no cache flooding)
_ENTRY_OVERHEAD = 512  # bytes an entry costs beyond its body: key, headers, bookkeeping


# -- revisions on catalogue rows ---------------------------------------------------------------


class CatalogEpoch(BaseModel):
    """One row: how many deletes of stamped rows there were (a delete leaves no ``rev`` behind)."""

    deletes = peewee.IntegerField(default=0)

    class Meta:
        table_name = "catalog_epoch"


class _CountedDelete(peewee.ModelDelete):
    """A DELETE that counts itself in ``catalog_epoch``, in the same transaction."""

    def _execute(self, database):
        with database.atomic():
            deleted = super()._execute(database)
            if deleted:
                CatalogEpoch.update(deletes=CatalogEpoch.deletes + 1).where(CatalogEpoch.id == 1).execute()
        return deleted


class StampedModel(BaseModel):
    """A table the storefront's listings are built from: every write moves the catalogue stamp.

    ``update`` (and so ``save``) adds 1 to the row's ``rev`` in the same statement; a new row
    starts at 1; ``delete`` counts in ``catalog_epoch``.
    """

    rev = peewee.IntegerField(default=1)

    @classmethod
    def update(cls, __data=None, **update):
        data = cls._normalize_data(__data, update)
        data[cls.rev] = cls.rev + 1  # replaces a stale value ``save()`` would write back
        return super().update(data)

    @classmethod
    def delete(cls):
        return _CountedDelete(cls)


# -- the catalogue stamp: one query --------------------------------------------------------------

# The site's chain (itself and up to three ancestors) and the sums over the rows its listings read:
# the catalogues it sells (the main site's and its own), its chain's price rules, the levels and
# the chain's tier prices. Ancestors deeper than three levels are not covered (the opening flow
# makes at most three: main → site → child → grandchild).
_STAMP_SQL = """
SELECT c0.level, c0.parent_id, c1.level, c1.parent_id, c2.level, c2.parent_id, c3.level,
  (SELECT COALESCE(SUM(p.rev), 0) FROM product p WHERE p.site_id IN ({p}, {p})),
  (SELECT COALESCE(SUM(s.rev), 0) FROM sku s JOIN product sp ON sp.id = s.product_id
     WHERE sp.site_id IN ({p}, {p})),
  (SELECT COALESCE(SUM(k.rev), 0) FROM category k WHERE k.site_id IN ({p}, {p})),
  (SELECT COALESCE(SUM(r.rev), 0) FROM price_rule r WHERE r.site_id IN (c0.id, c1.id, c2.id, c3.id)),
  (SELECT COALESCE(SUM(l.rev), 0) FROM site_level l),
  (SELECT COALESCE(SUM(lp.rev), 0) FROM level_price lp JOIN site_level ll ON ll.id = lp.level_id
     WHERE ll.code IN (c0.level, c1.level, c2.level, c3.level)),
  (SELECT e.deletes FROM catalog_epoch e WHERE e.id = 1)
FROM site c0
LEFT JOIN site c1 ON c1.id = c0.parent_id
LEFT JOIN site c2 ON c2.id = c1.parent_id
LEFT JOIN site c3 ON c3.id = c2.parent_id
WHERE c0.id = {p}
"""


def catalog_stamp(site_id: int, main_id: int) -> tuple:
    """A value that changes with every committed change to what site ``site_id``'s listings show."""
    from .db import database

    params = (main_id, site_id) * 3 + (site_id,)
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        return tuple(_execute_prepared(database, params).fetchone() or ())
    sql = _STAMP_SQL.format(p=database.obj.param)
    return tuple(database.execute_sql(sql, params).fetchone() or ())


#: PostgreSQL connections (of the pool) on which the stamp query is a prepared statement.
_PREPARED = weakref.WeakSet()


def _execute_prepared(database, params):
    """The stamp query as a server-side prepared statement: planning its seven subqueries took
    more time than running them, on every request."""
    connection = database.connection()
    if connection not in _PREPARED:
        numbers = itertools.count(1)
        sql = re.sub(r"\{p\}", lambda _: f"${next(numbers)}", _STAMP_SQL)
        database.execute_sql("DEALLOCATE ALL")  # a pooled connection reused after a failed prepare
        database.execute_sql(f"PREPARE kamengsite_stamp ({', '.join(['integer'] * len(params))}) AS {sql}")
        _PREPARED.add(connection)
    return database.execute_sql("EXECUTE kamengsite_stamp (" + ", ".join(["%s"] * len(params)) + ")", params)


# -- the cache ---------------------------------------------------------------------------------


class PageCache:
    """A thread-safe LRU of rendered pages, bounded by the bytes it holds; entries expire after ``ttl``."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, ttl: float = DEFAULT_TTL):
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: OrderedDict = OrderedDict()  # key -> (expires_at, body, headers, size)
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.stores = 0

    def __len__(self):
        return len(self._entries)

    def get(self, key):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < time.monotonic():
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1], entry[2]

    def put(self, key, body: bytes, headers: list):
        size = len(body) + _ENTRY_OVERHEAD
        if size > self.max_bytes // 8:  # one page never pushes out a large part of the cache
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[3]
            self._entries[key] = (time.monotonic() + self.ttl, body, headers, size)
            self.bytes += size
            self.stores += 1
            while self.bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted[3]

    def clear(self):
        with self._lock:
            self._entries.clear()
            self.bytes = 0


#: This process's cache, shared by every site the process serves (``configure`` sizes it).
PAGES = PageCache()


def configure(instance):
    """Size the process's cache from the instance's ``page_cache_mb`` and ``page_cache_ttl``, if set."""
    PAGES.max_bytes = int(getattr(instance, "page_cache_mb", 0) or DEFAULT_MAX_BYTES // 2**20) * 2**20
    PAGES.ttl = float(getattr(instance, "page_cache_ttl", 0) or DEFAULT_TTL)


# -- serving: the view decorator and the app's front door ---------------------------------------

#: Set by the decorator on a request whose response may be stored: the WSGI layer stores it with
#: its final headers (after every ``after_request``), so a hit answers what a miss answered.
_STORE_KEY = "kamengsite.page_cache_key"
#: The key the front door looked up and missed: the view's decorator uses it (one stamp query per request).
_LOOKED_UP = "kamengsite.page_cache_looked_up"
#: Headers never replayed: per response (length, cookies, the CSP's nonce) or the cache's own.
_UNSTORED_HEADERS = {"content-length", "set-cookie", "content-security-policy", "x-page-cache"}


def cached_page(page: str):
    """Cache the decorated storefront view for anonymous visitors; ``page``: its layout's page key."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if not _anonymous_get():
                return view(*args, **kwargs)
            key = (request.environ.get(_LOOKED_UP)
                   or page_key(current_app, request.environ, request.endpoint, request.view_args, page))
            hit = PAGES.get(key)
            if hit is not None:  # with a (blank) session cookie or a query string: the app's hooks ran
                return current_app.response_class(hit[0], headers=[*hit[1], ("X-Page-Cache", "hit")])
            response = current_app.make_response(view(*args, **kwargs))
            if _storable(response):
                request.environ[_STORE_KEY] = key
                response.headers["X-Page-Cache"] = "miss"
            return response

        wrapper.page_cache_page = page
        return wrapper

    return decorate


def _anonymous_get() -> bool:
    """A GET from a browser with nothing in its session, not previewing drafts."""
    if request.method != "GET" or g.get("layout_draft") or "_preview" in request.args:
        return False
    return len(request.query_string) <= MAX_QUERY_STRING and not session


def _storable(response) -> bool:
    return (response.status_code == 200 and response.mimetype == "text/html" and not session
            and not session.modified and "Set-Cookie" not in response.headers
            and not g.get("csp_nonce") and "no-store" not in (response.headers.get("Cache-Control") or ""))


def page_key(app, environ, endpoint: str, view_args, page: str) -> tuple:
    """Everything a cached page depends on (see the module's docstring)."""
    from . import layouts

    site = app.extensions["kamengsite.site"]
    locale = chosen_locale(environ.get("HTTP_COOKIE"), site.config.locale)
    return (site.site_id, _app_token(app), environ.get("HTTP_HOST", ""), environ.get("wsgi.url_scheme", ""),
            locale, endpoint, tuple(sorted((view_args or {}).items())), environ.get("QUERY_STRING", ""),
            layouts.site_layouts(app).stamp(page), catalog_stamp(site.site_id, _main_site_id(app)))


def _app_token(app) -> str:
    """Made once per site app: a rebuilt app (its folder changed) never meets the old one's pages."""
    token = app.extensions.get("kamengsite.pagecache")
    if token is None:
        token = app.extensions.setdefault("kamengsite.pagecache", secrets.token_hex(8))
    return token


def _main_site_id(app) -> int:
    """The main site's id (the catalogue every site sells), looked up once per app."""
    found = app.extensions.get("kamengsite.pagecache_main")
    if found is None:
        from .models import Site

        slug = app.extensions["kamengsite.site"].instance.main_site
        found = app.extensions["kamengsite.pagecache_main"] = Site.get(Site.slug == slug).id
    return found


class FrontDoor:
    """The site app's WSGI entry: answers a cached page before Flask starts a request, stores misses.

    A hit here is an anonymous GET without any cookie of this site and without a query string,
    for a page the app itself stored: the request hooks of the app and its plugins are skipped
    for it (as the view is). Everything else goes to Flask (where the decorator still serves
    hits, with the hooks run).
    """

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self.cookie = app.config["SESSION_COOKIE_NAME"] + "="

    def __call__(self, environ, start_response):
        hit = self._hit(environ) if self._plain_get(environ) else None
        if hit is not None:
            headers = [*hit[1], ("Content-Security-Policy", csp.POLICY_NO_INLINE_SCRIPT),
                       ("Content-Length", str(len(hit[0]))), ("X-Page-Cache", "hit")]
            start_response("200 OK", headers)
            return [hit[0]]
        return self._pass(environ, start_response)

    def _plain_get(self, environ) -> bool:
        return (environ.get("REQUEST_METHOD") == "GET" and not environ.get("QUERY_STRING")
                and self.cookie not in environ.get("HTTP_COOKIE", ""))

    def _hit(self, environ):
        try:
            endpoint, view_args = self.app.url_map.bind_to_environ(environ).match()
        except Exception:  # noqa: BLE001 - not found, redirect, wrong method: Flask answers it
            return None
        page = getattr(self.app.view_functions.get(endpoint), "page_cache_page", None)
        if page is None:
            return None
        from .db import database, is_sqlite

        try:
            key = page_key(self.app, environ, endpoint, view_args, page)
        except Exception:  # noqa: BLE001 - the database is away: the app answers (its own error page)
            return None
        environ[_LOOKED_UP] = key
        hit = PAGES.get(key)
        if hit is not None and not is_sqlite() and not database.is_closed():
            database.close()  # back to the pool, as the app's teardown does (a miss goes on to the app)
        return hit

    def _pass(self, environ, start_response):
        """Flask's answer; stored when the view said it may be, with the headers the browser gets."""
        seen = {}

        def remember(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        body = self.wsgi_app(environ, remember)
        key = environ.get(_STORE_KEY)
        if key is None or not seen.get("status", "").startswith("200"):
            return body
        headers = seen["headers"]
        if any(name.lower() == "set-cookie" for name, _ in headers):
            return body
        try:
            data = b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()
        PAGES.put(key, data, [(n, v) for n, v in headers if n.lower() not in _UNSTORED_HEADERS])
        return [data]
