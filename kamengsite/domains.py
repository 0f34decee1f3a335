"""Binding an owner's own domain to a sub-site: claim, prove, bind.

1. The owner of a site whose level allows it (``may_bind_domain``) *claims* a domain. It
   must be a plain host name (``DOMAIN_RE``), not the platform's domain or under it, not
   bound to any site (``site_domain``) and not verified by another site. A claim gets a
   random token. Several sites may claim one domain (a squatter cannot block the real
   owner); only proof decides.
2. The owner proves control, either way:

   * **HTTP** — point the domain at the platform (that is all: while exactly one site has a
     pending claim on a domain nobody has bound, the host answers
     ``http://<domain>/.well-known/kamengsite-verification.txt`` with that claim's token), or
     publish the token at that address on their own server. ``HttpFetcher`` fetches it:
     only public addresses (the one it checked is the one it connects to), no redirect to
     another host, a few KB and a few seconds at most.
   * **DNS** — a TXT record ``_kamengsite.<domain>`` holding the token, read through a
     resolver object (``DnsResolver`` uses dnspython; tests pass a fake).

3. On success the domain is added to the site's ``site.toml`` ``domains`` through
   ``SiteRegistry.update``, which indexes it (unique across the platform); other sites'
   claims on it are marked superseded.

``DomainClaim`` is a tenant row: a site's console sees and acts on its own claims only.
"""

from __future__ import annotations

import datetime
import hmac
import http.client
import logging
import secrets
import socket
import ssl
import time
from urllib.parse import urlsplit

import peewee

from . import outbound
from .config import DOMAIN_RE
from .errors import ConfigError, KamengsiteError
from .i18n import _, _l
from .levels import get_level
from .models import Site, SiteDomain, utcnow
from .tenancy import TenantModel, acting_for, all_sites

log = logging.getLogger(__name__)

VERIFICATION_PATH = "/.well-known/kamengsite-verification.txt"
DNS_PREFIX = "_kamengsite."
CLAIM_TTL_DAYS = 14  # a pending claim older than this is void: claim again for a new token
MAX_PENDING_PER_SITE = 10
METHODS = {"http": _l("HTTP file"), "dns": _l("DNS TXT record")}
STATUS_LABELS = {"pending": _l("Awaiting verification"), "verified": _l("Verified"), "cancelled": _l("Cancelled"),
                 "superseded": _l("Bound by another site")}


class DomainError(KamengsiteError):
    """A claim or a proof was refused; the message is for the site owner (in their language)."""


class DomainClaim(TenantModel):
    domain = peewee.CharField(max_length=253)
    token = peewee.CharField(max_length=64)
    status = peewee.CharField(max_length=16, default="pending")  # pending | verified | cancelled | superseded
    method = peewee.CharField(max_length=8, default="")
    last_error = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)
    checked_at = peewee.DateTimeField(null=True)
    verified_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "domain_claim"
        indexes = ((("site", "domain"), True),)

    def __repr__(self):  # never the token
        return f"<DomainClaim {self.id} {self.domain!r} site={self.site_id} {self.status}>"

    @property
    def status_label(self) -> str:
        return str(STATUS_LABELS.get(self.status, self.status))

    @property
    def dns_name(self) -> str:
        return DNS_PREFIX + self.domain

    @property
    def http_url(self) -> str:
        return f"http://{self.domain}{VERIFICATION_PATH}"


def _now():
    return utcnow().replace(microsecond=0)


def _fresh_since():
    return _now() - datetime.timedelta(days=CLAIM_TTL_DAYS)


# -- checking a domain ----------------------------------------------------------------------


def normalize_domain(text: str) -> str:
    """'Shop.Example.COM.' → 'shop.example.com'; internationalised names become their xn-- form.

    Anything else — a URL, a path, a port, an address, '..' — is refused.
    """
    domain = (text or "").strip().lower().rstrip(".")
    if not domain or len(domain) > 253:
        raise DomainError(_("Please enter a domain, e.g. shop.example.com"))
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise DomainError(_("\"%(domain)s\" is not a valid domain", domain=text)) from None
    if not DOMAIN_RE.match(domain):
        raise DomainError(_("\"%(domain)s\" is not a valid domain: enter just the domain, e.g. shop.example.com, "
                            "without http:// or a path", domain=text))
    return domain


def check_claimable(site: Site, domain: str, base_domain: str) -> str:
    """The normalised domain if ``site`` may claim it now; DomainError says why not."""
    domain = normalize_domain(domain)
    if domain == base_domain or domain.endswith("." + base_domain):
        raise DomainError(_("\"%(domain)s\" is under the platform's domain: a site's sub-domain comes from its name "
                            "and needs no binding", domain=domain))
    level = get_level(site.level)
    if level is None or not level.may_bind_domain:
        raise DomainError(_("Your current level cannot bind its own domains, please upgrade first"))
    owner = SiteDomain.select(Site.slug).join(Site).where(SiteDomain.domain == domain).tuples().first()
    if owner is not None:
        raise DomainError(_("This domain is already bound to this site") if owner[0] == site.slug
                          else _("This domain is already bound to another site"))
    with all_sites():
        taken = DomainClaim.select().where((DomainClaim.domain == domain) & (DomainClaim.status == "verified")
                                           & (DomainClaim.site != site.id)).exists()
    if taken:
        raise DomainError(_("This domain has been verified by another site"))
    return domain


def claim(site: Site, domain: str, *, base_domain: str) -> DomainClaim:
    """A pending claim of ``domain`` for ``site`` with a fresh token (the same pending claim if one exists)."""
    domain = check_claimable(site, domain, base_domain)
    with acting_for(site.id):
        existing = DomainClaim.get_or_none(DomainClaim.domain == domain)
        if existing is not None and existing.status == "pending" and existing.created_at >= _fresh_since():
            return existing
        if DomainClaim.select().where((DomainClaim.status == "pending")
                                      & (DomainClaim.created_at >= _fresh_since())).count() >= MAX_PENDING_PER_SITE:
            raise DomainError(_("At most %(n)s domains may await verification, please verify or cancel some first",
                                n=MAX_PENDING_PER_SITE))
        token = secrets.token_urlsafe(24)
        if existing is not None:  # cancelled, superseded or stale: start again with a new token
            DomainClaim.update(status="pending", token=token, method="", last_error="", created_at=_now(),
                               checked_at=None, verified_at=None).where(DomainClaim.id == existing.id).execute()
            return DomainClaim.get_by_id(existing.id)
        try:
            with DomainClaim._meta.database.atomic():
                return DomainClaim.create(site=site.id, domain=domain, token=token, created_at=_now())
        except peewee.IntegrityError:  # the same claim, made concurrently
            return DomainClaim.get(DomainClaim.domain == domain)


def claims_of(site_id: int) -> list[DomainClaim]:
    with acting_for(site_id):
        return list(DomainClaim.select().order_by(DomainClaim.id.desc()))


def cancel(site_id: int, claim_id: int) -> DomainClaim:
    with acting_for(site_id):
        changed = DomainClaim.update(status="cancelled").where(
            (DomainClaim.id == claim_id) & (DomainClaim.status == "pending")).execute()
        found = DomainClaim.get_or_none(DomainClaim.id == claim_id)
    if found is None:
        raise DomainError(_("No such domain claim"))
    if not changed and found.status != "cancelled":
        raise DomainError(_("This domain claim is \"%(status)s\" and cannot be cancelled", status=found.status_label))
    return found


# -- proving ---------------------------------------------------------------------------------


def verify(registry, site_id: int, claim_id: int, method: str, *, fetcher=None, resolver=None) -> DomainClaim:
    """Check the claim's token by ``method`` (``http`` or ``dns``) and bind the domain on success.

    A failed check is recorded on the claim (``last_error``) and raised as DomainError.
    """
    if method not in METHODS:
        raise DomainError(_("Verify by an HTTP file or a DNS TXT record"))
    with acting_for(site_id):
        found = DomainClaim.get_or_none(DomainClaim.id == claim_id)
    if found is None:
        raise DomainError(_("No such domain claim"))
    if found.status == "verified":
        return found
    if found.status != "pending":
        raise DomainError(_("This domain claim is \"%(status)s\", please claim the domain again",
                            status=found.status_label))
    if found.created_at < _fresh_since():
        raise DomainError(_("This claim is older than %(days)s days, please cancel it and claim again",
                            days=CLAIM_TTL_DAYS))
    site = Site.get_by_id(site_id)
    try:
        check_claimable(site, found.domain, registry.base_domain)  # the level or the domain may have changed
        if method == "http":
            _check_http(found, fetcher or HttpFetcher())
        else:
            _check_dns(found, resolver or DnsResolver())
    except DomainError as exc:
        _record(site_id, found.id, method, str(exc))
        raise
    return _bind(registry, site, found, method)


def _check_http(found: DomainClaim, fetcher):
    body = fetcher.fetch(found.domain, VERIFICATION_PATH)
    lines = [line.strip() for line in (body or "").splitlines() if line.strip()]
    if not any(hmac.compare_digest(line.encode(), found.token.encode()) for line in lines):
        raise DomainError(_("The content of %(url)s does not match the verification code", url=found.http_url))


def _check_dns(found: DomainClaim, resolver):
    records = resolver.txt(found.dns_name)
    if not any(hmac.compare_digest(r.strip().encode(), found.token.encode()) for r in records or ()):
        raise DomainError(_("No verification code found in the TXT records of %(name)s", name=found.dns_name)
                          if not records else
                          _("The TXT records of %(name)s do not match the verification code", name=found.dns_name))


def _record(site_id: int, claim_id: int, method: str, error: str):
    with acting_for(site_id):
        DomainClaim.update(method=method, last_error=error[:500], checked_at=_now()).where(
            (DomainClaim.id == claim_id) & (DomainClaim.status == "pending")).execute()


def _bind(registry, site: Site, found: DomainClaim, method: str) -> DomainClaim:
    """Add the domain to the site's site.toml (which indexes it) and settle every claim on it."""
    config = registry.load(site.slug)
    if found.domain not in config.domains:
        try:
            registry.update(site.slug, domains=[*config.domains, found.domain])
        except ConfigError as exc:  # bound elsewhere in the meantime, or too many domains
            message = (_("This domain is already bound to another site") if "already bound" in str(exc)
                       else _("Cannot bind: %(reason)s", reason=exc.reason))
            _record(site.id, found.id, method, message)
            raise DomainError(message) from None
    now = _now()
    with acting_for(site.id):
        DomainClaim.update(status="verified", method=method, last_error="", checked_at=now, verified_at=now).where(
            DomainClaim.id == found.id).execute()
        verified = DomainClaim.get_by_id(found.id)
    with all_sites():
        DomainClaim.update(status="superseded").where(
            (DomainClaim.domain == found.domain) & (DomainClaim.site != site.id)
            & (DomainClaim.status == "pending")).execute()
    registry.forget_domain(found.domain)
    return verified


def unbind(registry, site: Site, domain: str):
    """Remove a bound domain from the site (it stops serving there at once)."""
    config = registry.load(site.slug)
    if domain not in config.domains:
        raise DomainError(_("This domain is not bound to this site"))
    registry.update(site.slug, domains=[d for d in config.domains if d != domain])
    with acting_for(site.id):
        DomainClaim.update(status="cancelled").where(DomainClaim.domain == domain).execute()


# -- the host's answer at the well-known path ----------------------------------------------------


def pending_token(host_name: str) -> str | None:
    """The token the host answers for an unbound domain: only while exactly one site claims it.

    Pointing DNS at the platform proves the domain's owner wants it here, not *which* site
    they want it on; with two claims pending, the owners must prove it by DNS instead.
    """
    with all_sites():
        tokens = list(DomainClaim.select(DomainClaim.token).where(
            (DomainClaim.domain == host_name) & (DomainClaim.status == "pending")
            & (DomainClaim.created_at >= _fresh_since())).limit(2).tuples())
    return tokens[0][0] if len(tokens) == 1 else None


def verification_response(host_name: str):
    """The host's WSGI response for the well-known path on a host name no site answers."""
    from werkzeug.wrappers import Response

    from .sites import _connection

    token = None
    if host_name and DOMAIN_RE.match(host_name):
        with _connection():
            token = pending_token(host_name)
    response = Response(token + "\n" if token else "not found\n", status=200 if token else 404,
                        mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the fetcher --------------------------------------------------------------------------------


class HttpFetcher:
    """Fetches the verification file of a domain, carefully.

    * The domain is resolved once and every address must be public (not private, loopback,
      link-local, reserved …) unless ``allow_private`` (tests only); the connection goes to
      the checked address, so a second DNS answer cannot point it elsewhere.
    * Redirects are followed (at most ``max_redirects``) only to the same host name.
    * At most ``max_bytes`` are read, and the whole fetch ends after ``timeout`` seconds.
    """

    def __init__(self, *, timeout: float = 5.0, max_bytes: int = 4096, max_redirects: int = 2,
                 allow_private: bool = False, resolve=None, port: int | None = None):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.resolve = resolve or outbound.resolve
        self.port = port  # tests: a local server's port instead of 80/443

    def fetch(self, domain: str, path: str) -> str:
        deadline = time.monotonic() + self.timeout
        scheme = "http"
        for _attempt in range(self.max_redirects + 1):
            status, location, body = self._get(scheme, domain, path, deadline)
            if status in (301, 302, 303, 307, 308):
                scheme, path = self._follow(domain, scheme, location)
                continue
            if status != 200:
                url = f"{scheme}://{domain}{path}"
                raise DomainError(_("%(url)s answered HTTP %(status)s", url=url, status=status))
            try:
                return body.decode("utf-8")
            except UnicodeDecodeError:
                raise DomainError(_("The verification file is not UTF-8 text")) from None
        raise DomainError(_("Too many redirects"))

    def _follow(self, domain: str, scheme: str, location: str | None) -> tuple[str, str]:
        if not location:
            raise DomainError(_("A redirect without a target address"))
        try:
            target = urlsplit(location)
            port = target.port
        except ValueError:
            raise DomainError(_("Invalid redirect address")) from None
        host = (target.hostname or domain).lower().rstrip(".")
        next_scheme = target.scheme or scheme
        if next_scheme not in ("http", "https"):
            raise DomainError(_("Unsupported redirect address"))
        if host != domain or (port and port != (self.port or (443 if next_scheme == "https" else 80))):
            raise DomainError(_("Redirects to another host are not allowed (%(host)s)", host=target.netloc or host))
        return next_scheme, (target.path or "/") + (f"?{target.query}" if target.query else "")

    def _address(self, domain: str) -> str:
        try:
            addresses = self.resolve(domain)
        except OSError:
            raise DomainError(_("Cannot resolve the domain %(domain)s", domain=domain)) from None
        if not addresses:
            raise DomainError(_("Cannot resolve the domain %(domain)s", domain=domain))
        for address in addresses:
            if not self.allow_private and not outbound.is_public(address):
                raise DomainError(_("%(domain)s points to a private or reserved address: refused", domain=domain))
        return addresses[0]

    def _get(self, scheme: str, domain: str, path: str, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DomainError(_("The request timed out"))
        address = self._address(domain)
        port = self.port or (443 if scheme == "https" else 80)
        connection_class = outbound.PinnedHTTPS if scheme == "https" else outbound.PinnedHTTP
        connection = connection_class(domain, address, port, timeout=min(remaining, self.timeout))
        try:
            connection.request("GET", path, headers={"User-Agent": "kamengsite-domain-check/1",
                                                     "Accept": "text/plain", "Connection": "close"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                return response.status, response.getheader("Location"), b""
            return response.status, None, self._read(response, deadline)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise DomainError(_("The request timed out")) from None
            url = f"{scheme}://{domain}{path}"
            raise DomainError(_("Cannot reach %(url)s: %(error)s", url=url, error=type(exc).__name__)) from None
        finally:
            connection.close()

    def _read(self, response, deadline: float) -> bytes:
        body = b""
        while True:
            if time.monotonic() > deadline:
                raise DomainError(_("The request timed out"))
            chunk = response.read1(1024)  # one network read at most: the deadline is checked between reads
            if not chunk:
                return body
            body += chunk
            if len(body) > self.max_bytes:
                raise DomainError(_("The verification file is too large (over %(n)s bytes)", n=self.max_bytes))


# -- DNS ---------------------------------------------------------------------------------------


class DnsResolver:
    """Reads TXT records with dnspython; without it, refuses with a message saying so."""

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout

    def txt(self, name: str) -> list[str]:
        try:
            import dns.exception
            import dns.resolver
        except ImportError:
            raise DomainError(_("dnspython is not installed on the server, so DNS verification is unavailable; "
                                "please verify by HTTP file, or ask the operator to install dnspython")) from None
        try:
            answer = dns.resolver.resolve(name, "TXT", lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DomainError(_("Looking up %(name)s timed out", name=name)) from None
        except dns.exception.DNSException as exc:
            raise DomainError(_("Looking up %(name)s failed: %(error)s", name=name, error=type(exc).__name__)) from None
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]
