"""The site app factory: one site folder → one branded Flask app.

``create_site_app`` can be called by anyone, so a single site can also run on
its own (``flask --app 'kamengsite.app:standalone("shop1")' run``). The host
calls it lazily and caches the result (see ``host.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from flask import Flask, g, render_template, request
from flask.sessions import SecureCookieSessionInterface

from . import csp, i18n, pagecache
from .config import SiteConfig
from .db import database, is_sqlite
from .tenancy import _scope


@dataclass(frozen=True)
class SiteContext:
    """What a request handler needs to know about the site it serves."""

    config: SiteConfig
    site_id: int
    theme: object
    instance: object

    @property
    def slug(self) -> str:
        return self.config.slug


class SiteSessionInterface(SecureCookieSessionInterface):
    """Session cookies signed with a key and salt of this site only: a login on A is void on B."""

    def __init__(self, slug: str):
        self.salt = f"kamengsite-session:{slug}"
        self._serializer = None

    def get_signing_serializer(self, app):
        # One interface per site app and the app's key never changes: build the serializer once,
        # not on every request (it is a tenth of an anonymous page's cost otherwise).
        if self._serializer is None:
            self._serializer = super().get_signing_serializer(app)
        return self._serializer

    def get_cookie_secure(self, app) -> bool:
        # Secure in production, and on any request that came over HTTPS — behind nginx that is what
        # a trusted proxy's X-Forwarded-Proto says (ProxyFix in host.py); an untrusted one is ignored.
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def site_secret(instance_secret: str, slug: str, purpose: str = "session") -> str:
    return hmac.new(instance_secret.encode(), f"{purpose}:{slug}".encode(), hashlib.sha256).hexdigest()


def create_site_app(config: SiteConfig, *, site_id: int, instance, themes, plugins) -> Flask:
    theme = themes.get(config.theme)
    app = Flask(
        f"kamengsite.sites.{config.slug}",
        root_path=str(config.path),
        instance_path=str(instance.path),
        static_folder=str(theme.static_dir),
        static_url_path="/static",
    )
    app.config.update(
        SECRET_KEY=site_secret(instance.secret_key, config.slug),
        SESSION_COOKIE_NAME="ks_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(instance.production),
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.session_interface = SiteSessionInterface(config.slug)
    app.json.ensure_ascii = False
    app.jinja_env = themes.environment(config.theme)  # shared per theme, not per site
    site = SiteContext(config=config, site_id=site_id, theme=theme, instance=instance)
    app.extensions["kamengsite.site"] = site
    hook = plugins.hook_for(config.plugins)
    app.extensions["kamengsite.hook"] = hook
    app.extensions["kamengsite.plugins"] = plugins  # instance-wide registries (payment channels) need every plugin

    @app.context_processor
    def _site_context():
        extra = {"site": config, "theme": theme}
        for mapping in hook.site_template_context(site=config):
            extra.update(mapping or {})
        return extra

    @app.before_request
    def _enter_site_scope():
        g._kamengsite_scope = _scope.set(site_id)

    @app.teardown_request
    def _leave_site_scope(exc):
        token = g.pop("_kamengsite_scope", None)
        if token is not None:
            _scope.reset(token)
        if not is_sqlite() and not database.is_closed():
            database.close()  # back to the pool; SQLite keeps its per-thread connection

    @app.errorhandler(404)
    def _not_found(exc):
        return render_template("404.html"), 404

    @app.errorhandler(500)
    def _server_error(exc):
        # Never the exception's text or a traceback (Flask has logged it); if even the page fails
        # (a broken theme or plugin context), a fixed plain sentence rather than the server's default.
        try:
            return render_template("500.html"), 500
        except Exception:  # noqa: BLE001 - the error page must not raise
            app.logger.exception("the 500 page itself failed")
            return "Internal Server Error\n", 500, {"Content-Type": "text/plain; charset=utf-8"}

    i18n.install(app, plugins, themes)
    csp.install(app)  # before the plugins: their after_request (console, editor) set their own policy first
    app.wsgi_app = pagecache.FrontDoor(app, app.wsgi_app)  # cached anonymous pages skip Flask's request
    # Outermost: cached pages and standalone sites get the baseline headers too (the host adds them as well).
    app.wsgi_app = csp.SecurityHeaders(app.wsgi_app, production=instance.production)
    hook.prepare_site_app(app=app, site=config)
    return app


def current_site() -> SiteContext:
    """The site of the current request."""
    from flask import current_app

    return current_app.extensions["kamengsite.site"]


def standalone(slug: str, instance_path=None) -> Flask:
    """Run one site on its own, without the host's dispatch: ``flask --app 'kamengsite.app:standalone("shop1")'``."""
    from .host import Host
    from .instance import Instance

    host = Host(Instance.load(instance_path))
    return host.app_for(slug)
