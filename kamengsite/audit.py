"""The audit log: who did what in a site's console, when, from where. A core plugin.

* ``AuditEntry`` (``audit_entry``, a tenant table): the account (id and a copy of its username,
  kept when the account is deleted), an action (``products.edit``, ``keys.import``,
  ``cardkey.reveal``…), a target (``product:12``), small JSON details with every secret-looking
  field dropped, the client IP (``request.remote_addr``: the host's ProxyFix has already applied
  ``trusted_proxies``), the user agent, the response status and the time (UTC).
* ``record()`` writes one entry; code that knows more than the request (the card-key reveal) calls
  it, and the automatic entry for that request is then skipped.
* Automatic: every write (POST/PUT/PATCH/DELETE) under ``/admin/`` by a signed-in operator — any
  console blueprint, plugins' and the theme editor's JSON endpoints included — is recorded after
  its response, refused ones (4xx) too; so are sign-ins (success and failure) and sign-outs. No
  console module has to do anything.
* ``/admin/audit`` (审计日志): the site's own entries, searchable, newest first.

Entries are never deleted by the application (docs/audit.md).
"""

from __future__ import annotations

import datetime
import zoneinfo
import json
import logging
import re

import peewee
from flask import g, has_request_context, render_template, request, session
from flask_babel import format_datetime

from . import accounts, admin
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _l, current_locale
from .models import utcnow
from .tenancy import TenantModel

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PER_PAGE = 50
MAX_PAGE = 10_000  # an offset the databases take without overflow
MAX_VALUE = 200  # characters of one form value kept in the details
MAX_FIELDS = 40
MAX_DETAILS = 4000  # characters of the whole JSON
#: Field names whose values are never stored: passwords, secrets, keys, tokens, one-time codes.
SECRET_NAME = re.compile(r"pass|secret|key|token|otp|csrf|sealed|recovery|credential|(?:^|_)code$", re.IGNORECASE)
#: Blueprints whose forms are all about credentials (passwords under names like ``new``, TOTP
#: codes, recovery codes): their writes are recorded without any form values.
NO_DETAILS_BLUEPRINTS = frozenset({"admin_account"})
#: Where a console sign-in ends: the password form, and the second step (TOTP) when 2FA is on.
LOGIN_ENDPOINTS = frozenset({"admin.login", "admin_account.login_code"})
#: Fields that carry card keys under an innocent name: their values never enter the log.
CARD_KEY_FIELDS = {"admin.keys": ("text",)}
#: POSTs that change nothing (the editor's live preview): not recorded.
READ_ONLY = frozenset({"admin_theme.render"})
#: Readable names for the console's writes; ``{action}`` is the URL's action part.
ACTIONS = {
    "admin.product_new": "products.create",
    "admin.product_edit": "products.edit",
    "admin.categories": "categories.create",
    "admin.keys": "keys.import",
    "admin.logout": "logout",
    "admin_money.refund_page": "order.refund",
    "admin_money.refund_action": "refund.{action}",
    "admin_money.withdrawal_action": "withdrawals.{action}",
    "admin_money.balance": "withdrawals.request",
    "admin_money.prices": "prices.save_rule",
    "admin_money.delete_rule": "prices.delete_rule",
    "admin_plugins.toggle": "plugins.toggle",
    "admin_plugins.settings": "plugins.settings",
    "admin_sites.site_action": "sites.{action}",
    "admin_sites.approve": "sites.approve",
    "admin_sites.reject": "sites.reject",
    "owner.renew": "site.renew",
    "owner.change_level": "site.level",
    "admin_orders_keys.order_keys": "cardkey.reveal",  # refused ones only: a reveal records itself
}
#: Form or JSON fields that name what a write is about, when the URL does not.
TARGET_FIELDS = ("order_no", "page", "name", "domain", "theme")


class AuditEntry(TenantModel):
    account_id = peewee.IntegerField(null=True)
    username = peewee.CharField(max_length=64, default="")
    action = peewee.CharField(max_length=64)
    target = peewee.CharField(max_length=120, default="")
    details = peewee.TextField(default="")
    ip = peewee.CharField(max_length=45, default="")
    user_agent = peewee.CharField(max_length=255, default="")
    status = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "audit_entry"
        indexes = ((("site", "created_at"), False), (("site", "action", "created_at"), False),
                   (("site", "account_id", "created_at"), False))

    @property
    def refused(self) -> bool:
        return self.status >= 400

    def details_dict(self) -> dict:
        try:
            found = json.loads(self.details or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}


# -- writing ---------------------------------------------------------------------------------------


def record(action: str, *, target: str = "", details: dict | None = None, status: int = 200,
           account=None, username: str | None = None, site_id: int | None = None) -> AuditEntry:
    """Write one entry (in the current site scope unless ``site_id``); raises if it cannot be written,
    so a caller that must not act unaudited (the card-key reveal) fails closed.

    Inside a request: the IP and user agent are the request's, and the request's automatic
    entry is skipped (this one says more)."""
    ip = agent = ""
    if has_request_context():
        ip = (request.remote_addr or "")[:45]
        agent = (request.user_agent.string or "")[:255]
        g.audit_recorded = True
    fields = {"account_id": getattr(account, "id", None),
              "username": (username if username is not None else getattr(account, "username", ""))[:64],
              "action": action[:64], "target": (target or "")[:120], "details": dump_details(details or {}),
              "ip": ip, "user_agent": agent, "status": int(status), "created_at": utcnow()}
    if site_id is not None:
        fields["site"] = site_id
    return AuditEntry.create(**fields)


def clean_details(values: dict, drop=()) -> dict:
    """``values`` without secret-looking fields (and ``drop``): short scalars and short lists only."""
    kept = {}
    for name, value in list(values.items())[:MAX_FIELDS]:
        name = str(name)[:64]
        if SECRET_NAME.search(name) or name in drop:
            continue
        kept[name] = _short(value)
    return kept


def _short(value):
    if isinstance(value, (list, tuple)):
        return [_short(item) for item in value[:10]] if all(not isinstance(i, (dict, list)) for i in value) else "…"
    if isinstance(value, dict):
        return "…"  # a layout, a settings table: too big and may hold anything
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "…"


def dump_details(details: dict) -> str:
    """JSON of ``details``; fields dropped from the end (and ``_truncated`` set) until it fits ``MAX_DETAILS``."""
    items = [(str(k), v) for k, v in details.items()]
    text = json.dumps(dict(items), ensure_ascii=False, default=str)
    while len(text) > MAX_DETAILS and items:
        items = [item for item in items if item[0] != "_truncated"][:-1] + [("_truncated", True)]
        text = json.dumps(dict(items), ensure_ascii=False, default=str)
    return text


# -- the automatic entries -------------------------------------------------------------------------


def _request_details() -> dict:
    """The request's form (or JSON body), secrets and card keys left out; file names, not contents."""
    if request.blueprint in NO_DETAILS_BLUEPRINTS:
        return {}
    drop = CARD_KEY_FIELDS.get(request.endpoint or "", ())
    if request.is_json:
        body = request.get_json(silent=True)
        return clean_details(body, drop) if isinstance(body, dict) else {}
    form = {name: (values[0] if len(values) == 1 else values) for name, values in request.form.lists()}
    details = clean_details(form, drop)
    for name in drop:
        if (request.form.get(name) or "").strip():
            details[f"{name}_lines"] = sum(1 for line in request.form[name].splitlines() if line.strip())
    for name, storage in request.files.items(multi=True):
        if storage.filename and not SECRET_NAME.search(name):
            details[f"{name}_file"] = _short(storage.filename)
    return details


def _safe_details() -> dict:
    """The details, or none when the body cannot be read (too large: the 413 is the entry)."""
    try:
        return _request_details()
    except Exception:  # noqa: BLE001 - werkzeug raises again for a body it refused
        return {"_unreadable": True}


def action_name(endpoint: str | None, view_args: dict | None) -> str:
    """``admin.product_edit`` → ``products.edit``; otherwise the blueprint without ``admin_`` and the view."""
    view_args = view_args or {}
    if not endpoint:
        return "console.unknown"
    named = ACTIONS.get(endpoint)
    if named:
        return named.format(action=view_args.get("action", ""))
    blueprint, _sep, view = endpoint.rpartition(".")
    name = f"{blueprint.removeprefix('admin_') or 'console'}.{view}"
    if isinstance(view_args.get("action"), str):
        name += f".{view_args['action']}"
    return name


def target_of(view_args: dict | None, details: dict) -> str:
    """What the write is about: the URL's ids (``product:12``), else a naming form field."""
    for name, value in (view_args or {}).items():
        if name != "action":
            return f"{name.removesuffix('_id')}:{value}"
    for name in TARGET_FIELDS:
        value = details.get(name)
        if isinstance(value, (str, int)) and str(value):
            return f"{name}:{value}"
    return ""


def _capture_actor():
    """Before a console write: who is signed in (a log-out or a password change ends it in the view)."""
    if request.method in WRITE_METHODS and request.path.startswith("/admin/"):
        g.audit_actor = admin._current_operator()


def _record_request(response):
    """After a console write's response (its status known): one entry. Never breaks the response."""
    if (request.method not in WRITE_METHODS or not request.path.startswith("/admin/")
            or g.get("audit_recorded") or request.endpoint in READ_ONLY):
        return response
    try:
        if request.endpoint in LOGIN_ENDPOINTS:
            _record_login(response)
        else:
            actor = g.get("audit_actor") if "audit_actor" in g else admin._current_operator()
            if actor is not None:
                details = _safe_details()
                record(action_name(request.endpoint, request.view_args), account=actor,
                       target=target_of(request.view_args, details) if request.endpoint else request.path,
                       details=details, status=response.status_code)
    except Exception:  # noqa: BLE001 - the write itself is done; the log says the audit failed
        log.exception("could not record the audit entry of %s %s", request.method, request.path)
    return response


def _pending_login() -> dict | None:
    """The half-done sign-in (password right, TOTP code still to come), if the 2FA module has one."""
    try:
        from .admin_account import PENDING_KEY
    except ImportError:  # pragma: no cover - a build without 2FA
        return None
    data = session.get(PENDING_KEY)
    return data if isinstance(data, dict) else None


def _record_login(response):
    """``login.success``, ``login.password_ok`` (a TOTP code is asked next) or ``login.failure``."""
    step = "code" if request.endpoint != "admin.login" else "password"
    redirected = response.status_code in (302, 303)
    if redirected and session.get(admin.SESSION_KEY):
        account = admin._current_operator()
        if account is not None:
            record("login.success", account=account, details={"step": step}, status=response.status_code)
            return
    pending = _pending_login()
    pending_account = None
    if pending is not None:
        try:
            pending_account = accounts.Account.get_or_none(accounts.Account.id == int(pending.get("id")))
        except (TypeError, ValueError):
            pending_account = None
    if redirected and step == "password" and pending_account is not None:
        record("login.password_ok", account=pending_account, details={"next_step": "code"},
               status=response.status_code)
        return
    if step == "code":
        record("login.failure", account=pending_account, details={"step": step}, status=response.status_code)
        return
    tried = (request.form.get("username") or "").strip().lower()[:64]
    record("login.failure", username=tried, details={"username": tried, "step": step}, status=response.status_code)


# -- the console page ------------------------------------------------------------------------------

bp = admin.console_blueprint("admin_audit", __name__, "/admin/audit")


def _day_start(day: datetime.date, tz) -> datetime.datetime:
    """When ``day`` begins in ``tz``, as a stored (naive UTC) time."""
    start = datetime.datetime.combine(day, datetime.time(), tz)
    return start.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def _date(text: str | None) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat((text or "").strip()) if text else None
    except ValueError:
        return None


def search(*, account: str = "", action: str = "", since: datetime.date | None = None,
           until: datetime.date | None = None, text: str = "", tz: datetime.tzinfo = datetime.timezone.utc):
    """Entries of the current site scope matching every filter given, newest first.

    ``since``/``until`` are days of the time zone ``tz`` (the console: the site's; the CLI: UTC).
    """
    query = AuditEntry.select()
    if account:
        query = query.where(AuditEntry.username == account.strip().lower())
    if action:
        query = query.where(AuditEntry.action.startswith(action.strip()))
    if since:
        query = query.where(AuditEntry.created_at >= _day_start(since, tz))
    if until:
        query = query.where(AuditEntry.created_at < _day_start(until + datetime.timedelta(days=1), tz))
    if text:
        query = query.where(AuditEntry.target.contains(text.strip()) | AuditEntry.details.contains(text.strip()))
    return query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())


#: An entry's time to the second, in the site's timezone, as the language writes it.
_TIME_FORMATS = {"zh_CN": "yyyy-MM-dd HH:mm:ss", "en": "d MMM yyyy, HH:mm:ss"}


def shown_time(moment: datetime.datetime) -> str:
    """A stored (naive UTC) time as the log shows it: the site's timezone, with seconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return format_datetime(moment, _TIME_FORMATS.get(current_locale(), _TIME_FORMATS["en"]))


@bp.get("/")
@admin.operator_required
def index():
    args = request.args
    filters = {"account": (args.get("account") or "")[:64], "action": (args.get("action") or "")[:64],
               "since": args.get("since") or "", "until": args.get("until") or "", "q": (args.get("q") or "")[:100]}
    since, until = _date(filters["since"]), _date(filters["until"])
    bad_date = bool(filters["since"] and since is None) or bool(filters["until"] and until is None)
    page = min(MAX_PAGE, max(1, admin._int_or_none(args.get("page")) or 1))
    found = list(search(account=filters["account"], action=filters["action"], since=since, until=until,
                        text=filters["q"], tz=zoneinfo.ZoneInfo(current_site().config.timezone))
                 .offset((page - 1) * PER_PAGE).limit(PER_PAGE + 1))
    return render_template("admin/audit.html", entries=found[:PER_PAGE], more=len(found) > PER_PAGE, page=page,
                           filters=filters, bad_date=bad_date, shown_time=shown_time)


# -- plugin ----------------------------------------------------------------------------------------


@hookimpl
def admin_menu(site):
    return [(_l("Audit log"), "admin_audit.index")]


@hookimpl
def prepare_site_app(app, site):
    """The page, the card-key reveal (``admin_orders_keys``) and the automatic entries, on every site."""
    if app.extensions.get("kamengsite.site") is None:
        return
    from . import admin_orders_keys

    app.register_blueprint(bp)
    app.register_blueprint(admin_orders_keys.bp)
    app.before_request(_capture_actor)
    app.after_request(_record_request)
