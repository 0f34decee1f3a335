"""The site folders of an instance: reading them, finding one by host name, creating new ones.

A folder's *version* is a few stat() results, cheap enough to take on every
request, so a changed folder is picked up on the next request in every process.
Custom domains resolve through the ``site_domain`` index in the database (one
unique row per domain); sub-domains of the platform domain resolve by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import tomllib
from pathlib import Path

import peewee
import tomli_w

from .config import DOMAIN_RE, SITE_FILE, SLUG_RE, SiteConfig, check_slug, read_site_config, validate_site_config
from .db import database
from .errors import ConfigError, KamengsiteError
from .models import Site, SiteDomain

#: How long an unknown host name is remembered as unknown, in seconds.
NEGATIVE_TTL = 1.0
#: At most this often (seconds), an unknown custom domain makes the registry re-index the
#: folders changed since it last looked: a domain added to site.toml by hand starts serving.
RESCAN_INTERVAL = 10.0


def _connection():
    """Open a connection for the block if this thread has none; leave an open one (and its transaction) alone."""
    return database.connection_context() if database.is_closed() else contextlib.nullcontext()


def normalize_host(host: str) -> str | None:
    """'Shop1.Example.com:8080.' → 'shop1.example.com'; None for anything that is not a host name."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: never a site
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.rstrip(".")
    if host == "localhost" or DOMAIN_RE.match(host):
        return host
    return None


class SiteRegistry:
    def __init__(self, instance, themes=None):
        self.instance = instance
        self.root = Path(instance.sites_dir)
        self._root_prefix = os.path.join(str(self.root), "")
        self.base_domain = instance.base_domain
        self.main_site = instance.main_site
        self.themes = themes
        self._domain_cache: dict[str, tuple[str | None, float]] = {}
        self._row_sql: tuple[object, str] | None = None
        self._lock = threading.Lock()
        self._seen_versions = {slug: self.version(slug) for slug in self.slugs()}
        self._last_rescan = 0.0

    # -- folders ------------------------------------------------------------

    def folder(self, slug: str) -> Path:
        return self.root / check_slug(slug)

    def version(self, slug: str):
        """A token that changes whenever the site's config changes; None if gone (or not a site name)."""
        if not SLUG_RE.match(slug):  # never stat a path built from "../x", "a/" or a NUL
            return None
        # Plain string paths: this runs on every request, and pathlib's joins cost more than the stat()s.
        folder = f"{self._root_prefix}{slug}"
        try:
            d = os.stat(folder)
            c = os.stat(f"{folder}/{SITE_FILE}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        # Layouts and theme settings are not part of it: they are cached per file inside the app
        # (kamengsite/layouts.py), so publishing a page does not rebuild the site's app.
        # ctime too: an in-place rewrite that keeps size and mtime (cp -p, tar) still changes it.
        return (d.st_mtime_ns, c.st_mtime_ns, c.st_ctime_ns, c.st_size, c.st_ino)

    def load(self, slug: str) -> SiteConfig:
        return read_site_config(self.folder(slug), base_domain=self.base_domain,
                                main_site=self.main_site, themes=self.themes)

    def slugs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith((".", "_")))

    def scan(self):
        """Yield (slug, SiteConfig or ConfigError) for every folder."""
        for slug in self.slugs():
            try:
                yield slug, self.load(slug)
            except ConfigError as exc:
                yield slug, exc

    # -- host names ---------------------------------------------------------

    def resolve(self, host: str) -> tuple[str | None, bool]:
        """Map a Host header to (slug, via_custom_domain); (None, False) when no site answers it."""
        slug, via_domain, _ = self.resolve_version(host)
        return slug, via_domain

    def resolve_version(self, host: str) -> tuple[str | None, bool, object]:
        """``resolve`` plus the folder's ``version()`` when resolving already took it (else None).

        The host passes that version on to ``Host.app_for``, so a request stats its folder once.
        """
        host = normalize_host(host)
        if host is None:
            return None, False, None
        base = self.base_domain
        if host == base or host == "www." + base:
            return self.main_site, False, None
        if host.endswith("." + base):
            label = host[: -len(base) - 1]
            if "." in label or not label:
                return None, False, None
            version = self.version(label)
            return (label if version else None), False, version
        return self._lookup_domain(host), True, None

    def _lookup_domain(self, host: str) -> str | None:
        cached = self._domain_cache.get(host)
        now = time.monotonic()
        if cached is not None and (cached[0] is not None or now - cached[1] < NEGATIVE_TTL):
            return cached[0]
        slug = self._indexed_slug(host)
        if slug is None and now - self._last_rescan >= RESCAN_INTERVAL:
            self._last_rescan = now
            if self.reindex_changed():
                slug = self._indexed_slug(host)
        with self._lock:
            if len(self._domain_cache) > 100_000:
                self._domain_cache.clear()
            self._domain_cache[host] = (slug, now)
        return slug

    def _indexed_slug(self, host: str) -> str | None:
        with _connection():
            row = (SiteDomain.select(Site.slug).join(Site)
                   .where(SiteDomain.domain == host).tuples().first())
        return row[0] if row else None

    def reindex_changed(self) -> int:
        """Re-index the folders whose version changed since this registry last saw them."""
        changed = 0
        for slug in self.slugs():
            version = self.version(slug)
            if version is None or self._seen_versions.get(slug) == version:
                continue
            self._seen_versions[slug] = version
            try:
                self.site_row(self.load(slug))
                changed += 1
            except ConfigError:
                pass  # reported when the site itself is requested, and by `site list`
        return changed

    def forget_domain(self, host: str):
        self._domain_cache.pop(normalize_host(host), None)

    # -- the database index -------------------------------------------------

    def site_row(self, config: SiteConfig) -> Site:
        """The ``site`` row for a loaded folder, created or brought in line with its config.

        Every app build calls this, so the usual case (the row already matches the
        folder) is one read and no transaction; only a difference takes the write path.
        """
        with _connection():
            site = self._current_row(config)
            if site is not None:
                return site
            with database.atomic():
                site = Site.get_or_none(Site.slug == config.slug)
                parent = None
                if config.parent:
                    parent = Site.get_or_none(Site.slug == config.parent)
                    if parent is None:
                        raise ConfigError(config.config_file, "parent", f"no site named {config.parent!r}")
                status = "active" if config.enabled else "disabled"
                if site is None:
                    site = Site.create(slug=config.slug, parent=parent, status=status, level=config.level,
                                       settlement=config.settlement)
                elif (site.parent_id != (parent.id if parent else None) or site.status != status
                      or site.level != config.level or site.settlement != config.settlement):
                    site.parent, site.status = parent, status
                    site.level, site.settlement = config.level, config.settlement
                    site.save()
                self._index_domains(site, config)
        return site

    def _current_row(self, config: SiteConfig) -> Site | None:
        """The site's row if it already matches ``config`` (parent, status, exactly its domains); else None."""
        rows = database.execute_sql(self._current_row_sql(), (config.slug,)).fetchall()
        if not rows:
            return None
        site_id, parent_id, status, created_at, level, settlement, expires_at, parent_slug, _ = rows[0]
        domains = {row[-1] for row in rows if row[-1] is not None}
        if (parent_slug != (config.parent or None)
                or status != ("active" if config.enabled else "disabled")
                or level != config.level or settlement != config.settlement
                or domains != set(config.domains)):
            return None
        site = Site(id=site_id, slug=config.slug, parent=parent_id, status=status, level=level,
                    settlement=settlement, expires_at=Site.expires_at.python_value(expires_at),
                    created_at=Site.created_at.python_value(created_at))
        site._dirty.clear()  # as loaded from the database, like Site.get()
        return site

    def _current_row_sql(self) -> str:
        """The SQL of ``_current_row``'s one query, generated once per database (peewee's SQL
        generation costs more than running the query)."""
        db = database.obj
        cached = self._row_sql
        if cached is None or cached[0] is not db:
            parent = Site.alias("parent_site")
            query = (Site.select(Site.id, Site.parent, Site.status, Site.created_at, Site.level, Site.settlement,
                                 Site.expires_at, parent.slug, SiteDomain.domain)
                     .join_from(Site, parent, peewee.JOIN.LEFT_OUTER, on=(Site.parent == parent.id))
                     .join_from(Site, SiteDomain, peewee.JOIN.LEFT_OUTER, on=(SiteDomain.site == Site.id))
                     .where(Site.slug == "?"))
            sql, params = query.sql()
            assert params == ["?"], params
            self._row_sql = cached = (db, sql)
        return cached[1]

    def _index_domains(self, site: Site, config: SiteConfig):
        wanted = set(config.domains)
        have = {d.domain: d for d in SiteDomain.select().where(SiteDomain.site == site)}
        for domain in set(have) - wanted:
            have[domain].delete_instance()
            self.forget_domain(domain)
        for i, domain in enumerate(config.domains):
            if domain in have:
                continue
            owner = SiteDomain.select(Site.slug).join(Site).where(SiteDomain.domain == domain).tuples().first()
            if owner:
                raise ConfigError(config.config_file, f"domains[{i}]", f"{domain!r} is already bound to site {owner[0]!r}")
            try:
                with database.atomic():
                    SiteDomain.create(domain=domain, site=site)
            except peewee.IntegrityError:
                raise ConfigError(config.config_file, f"domains[{i}]", f"{domain!r} is already bound to another site") from None
            self.forget_domain(domain)

    def sync(self) -> dict[str, ConfigError]:
        """Bring the database index in line with every folder; return the broken ones."""
        broken = {}
        configs = {}
        for slug, result in self.scan():
            if isinstance(result, ConfigError):
                broken[slug] = result
            else:
                configs[slug] = result
        # Parents first, so every child finds its parent's row.
        done: set[str] = set()

        def visit(slug, trail=()):
            if slug in done or slug in broken:
                return
            config = configs[slug]
            if config.parent and config.parent in configs and config.parent not in trail:
                visit(config.parent, trail + (slug,))
            try:
                self.site_row(config)
            except ConfigError as exc:
                broken[slug] = exc
            done.add(slug)

        for slug in configs:
            visit(slug)
        return broken

    # -- changing folders ---------------------------------------------------

    def create(self, slug: str, *, template: str, name: str | None = None, domains=(),
               parent: str | None = None, theme: str | None = None) -> SiteConfig:
        """Copy a site template into a new folder and index it; serves on the next request."""
        check_slug(slug)
        target = self.root / slug
        if target.exists():
            raise KamengsiteError(f"site {slug!r} already exists at {target}")
        source = Path(self.instance.templates_dir) / check_slug(template, where="--template")
        if not (source / SITE_FILE).is_file():
            available = ", ".join(self.templates()) or "none"
            raise KamengsiteError(f"no site template {template!r} in {self.instance.templates_dir} (available: {available})")
        with open(source / SITE_FILE, "rb") as fh:
            values = tomllib.load(fh)
        values["template"] = template
        if name:
            values["name"] = name
        if theme:
            values["theme"] = theme
        values["domains"] = [d.lower().rstrip(".") for d in domains]
        if slug != self.main_site:
            values["parent"] = parent or self.main_site
        # Validate before anything touches the disk: a bad template or domain creates nothing.
        validate_site_config(values, target, base_domain=self.base_domain, main_site=self.main_site, themes=self.themes)
        self.root.mkdir(parents=True, exist_ok=True)
        # Build in a hidden folder and rename: other processes never see half a site.
        staging = self.root / f".new-{slug}-{os.getpid()}-{threading.get_ident()}"
        try:
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(SITE_FILE, "__pycache__"))
            with open(staging / SITE_FILE, "wb") as fh:
                tomli_w.dump(values, fh)
            os.rename(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise KamengsiteError(f"could not create {target}: {exc}") from None
        try:
            config = self.load(slug)
            self.site_row(config)
        except Exception:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return config

    def update(self, slug: str, **changes) -> SiteConfig:
        """Change keys of a site's ``site.toml``: validated first, written atomically, then re-indexed."""
        folder = self.folder(slug)
        try:
            with open(folder / SITE_FILE, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise KamengsiteError(f"no site named {slug!r} in {self.root}") from None
        values.update(changes)
        # A change that would break the site is refused before it reaches the disk.
        config = validate_site_config(values, folder, base_domain=self.base_domain,
                                      main_site=self.main_site, themes=self.themes)
        self._check_domains_free(config)
        tmp = folder / f".{SITE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as fh:
            tomli_w.dump(values, fh)
        os.replace(tmp, folder / SITE_FILE)
        config = self.load(slug)
        self.site_row(config)
        return config

    def _check_domains_free(self, config: SiteConfig):
        if not config.domains:
            return
        with _connection():
            taken = dict(SiteDomain.select(SiteDomain.domain, Site.slug).join(Site)
                         .where(SiteDomain.domain.in_(list(config.domains)) & (Site.slug != config.slug)).tuples())
        for i, domain in enumerate(config.domains):
            if domain in taken:
                raise ConfigError(config.config_file, f"domains[{i}]", f"{domain!r} is already bound to site {taken[domain]!r}")

    def templates(self) -> list[str]:
        root = Path(self.instance.templates_dir)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / SITE_FILE).is_file())
