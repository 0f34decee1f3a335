"""The host: one WSGI app in front of every site, dispatching on the Host header.

Site apps are built on first use and kept in a bounded LRU keyed by the site
folder's version: a changed folder is rebuilt on its next request, a new folder
serves at once, and 10,000 sites never mean 10,000 apps in memory. An unknown
host gets the host's own 404 page, never another site's content.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import jinja2
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from .app import create_site_app
from .db import database, init_database
from .errors import ConfigError
from . import csp, hooks, pagecache
from .plugins import PluginHost
from .sites import SiteRegistry, normalize_host
from .themes import HOST_TEMPLATES, ThemeRegistry

log = logging.getLogger(__name__)


def _page_language(environ, site_locale: str) -> dict:
    """``_`` and ``current_locale`` for a page the host renders itself: the visitor's or the site's language."""
    from .i18n import chosen_locale
    from .mail import site_gettext

    locale = chosen_locale(environ.get("HTTP_COOKIE"), site_locale)
    return {"_": site_gettext(locale), "current_locale": lambda: locale}


class _Broken:
    """A cached failure to build a site's app, so a broken folder is logged once per version."""

    def __init__(self, error):
        self.error = error


class Host:
    def __init__(self, instance, *, plugins: PluginHost | None = None, bind_database: bool = True):
        self.instance = instance
        if bind_database:
            init_database(instance.database_url)
        self.themes = ThemeRegistry(instance.themes_dir, auto_reload=not instance.production)
        for name, error in self.themes.errors.items():
            log.error("theme %s is broken and not offered: %s", name, error)
        self.registry = SiteRegistry(instance, themes=self.themes)
        self.plugins = plugins or PluginHost()
        hooks.bind(self.plugins, self.registry)  # for hooks called outside a site request (jobs, CLI)
        self.themes.add_template_dirs(self.plugins.template_dirs())
        self.cache_size = instance.app_cache_size
        pagecache.configure(instance)  # the process's page cache: page_cache_mb, page_cache_ttl
        self._apps: OrderedDict[str, tuple[object, object]] = OrderedDict()
        self._lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}
        # Behind nginx the client's address arrives in X-Forwarded-For; believe only the proxies we were told of.
        proxies = instance.trusted_proxies
        # Every answer (the host's own pages too) gets the baseline security headers; inside ProxyFix,
        # so HSTS sees the scheme a trusted proxy reported.
        guarded = csp.SecurityHeaders(self._dispatch, production=instance.production)
        self._entry = ProxyFix(guarded, x_for=proxies, x_proto=proxies) if proxies else guarded
        self._pages = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HOST_TEMPLATES)), autoescape=True)

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ, start_response):
        return self._entry(environ, start_response)

    def _dispatch(self, environ, start_response):
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        slug, via_domain, version = self.registry.resolve_version(host)
        if slug is None:
            if via_domain and environ.get("PATH_INFO") == "/.well-known/kamengsite-verification.txt":
                from .domains import verification_response  # a claimed domain pointed at us: answer its token

                return verification_response(normalize_host(host))(environ, start_response)
            return self._page("unknown_host.html", 404)(environ, start_response)
        app = self.app_for(slug, version=version)
        if isinstance(app, _Broken):
            return self._page("unavailable.html", 503)(environ, start_response)
        if app is None:
            return self._page("unknown_host.html", 404)(environ, start_response)
        config = app.extensions["kamengsite.site"].config
        if via_domain and normalize_host(host) not in config.domains:
            # The domain index is behind the folder (the domain moved away): never serve the wrong site.
            self.registry.forget_domain(host)
            return self._page("unknown_host.html", 404)(environ, start_response)
        if not config.enabled:
            from .opening import closed_page, served_while_off

            if not served_while_off(config, environ.get("PATH_INFO", "")):
                return self._page(closed_page(config), 503, site=config,
                                  **_page_language(environ, config.locale))(environ, start_response)
        return app(environ, start_response)

    def _page(self, template: str, status: int, **context) -> Response:
        body = self._pages.get_template(template).render(**context)
        response = Response(body, status=status, mimetype="text/html")
        response.headers["Content-Security-Policy"] = csp.HOST_PAGE_POLICY
        return response

    # -- site apps ----------------------------------------------------------

    def app_for(self, slug: str, *, version=None):
        """The current app of site ``slug``; None if the folder is gone, ``_Broken`` if it is invalid.

        ``version`` is the folder's ``registry.version(slug)`` if the caller has just taken it.
        """
        if version is None:
            version = self.registry.version(slug)
        if version is None:
            self._drop(slug)
            return None
        cached = self._apps.get(slug)
        if cached is not None and cached[0] == version:
            with self._lock:
                if slug in self._apps:
                    self._apps.move_to_end(slug)
            return cached[1]
        # One builder per site; other sites build in parallel.
        with self._lock:
            build_lock = self._build_locks.setdefault(slug, threading.Lock())
        with build_lock:
            cached = self._apps.get(slug)
            if cached is not None and cached[0] == version:
                return cached[1]
            app = self._build(slug)
            with self._lock:
                self._apps[slug] = (version, app)
                self._apps.move_to_end(slug)
                while len(self._apps) > self.cache_size:
                    evicted, _ = self._apps.popitem(last=False)
                    self._build_locks.pop(evicted, None)
        return app

    def _build(self, slug: str):
        try:
            config = self.registry.load(slug)
            site = self.registry.site_row(config)
            return create_site_app(config, site_id=site.id, instance=self.instance,
                                   themes=self.themes, plugins=self.plugins)
        except ConfigError as exc:
            log.error("site %s is broken and not served: %s", slug, exc)
            return _Broken(exc)
        except Exception as exc:  # a plugin failing at build time takes down its site only
            log.exception("site %s could not be built and is not served", slug)
            return _Broken(exc)

    def _drop(self, slug: str):
        with self._lock:
            self._apps.pop(slug, None)
            self._build_locks.pop(slug, None)

    def cached_sites(self) -> list[str]:
        return list(self._apps)

    def close(self):
        if not database.is_closed():
            database.close()
