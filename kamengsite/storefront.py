"""The storefront: a core plugin that gives every site its shop pages."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from .app import current_site
from .hookspecs import hookimpl

bp = Blueprint("storefront", __name__)


@bp.get("/")
def home():
    return render_template("home.html")


@bp.get("/healthz")
def healthz():
    site = current_site()
    return jsonify(site=site.slug, ok=True)


@hookimpl
def prepare_site_app(app, site):
    app.register_blueprint(bp)
