"""Site configuration: ``sites/<slug>/site.toml``, validated on load.

Every error names the file, the key and the reason, so an operator can fix a
broken folder without reading code. A broken folder is reported and skipped;
the other sites keep serving.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from .errors import ConfigError

SITE_FILE = "site.toml"
# \Z, not $: "$" also matches before a trailing newline, so "shop\n" would pass as a site name.
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?\Z")
DOMAIN_RE = re.compile(r"^(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]\Z")
#: Sub-domain labels that never name a sub-site.
RESERVED_SLUGS = frozenset({"www", "admin", "api", "static", "assets", "mail", "smtp", "ftp", "ns1", "ns2"})
LOCALES = ("zh_CN", "en")

SITE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "theme"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 60},
        "tagline": {"type": "string", "maxLength": 200},
        "domains": {
            "type": "array",
            "items": {"type": "string", "pattern": DOMAIN_RE.pattern},
            "uniqueItems": True,
            "maxItems": 20,
        },
        "theme": {"type": "string", "pattern": SLUG_RE.pattern},
        "locale": {"enum": list(LOCALES)},
        "timezone": {"type": "string", "maxLength": 64},
        # An image the owner uploaded (kamengsite/assets.py): only this site's own files, by their stored name.
        "logo": {"type": "string", "pattern": r"^(/assets/[0-9a-f]{16}\.(png|jpg|webp|gif))?\Z"},
        "currency": {"enum": ["CNY"]},
        "parent": {"type": "string", "pattern": SLUG_RE.pattern},
        "level": {"type": "string", "maxLength": 32},
        "settlement": {"enum": ["platform", "direct"]},
        "enabled": {"type": "boolean"},
        "plugins": {"type": "array", "items": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,40}\Z"}, "uniqueItems": True},
        "settings": {"type": "object", "additionalProperties": {"type": "object"}},
        "template": {"type": "string", "maxLength": 63},
    },
}
_validator = jsonschema.Draft202012Validator(SITE_SCHEMA)


@dataclass(frozen=True)
class SiteConfig:
    """One site's settings, as read from its folder."""

    slug: str
    path: Path
    name: str
    theme: str
    tagline: str = ""
    domains: tuple = ()
    locale: str = "zh_CN"
    timezone: str = "Asia/Shanghai"  # dates are stored in UTC and shown in this zone
    logo: str = ""  # "/assets/<name>" of an uploaded image, or none
    currency: str = "CNY"
    parent: str | None = None
    level: str = ""
    settlement: str = "platform"  # platform: paid through the main site's channels; direct: the site's own
    enabled: bool = True
    plugins: tuple = ()
    settings: dict = field(default_factory=dict)
    template: str = ""

    @property
    def config_file(self) -> Path:
        return self.path / SITE_FILE


def check_slug(slug: str, where="slug") -> str:
    """Return ``slug`` if it is a valid site name; guards paths against traversal too."""
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        raise ConfigError(where, None, f"{slug!r} is not a valid site name: use 1-32 lowercase letters, digits and '-'")
    if slug in RESERVED_SLUGS:
        raise ConfigError(where, None, f"{slug!r} is reserved; choose another site name")
    return slug


def read_site_config(folder: Path, *, base_domain: str, main_site: str, themes=None) -> SiteConfig:
    """Read and validate ``folder/site.toml``. Raises ConfigError naming file and key."""
    folder = Path(folder)
    slug = folder.name
    config_file = folder / SITE_FILE
    check_slug(slug, where=str(folder))
    if not config_file.is_file():
        raise ConfigError(config_file, None, "missing: every site folder needs a site.toml")
    try:
        with open(config_file, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(config_file, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(config_file, None, "not UTF-8 text") from None
    return validate_site_config(raw, folder, base_domain=base_domain, main_site=main_site, themes=themes)


def validate_site_config(raw: dict, folder: Path, *, base_domain: str, main_site: str, themes=None) -> SiteConfig:
    config_file = Path(folder) / SITE_FILE
    slug = Path(folder).name
    errors = sorted(_validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ConfigError(config_file, _key_path(first), _reason(first))
    domains = tuple(raw.get("domains", ()))
    for i, domain in enumerate(domains):
        if domain == base_domain or domain.endswith("." + base_domain):
            raise ConfigError(
                config_file, f"domains[{i}]",
                f"{domain!r} is under the platform domain {base_domain!r}; sub-domains are given by the site name, "
                f"list only domains you own",
            )
    parent = raw.get("parent")
    if slug == main_site:
        if parent:
            raise ConfigError(config_file, "parent", "the main site has no parent")
    else:
        parent = parent or main_site
        if parent == slug:
            raise ConfigError(config_file, "parent", "a site cannot be its own parent")
    timezone = raw.get("timezone", "Asia/Shanghai")
    if not _known_timezone(timezone):
        raise ConfigError(config_file, "timezone", f"unknown time zone {timezone!r} (an IANA name such as 'Asia/Shanghai')")
    theme = raw["theme"]
    if themes is not None and not themes.has(theme):
        raise ConfigError(config_file, "theme", f"unknown theme {theme!r} (available: {', '.join(themes.names()) or 'none'})")
    return SiteConfig(
        slug=slug,
        path=Path(folder),
        name=raw["name"],
        tagline=raw.get("tagline", ""),
        domains=domains,
        theme=theme,
        locale=raw.get("locale", "zh_CN"),
        timezone=timezone,
        logo=raw.get("logo", ""),
        currency=raw.get("currency", "CNY"),
        parent=parent or None,
        level=raw.get("level", ""),
        settlement=raw.get("settlement", "platform"),
        enabled=raw.get("enabled", True),
        plugins=tuple(raw.get("plugins", ())),
        settings=raw.get("settings", {}),
        template=raw.get("template", ""),
    )


def _known_timezone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _key_path(error) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return ".".join(filter(None, [path, *missing[:1]]))
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message)
        return ".".join(filter(None, [path, *extra[:1]]))
    return path or "(top level)"


def _reason(error) -> str:
    if error.validator == "required":
        return "required setting is missing"
    if error.validator == "additionalProperties":
        return f"unknown setting (known: {', '.join(sorted(error.schema.get('properties', {})))})"
    if error.validator == "pattern":
        return f"{error.instance!r} is not valid here"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(repr, error.validator_value))}"
    if error.validator == "type":
        return f"must be a {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    return error.message
