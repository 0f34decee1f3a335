"""Themes: ``themes/<name>/`` with a ``theme.json`` manifest, templates, sections and static files.

One Jinja environment per theme, shared by every site that uses it: compiled
templates are cached once, not once per site. A theme's sections (``sections/``),
its theme-wide ``settings_schema`` and its default page layouts (``templates/<page>.json``)
are checked on load with the manifest (see ``kamengsite/layouts.py``): a theme with any
error is reported in ``ThemeRegistry.errors`` and not offered.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jsonschema

from .config import SLUG_RE
from . import layouts
from .errors import ConfigError

HOST_TEMPLATES = Path(__file__).parent / "templates"
MANIFEST = "theme.json"
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["name", "version", "label"],
    "properties": {
        "name": {"type": "string", "pattern": SLUG_RE.pattern},
        "version": {"type": "string", "pattern": r"^\d+\.\d+(\.\d+)?$"},
        "label": {"type": "object", "additionalProperties": {"type": "string"}},
        "description": {"type": "object", "additionalProperties": {"type": "string"}},
        "settings_schema": {"type": "array"},  # checked by layouts.SETTINGS_SCHEMA
    },
}


@dataclass(frozen=True)
class Theme:
    name: str
    version: str
    label: dict
    path: Path
    #: Theme-wide setting specs (flattened ``settings_schema`` groups) and the groups as written.
    settings_schema: tuple = ()
    settings_groups: tuple = ()
    #: type -> ``layouts.SectionType``: the host's shared sections and the theme's own.
    section_types: dict = field(default_factory=dict, compare=False)
    #: page -> ``layouts.Layout``: the theme's default layouts.
    layouts: dict = field(default_factory=dict, compare=False)

    @property
    def static_dir(self) -> Path:
        return self.path / "static"

    @property
    def templates_dir(self) -> Path:
        return self.path / "templates"


class ThemeRegistry:
    """The themes found in a folder; broken ones are reported in ``errors``, not offered."""

    def __init__(self, root: Path, *, auto_reload: bool = False):
        self.root = Path(root)
        self.auto_reload = auto_reload
        self.themes: dict[str, Theme] = {}
        self.errors: dict[str, ConfigError] = {}
        self._environments: dict[str, jinja2.Environment] = {}
        self._lock = threading.Lock()
        #: Template folders of plugins, searched after the theme's and the host's (see ``add_template_dirs``).
        self.plugin_template_dirs: list[Path] = []
        self.scan()

    def scan(self):
        """(Re)read every theme folder. A theme that loaded before and is broken now keeps its
        last good version (sites using it keep serving) and is reported in ``errors``."""
        themes, errors = {}, {}
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                try:
                    themes[folder.name] = load_theme(folder)
                except ConfigError as exc:
                    errors[folder.name] = exc
                    if folder.name in self.themes:
                        themes[folder.name] = self.themes[folder.name]
        self.themes, self.errors = themes, errors
        self._environments.clear()

    def has(self, name: str) -> bool:
        return name in self.themes

    def names(self) -> list[str]:
        """The themes offered: loaded and without a current error."""
        return sorted(name for name in self.themes if name not in self.errors)

    def get(self, name: str) -> Theme:
        return self.themes[name]

    def add_template_dirs(self, folders):
        """Let templates come from plugins' ``templates/`` folders too (after the theme and the host)."""
        with self._lock:
            for folder in folders:
                if Path(folder) not in self.plugin_template_dirs:
                    self.plugin_template_dirs.append(Path(folder))
            self._environments.clear()

    def environment(self, name: str) -> jinja2.Environment:
        """The shared Jinja environment of theme ``name`` (theme templates over host templates)."""
        env = self._environments.get(name)
        if env is None:
            with self._lock:
                env = self._environments.get(name)
                if env is None:
                    env = self._environments[name] = self._make_environment(self.themes[name])
        return env

    def _make_environment(self, theme: Theme) -> jinja2.Environment:
        from flask import get_flashed_messages, url_for

        env = jinja2.Environment(
            # "sections/<type>.html" comes from the theme's sections/ first, then the host's shared ones.
            loader=jinja2.ChoiceLoader([
                jinja2.PrefixLoader({"sections": jinja2.FileSystemLoader(str(theme.path / "sections"))}),
                jinja2.FileSystemLoader([str(theme.templates_dir), str(HOST_TEMPLATES),
                                         *map(str, self.plugin_template_dirs)]),
            ]),
            autoescape=True,
            auto_reload=self.auto_reload,
            cache_size=800,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals.update(url_for=url_for, get_flashed_messages=get_flashed_messages)
        env.filters["yuan"] = format_fen
        env.filters["mask_key"] = mask_key
        env.globals["theme_settings"] = _current_theme_settings
        return env


def _current_theme_settings() -> dict:
    """The current site's theme-wide values (template global ``theme_settings()``)."""
    from flask import current_app, has_app_context

    if not has_app_context() or "kamengsite.site" not in current_app.extensions:
        return {}
    return layouts.site_layouts(current_app).theme_settings()


def format_fen(fen: int) -> str:
    """12345 → '123.45': money is stored in fen and only formatted at the edge."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{yuan}.{cents:02d}"


def mask_key(key: str) -> str:
    """'ABCD-EFGH-IJKL-MNOP' → 'ABCD****MNOP': enough to tell keys apart, never more than half of one."""
    shown = min(4, len(key) // 4)
    if shown == 0:
        return "*" * len(key)
    return f"{key[:shown]}****{key[-shown:]}"


def load_theme(folder: Path) -> Theme:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise ConfigError(manifest, None, "missing: every theme needs a theme.json manifest")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(manifest, None, f"not valid JSON: {exc}") from None
    errors = list(jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(data))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or (err.message.split("'")[1] if err.validator == "required" else "")
        raise ConfigError(manifest, key, err.message)
    if data["name"] != folder.name:
        raise ConfigError(manifest, "name", f"{data['name']!r} must match the folder name {folder.name!r}")
    if not (folder / "templates").is_dir():
        raise ConfigError(folder / "templates", None, "missing: a theme needs a templates folder")
    settings_schema = layouts.load_settings_schema(manifest, data.get("settings_schema"))
    section_types = layouts.load_section_types(folder)
    for kind in section_types:
        if not ((folder / "sections" / f"{kind}.html").is_file() or (layouts.HOST_SECTIONS / f"{kind}.html").is_file()):
            raise ConfigError(folder / "sections" / f"{kind}.html", None, f"missing: the template of section {kind!r}")
    return Theme(name=data["name"], version=data["version"], label=data["label"], path=folder,
                 settings_schema=settings_schema, settings_groups=tuple(data.get("settings_schema") or ()),
                 section_types=section_types, layouts=layouts.load_theme_layouts(folder, section_types))
