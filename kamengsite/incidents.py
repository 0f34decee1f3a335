"""Operational alerts (故障预警): incidents opened by checks, notified once, cleared on recovery.

A *check* is a small function that lists the problems that exist now, as ``Problem(kind, key,
detail)``: a payment channel profile that stops confirming (``payment_stalled``), a spike of
rejected gateway notifications (``signature_failures``), the job worker not running
(``queue_stalled``), the disk nearly full (``disk_low``), and whatever plugins report through the
``operational_checks(instance)`` hook (the upstreams plugin: ``upstream_failing``).

``run_checks`` turns those lists into ``Incident`` rows: a problem with no open incident of its
(kind, key) opens one; an open incident whose problem is gone is cleared. One open incident per
(kind, key) is a database guarantee, not a "check then write": ``open_key`` is ``"kind:key"``
while the incident is open and NULL once it is cleared, under a unique index (NULLs never
collide), so two workers, or a worker and a dashboard request, open one row and the loser
only touches it. Notifying is claimed the same way — a conditional UPDATE of ``notified_at``
(``cleared_notified_at``) from NULL — so each incident is announced once and its clearing once,
by mail to the operator and by the alert webhook (``alert_webhook_url``).

The worker runs every check each minute (``register_jobs``) and writes its heartbeat first. The
heartbeat check cannot usefully run in the worker it watches, so it also runs where the worker is
not: on the main site's dashboard (``dashboard_view``) and in ``kamengsite incidents check``.
Thresholds are instance settings (``alert_*`` in ``config.toml``, see docs/dashboard.md).

The webhook is a POST of JSON ``{event, kind, key, detail, opened_at, cleared_at, sent_at}``
through the SSRF guard (``kamengsite.outbound``), signed ``X-Kamengsite-Signature: sha256=<hex>``
= HMAC-SHA256 of the exact body under ``webhook_secret(instance)`` (derived from the instance
secret; ``kamengsite incidents webhook-secret`` prints it). It is tried at most twice with a short
timeout; a failure is logged and not retried later, the mail and the dashboard still tell.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import shutil
import time
from dataclasses import dataclass

import peewee

from .db import database, retry_transient
from .hookspecs import hookimpl
from .models import BaseModel, utcnow

log = logging.getLogger(__name__)

PAYMENT_STALLED = "payment_stalled"
SIGNATURE_FAILURES = "signature_failures"
QUEUE_STALLED = "queue_stalled"
DISK_LOW = "disk_low"
CORE_KINDS = (PAYMENT_STALLED, SIGNATURE_FAILURES, QUEUE_STALLED, DISK_LOW)
WORKER = "worker"  # the heartbeat's name
KIND_MAX, KEY_MAX, DETAIL_MAX = 32, 120, 2000
WEBHOOK_TIMEOUT = 5.0  # seconds; an alert must not hold a worker (or the dashboard) for long
WEBHOOK_ATTEMPTS = 2
OPENED, CLEARED = "incident.opened", "incident.cleared"
RECENT_DAYS = 7


def N_(text: str) -> str:
    """Marks a string for the catalogs; translated later, in the reader's language."""
    return text


#: What each kind of incident is, as the operator reads it (plugin kinds show their own name).
KIND_LABELS = {
    PAYMENT_STALLED: N_("Payment channel not confirming"),
    SIGNATURE_FAILURES: N_("Notification signature failures"),
    QUEUE_STALLED: N_("Job worker not running"),
    DISK_LOW: N_("Disk nearly full"),
    "upstream_failing": N_("Upstream sync failing"),
}


class Incident(BaseModel):
    """One operational problem from when a check first saw it until it passed again (platform-wide)."""

    kind = peewee.CharField(max_length=KIND_MAX)
    key = peewee.CharField(max_length=KEY_MAX)
    open_key = peewee.CharField(max_length=KIND_MAX + 1 + KEY_MAX, null=True, unique=True)
    detail = peewee.TextField(default="")
    opened_at = peewee.DateTimeField(default=utcnow)
    last_seen_at = peewee.DateTimeField(default=utcnow)
    cleared_at = peewee.DateTimeField(null=True, index=True)
    notified_at = peewee.DateTimeField(null=True)
    cleared_notified_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "incident"
        indexes = ((("kind", "key"), False),)

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


class Heartbeat(BaseModel):
    """When a periodic process last ran (the worker's incidents job writes ``worker``)."""

    name = peewee.CharField(max_length=32, unique=True)
    beat_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "heartbeat"


@dataclass(frozen=True)
class Problem:
    kind: str
    key: str
    detail: str = ""

    @property
    def open_key(self) -> str:
        return f"{self.kind}:{self.key}"


# -- the operator's language ----------------------------------------------------------------


def operator_gettext(instance):
    """``gettext`` in the main site's language (the operator reads the alerts)."""
    from .mail import site_gettext, site_locale
    from .models import Site

    try:
        site = Site.get_or_none(Site.slug == instance.main_site)
    except peewee.PeeweeException:
        site = None
    return site_gettext(site_locale(site.id, instance) if site is not None else None)


# -- the checks: each returns the problems that exist at ``now`` ------------------------------


def payment_problems(instance, now: datetime.datetime, gettext) -> list[Problem]:
    """Channel profiles with at least ``alert_payment_min_orders`` orders created in the last
    ``alert_payment_minutes`` and no payment of that channel profile recorded in that window."""
    from .orders import Order, Payment
    from .tenancy import all_sites

    minutes = instance.alert_payment_minutes
    since = now - datetime.timedelta(minutes=minutes)
    count = peewee.fn.COUNT(Order.id)
    with all_sites():
        created = list(Order.select(Order.channel, Order.channel_profile, count.alias("n"))
                       .where((Order.created_at >= since) & (Order.created_at <= now) & (Order.channel != ""))
                       .group_by(Order.channel, Order.channel_profile)
                       .having(count >= instance.alert_payment_min_orders).tuples())
        if not created:
            return []
        confirming = set(Payment.select(Payment.channel, Order.channel_profile).join(Order)
                         .where((Payment.created_at >= since) & (Payment.created_at <= now))
                         .distinct().tuples())
    return [Problem(PAYMENT_STALLED, f"{channel}/{profile}" if profile else channel,
                    gettext("%(orders)s orders created in the last %(minutes)s minutes, no payment confirmed",
                            orders=n, minutes=minutes))
            for channel, profile, n in created if (channel, profile) not in confirming]


def signature_problems(instance, now: datetime.datetime, gettext) -> list[Problem]:
    """Channels with more than ``alert_signature_failures`` rejected notifications in the last
    ``alert_signature_minutes`` (a forger, or a profile whose key changed at the gateway)."""
    from .notice_log import REJECTED, PaymentNotice

    minutes = instance.alert_signature_minutes
    since = now - datetime.timedelta(minutes=minutes)
    count = peewee.fn.COUNT(PaymentNotice.id)
    rows = (PaymentNotice.select(PaymentNotice.channel, count.alias("n"))
            .where((PaymentNotice.outcome == REJECTED) & (PaymentNotice.created_at >= since)
                   & (PaymentNotice.created_at <= now))
            .group_by(PaymentNotice.channel).having(count > instance.alert_signature_failures).tuples())
    return [Problem(SIGNATURE_FAILURES, channel,
                    gettext("%(count)s notifications rejected in the last %(minutes)s minutes",
                            count=n, minutes=minutes))
            for channel, n in rows]


def queue_problems(instance, now: datetime.datetime, gettext) -> list[Problem]:
    """The worker's heartbeat older than ``alert_heartbeat_minutes`` (none yet: not judged)."""
    beat = Heartbeat.get_or_none(Heartbeat.name == WORKER)
    if beat is None or now - beat.beat_at <= datetime.timedelta(minutes=instance.alert_heartbeat_minutes):
        return []
    minutes = int((now - beat.beat_at).total_seconds() // 60)
    return [Problem(QUEUE_STALLED, WORKER,
                    gettext("The job worker last ran %(minutes)s minutes ago (%(when)s UTC)",
                            minutes=minutes, when=beat.beat_at.strftime("%Y-%m-%d %H:%M")))]


def disk_problems(instance, now: datetime.datetime, gettext) -> list[Problem]:
    """Less than ``alert_disk_min_percent`` % or ``alert_disk_min_mb`` MB free where the instance lives."""
    usage = shutil.disk_usage(instance.path)
    low_share = usage.free * 100 < usage.total * instance.alert_disk_min_percent
    low_bytes = usage.free < instance.alert_disk_min_mb * 1024 * 1024
    if not (low_share or low_bytes):
        return []
    return [Problem(DISK_LOW, "instance",
                    gettext("%(free)s MB free of %(total)s MB (%(percent)s%%) at %(path)s",
                            free=usage.free // (1024 * 1024), total=usage.total // (1024 * 1024),
                            percent=usage.free * 100 // max(usage.total, 1), path=str(instance.path)))]


#: The core checks in the order they run, each with the kind it owns (and so may clear).
CORE_CHECKS = ((PAYMENT_STALLED, payment_problems), (SIGNATURE_FAILURES, signature_problems),
               (QUEUE_STALLED, queue_problems), (DISK_LOW, disk_problems))


def plugin_problems(instance) -> tuple[list[Problem], bool]:
    """What the installed plugins report (``operational_checks``), and whether every plugin answered."""
    from .hooks import instance_plugins
    from .plugins import record_failure

    problems, complete = [], True
    for impl in instance_plugins().pm.hook.operational_checks.get_hookimpls():
        try:
            answer = impl.function(*[{"instance": instance}[name] for name in impl.argnames])
        except Exception as exc:  # noqa: BLE001 - one plugin's bug must not stop the other checks
            log.exception("plugin %s failed in operational_checks; skipped", impl.plugin_name)
            record_failure(impl.plugin_name, "operational_checks", exc)
            complete = False
            continue
        for item in answer or ():
            problem = _plugin_problem(impl.plugin_name, item)
            if problem is not None:
                problems.append(problem)
    return problems, complete


def _plugin_problem(plugin: str, item) -> Problem | None:
    """A plugin's ``(kind, key, detail)`` as a Problem; None (logged) when it does not fit."""
    try:
        kind, key, detail = item
    except (TypeError, ValueError):
        kind = key = detail = None
    if not (isinstance(kind, str) and isinstance(key, str) and isinstance(detail, str)
            and 0 < len(kind) <= KIND_MAX and 0 < len(key) <= KEY_MAX and kind not in CORE_KINDS):
        log.warning("plugin %s: operational_checks answered %r, not (kind, key, detail); ignored", plugin, item)
        return None
    return Problem(kind, key, detail[:DETAIL_MAX])


# -- incidents: open, touch, clear ---------------------------------------------------------------


def _open(problem: Problem, now: datetime.datetime) -> Incident | None:
    """Open an incident for ``problem``; None when one is open already (it is touched instead)."""
    def insert():
        try:
            with database.atomic():
                return Incident.create(kind=problem.kind, key=problem.key, open_key=problem.open_key,
                                       detail=problem.detail, opened_at=now, last_seen_at=now)
        except peewee.IntegrityError:  # open already: the unique open_key decided
            return None

    incident = retry_transient(insert)
    if incident is None:
        Incident.update(last_seen_at=now, detail=problem.detail).where(
            Incident.open_key == problem.open_key).execute()
    return incident


def _clear(incident: Incident, now: datetime.datetime) -> bool:
    """Close ``incident``; True for the one caller that did it."""
    won = Incident.update(cleared_at=now, open_key=None).where(
        (Incident.id == incident.id) & (Incident.open_key == incident.open_key)).execute()
    return won == 1


def reconcile(problems: list[Problem], owns, now: datetime.datetime) -> tuple[list[Incident], list[Incident]]:
    """Open an incident for each problem, clear the open ones of the kinds ``owns(kind)`` whose
    problem is gone; (opened, cleared) by this call."""
    opened, cleared, seen = [], [], set()
    for problem in problems:
        seen.add(problem.open_key)
        incident = _open(problem, now)
        if incident is not None:
            opened.append(incident)
    for incident in Incident.select().where(Incident.open_key.is_null(False)).order_by(Incident.id):
        if owns(incident.kind) and incident.open_key not in seen and _clear(incident, now):
            cleared.append(incident)
    return opened, cleared


def run_checks(instance, *, now: datetime.datetime | None = None, heartbeat: bool = False,
               kinds: tuple[str, ...] | None = None) -> dict:
    """Run the checks (all, or the core ``kinds`` only), update the incidents and notify.

    ``heartbeat`` (the worker's job): write the worker's heartbeat first. A check that raises is
    logged and its incidents are left as they are. Returns ``{"opened": [...], "cleared": [...]}``
    (open keys), what this call changed.
    """
    now = now or utcnow()
    if heartbeat:
        beat(now)
    gettext = operator_gettext(instance)
    problems, owned = [], set()
    for kind, check in CORE_CHECKS:
        if kinds is not None and kind not in kinds:
            continue
        try:
            problems.extend(check(instance, now, gettext))
        except Exception:  # noqa: BLE001 - a broken check must not hide the others
            log.exception("incident check %s failed; its incidents are left as they are", kind)
            continue
        owned.add(kind)
    plugins_complete = False
    if kinds is None:
        found, plugins_complete = plugin_problems(instance)
        problems.extend(found)

    def owns(kind):
        return kind in owned or (plugins_complete and kind not in CORE_KINDS)

    opened, cleared = reconcile(problems, owns, now)
    for incident in opened:
        log.warning("incident opened: %s %s: %s", incident.kind, incident.key, incident.detail)
    for incident in cleared:
        log.info("incident cleared: %s %s", incident.kind, incident.key)
    notify_pending(instance, now=now, kinds=kinds)
    return {"opened": [i.open_key for i in opened], "cleared": [f"{i.kind}:{i.key}" for i in cleared]}


def beat(now: datetime.datetime | None = None, name: str = WORKER):
    """Record that ``name`` ran now (one row per name, written in place)."""
    now = now or utcnow()
    if Heartbeat.update(beat_at=now).where(Heartbeat.name == name).execute():
        return
    try:
        with database.atomic():
            Heartbeat.create(name=name, beat_at=now)
    except peewee.IntegrityError:  # another process wrote it first (or MySQL counted an unchanged row as 0)
        Heartbeat.update(beat_at=now).where(Heartbeat.name == name).execute()


# -- notifying, once each way --------------------------------------------------------------------


def notify_pending(instance, *, now: datetime.datetime | None = None, kinds: tuple[str, ...] | None = None) -> int:
    """Announce every opened and every cleared incident not announced yet; how many notices went out.

    Each announcement is claimed first by a conditional UPDATE: whoever wins sends, so a crash
    between opening and notifying is caught up by the next run and nothing goes out twice. A
    clearing is announced only when the opening was.
    """
    now = now or utcnow()
    sent = 0
    pending_open = Incident.open_key.is_null(False) & Incident.notified_at.is_null()
    pending_clear = Incident.cleared_at.is_null(False) & Incident.cleared_notified_at.is_null()
    if kinds is not None:
        pending_open &= Incident.kind.in_(kinds)
        pending_clear &= Incident.kind.in_(kinds)
    for incident in list(Incident.select().where(pending_open).order_by(Incident.id)):
        claimed = Incident.update(notified_at=now).where(
            (Incident.id == incident.id) & Incident.notified_at.is_null() & Incident.open_key.is_null(False)).execute()
        if claimed:
            _announce(instance, incident, OPENED)
            sent += 1
    for incident in list(Incident.select().where(pending_clear).order_by(Incident.id)):
        claimed = Incident.update(cleared_notified_at=now).where(
            (Incident.id == incident.id) & Incident.cleared_notified_at.is_null()).execute()
        if claimed and incident.notified_at is not None:
            _announce(instance, Incident.get_by_id(incident.id), CLEARED)
            sent += 1
    return sent


def _announce(instance, incident: Incident, event: str):
    """Mail the operator and call the webhook; neither may stop the other or the checks."""
    try:
        _mail(instance, incident, event)
    except Exception:  # noqa: BLE001 - the dashboard and the webhook still tell
        log.exception("incident %s: the operator's mail could not be sent", incident.id)
    try:
        send_webhook(instance, incident, event)
    except Exception:  # noqa: BLE001
        log.exception("incident %s: the alert webhook could not be called", incident.id)


def _stamp(moment: datetime.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def mail_text(instance, incident: Incident, event: str) -> tuple[str, str]:
    """(subject, body) of the operator's mail about ``incident``, in the main site's language."""
    gettext = operator_gettext(instance)
    what = gettext(incident.label)
    if event == OPENED:
        subject = gettext("Alert: %(what)s (%(key)s)", what=what, key=incident.key)
        lines = [gettext("%(what)s: %(key)s", what=what, key=incident.key), incident.detail,
                 gettext("Since %(when)s UTC.", when=_stamp(incident.opened_at)),
                 gettext("This is sent once per incident; another message follows when it clears. "
                         "Open incidents are listed on the main site's dashboard.")]
    else:
        subject = gettext("Cleared: %(what)s (%(key)s)", what=what, key=incident.key)
        lines = [gettext("%(what)s: %(key)s", what=what, key=incident.key),
                 gettext("Cleared at %(when)s UTC; it began at %(since)s UTC.",
                         when=_stamp(incident.cleared_at), since=_stamp(incident.opened_at))]
    return subject, "\n\n".join(line for line in lines if line)


def _mail(instance, incident: Incident, event: str):
    from . import mail

    subject, body = mail_text(instance, incident, event)
    if incident.kind == QUEUE_STALLED:
        # The queue is what is stuck: a queued mail would wait for the very worker that is not running.
        mail.send_operator_mail(instance, subject, body)
    else:
        mail.queue_operator_mail(instance, subject, body)


def webhook_secret(instance) -> str:
    """The alert webhook's signing key: derived from the instance secret, never stored."""
    return hmac.new(instance.secret_key.encode(), b"kamengsite-alert-webhook", hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str) -> str:
    """The ``X-Kamengsite-Signature`` value of ``body``: ``sha256=`` and the HMAC-SHA256 in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _iso(moment: datetime.datetime | None) -> str | None:
    return moment.replace(microsecond=0).isoformat() + "Z" if moment else None


def webhook_body(incident: Incident, event: str) -> bytes:
    document = {"event": event, "kind": incident.kind, "key": incident.key, "detail": incident.detail,
                "opened_at": _iso(incident.opened_at), "cleared_at": _iso(incident.cleared_at),
                "sent_at": int(time.time())}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def send_webhook(instance, incident: Incident, event: str) -> int | None:
    """POST the event to ``alert_webhook_url``; the answer's status, or None (not configured, or failed)."""
    from . import outbound
    from .api.callbacks import loopback_allowed

    url = (getattr(instance, "alert_webhook_url", "") or "").strip()
    if not url:
        return None
    body = webhook_body(incident, event)
    headers = {"Content-Type": "application/json", "X-Kamengsite-Event": event,
               "X-Kamengsite-Signature": sign(body, webhook_secret(instance))}
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        try:
            answer = outbound.request("POST", url, body=body, headers=headers, timeout=WEBHOOK_TIMEOUT,
                                      max_bytes=64 * 1024, allow_loopback=loopback_allowed(instance),
                                      resolver=outbound.resolve)
        except outbound.OutboundError as exc:
            log.warning("alert webhook %s for incident %s, attempt %s: %s", event, incident.id, attempt, exc)
            if exc.refused:
                return None  # the guard said no: trying again changes nothing
            continue
        if 200 <= answer.status < 300:
            return answer.status
        log.warning("alert webhook %s for incident %s, attempt %s: HTTP %s", event, incident.id, attempt,
                    answer.status)
    return None


# -- reading, for the dashboard and the command line ----------------------------------------------


def open_incidents() -> list[Incident]:
    return list(Incident.select().where(Incident.open_key.is_null(False)).order_by(Incident.opened_at.desc()))


def recently_cleared(now: datetime.datetime | None = None, days: int = RECENT_DAYS, limit: int = 20) -> list[Incident]:
    since = (now or utcnow()) - datetime.timedelta(days=days)
    return list(Incident.select().where(Incident.cleared_at >= since)
                .order_by(Incident.cleared_at.desc()).limit(limit))


def dashboard_view(instance, now: datetime.datetime | None = None) -> dict:
    """What the main site's dashboard shows: the worker's heartbeat judged now (from the request,
    since the worker cannot report its own absence), then the open and recently cleared incidents."""
    try:
        run_checks(instance, now=now, kinds=(QUEUE_STALLED,))
    except Exception:  # noqa: BLE001 - the dashboard shows what is known rather than an error
        log.exception("the heartbeat check failed on the dashboard")
    return {"open": open_incidents(), "cleared": recently_cleared(now)}


# -- plugin ---------------------------------------------------------------------------------------------


@hookimpl
def register_jobs(huey, instance):
    from huey import crontab

    @huey.periodic_task(crontab(minute="*"), name="incidents_check")
    def incidents_check():
        """The worker's heartbeat, then every check: incidents opened, cleared and announced."""
        return run_checks(instance, heartbeat=True)


@hookimpl
def register_commands(cli):
    import click

    @cli.group("incidents")
    def incidents_group():
        """Operational alerts: run the checks, list the open incidents, print the webhook's key."""

    @incidents_group.command("check")
    @click.pass_context
    def check_command(ctx):
        """Run every check now (the worker's heartbeat too); exit 1 while an incident is open."""
        from .cli import bound_database

        instance = ctx.obj.instance()
        with bound_database(instance):
            changes = run_checks(instance)
            current = open_incidents()
        for key in changes["cleared"]:
            click.echo(f"cleared  {key}")
        for incident in current:
            click.echo(f"OPEN     {incident.kind}:{incident.key}  since {_stamp(incident.opened_at)} UTC  "
                       f"{incident.detail}")
        if current:
            ctx.exit(1)
        click.echo("no open incidents")

    @incidents_group.command("webhook-secret")
    @click.pass_context
    def secret_command(ctx):
        """Print the key that signs the alert webhook (give it to the receiver)."""
        click.echo(webhook_secret(ctx.obj.instance()))
