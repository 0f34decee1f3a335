"""The Content-Security-Policy of every site-app response that does not set its own, and the
baseline security headers of every response the host sends (``SecurityHeaders``).

Scripts run only from the site's own files, or inline with this request's nonce
(``csp_nonce()`` in templates; ``payments/action.html`` is the one user). Styles may be inline:
a theme's colours are an inline ``<style>``. Console pages keep their stricter policy
(``admin._console_headers``: no script at all) and the theme editor sets its own.

``SecurityHeaders`` wraps the host's dispatch and each site app, so *every* answer — pages, JSON,
static files, error pages, the host's own pages (unknown host, closed or broken site) and answers
served from the page cache — carries ``X-Content-Type-Options``, ``Referrer-Policy`` and
``X-Frame-Options`` unless the response chose its own (the console is stricter), plus HSTS when an
instance in production is reached over HTTPS (directly or through a trusted proxy).
"""

from __future__ import annotations

import secrets

from flask import g

POLICY = ("default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data: https:; font-src 'self' data:; connect-src 'self'; frame-src 'self'; "
          "frame-ancestors 'self'; form-action 'self' https:; base-uri 'self'; object-src 'none'")
#: A page that used no nonce allows no inline script at all (and costs no random bytes).
POLICY_NO_INLINE_SCRIPT = POLICY.replace(" 'nonce-{nonce}'", "")
#: The host's own pages (unknown host, closed, unavailable): static text with an inline style.
HOST_PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
#: Set on every response that has not set its own value (the console sets stricter ones).
BASELINE_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("X-Frame-Options", "SAMEORIGIN"),  # the editor frames the site's own pages; nobody else may
)
#: One year; no ``includeSubDomains``: sub-sites on other names may not all have certificates yet.
HSTS = ("Strict-Transport-Security", "max-age=31536000")


def csp_nonce() -> str:
    """This request's nonce (template global): ``<script nonce="{{ csp_nonce() }}">``.

    Made on first use; the page cache never stores a page that used it.
    """
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def add_policy(response):
    """after_request: the storefront's policy, unless a blueprint already set one (console, editor)."""
    if "Content-Security-Policy" not in response.headers:
        nonce = g.get("csp_nonce")
        response.headers["Content-Security-Policy"] = (POLICY.format(nonce=nonce) if nonce
                                                       else POLICY_NO_INLINE_SCRIPT)
    return response


def install(app):
    """Give a site app the policy and the ``csp_nonce`` template global."""
    app.jinja_env.globals.setdefault("csp_nonce", csp_nonce)
    app.after_request(add_policy)


class SecurityHeaders:
    """WSGI middleware: ``BASELINE_HEADERS`` on every response lacking them; HSTS over HTTPS in production.

    At the WSGI level rather than ``after_request`` so that answers Flask never sees (the page
    cache's, the host's own pages) get them too. ``wsgi.url_scheme`` is already the client's
    scheme here when a trusted proxy said so (``ProxyFix`` runs first).
    """

    def __init__(self, app, *, production: bool):
        self.app = app
        self.production = bool(production)

    def __call__(self, environ, start_response):
        https = self.production and environ.get("wsgi.url_scheme") == "https"

        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _value in headers}
            extra = [(name, value) for name, value in BASELINE_HEADERS if name.lower() not in present]
            if https and HSTS[0].lower() not in present:
                extra.append(HSTS)
            return start_response(status, list(headers) + extra, exc_info)

        return self.app(environ, start)
