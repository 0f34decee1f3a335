"""Opening sub-sites (分站开通) and their lifecycle.

Opening
    A person applies on the main site (``/open``, see ``opening_routes.py``): the sub-domain,
    a shop name, a site template, a level, a contact and whatever the operator requires
    (real name, business information), and the owner's console login — the password is
    hashed at once and never stored plain. The application (``site_application``) is
    *requested*; the operator approves or rejects it with a reason. Approving creates the
    site folder from the template (``SiteRegistry.create``), writes the level to its
    ``site.toml``, creates the owner's console account with the stored hash, starts the
    level's term (``site.expires_at``) and tells the applicant.

    A signed-in member choosing a *self-service* level pays the level's opening fee from
    their wallet and the site opens at once: the application row and the wallet debit are
    one database transaction (a short wallet writes nothing), and if the site cannot be
    created afterwards the debit is reversed — never a site without payment, never a
    payment without a site. Each submitted form carries a random ``submit_key`` (unique),
    and a name is held by one application at a time (``active_slug``, unique), so a
    double submit — even two at once — opens one site and charges once.

Lifecycle
    ``[settings.lifecycle]`` in a site's ``site.toml`` records why a site is off: state
    ``suspended`` (by the operator), ``expired`` (its term ran out) or ``closed`` (for good),
    always together with ``enabled = false`` in the same write, so the host shows the
    closed page and no checkout runs. Orders, keys and ledger balances are not touched.
    ``expire_sites`` (a periodic job, and ``kamengsite site expire``) turns off sites past
    their term; ``renew`` pays the level's renewal fee from the site's available balance (or
    the owner's member wallet), extends the term and turns an expired site back on;
    ``change_level`` moves a site to another level, paying the difference of the opening
    fees from its balance.

Money is integer fen; every payment is a ledger transaction of kind ``adjustment``
(platform revenue on the other side) with a reference that makes it happen once.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import dataclass

import jsonschema
import peewee
from flask import has_request_context

from . import ledger
from .accounts import Account, AccountError, check_password_strength, check_username, hash_password
from .config import check_slug
from .db import database, retry_transient
from .errors import ConfigError, KamengsiteError
from .i18n import _, _l, format_money, format_when
from .levels import Level, all_levels, get_level
from .models import BaseModel, Site, utcnow
from .tenancy import acting_for, all_sites

log = logging.getLogger(__name__)

STATUSES = ("requested", "approving", "approved", "rejected")
STATUS_LABELS = {"requested": _l("Awaiting review"), "approving": _l("Being opened"), "approved": _l("Opened"),
                 "rejected": _l("Rejected")}
#: Statuses in which an application holds its name (``active_slug``).
HOLDING = ("requested", "approving", "approved")
#: An approval that has not finished after this long (a crashed process) may be taken over.
APPROVING_STALE = datetime.timedelta(minutes=10)

#: What the operator may require besides the contact, always required.
REQUIRABLE_FIELDS = ("real_name", "business_info")
FIELD_LABELS = {"real_name": _l("Real name"), "business_info": _l("Business information")}
DEFAULT_REQUIRED = ("real_name",)
#: ``[settings.opening]`` in the main site's site.toml: what applicants must fill in, which templates are offered.
OPENING_KEY = "opening"
OPENING_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "required_fields": {"type": "array", "items": {"enum": list(REQUIRABLE_FIELDS)}, "uniqueItems": True},
        "templates": {"type": "array", "items": {"type": "string", "maxLength": 32}, "uniqueItems": True},
    },
}
_opening_validator = jsonschema.Draft202012Validator(OPENING_SCHEMA)
#: Site templates never offered to applicants (the main site's own).
EXCLUDED_TEMPLATES = frozenset({"main"})
CONTACT_RE = r"^(?:[^@\s]+@[^@\s]+\.[^@\s]+|1\d{10})$"

#: ``[settings.lifecycle]`` in a sub-site's site.toml: why it is off (absent: it is on).
LIFECYCLE_KEY = "lifecycle"
LIFECYCLE_LABELS = {"active": _l("Open for business"), "suspended": _l("Suspended"), "expired": _l("Term expired"),
                    "closed": _l("Closed")}
#: ``site_application.notice``: how the applicant was told the decision (a code; shown by its label).
NOTICE_LABELS = {"mailed": _l("Notified by email"), "not_email": _l("Not sent: the contact is not an email address"),
                 "no_smtp": _l("Not sent: no mail server is configured"), "mail_failed": _l("Sending the email failed")}


class OpeningError(KamengsiteError):
    """Refused as asked; the message is meant for the person who asked (in their language).

    ``field``: the form field the problem is about (``slug``), if any.
    """

    def __init__(self, message, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class SiteApplication(BaseModel):
    slug = peewee.CharField(max_length=32)
    active_slug = peewee.CharField(max_length=32, null=True, unique=True)
    submit_key = peewee.CharField(max_length=64, unique=True)
    name = peewee.CharField(max_length=60)
    template = peewee.CharField(max_length=32)
    level = peewee.CharField(max_length=32)
    parent = peewee.ForeignKeyField(Site, null=True, on_delete="RESTRICT", backref="+")
    contact = peewee.CharField(max_length=120)
    real_name = peewee.CharField(max_length=60, default="")
    business_info = peewee.TextField(default="")
    username = peewee.CharField(max_length=32)
    password_hash = peewee.CharField(max_length=255)
    member_id = peewee.IntegerField(null=True)
    self_service = peewee.BooleanField(default=False)
    fee_fen = peewee.BigIntegerField(default=0)
    status = peewee.CharField(max_length=16, default="requested")
    reason = peewee.TextField(default="")
    notice = peewee.CharField(max_length=120, default="")
    site = peewee.ForeignKeyField(Site, null=True, on_delete="SET NULL", backref="+")
    applicant_ip = peewee.CharField(max_length=45, default="")
    created_at = peewee.DateTimeField(default=utcnow)
    decided_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "site_application"

    def __repr__(self):  # never the password hash
        return f"<SiteApplication {self.id} {self.slug!r} {self.status}>"

    @property
    def status_label(self) -> str:
        return str(STATUS_LABELS.get(self.status, self.status))

    @property
    def notice_label(self) -> str:
        """How the applicant was told, in the reader's language (older rows hold the text itself)."""
        return str(NOTICE_LABELS.get(self.notice, self.notice))

    @property
    def payment_reference(self) -> str:
        return f"opening:{self.id}"


_registries: dict[str, object] = {}
_registries_lock = threading.Lock()


def registry_for(instance):
    """A ``SiteRegistry`` of ``instance`` for code running outside the host (site apps, jobs), one per process.

    Site apps do not see the host's own registry; this one writes the same folders and
    index, and every process notices the changed folders on its next request.
    """
    from .sites import SiteRegistry
    from .themes import ThemeRegistry

    key = str(instance.path)
    registry = _registries.get(key)
    if registry is None:
        with _registries_lock:
            registry = _registries.get(key)
            if registry is None:
                registry = _registries[key] = SiteRegistry(instance, themes=ThemeRegistry(instance.themes_dir))
    return registry


def _now(now=None) -> datetime.datetime:
    # Whole seconds: MariaDB's DATETIME drops the fraction, and a conditional update must
    # compare against exactly what was stored.
    return (now or utcnow()).replace(microsecond=0)


# -- what the operator requires ---------------------------------------------------------


@dataclass(frozen=True)
class OpeningSettings:
    required_fields: tuple = DEFAULT_REQUIRED
    templates: tuple = ()  # empty: every template but the main site's


def opening_settings(main_config) -> OpeningSettings:
    """``[settings.opening]`` of the main site; a broken table is logged and the defaults apply."""
    raw = (main_config.settings or {}).get(OPENING_KEY, {}) if main_config is not None else {}
    errors = list(_opening_validator.iter_errors(raw))
    if errors:
        log.error("%s: settings.%s is invalid (%s); using the defaults", main_config.config_file, OPENING_KEY,
                  errors[0].message)
        return OpeningSettings()
    return OpeningSettings(required_fields=tuple(raw.get("required_fields", DEFAULT_REQUIRED)),
                           templates=tuple(raw.get("templates", ())))


def offered_templates(registry, settings: OpeningSettings) -> list[str]:
    names = [t for t in registry.templates() if t not in EXCLUDED_TEMPLATES]
    if settings.templates:
        names = [t for t in names if t in settings.templates]
    return names


# -- checking an application ------------------------------------------------------------


def check_slug_available(registry, slug: str) -> str:
    """The slug, if it is a valid site name that no site and no open application holds."""
    slug = (slug or "").strip().lower()
    try:
        check_slug(slug)
    except ConfigError:
        raise OpeningError(_("Sub-domain: 1-32 lowercase letters, digits and \"-\", not starting or ending with "
                             "\"-\", and not a reserved name"), field="slug") from None
    if slug == registry.main_site or (registry.root / slug).exists() or Site.get_or_none(Site.slug == slug):
        raise OpeningError(_("The sub-domain \"%(slug)s\" is taken, please choose another", slug=slug), field="slug")
    if SiteApplication.select().where(SiteApplication.active_slug == slug).exists():
        raise OpeningError(_("Someone has already applied for the sub-domain \"%(slug)s\", please choose another",
                             slug=slug), field="slug")
    return slug


def _checked(registry, applicant: dict, settings: OpeningSettings, parent: Site | None) -> dict:
    """The application row's values from what the applicant typed; OpeningError names the problem."""
    slug = check_slug_available(registry, applicant.get("slug", ""))
    name = (applicant.get("name") or "").strip()
    if not name or len(name) > 60:
        raise OpeningError(_("Shop name: 1 to 60 characters"))
    template = applicant.get("template", "")
    if template not in offered_templates(registry, settings):
        raise OpeningError(_("Please choose a site template"))
    level = get_level(applicant.get("level", ""))
    if level is None:
        raise OpeningError(_("Please choose a sub-site level"))
    contact = (applicant.get("contact") or "").strip()
    if not re.match(CONTACT_RE, contact) or len(contact) > 120:
        raise OpeningError(_("Please enter a valid email address or 11-digit mobile number"))
    values = {"real_name": (applicant.get("real_name") or "").strip()[:60],
              "business_info": (applicant.get("business_info") or "").strip()[:500]}
    for key in settings.required_fields:
        if not values.get(key):
            raise OpeningError(_("%(field)s is required", field=FIELD_LABELS[key]))
    try:
        username = check_username(applicant.get("username", ""))
        check_password_strength(applicant.get("password") or "")
    except AccountError as exc:
        raise OpeningError(_account_message(exc)) from None
    return dict(slug=slug, active_slug=slug, name=name, template=template, level=level.code,
                parent=parent.id if parent is not None else None, contact=contact, username=username,
                # Hashed here: the plain password goes no further than this function.
                password_hash=hash_password(applicant["password"]), **values)


def _account_message(exc: AccountError) -> str:
    text = str(exc)
    if "password too short" in text:
        return _("The console password needs at least 10 characters")
    if "password too long" in text:
        return _("The console password is too long")
    if "whitespace" in text:
        return _("The console password may not start or end with a space")
    return _("Console username: 2-32 of lowercase letters, digits, \"_\", \".\" and \"-\", starting with a letter "
             "or digit")


def _parent_site(registry, parent_slug: str | None) -> Site:
    """The site new sites are opened under: the main site, or a site whose level may open children."""
    slug = parent_slug or registry.main_site
    parent = Site.get_or_none(Site.slug == slug)
    if parent is None:
        raise OpeningError(_("The parent site does not exist"))
    if slug != registry.main_site:
        level = get_level(parent.level)
        if level is None or not level.may_open_children or parent.status != "active":
            raise OpeningError(_("This site may not open sub-sites of its own"))
    return parent


# -- applying -------------------------------------------------------------------------------


def find_by_submit_key(submit_key: str) -> SiteApplication | None:
    return SiteApplication.get_or_none(SiteApplication.submit_key == submit_key) if submit_key else None


def _check_submit_key(submit_key: str) -> str:
    if not isinstance(submit_key, str) or not 16 <= len(submit_key) <= 64:
        raise OpeningError(_("The form has expired, please reload the page and submit again"))
    return submit_key


def submit_application(registry, applicant: dict, *, submit_key: str, settings: OpeningSettings | None = None,
                       member_id: int | None = None, parent_slug: str | None = None,
                       applicant_ip: str = "") -> SiteApplication:
    """Record an application for the operator to decide; the same ``submit_key`` again returns the first."""
    _check_submit_key(submit_key)
    existing = find_by_submit_key(submit_key)
    if existing is not None:
        return existing
    values = _checked_once(registry, applicant, settings, parent_slug, submit_key)
    if isinstance(values, SiteApplication):
        return values

    def write():
        with database.atomic():
            return SiteApplication.create(submit_key=submit_key, member_id=member_id,
                                          applicant_ip=(applicant_ip or "")[:45], **values)

    return _insert(write, submit_key, values["slug"])[0]


def open_self_service(registry, applicant: dict, *, submit_key: str, member_id: int,
                      settings: OpeningSettings | None = None, parent_slug: str | None = None,
                      applicant_ip: str = "", now=None) -> SiteApplication:
    """Pay the opening fee from the member's wallet and open the site at once.

    The application row and the debit commit together (a short wallet writes nothing);
    a site that cannot be created gets its fee back. The same ``submit_key`` again (a
    double submit, even concurrent) returns the first application and charges nothing.
    """
    _check_submit_key(submit_key)
    existing = find_by_submit_key(submit_key)
    if existing is not None:
        return existing
    if not isinstance(member_id, int) or isinstance(member_id, bool) or member_id <= 0:
        raise OpeningError(_("Sign in to your member account to open a site yourself"))
    values = _checked_once(registry, applicant, settings, parent_slug, submit_key)
    if isinstance(values, SiteApplication):
        return values
    level = get_level(values["level"])
    if not level.self_service:
        raise OpeningError(_("The \"%(level)s\" level needs review and cannot be opened instantly", level=level.name))
    fee = level.opening_fee_fen
    # A member belongs to the site they signed in on, which is the site the new one opens under.
    wallet = _wallet(values["parent"], member_id) if fee else None
    revenue = ledger.account("platform_revenue") if fee else None

    def write():
        with database.atomic():
            application = SiteApplication.create(submit_key=submit_key, member_id=member_id, self_service=True,
                                                 fee_fen=fee, applicant_ip=(applicant_ip or "")[:45], **values)
            if fee:
                ledger.post_in_transaction("adjustment", application.payment_reference,
                                           [(wallet, -fee), (revenue, fee)],
                                           memo=_("Opening sub-site %(slug)s (%(level)s)", slug=values["slug"],
                                                  level=level.name))
            return application

    try:
        application, created = _insert(write, submit_key, values["slug"])
    except ledger.InsufficientFunds:
        raise OpeningError(_("Insufficient balance: opening \"%(level)s\" costs ¥%(amount)s", level=level.name,
                             amount=format_money(fee))) from None
    if not created:
        return application  # the same form, submitted again: its first submit opens the site
    return approve(registry, application.id, now=now)


def _checked_once(registry, applicant, settings, parent_slug, submit_key) -> dict | SiteApplication:
    """The checked values, or the application this very form already made: the first of two
    concurrent submits may have taken the name between our first look and the check."""
    try:
        return _checked(registry, applicant, settings or OpeningSettings(), _parent_site(registry, parent_slug))
    except OpeningError:
        existing = find_by_submit_key(submit_key)
        if existing is not None:
            return existing
        raise


def _insert(write, submit_key: str, slug: str) -> tuple[SiteApplication, bool]:
    """(the application, whether this call created it)."""
    try:
        return retry_transient(write), True
    except peewee.IntegrityError:
        existing = find_by_submit_key(submit_key)
        if existing is not None:
            return existing, False
        raise OpeningError(_("Someone has already applied for the sub-domain \"%(slug)s\", please choose another",
                             slug=slug), field="slug") from None


# -- deciding -------------------------------------------------------------------------------


def get_application(application_id: int) -> SiteApplication:
    application = SiteApplication.get_or_none(SiteApplication.id == application_id)
    if application is None:
        raise OpeningError(_("No application number %(id)s", id=application_id))
    return application


def approve(registry, application_id: int, *, now=None, notify: bool = True) -> SiteApplication:
    """Create the site of a requested application; approving an approved one again changes nothing."""
    now = _now(now)
    application = _claim(application_id, now)
    if application.status == "approved":
        return application
    try:
        site = _create_site(registry, application, now)
    except Exception as exc:
        reason = exc.args[0] if isinstance(exc, KamengsiteError) and exc.args else type(exc).__name__
        log.warning("opening site %s (application %s) failed: %s", application.slug, application.id, reason)
        if application.self_service and _paid(application):
            _refund(application)
            message = _("Opening failed, the fee was refunded: %(reason)s", reason=reason)
            _finish(application, "rejected", now, reason=message)
            raise OpeningError(message) from None
        SiteApplication.update(status="requested").where(
            (SiteApplication.id == application.id) & (SiteApplication.status == "approving")).execute()
        raise OpeningError(_("Opening failed: %(reason)s", reason=reason)) from None
    application = _finish(application, "approved", now, site=site.id)
    if notify:
        application.notice = _notify(registry.instance, application)
    return application


def reject(registry, application_id: int, reason: str, *, now=None, notify: bool = True) -> SiteApplication:
    """Refuse a requested application with a reason; a fee already paid (self-service) goes back."""
    reason = (reason or "").strip()
    if not reason:
        raise OpeningError(_("Please give a reason for the rejection"))
    if len(reason) > 500:
        raise OpeningError(_("The reason for the rejection is at most 500 characters"))
    now = _now(now)
    application = get_application(application_id)
    if application.status == "rejected":
        return application
    changed = SiteApplication.update(status="rejected", reason=reason, decided_at=now, active_slug=None).where(
        (SiteApplication.id == application_id) & (SiteApplication.status == "requested")).execute()
    if not changed:
        raise OpeningError(_("Application %(id)s is \"%(status)s\" and cannot be rejected", id=application_id,
                             status=get_application(application_id).status_label))
    application = get_application(application_id)
    if application.self_service and _paid(application):
        _refund(application)
    if notify:
        application.notice = _notify(registry.instance, application)
    return application


def _claim(application_id: int, now) -> SiteApplication:
    """Take the application for approval (requested → approving): one approver at a time."""
    takeable = (SiteApplication.status == "requested") | (
        (SiteApplication.status == "approving") & (SiteApplication.decided_at < now - APPROVING_STALE))
    changed = SiteApplication.update(status="approving", decided_at=now).where(
        (SiteApplication.id == application_id) & takeable).execute()
    application = get_application(application_id)
    if changed or application.status == "approved":
        return application
    raise OpeningError(_("Application %(id)s is \"%(status)s\" and cannot be approved", id=application_id,
                         status=application.status_label))


def _finish(application, status: str, now, *, site: int | None = None, reason: str = "") -> SiteApplication:
    changes = {"status": status, "decided_at": now}
    if site is not None:
        changes["site"] = site
    if reason:
        changes["reason"] = reason
    if status == "rejected":
        changes["active_slug"] = None
    SiteApplication.update(**changes).where(SiteApplication.id == application.id).execute()
    return get_application(application.id)


def _paid(application) -> ledger.LedgerTxn | None:
    return ledger.find("adjustment", application.payment_reference)


def _refund(application):
    txn = _paid(application)
    if txn is not None:
        ledger.reverse("adjustment", f"opening-refund:{application.id}", txn)


def _create_site(registry, application, now) -> Site:
    """The site folder, its level, the owner's account and its term; nothing left behind on failure."""
    parent = Site.get_by_id(application.parent_id).slug if application.parent_id else None
    config = registry.create(application.slug, template=application.template, name=application.name, parent=parent)
    try:
        if config.level != application.level:
            config = registry.update(application.slug, level=application.level)
        site = registry.site_row(config)
        # Approved from the main site's console, a request scoped to the main site: acting for
        # the new site is asked for by name.
        with all_sites(), acting_for(site.id):
            # The stored hash as it is: the applicant's password was never kept in plain text.
            Account.create(site=site.id, username=application.username, password_hash=application.password_hash,
                           role="operator")
        level = get_level(application.level)
        expires = now + datetime.timedelta(days=level.term_days) if level and level.term_days else None
        Site.update(expires_at=expires).where(Site.id == site.id).execute()
        return site
    except Exception:
        _remove_site(registry, application.slug)
        raise


def _remove_site(registry, slug: str):
    shutil.rmtree(registry.root / slug, ignore_errors=True)
    try:
        with database.atomic():
            Site.delete().where(Site.slug == slug).execute()  # its domains and accounts go with it
    except peewee.DatabaseError:
        log.exception("could not remove the index row of the half-opened site %s", slug)


def _notify(instance, application) -> str:
    """Tell the applicant the decision by mail when configured; record what happened either way."""
    from . import mail

    subject, body = _notice_text(instance, application)
    if not mail.is_email(application.contact):
        outcome = "not_email"
    elif mail.smtp_settings(instance) is None:
        outcome = "no_smtp"
    else:
        try:
            mail.send_message(instance, mail.build_message(instance, to=application.contact.strip(),
                                                           subject=subject, body=body))
            outcome = "mailed"
        except Exception as exc:  # noqa: BLE001 - the decision stands; the operator sees the outcome
            log.warning("mail to the applicant of application %s failed: %s", application.id, exc)
            outcome = "mail_failed"
    SiteApplication.update(notice=outcome).where(SiteApplication.id == application.id).execute()
    return outcome


def _notice_text(instance, application) -> tuple[str, str]:
    """The mail to the applicant, in the language of the site they applied on (whoever decides, wherever)."""
    from . import mail

    gettext = mail.site_gettext(mail.site_locale(application.parent_id, instance)) if application.parent_id else _
    if application.status == "approved":
        url = f"http://{application.slug}.{instance.base_domain}/"
        return (gettext("Your sub-site is open"),
                gettext("Your sub-site \"%(name)s\" is open.\n\nShop: %(url)s\nConsole: %(url)sadmin/\n"
                        "Console username: %(username)s\n(the password is the one you chose when applying)\n",
                        name=application.name, url=url, username=application.username))
    return (gettext("Your sub-site application was not approved"),
            gettext("Your application for the sub-site \"%(name)s\" (%(slug)s) was not approved.\n\n"
                    "Reason: %(reason)s\n", name=application.name, slug=application.slug, reason=application.reason))


def applications(status: str | None = None, limit: int = 200) -> list[SiteApplication]:
    query = SiteApplication.select().order_by(SiteApplication.id.desc()).limit(limit)
    if status:
        query = query.where(SiteApplication.status == status)
    return list(query)


def _wallet(member_site_id: int, member_id: int):
    """A member's wallet: the same ledger account as ``members.wallet_account``."""
    return ledger.account("member_wallet", site=member_site_id, member=member_id)


def owner_wallet(site_id: int):
    """The wallet of the member who opened the site (self-service, or signed in when applying); None if none."""
    row = (SiteApplication.select(SiteApplication.parent, SiteApplication.member_id)
           .where((SiteApplication.site == site_id) & (SiteApplication.status == "approved")
                  & SiteApplication.member_id.is_null(False))
           .order_by(SiteApplication.id.desc()).tuples().first())
    return _wallet(row[0], row[1]) if row else None


# -- lifecycle ----------------------------------------------------------------------------


def lifecycle_state(config) -> str:
    """``active``, ``suspended``, ``expired`` or ``closed``.

    ``enabled`` decides whether the site is on (``kamengsite site enable`` or a hand edit wins
    over a stale marker); the marker says why it is off, a site turned off by hand counts as suspended.
    """
    if config.enabled:
        return "active"
    state = ((config.settings or {}).get(LIFECYCLE_KEY) or {}).get("state")
    return state if state in ("suspended", "expired", "closed") else "suspended"


def closed_page(config) -> str:
    """The host's page for a site that is off: an expired site says so, others show the closed page."""
    return "opening/expired.html" if lifecycle_state(config) == "expired" else "closed.html"


def served_while_off(config, path: str) -> bool:
    """What a site that is off still answers: payment notifications of orders made before it went
    off (the money must be booked), and its owner's console (balance, renewal, domains)."""
    if path.startswith("/pay/notify/"):
        return True
    return path == "/admin" or path.startswith("/admin/")


def _day(value: datetime.datetime) -> str:
    """A date in the reader's language; ISO outside a request (the command line)."""
    return format_when(value.date()) if has_request_context() else f"{value:%Y-%m-%d}"


def _load_sub_site(registry, slug: str):
    if slug == registry.main_site:
        raise OpeningError(_("The main site cannot be suspended, closed or expired"))
    try:
        return registry.load(slug)
    except ConfigError as exc:
        if not (registry.root / slug).is_dir():
            raise OpeningError(_("There is no sub-site named \"%(slug)s\"", slug=slug)) from None
        raise OpeningError(_("The configuration of sub-site \"%(slug)s\" is broken: %(error)s", slug=slug,
                             error=exc)) from None


def _set_state(registry, slug: str, state: str | None, reason: str = "", now=None):
    """Write the state marker and ``enabled`` in one validated ``site.toml`` update."""
    config = registry.load(slug)
    settings = dict(config.settings or {})
    if state is None:
        settings.pop(LIFECYCLE_KEY, None)
    else:
        settings[LIFECYCLE_KEY] = {"state": state, "since": _now(now).isoformat(sep=" "), "reason": reason[:200]}
    return registry.update(slug, enabled=state is None, settings=settings)


def suspend(registry, slug: str, reason: str = "", *, now=None):
    """Turn a site off (closed page, no checkout); its orders and money stay as they are."""
    config = _load_sub_site(registry, slug)
    if lifecycle_state(config) == "closed":
        raise OpeningError(_("Sub-site \"%(slug)s\" is closed", slug=slug))
    return _set_state(registry, slug, "suspended", reason, now)


def resume(registry, slug: str, *, now=None):
    """Turn a suspended site back on; an expired term must be renewed first."""
    config = _load_sub_site(registry, slug)
    if lifecycle_state(config) == "closed":
        raise OpeningError(_("Sub-site \"%(slug)s\" is closed and cannot be resumed", slug=slug))
    site = registry.site_row(config)
    if site.expires_at is not None and site.expires_at <= _now(now):
        raise OpeningError(_("Sub-site \"%(slug)s\" expired on %(date)s; renew it to resume it", slug=slug,
                             date=_day(site.expires_at)))
    return _set_state(registry, slug, None)


def close(registry, slug: str, reason: str = "", *, now=None):
    """Close a site for good: off like a suspension, listed as closed, never resumed or renewed."""
    _load_sub_site(registry, slug)
    return _set_state(registry, slug, "closed", reason, now)


def expire_sites(registry, now=None) -> dict[str, list[str]]:
    """Turn off every active sub-site past its term; turn back on expired sites renewed since.

    Safe to run at any time and concurrently (each change is one validated write). A site
    that was suspended or closed keeps that state. Returns ``{"expired": [...], "reopened": [...]}``.
    """
    now = _now(now)
    done: dict[str, list[str]] = {"expired": [], "reopened": []}
    due = (Site.select(Site.slug).where(Site.expires_at.is_null(False) & (Site.expires_at <= now)
                                        & (Site.status == "active") & (Site.slug != registry.main_site))
           .order_by(Site.id).tuples())
    for (slug,) in due:
        if _change_state(registry, slug, "active", "expired", now):
            done["expired"].append(slug)
    renewed = (Site.select(Site.slug).where((Site.status == "disabled") & Site.expires_at.is_null(False)
                                            & (Site.expires_at > now)).order_by(Site.id).tuples())
    for (slug,) in renewed:
        if _change_state(registry, slug, "expired", None, now):
            done["reopened"].append(slug)
    if done["expired"] or done["reopened"]:
        log.info("site terms: expired %s, reopened %s", done["expired"] or "-", done["reopened"] or "-")
    return done


def _term_ended(config) -> str:
    """The reason recorded on an expired site, in its owner's language (the worker has none)."""
    from .mail import site_gettext

    gettext = site_gettext(config.locale)
    return gettext("The term has ended")


def _change_state(registry, slug: str, expected: str, new: str | None, now) -> bool:
    try:
        config = registry.load(slug)
        if lifecycle_state(config) != expected:
            return False
        _set_state(registry, slug, new, _term_ended(config) if new == "expired" else "", now)
        return True
    except (ConfigError, OSError) as exc:  # a broken folder is reported by `site list`; the others go on
        log.error("site %s: could not change its state to %s: %s", slug, new or "active", exc)
        return False


class _Raced(Exception):
    """Someone changed the row first; nothing was written."""


def renew(registry, slug: str, *, pay_from: str = "site", now=None) -> datetime.datetime:
    """Pay the level's renewal fee and extend the term by ``term_days``; an expired site turns back on.

    ``pay_from``: ``site`` (the site's available balance) or ``wallet`` (the wallet of the
    member who opened it). Returns the new end of the term. Two renewals at once renew twice
    only if both were asked for: each is tied to the term it extends.
    """
    now = _now(now)
    config = _load_sub_site(registry, slug)
    if lifecycle_state(config) == "closed":
        raise OpeningError(_("Sub-site \"%(slug)s\" is closed and cannot be renewed", slug=slug))
    site = registry.site_row(config)
    level = get_level(site.level)
    if level is None or not level.term_days:
        raise OpeningError(_("This sub-site's level has no term: nothing to renew"))
    old = site.expires_at
    # From the end of the term, or from now if it already ended: a late renewal buys a full term.
    new = (max(old, now) if old else now) + datetime.timedelta(days=level.term_days)
    fee = level.renewal_fee_fen
    payer = _payer(site, pay_from) if fee else None
    reference = f"renewal:{site.id}:{old.isoformat() if old else 'start'}"

    def write():
        with database.atomic():
            same_term = Site.expires_at.is_null() if old is None else (Site.expires_at == old)
            if not Site.update(expires_at=new).where((Site.id == site.id) & same_term).execute():
                raise _Raced
            if fee:
                revenue = ledger.account("platform_revenue")
                ledger.post_in_transaction("adjustment", reference, [(payer, -fee), (revenue, fee)],
                                           memo=_("Renewal of sub-site %(slug)s (%(level)s, %(days)s days)",
                                                  slug=slug, level=level.name, days=level.term_days))

    try:
        retry_transient(write)
    except _Raced:
        raise OpeningError(
            _("The term was just changed (perhaps already renewed), please reload and try again")) from None
    except ledger.InsufficientFunds:
        raise OpeningError(
            _("Insufficient balance: the renewal costs ¥%(amount)s", amount=format_money(fee))) from None
    if lifecycle_state(config) == "expired" and new > now:
        _change_state(registry, slug, "expired", None, now)
    return new


def _payer(site: Site, pay_from: str):
    if pay_from == "site":
        return ledger.account("site_available", site=site.id)
    if pay_from == "wallet":
        wallet = owner_wallet(site.id)
        if wallet is None:
            raise OpeningError(
                _("This sub-site has no member wallet linked to it, please pay from the sub-site balance"))
        return wallet
    raise OpeningError(_("Pay from the sub-site balance (site) or the member wallet (wallet)"))


def change_level(registry, slug: str, code: str, *, self_service_only: bool = False):
    """Move a site to level ``code``, paying the difference of the opening fees from its balance.

    Moving down costs nothing and refunds nothing. The term is unchanged. An owner (from the
    console: ``self_service_only``) may only pick levels that need no approval.
    """
    config = _load_sub_site(registry, slug)
    if lifecycle_state(config) == "closed":
        raise OpeningError(_("Sub-site \"%(slug)s\" is closed", slug=slug))
    new = get_level(code)
    if new is None:
        raise OpeningError(_("There is no level \"%(code)s\"", code=code))
    if self_service_only and not new.self_service and new.code != config.level:
        raise OpeningError(_("The \"%(level)s\" level needs the platform's approval, please ask the platform to "
                             "change it", level=new.name))
    site = registry.site_row(config)
    if site.level == new.code:
        return config
    old = get_level(site.level)
    difference = new.opening_fee_fen - (old.opening_fee_fen if old else 0)
    reference = f"upgrade:{site.id}:{uuid.uuid4().hex[:16]}"

    def write():
        with database.atomic():
            # Tied to the level it leaves: a second submit of the same change finds it done.
            if not Site.update(level=new.code).where((Site.id == site.id) & (Site.level == site.level)).execute():
                raise _Raced
            if difference > 0:
                return ledger.post_in_transaction(
                    "adjustment", reference, [(ledger.account("site_available", site=site.id), -difference),
                                              (ledger.account("platform_revenue"), difference)],
                    memo=_("Sub-site %(slug)s upgrade %(old)s → %(new)s", slug=slug, old=site.level or "-",
                           new=new.code))
            return None

    try:
        txn = retry_transient(write)
    except _Raced:
        raise OpeningError(_("The level was just changed, please reload and try again")) from None
    except ledger.InsufficientFunds:
        raise OpeningError(_("Insufficient sub-site balance: upgrading to \"%(level)s\" costs ¥%(amount)s more",
                             level=new.name, amount=format_money(difference))) from None
    try:
        return registry.update(slug, level=new.code)
    except Exception:
        Site.update(level=site.level).where((Site.id == site.id) & (Site.level == new.code)).execute()
        if txn is not None:
            ledger.reverse("adjustment", f"{reference}:undo", txn)
        raise


# -- listing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteSummary:
    slug: str
    name: str
    level: str
    parent: str | None
    state: str
    expires_at: datetime.datetime | None
    balance_fen: int  # available + frozen
    domains: tuple
    error: str = ""

    @property
    def state_label(self) -> str:
        return str(LIFECYCLE_LABELS.get(self.state, self.state))


def site_balances() -> dict[int, int]:
    """``{site id: available + frozen}`` in fen, from the ledger's entries."""
    rows = (ledger.LedgerEntry.select(ledger.LedgerAccount.site, peewee.fn.SUM(ledger.LedgerEntry.amount_fen))
            .join(ledger.LedgerAccount)
            .where(ledger.LedgerAccount.kind.in_(["site_available", "site_frozen"]))
            .group_by(ledger.LedgerAccount.site).tuples())
    return {site_id: int(total or 0) for site_id, total in rows}


def site_summaries(registry) -> list[SiteSummary]:
    """Every sub-site with its level, parent, state, term and balance (broken folders with the error)."""
    rows = {s.slug: s for s in Site.select()}
    balances = site_balances()
    summaries = []
    for slug, result in registry.scan():
        row = rows.get(slug)
        balance = balances.get(row.id, 0) if row else 0
        if isinstance(result, ConfigError):
            summaries.append(SiteSummary(slug, "", "", None, "broken", None, balance, (), str(result)))
            continue
        summaries.append(SiteSummary(slug, result.name, result.level, result.parent, lifecycle_state(result),
                                     row.expires_at if row else None, balance, result.domains))
    return summaries


def levels_table() -> list[Level]:
    return all_levels()


def describe(application: SiteApplication) -> str:
    """One line for the command line."""
    parts = [f"#{application.id}", application.status, application.slug, f"“{application.name}”",
             f"level={application.level}", f"template={application.template}", f"contact={application.contact}"]
    if application.self_service:
        parts.append(f"self-service fee={format_money(application.fee_fen)}")
    if application.reason:
        parts.append(f"reason={json.dumps(application.reason, ensure_ascii=False)}")
    return "  ".join(parts)
