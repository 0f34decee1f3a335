"""Outgoing mail: card keys to the buyer after delivery, notices to the operator.

A core plugin: its ``order_delivered`` hook queues the mail job (``jobs.py``),
so the mail is sent after the delivering transaction committed, by the worker,
and retried when the SMTP server fails; the buyer's order page shows the keys
whatever happens here. Only the order id goes through the queue; the worker
decrypts the keys when it writes the mail, and no key is ever logged.

Settings, from the environment or the instance's ``config.toml``:

* ``KAMENGSITE_SMTP_URL`` / ``smtp_url``: ``smtp://user:pass@host:port`` (plain,
  default port 25), ``smtp+starttls://…`` (STARTTLS required, port 587) or
  ``smtps://…`` (TLS from the start, port 465). User and password are
  percent-encoded. Without it, mail is logged as skipped — never an error.
* ``KAMENGSITE_MAIL_FROM`` / ``mail_from``: the sender address
  (default ``noreply@<base_domain>``); the site's name is its display name.
* ``KAMENGSITE_OPERATOR_EMAIL`` / ``operator_email``: where operator notices
  (low stock, undeliverable mail) are mailed.

Keys are mailed only to an order whose contact is an email address.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import unquote, urlsplit

from . import jobs
from .errors import KamengsiteError
from .hookspecs import hookimpl
from .i18n import DEFAULT_LOCALE, DOMAIN, LOCALES, catalog_folder, compile_catalogs

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 20  # seconds, for connecting and for each command
SCHEMES = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("ssl", 465)}
# A practical address check (not RFC 5322): no spaces, quotes, brackets or separators,
# one @, a dotted domain with a letter TLD. Refuses anything that could inject a header.
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z")


class MailError(KamengsiteError):
    """The SMTP server could not be reached or refused the message (the job is retried)."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str  # plain | starttls | ssl
    username: str = ""
    password: str = ""

    def __repr__(self):  # never print the password
        return f"SmtpSettings({self.security}://{self.username + '@' if self.username else ''}{self.host}:{self.port})"


def is_email(contact) -> bool:
    """Whether an order's contact looks like an email address we may send keys to."""
    return isinstance(contact, str) and len(contact) <= 254 and bool(EMAIL_RE.match(contact.strip()))


def _setting(instance, env_name: str, attr: str) -> str:
    return (os.environ.get(env_name) or getattr(instance, attr, "") or "").strip()


def parse_smtp_url(url: str) -> SmtpSettings:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise KamengsiteError(f"smtp_url is not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise KamengsiteError(f"smtp_url must start with {', '.join(s + '://' for s in SCHEMES)}")
    if not parts.hostname:
        raise KamengsiteError("smtp_url has no host name")
    security, default_port = SCHEMES[parts.scheme]
    return SmtpSettings(host=parts.hostname, port=port or default_port, security=security,
                        username=unquote(parts.username or ""), password=unquote(parts.password or ""))


def smtp_settings(instance) -> SmtpSettings | None:
    """The instance's SMTP server, or None when mail is not configured."""
    url = _setting(instance, "KAMENGSITE_SMTP_URL", "smtp_url")
    return parse_smtp_url(url) if url else None


def mail_from(instance) -> str:
    return _setting(instance, "KAMENGSITE_MAIL_FROM", "mail_from") or f"noreply@{instance.base_domain}"


def operator_email(instance) -> str:
    return _setting(instance, "KAMENGSITE_OPERATOR_EMAIL", "operator_email")


# -- sending -------------------------------------------------------------------


def build_message(instance, *, to: str, subject: str, body: str, from_name: str = "") -> EmailMessage:
    sender = mail_from(instance)
    msg = EmailMessage()
    local, _, domain = sender.partition("@")
    msg["From"] = Address(display_name=from_name, username=local, domain=domain) if from_name else sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.datetime.now(datetime.timezone.utc))
    msg["Message-ID"] = make_msgid(domain=domain or None)
    msg.set_content(body)
    return msg


def send_message(instance, msg: EmailMessage) -> bool:
    """Send ``msg``; False (and a log line) when no SMTP server is configured, MailError when sending fails."""
    settings = smtp_settings(instance)
    if settings is None:
        log.info("mail %r skipped: no SMTP server configured (KAMENGSITE_SMTP_URL)", msg["Subject"])
        return False
    try:
        if settings.security == "ssl":
            smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=SMTP_TIMEOUT,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=SMTP_TIMEOUT)
        with smtp:
            if settings.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if settings.username:
                smtp.login(settings.username, settings.password)
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        # The server's reply or the socket error; the message (and its keys) is not part of it.
        raise MailError(f"could not send mail through {settings.host}:{settings.port}: "
                        f"{type(exc).__name__}: {exc}") from None
    return True


def send_operator_mail(instance, subject: str, body: str) -> str:
    """Mail the operator; 'skipped' when there is no operator address or no SMTP."""
    to = operator_email(instance)
    if not to:
        log.info("operator mail %r skipped: no operator_email configured", subject)
        return "skipped"
    sent = send_message(instance, build_message(instance, to=to, subject=subject, body=body, from_name="kamengsite"))
    return "sent" if sent else "skipped"


def queue_operator_mail(instance, subject: str, body: str) -> bool:
    """Queue a mail to the operator (retried by the worker); False if there is nowhere to send it."""
    if not operator_email(instance) or smtp_settings(instance) is None:
        log.info("operator mail %r skipped: no operator_email or no SMTP server configured", subject)
        return False
    jobs.jobs_for(instance).send_operator_mail(subject, body)
    return True


# -- the buyer's keys ------------------------------------------------------------


def site_info(instance, site) -> dict:
    """What the order mail says about the selling site (plain data: it travels through the queue)."""
    host = site.domains[0] if site.domains else f"{site.slug}.{instance.base_domain}"
    scheme = "https" if instance.production else "http"
    return {"slug": site.slug, "name": site.name, "url": f"{scheme}://{host}/", "locale": site.locale}


def queue_order_mail(order, site, instance=None) -> bool:
    """Queue the mail with ``order``'s keys to its buyer; False when it is not to be sent."""
    instance = instance or jobs.current_instance()
    if instance is None:
        log.warning("order %s: no instance known to this process, its mail is not queued", order.order_no)
        return False
    if not is_email(order.contact):
        log.info("order %s: the contact is not an email address, no mail", order.order_no)
        return False
    if smtp_settings(instance) is None:
        log.info("order %s: mail skipped, no SMTP server configured (KAMENGSITE_SMTP_URL)", order.order_no)
        return False
    jobs.jobs_for(instance).send_order_mail(order.id, site_info(instance, site))
    return True


def site_locale(site_id: int, instance=None) -> str:
    """The ``locale`` of site ``site_id`` (its ``site.toml``): the language its owner reads.

    The current site's inside its requests; else read from the site's folder; the default
    language when the site cannot be read (a notice must go out whatever happens).
    """
    from flask import current_app, has_app_context

    if has_app_context():
        site = current_app.extensions.get("kamengsite.site")
        if site is not None and site.site_id == site_id and site.config is not None:
            return site.config.locale
    instance = instance or jobs.current_instance()
    if instance is None:
        return DEFAULT_LOCALE
    try:
        from .models import Site
        from .opening import registry_for

        return registry_for(instance).load(Site.get_by_id(site_id).slug).locale
    except Exception:  # noqa: BLE001 - the default language rather than no notice
        log.info("site %s: its locale could not be read, %s is used", site_id, DEFAULT_LOCALE, exc_info=True)
        return DEFAULT_LOCALE


def site_gettext(locale: str | None):
    """``gettext`` in ``locale``, in a request or not (the worker, a command).

    Mail and admin notices are written in the language of the site they are about (the
    owner's choice in ``site.toml``), not in the language of whichever request or job
    happens to write them. Same call as ``_``: ``gettext("Hi %(name)s", name=…)``.
    """
    translations = _host_translations(locale if locale in LOCALES else DEFAULT_LOCALE)

    def gettext(string: str, **variables) -> str:
        text = translations.ugettext(string)
        return text % variables if variables else text

    return gettext


@functools.lru_cache(maxsize=None)
def _host_translations(code: str):
    """The host's and the installed plugins' catalogs of ``code`` merged (compiled first if stale),
    once per process like Flask-Babel's: a plugin's notices are written in the owner's language too."""
    from babel.support import Translations

    from .hooks import instance_plugins
    from .i18n import translation_dirs

    merged = None
    for source in translation_dirs(instance_plugins()):
        catalog = Translations.load(str(compile_catalogs(source)), [catalog_folder(code)], DOMAIN)
        if merged is None:
            merged = catalog
        elif isinstance(catalog, Translations):
            merged.merge(catalog)
    return merged


def order_message(instance, order, product_name: str, keys: list[str], site: dict) -> EmailMessage:
    """The buyer's mail with ``keys``, in the language of the selling site."""
    gettext = site_gettext(site.get("locale"))
    values = {"site": site["name"], "order_no": order.order_no, "product": product_name,
              "quantity": order.quantity, "url": site["url"]}
    body = "\n\n".join([
        gettext("Hello, your purchase at %(site)s has been delivered.", **values),
        gettext("Order: %(order_no)s", **values) + "\n" + gettext("Item: %(product)s × %(quantity)s", **values),
        gettext("Card keys:") + "\n" + "\n".join(keys),
        gettext("Keep these keys safe and do not forward this mail.") + "\n"
        + gettext("Your orders: %(url)s", **values),
    ]) + "\n"
    subject = gettext("[%(site)s] Card keys of order %(order_no)s", **values)
    return build_message(instance, to=order.contact.strip(), subject=subject, body=body, from_name=site["name"])


def deliver_order_mail(instance, order_id: int, site: dict, *, last_attempt: bool = True) -> str:
    """The job: write and send the keys mail of order ``order_id``; 'sent' or 'skipped: …'.

    Raises MailError when the SMTP server fails, so the job is retried; on the
    last attempt an admin notice tells the selling site the mail never went out.
    """
    from .crypto import CardKeyCipher, CardKeyCipherError
    from .catalog import Product, Sku
    from .orders import Order, delivered_keys
    from .tenancy import all_sites

    with all_sites():
        order = Order.get_or_none(Order.id == order_id)
    if order is None or order.status != "delivered":
        log.info("order mail %s skipped: the order is not delivered", order_id)
        return "skipped: not delivered"
    if not is_email(order.contact):
        return "skipped: no email contact"
    if smtp_settings(instance) is None:
        log.info("order %s: mail skipped, no SMTP server configured (KAMENGSITE_SMTP_URL)", order.order_no)
        return "skipped: no smtp"
    try:
        keys = delivered_keys(order, CardKeyCipher.from_instance(instance))
    except (CardKeyCipherError, KamengsiteError) as exc:  # retrying cannot fix a key that does not open
        log.error("order %s: its keys cannot be decrypted for the mail: %s", order.order_no, exc)
        gettext = site_gettext(site.get("locale"))
        _notice_failure(order, gettext("The card keys could not be decrypted: %(error)s", error=str(exc)), site)
        return "skipped: keys unreadable"
    if not keys:
        return "skipped: no keys"
    product = Product.get_by_id(order.product_id)
    sku = Sku.get_or_none(Sku.id == order.sku_id)
    name = f"{product.name} {sku.name}".strip() if sku else product.name
    try:
        send_message(instance, order_message(instance, order, name, keys, site))
    except MailError as exc:
        if last_attempt:
            log.error("order %s: mail failed for good: %s", order.order_no, exc)
            _notice_failure(order, str(exc), site)
        else:
            log.warning("order %s: mail failed, will retry: %s", order.order_no, exc)
        raise
    log.info("order %s: card keys mailed to the buyer", order.order_no)
    return "sent"


def _notice_failure(order, why: str, site: dict):
    """A notice to the selling site's admin, in its language, that the keys mail never went out."""
    from .alerts import add_notice

    try:
        gettext = site_gettext(site.get("locale"))
        add_notice(order.site_id, kind="mail_failed", ref=f"order:{order.id}",
                   title=gettext("The card keys mail of order %(order_no)s was not sent", order_no=order.order_no),
                   body="\n".join([gettext("Buyer's contact: %(contact)s", contact=order.contact),
                                    gettext("Reason: %(reason)s", reason=why),
                                    gettext("The buyer can still see the keys on the order page.")]))
    except Exception:  # noqa: BLE001 - a notice must not hide the mail error itself
        log.exception("order %s: could not record the mail failure notice", order.order_no)


# -- hooks -----------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    """Remember the instance, so mail can be queued from code that runs outside a request."""
    context = app.extensions.get("kamengsite.site")
    if context is not None and context.instance is not None:
        jobs.bind(context.instance)


@hookimpl
def order_delivered(order, site):
    """Queue the keys mail; never raises: the buyer's order page must not depend on mail."""
    try:
        queue_order_mail(order, site)
    except Exception:  # noqa: BLE001
        log.exception("order %s: its mail could not be queued", getattr(order, "order_no", "?"))
