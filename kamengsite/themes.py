"""Themes: ``themes/<name>/`` with a ``theme.json`` manifest, templates and static files.

One Jinja environment per theme, shared by every site that uses it: compiled
templates are cached once, not once per site.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jsonschema

from .config import SLUG_RE
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
    },
}


@dataclass(frozen=True)
class Theme:
    name: str
    version: str
    label: dict
    path: Path

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
        themes, errors = {}, {}
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                try:
                    themes[folder.name] = load_theme(folder)
                except ConfigError as exc:
                    errors[folder.name] = exc
        self.themes, self.errors = themes, errors
        self._environments.clear()

    def has(self, name: str) -> bool:
        return name in self.themes

    def names(self) -> list[str]:
        return sorted(self.themes)

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
            loader=jinja2.FileSystemLoader([str(theme.templates_dir), str(HOST_TEMPLATES),
                                            *map(str, self.plugin_template_dirs)]),
            autoescape=True,
            auto_reload=self.auto_reload,
            cache_size=800,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals.update(url_for=url_for, get_flashed_messages=get_flashed_messages)
        env.filters["yuan"] = format_fen
        env.filters["mask_key"] = mask_key
        return env


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
    return Theme(name=data["name"], version=data["version"], label=data["label"], path=folder)
