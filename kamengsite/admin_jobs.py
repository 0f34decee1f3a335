"""后台任务 (/admin/jobs): the progress and results of a site's long operations (a core plugin).

A key import of a file (started on a product's key page) and an order export (started here)
each become a ``background.ConsoleJob``; its page refreshes itself every two seconds (a meta
refresh: the console runs no script) until the worker is done, then shows the report or the
download. A job is visible to its own site's console only, and to staff only if they may use
its area (imports: ``catalogue``; exports: ``orders``).
"""

from __future__ import annotations

from flask import abort, g, redirect, render_template, request, send_file, url_for
from flask_wtf import FlaskForm

from . import admin, background, permissions
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _l

bp = admin.console_blueprint("admin_jobs", __name__, "/admin/jobs")

AREA_OF_KIND = {"key_import": "catalogue", "order_export": "orders"}
KIND_LABELS = {"key_import": _l("Card-key import"), "order_export": _l("Order export")}
STATUS_LABELS = {"queued": _l("Waiting"), "running": _l("Running"), "done": _l("Done"), "failed": _l("Failed")}
ORDER_STATUSES = ("", "created", "paid", "delivered", "expired", "refund_pending", "refunded", "cancelled")


class ActionForm(FlaskForm):
    pass


def _site_id() -> int:
    return current_site().site_id


def _kinds_allowed() -> list[str]:
    return [kind for kind, area in AREA_OF_KIND.items() if permissions.allowed(g.operator, area)]


def _job_or_404(job_id: int) -> background.ConsoleJob:
    job = background.reload(_site_id(), job_id)
    if job is None or job.kind not in _kinds_allowed():
        abort(404)
    return job


@bp.get("/")
@admin.operator_required
def index():
    kinds = _kinds_allowed()
    return render_template("admin/jobs.html", jobs=background.recent(_site_id(), kinds) if kinds else [],
                           kinds=KIND_LABELS, statuses=STATUS_LABELS, action=ActionForm(formdata=None),
                           can_export="order_export" in kinds, order_statuses=ORDER_STATUSES)


@bp.get("/<int:job_id>")
@admin.operator_required
def show(job_id):
    job = _job_or_404(job_id)
    return render_template("admin/job.html", job=job, kinds=KIND_LABELS, statuses=STATUS_LABELS,
                           refresh=job.status in ("queued", "running"), reason=admin._reason)


@bp.get("/<int:job_id>/download")
@admin.operator_required
def download(job_id):
    job = _job_or_404(job_id)
    path = background.export_file(current_site().instance, job)
    if path is None:
        abort(404)
    return send_file(path, mimetype="text/csv", as_attachment=True, download_name=f"orders-{job.id}.csv")


@bp.post("/export-orders")
@admin.operator_required
def export_orders():
    permissions.forbid_unless("orders")
    if not ActionForm().validate_on_submit():
        abort(400)
    status = request.form.get("status", "")
    if status not in ORDER_STATUSES:
        abort(400)
    site = current_site()
    job = background.start_order_export(site.instance, site.site_id, g.operator.id, status)
    return redirect(url_for("admin_jobs.show", job_id=job.id))


@hookimpl
def admin_menu(site):
    return [(_l("Background jobs"), "admin_jobs.index")]


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.register_blueprint(bp)
