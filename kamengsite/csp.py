"""The Content-Security-Policy of every site-app response that does not set its own.

Scripts run only from the site's own files, or inline with this request's nonce
(``csp_nonce()`` in templates; ``payments/action.html`` is the one user). Styles may be inline:
a theme's colours are an inline ``<style>``. Console pages keep their stricter policy
(``admin._console_headers``: no script at all) and the theme editor sets its own.
"""

from __future__ import annotations

import secrets

from flask import g

POLICY = ("default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data: https:; font-src 'self' data:; connect-src 'self'; frame-src 'self'; "
          "frame-ancestors 'self'; form-action 'self' https:; base-uri 'self'; object-src 'none'")
#: A page that used no nonce allows no inline script at all (and costs no random bytes).
POLICY_NO_INLINE_SCRIPT = POLICY.replace(" 'nonce-{nonce}'", "")


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
