"""The operator's payments page (/admin/payments/): a core plugin, on the main site only.

It shows what the instance's ``config.toml`` made of the payment channels — every installed
channel, its configured profiles with their settings (secrets masked by
``Profile.public_settings()``), the profiles left out for a configuration error, and each
profile's notify URL — and the latest gateway notifications that were refused or acknowledged
without a payment (``notice_log``), filtered by channel. It writes nothing.

Access is the console's: ``admin.operator_required``, same headers, same layout.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request, url_for

from . import admin, notice_log
from .hookspecs import hookimpl
from .payments import MASK

bp = Blueprint("admin_payments", __name__, url_prefix="/admin/payments")
bp.after_request(admin._console_headers)  # no-store, no framing, no script: as every console page
bp.context_processor(admin._console_context)  # the layout's log-out form

NOTICE_LIMIT = 200
SHOWN_VALUE_MAX = 80  # long public keys are cut on the page; secrets never get here


def _registry():
    return current_app.extensions.get("kamengsite.payments")


def _shown(value) -> str:
    """A setting as text for the page: lists joined, long values cut."""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    text = str(value)
    return text if len(text) <= SHOWN_VALUE_MAX else text[:SHOWN_VALUE_MAX] + "…"


def _profile_view(channel, profile) -> dict:
    settings = profile.public_settings()  # the one place secrets are masked: never read profile.settings here
    return {
        "name": profile.name,
        "label": profile.label or channel.name or channel.id,
        "settings": [(key, MASK if value == MASK else _shown(value)) for key, value in sorted(settings.items())],
        "notify_url": url_for("payments.notify", channel=channel.id, profile=profile.name, _external=True),
        "pay_types": ", ".join(t.name for t in channel.offered_types(profile)),
    }


def _channel_views(registry) -> list[dict]:
    """Every installed channel with its configured profiles and its profiles' configuration errors."""
    views = []
    for channel in registry.channels.values():
        profiles = [_profile_view(channel, p) for (c, _), p in registry.profiles.items() if c == channel.id]
        errors = [(key, message) for key, message in sorted(registry.errors.items())
                  if key.split(".")[1:2] == [channel.id]]
        views.append({"id": channel.id, "name": channel.name or channel.id, "refund": channel.supports_refund,
                      "profiles": profiles, "errors": errors})
    return views


@bp.get("/")
@admin.operator_required
def index():
    registry = _registry()
    channels = _channel_views(registry) if registry is not None else []
    known = {c["id"] for c in channels}
    # Errors naming a channel nobody installed (a typo in config.toml) still need to be seen.
    stray_errors = sorted((key, message) for key, message in (registry.errors.items() if registry else ())
                          if key.split(".")[1:2] and key.split(".")[1] not in known)
    wanted = request.args.get("channel", "")
    choices = sorted(known | set(notice_log.notice_channels()))
    if wanted not in choices:
        wanted = ""
    return render_template("admin/payments.html", channels=channels, stray_errors=stray_errors,
                           notices=notice_log.latest_notices(wanted, NOTICE_LIMIT), choices=choices,
                           wanted=wanted, limit=NOTICE_LIMIT)


@hookimpl
def prepare_site_app(app, site):
    """Beside the console, on the main site only: on every sub-site /admin/payments/ stays a 404."""
    context = app.extensions.get("kamengsite.site")
    if context is None or site.slug != context.instance.main_site:
        return
    app.register_blueprint(bp)
