"""Page layouts made of typed sections (the Shopify Online Store 2.0 shape).

A *section type* is a Jinja template plus a JSON schema (``sections/<type>.html`` and
``sections/<type>.json``): a name, typed settings, block types, ``max_blocks`` and
presets. The host ships shared types in ``kamengsite/templates/sections/``; a theme adds
its own or overrides one in ``themes/<name>/sections/``.

A *page layout* is JSON: ``{"sections": {id: {"type", "settings", "blocks": {bid:
{"type", "settings"}}, "block_order": [...], "disabled": false}}, "order": [...]}``.
The theme ships the default of each page (``themes/<name>/templates/<page>.json``); what
the owner chose lives in the site folder, never in the theme:
``sites/<slug>/layouts/<page>.json`` (published), ``layouts/<page>.draft.json`` (draft)
and ``sites/<slug>/theme_settings.json`` (theme-wide values).

A theme's own files are checked strictly on load (any error: the theme is not offered).
An owner's stored layout is read leniently, so a theme upgrade never silently loses it:
a section whose type is gone is skipped, a value that no longer fits falls back to the
setting's default, a setting added with a default gets it; every such case is logged
and listed by ``layout_problems(site)`` with what to do about it.

Parsed and checked layouts are cached per site app and keyed by the stored file's
``stat()`` and the theme's version: a request costs one ``stat()`` per file, never a
JSON parse or a validation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import nh3
from markupsafe import Markup

from .errors import ConfigError

log = logging.getLogger(__name__)

HOST_SECTIONS = Path(__file__).parent / "templates" / "sections"
#: The page types a layout can be stored for. ``custom`` is the type of every custom page
#: (page key ``custom/<handle>``); each other type is one page (``member``: login, register, account).
PAGES = ("home", "category", "product", "checkout", "order", "lookup", "member", "custom")
#: The section type that marks where a page draws its own content (none on ``home``: all sections).
MAIN_SECTIONS = {page: f"main_{page}" for page in PAGES if page != "home"}
CUSTOM_PREFIX = "custom/"
HANDLE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
TITLE_LIMIT = 100
SETTING_TYPES = ("text", "textarea", "richtext", "number", "range", "select", "checkbox", "color",
                 "image", "url", "product", "category")
LAYOUTS_DIR = "layouts"
THEME_SETTINGS_FILE = "theme_settings.json"
MAX_SECTIONS = 100
MAX_BLOCKS = 50
TEXT_LIMITS = {"text": 500, "textarea": 5000, "richtext": 20000, "url": 2000, "image": 2000}

ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
KEY_RE = r"^[A-Za-z0-9_-]{1,64}$"
COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
# http(s) with a host, a path on this site ("/x", never "//host") or an anchor on the page ("#x");
# no spaces, quotes, angle brackets or backslashes, so a value is inert in an attribute or a CSS url('').
URL_RE = re.compile(r"^(?:https?://[^\s\"'<>\\()]+|/(?![/\\])[^\s\"'<>\\()]*|#[A-Za-z0-9_-]*)$")
PLUGIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")

RICH_TAGS = {"p", "br", "strong", "b", "em", "i", "u", "s", "a", "ul", "ol", "li", "h2", "h3", "h4",
             "blockquote", "span", "small", "code"}
RICH_ATTRIBUTES = {"a": {"href", "title"}}
RICH_SCHEMES = {"http", "https", "mailto"}

_SETTING = {
    "type": "object",
    "required": ["type", "id"],
    "properties": {
        "type": {"enum": list(SETTING_TYPES)},
        "id": {"type": "string", "pattern": ID_RE.pattern},
        "label": {"type": "string"},
        "info": {"type": "string"},
        "placeholder": {"type": "string"},
        "default": {},
        "min": {"type": "number"},
        "max": {"type": "number"},
        "step": {"type": "number", "exclusiveMinimum": 0},
        "unit": {"type": "string"},
        "options": {"type": "array", "items": {
            "type": "object", "required": ["value", "label"], "additionalProperties": False,
            "properties": {"value": {"type": "string"}, "label": {"type": "string"}}}},
        "options_source": {"enum": ["plugin_sections"]},
    },
    "additionalProperties": False,
}
_PRESET_BLOCK = {"type": "object", "required": ["type"], "additionalProperties": False,
                 "properties": {"type": {"type": "string"}, "settings": {"type": "object"}}}
SECTION_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "pages": {"type": "array", "items": {"enum": list(PAGES)}, "uniqueItems": True},
        "settings": {"type": "array", "items": _SETTING},
        "blocks": {"type": "array", "items": {
            "type": "object", "required": ["type", "name"], "additionalProperties": False,
            "properties": {"type": {"type": "string", "pattern": ID_RE.pattern}, "name": {"type": "string"},
                           "settings": {"type": "array", "items": _SETTING}}}},
        "max_blocks": {"type": "integer", "minimum": 0, "maximum": MAX_BLOCKS},
        "presets": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "settings": {"type": "object"},
                           "blocks": {"type": "array", "items": _PRESET_BLOCK}}}},
    },
    "additionalProperties": False,
}
_PLACED_BLOCK = {"type": "object", "required": ["type"], "additionalProperties": False,
                 "properties": {"type": {"type": "string"}, "settings": {"type": "object"}}}
LAYOUT_SCHEMA = {
    "type": "object",
    "required": ["sections", "order"],
    "properties": {
        "sections": {
            "type": "object",
            "propertyNames": {"pattern": KEY_RE},
            "maxProperties": MAX_SECTIONS,
            "additionalProperties": {
                "type": "object",
                "required": ["type"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string"},
                    "settings": {"type": "object"},
                    "blocks": {"type": "object", "propertyNames": {"pattern": KEY_RE},
                               "additionalProperties": _PLACED_BLOCK},
                    "block_order": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                    "disabled": {"type": "boolean"},
                },
            },
        },
        "order": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "title": {"type": "string", "maxLength": TITLE_LIMIT, "pattern": r"^[^\r\n]*$"},  # a custom page's
    },
    "additionalProperties": False,
}
SETTINGS_SCHEMA = {  # theme.json "settings_schema": groups of theme-wide settings
    "type": "array",
    "items": {"type": "object", "required": ["name", "settings"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "settings": {"type": "array", "items": _SETTING}}},
}


# -- problems --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a layout or settings file: where (file, section, block, setting), why, what to do."""

    file: str
    reason: str
    section: str | None = None  # the section id in the layout
    type: str | None = None  # the section type
    setting: str | None = None
    block: str | None = None
    fix: str = ""

    def where(self) -> str:
        parts = [self.file]
        if self.section:
            parts.append(f"section {self.section!r}" + (f" ({self.type})" if self.type else ""))
        if self.block:
            parts.append(f"block {self.block!r}")
        if self.setting:
            parts.append(f"setting {self.setting!r}")
        return ": ".join(parts)

    def __str__(self):
        return f"{self.where()}: {self.reason}" + (f" — {self.fix}" if self.fix else "")

    def error(self) -> ConfigError:
        key = ".".join(p for p in (self.section and f"sections.{self.section}",
                                   self.block and f"blocks.{self.block}",
                                   self.setting and f"settings.{self.setting}") if p) or None
        where = f" ({self.type})" if self.type else ""
        return ConfigError(self.file, key, f"{self.reason}{where}")


# -- setting values --------------------------------------------------------------------------------


def implicit_default(spec: dict):
    kind = spec["type"]
    if "default" in spec:
        return spec["default"]
    if kind == "checkbox":
        return False
    if kind == "range":
        return spec["min"]
    if kind == "number":
        return 0
    if kind == "select":
        return spec["options"][0]["value"] if spec.get("options") else ""
    if kind in ("product", "category"):
        return None
    if kind == "color":
        return "#000000"
    return ""


def clean_value(spec: dict, value):
    """``value`` as setting ``spec`` stores it, or ``ValueError`` saying why it does not fit."""
    kind = spec["type"]
    if kind in ("text", "textarea", "richtext", "url", "image"):
        if not isinstance(value, str):
            raise ValueError("must be a string")
        limit = TEXT_LIMITS.get(kind, 500)
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        if kind in ("url", "image") and value and not URL_RE.match(value):
            raise ValueError("must be an http(s):// address or a path on this site starting with /")
        if kind == "text" and ("\n" in value or "\r" in value):
            raise ValueError("must be one line")
        if kind == "richtext":
            return sanitize(value)
        return value
    if kind in ("number", "range"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("must be a number")
        low, high = spec.get("min"), spec.get("max")
        if low is not None and value < low or high is not None and value > high:
            raise ValueError(f"must be between {low} and {high}")
        if kind == "range":
            step = spec.get("step", 1)
            steps = (value - spec["min"]) / step
            if abs(steps - round(steps)) > 1e-9:
                raise ValueError(f"must be {spec['min']} plus a multiple of {step}")
        return int(value) if float(value).is_integer() else value
    if kind == "select":
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if spec.get("options_source") == "plugin_sections":
            if not PLUGIN_NAME_RE.match(value):
                raise ValueError("is not a plugin section name")
            return value
        allowed = [o["value"] for o in spec.get("options", [])]
        if value not in allowed:
            raise ValueError(f"must be one of {allowed}")
        return value
    if kind == "checkbox":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "color":
        if not isinstance(value, str) or not COLOR_RE.match(value):
            raise ValueError("must be a colour like #1a2b3c")
        return value.lower()
    if kind in ("product", "category"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"must be a {kind} id (a positive whole number) or null")
        return value
    raise ValueError(f"unknown setting type {kind!r}")


def sanitize(html: str) -> str:
    """Rich text as owners may store it: a few formatting tags, links to http(s)/mailto; nothing runs."""
    return nh3.clean(html, tags=RICH_TAGS, attributes=RICH_ATTRIBUTES, url_schemes=RICH_SCHEMES,
                     link_rel="noopener noreferrer nofollow")


def check_settings(specs, values, *, problem, strict: bool) -> dict:
    """The cleaned values of ``specs`` from ``values`` (defaults where missing).

    ``problem(setting, reason, fix)`` records each value that does not fit; it falls back
    to the default. An unknown key is refused when ``strict``; in a stored file (a theme upgrade
    renamed or removed the setting) it is kept in the file, unused, and reported.
    """
    values = values if isinstance(values, dict) else {}
    clean = {}
    known = set()
    for spec in specs:
        sid = spec["id"]
        known.add(sid)
        if sid in values:
            try:
                clean[sid] = clean_value(spec, values[sid])
                continue
            except ValueError as exc:
                problem(sid, f"{values[sid]!r:.80} {exc}", "the default is used; choose a new value and save")
        default = implicit_default(spec)
        clean[sid] = clean_value(spec, default) if default is not None else None
    for sid in values:
        if sid not in known:
            if strict:
                problem(sid, "is not a setting of this type", "remove it")
            else:
                problem(sid, "is no longer a setting of this type (the theme renamed or removed it)",
                        "its stored value is kept in the file but not used; set the new setting and save")
    return clean


# -- section types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionType:
    type: str
    name: str
    settings: tuple
    blocks: dict  # block type -> {"name", "settings"}
    max_blocks: int
    presets: tuple
    pages: tuple
    path: str  # the schema file

    @property
    def template(self) -> str:
        return f"sections/{self.type}.html"

    def defaults(self) -> dict:
        return check_settings(self.settings, {}, problem=lambda *a: None, strict=False)

    def describe(self) -> dict:
        """For an editor: the type's name, settings, blocks and presets."""
        return {"type": self.type, "name": self.name, "settings": list(self.settings), "pages": list(self.pages),
                "blocks": [{"type": t, **b, "settings": list(b["settings"])} for t, b in self.blocks.items()],
                "max_blocks": self.max_blocks, "presets": list(self.presets)}


def _first_error(validator, data):
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = errors[0]
    return ".".join(str(p) for p in err.absolute_path), err.message


_SECTION_VALIDATOR = jsonschema.Draft202012Validator(SECTION_SCHEMA)
_LAYOUT_VALIDATOR = jsonschema.Draft202012Validator(LAYOUT_SCHEMA)
_SETTINGS_VALIDATOR = jsonschema.Draft202012Validator(SETTINGS_SCHEMA)


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"not valid JSON: {exc}") from None


def check_setting_specs(path, specs, where: str):
    """A schema's own settings: unique ids, options for selects, min/max for ranges, valid defaults."""
    seen = set()
    for i, spec in enumerate(specs):
        key = f"{where}[{i}]:{spec['id']}"
        if spec["id"] in seen:
            raise ConfigError(path, key, "duplicate setting id")
        seen.add(spec["id"])
        if spec["type"] == "select" and not spec.get("options") and "options_source" not in spec:
            raise ConfigError(path, key, "a select needs options")
        if spec["type"] == "range":
            if "min" not in spec or "max" not in spec or spec["min"] >= spec["max"]:
                raise ConfigError(path, key, "a range needs min < max")
        default = implicit_default(spec)
        if default is not None:
            try:
                clean_value(spec, default)
            except ValueError as exc:
                raise ConfigError(path, key, f"default {default!r} {exc}") from None


def load_section_type(path: Path) -> SectionType:
    """Read and check ``sections/<type>.json``; ``ConfigError`` naming the file and the setting."""
    path = Path(path)
    kind = path.stem
    if not ID_RE.match(kind):
        raise ConfigError(path, None, f"section type {kind!r} must be lowercase letters, digits and _")
    data = read_json(path)
    found = _first_error(_SECTION_VALIDATOR, data)
    if found:
        raise ConfigError(path, found[0] or None, found[1])
    settings = data.get("settings", [])
    check_setting_specs(path, settings, "settings")
    blocks = {}
    for i, block in enumerate(data.get("blocks", [])):
        if block["type"] in blocks:
            raise ConfigError(path, f"blocks[{i}]", f"duplicate block type {block['type']!r}")
        check_setting_specs(path, block.get("settings", []), f"blocks[{i}].settings")
        blocks[block["type"]] = {"name": block["name"], "settings": tuple(block.get("settings", []))}
    section = SectionType(type=kind, name=data["name"], settings=tuple(settings), blocks=blocks,
                          max_blocks=data.get("max_blocks", MAX_BLOCKS if blocks else 0),
                          presets=tuple(data.get("presets", [])), pages=tuple(data.get("pages", ["home"])),
                          path=str(path))
    for i, preset in enumerate(section.presets):  # a preset must make a valid section
        problems = []
        placed = {"type": kind, "settings": preset.get("settings", {}),
                  "blocks": {f"b{j}": b for j, b in enumerate(preset.get("blocks", []))},
                  "block_order": [f"b{j}" for j in range(len(preset.get("blocks", [])))]}
        _check_section({kind: section}, section.pages[0] if section.pages else "home", f"preset{i}", placed,
                       str(path), problems, strict=True)
        if problems:
            raise ConfigError(path, f"presets[{i}]", str(problems[0]))
    return section


def load_section_types(theme_folder: Path | None) -> dict:
    """The host's shared section types, then the theme's own (overriding a shared one by name)."""
    found = {}
    for folder in (HOST_SECTIONS, theme_folder and Path(theme_folder) / "sections"):
        if folder and folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                found[path.stem] = load_section_type(path)
    return found


def load_settings_schema(path, data) -> tuple:
    """The theme-wide settings (``settings_schema`` of theme.json) as a flat tuple of setting specs."""
    if data is None:
        return ()
    found = _first_error(_SETTINGS_VALIDATOR, data)
    if found:
        raise ConfigError(path, f"settings_schema.{found[0]}" if found[0] else "settings_schema", found[1])
    specs = [spec for group in data for spec in group["settings"]]
    check_setting_specs(path, specs, "settings_schema")
    return tuple(specs)


# -- the interface words of a schema ---------------------------------------------------------------
#
# A schema's ``name``, settings' ``label``/``info``, options' ``label``, blocks' ``name`` and presets'
# ``name`` are interface text: written in English, translated by the catalogs when shown
# (``admin_theme.shown_schema``), extracted by ``catalogs.extract_schema``. ``default`` values and
# presets' ``settings``/``blocks`` are the owner's starting content and are never translated.


def _map_settings(specs, words):
    mapped = []
    for spec in specs or ():
        if isinstance(spec, dict):
            spec = dict(spec)
            for key in ("label", "info"):
                if isinstance(spec.get(key), str):
                    spec[key] = words(spec[key])
            if isinstance(spec.get("options"), list):
                spec["options"] = [dict(o, label=words(o["label"])) if isinstance(o, dict)
                                   and isinstance(o.get("label"), str) else o for o in spec["options"]]
        mapped.append(spec)
    return mapped


def _named(entry, words):
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return dict(entry, name=words(entry["name"]))
    return entry


def map_section_words(schema, words):
    """A copy of a section schema (a ``sections/<type>.json`` or ``SectionType.describe()``) with
    ``words(text)`` applied to each of its interface texts; ids, defaults and presets' content unchanged."""
    if not isinstance(schema, dict):
        return schema
    mapped = _named(schema, words)
    if isinstance(mapped.get("settings"), (list, tuple)):
        mapped["settings"] = _map_settings(mapped["settings"], words)
    if isinstance(mapped.get("blocks"), (list, tuple)):
        mapped["blocks"] = [dict(_named(b, words), settings=_map_settings(b.get("settings"), words))
                            if isinstance(b, dict) else b for b in mapped["blocks"]]
    if isinstance(mapped.get("presets"), (list, tuple)):
        mapped["presets"] = [_named(p, words) for p in mapped["presets"]]
    return mapped


def map_settings_groups(groups, words) -> list:
    """A copy of ``settings_schema`` groups (theme.json) with ``words`` applied to group names and settings' texts."""
    return [dict(_named(g, words), settings=_map_settings(g.get("settings"), words)) if isinstance(g, dict) else g
            for g in groups or ()]


def map_manifest_words(manifest, words):
    """A copy of a theme.json with ``words`` applied to its ``settings_schema`` texts (its ``label`` and
    ``description`` carry every language already)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings_schema"), list):
        return manifest
    return dict(manifest, settings_schema=map_settings_groups(manifest["settings_schema"], words))


def schema_words(data, *, manifest: bool = False) -> list:
    """Every interface text of a section schema (or of a theme.json, with ``manifest``), in file order."""
    found = []

    def keep(text):
        found.append(text)
        return text

    (map_manifest_words if manifest else map_section_words)(data, keep)
    return found


# -- layouts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    id: str
    type: str
    settings: dict


@dataclass(frozen=True)
class PlacedSection:
    id: str
    type: str
    settings: dict
    blocks: tuple
    disabled: bool = False


@dataclass(frozen=True)
class Layout:
    page: str
    sections: tuple  # in order; disabled ones included (an editor shows them)
    source: str  # the file it came from
    problems: tuple = ()
    title: str = ""  # a custom page's title

    def main(self):
        """The section marking where the page draws its own content (``main_<page>``), or None."""
        kind = MAIN_SECTIONS.get(self.page)
        return next((s for s in self.sections if s.type == kind), None) if kind else None

    def shown(self):
        return [s for s in self.sections if not s.disabled]

    def get(self, section_id: str):
        return next((s for s in self.sections if s.id == section_id), None)


def _check_section(types, page, sid, placed, file, problems, *, strict: bool):
    """A ``PlacedSection`` from a layout entry, or None if it cannot be shown (the problem recorded)."""
    kind = placed.get("type")
    stype = types.get(kind)

    def problem(reason, *, setting=None, block=None, fix=""):
        problems.append(Problem(file, reason, section=sid, type=kind, setting=setting, block=block, fix=fix))

    if stype is None:
        problem("the theme has no section of this type", fix="the section is not shown; remove it, "
                "or switch back to a theme that has it (its settings are kept in the file)")
        return None
    if page not in stype.pages:
        problem(f"this section cannot be placed on the {page!r} page", fix="remove it from this page")
        return None
    settings = check_settings(stype.settings, placed.get("settings", {}), strict=strict,
                              problem=lambda s, r, f: problem(r, setting=s, fix=f))
    raw_blocks = placed.get("blocks", {}) or {}
    order = placed.get("block_order")
    if order is None:
        order = list(raw_blocks)
    for bid in order:
        if bid not in raw_blocks:
            problem("block_order names a block that does not exist", block=bid, fix="remove it from block_order")
    if strict:
        for bid in raw_blocks:
            if bid not in order:
                problem("block is missing from block_order", block=bid, fix="add it to block_order or remove it")
    blocks = []
    for bid in order:
        raw = raw_blocks.get(bid)
        if raw is None:
            continue
        btype = stype.blocks.get(raw.get("type"))
        if btype is None:
            problem(f"the section has no block type {raw.get('type')!r}", block=bid, fix="the block is not shown; remove it")
            continue
        if len(blocks) >= stype.max_blocks:
            problem(f"more than {stype.max_blocks} blocks", block=bid, fix="the extra blocks are not shown; remove some")
            break
        bsettings = check_settings(btype["settings"], raw.get("settings", {}), strict=strict,
                                   problem=lambda s, r, f, bid=bid: problem(r, setting=s, block=bid, fix=f))
        blocks.append(Block(id=bid, type=raw["type"], settings=bsettings))
    return PlacedSection(id=sid, type=kind, settings=settings, blocks=tuple(blocks),
                         disabled=bool(placed.get("disabled", False)))


def check_layout(types: dict, page: str, data, file: str, *, strict: bool) -> tuple[Layout | None, list[Problem]]:
    """(the layout as it can be shown, its problems); the layout is None when the file's shape is wrong."""
    file = str(file)
    found = _first_error(_LAYOUT_VALIDATOR, data)
    if found:
        return None, [Problem(file, f"{found[0] or 'layout'}: {found[1]}",
                              fix="the theme's default layout is shown; fix the file or save the page again")]
    problems: list[Problem] = []
    sections = []
    for sid in data["order"]:
        if sid not in data["sections"]:
            problems.append(Problem(file, "order names a section that does not exist", section=sid,
                                    fix="remove it from order"))
            continue
        placed = _check_section(types, page, sid, data["sections"][sid], file, problems, strict=strict)
        if placed is not None:
            sections.append(placed)
    if strict:
        for sid in data["sections"]:
            if sid not in data["order"]:
                problems.append(Problem(file, "section is missing from order", section=sid,
                                        type=data["sections"][sid].get("type"), fix="add it to order or remove it"))
        problems.extend(_main_section_problems(page, sections, file))
    return Layout(page=page, sections=tuple(sections), source=file, problems=tuple(problems),
                  title=data.get("title", "")), problems


def _main_section_problems(page: str, sections, file: str) -> list[Problem]:
    """A page other than home needs its ``main_<page>`` section exactly once (its own content goes there)."""
    kind = MAIN_SECTIONS.get(page)
    if kind is None:
        return []
    mains = [s for s in sections if s.type == kind]
    if not mains:
        return [Problem(file, f"the page has no {kind!r} section (where its own content goes)", type=kind,
                        fix=f"add the {kind!r} section back")]
    return [Problem(file, f"a page has only one {kind!r} section", section=s.id, type=kind, fix="remove this one")
            for s in mains[1:]]


def page_type(page_key: str) -> str:
    """The page type of a page key: ``custom`` for ``custom/<handle>``, else the key itself (a ``PAGES`` entry).

    ``ValueError`` for anything else (an unknown page, a bad handle): keys become file names.
    """
    if page_key.startswith(CUSTOM_PREFIX):
        if not HANDLE_RE.match(page_key[len(CUSTOM_PREFIX):]):
            raise ValueError(f"bad custom page handle in {page_key!r}: lowercase letters, digits and -, "
                             "starting with a letter or digit, at most 40")
        return "custom"
    if page_key not in PAGES or page_key == "custom":
        raise ValueError(f"unknown page {page_key!r}")
    return page_key


def validate_layout(theme, page: str, data) -> list[Problem]:
    """Every problem of a candidate layout for page key ``page`` of ``theme`` (empty: it can be saved)."""
    try:
        kind = page_type(page)
    except ValueError as exc:
        return [Problem(f"layouts/{page}.json", str(exc))]
    _, problems = check_layout(theme.section_types, kind, data, f"layouts/{page}.json", strict=True)
    return problems


def fallback_layout(page: str, types: dict) -> Layout:
    """A page's layout when its theme ships none: just the page's own content (a theme made for fewer pages)."""
    kind = MAIN_SECTIONS.get(page)
    if kind is None or kind not in types:
        return Layout(page=page, sections=(), source="(none)")
    return Layout(page=page, sections=(PlacedSection(id="main", type=kind, settings=types[kind].defaults(),
                                                     blocks=()),), source="(built in)")


def load_theme_layouts(folder: Path, types: dict) -> dict:
    """The theme's default layouts (``templates/<page>.json``), checked strictly: ``ConfigError`` on any problem.

    Only ``home`` is required; a missing page gets ``fallback_layout`` (its own content, no sections).
    """
    layouts = {}
    for page in PAGES:
        path = Path(folder) / "templates" / f"{page}.json"
        if not path.is_file():
            if page == "home":
                raise ConfigError(path, None, "missing: a theme needs a default home layout")
            layouts[page] = fallback_layout(page, types)
            continue
        layout, problems = check_layout(types, page, read_json(path), str(path), strict=True)
        if problems:
            raise problems[0].error()
        layouts[page] = layout
    return layouts


# -- the site's stored content ---------------------------------------------------------------------


def layout_path(site_folder, page: str, *, draft: bool = False) -> Path:
    """Where page key ``page`` (``home`` … or ``custom/<handle>``) is stored in the site folder."""
    page_type(page)  # a ValueError for anything that is not a page key
    return Path(site_folder) / LAYOUTS_DIR / (f"{page}.draft.json" if draft else f"{page}.json")


def _stat_key(path: Path):
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _read_stored(path: Path):
    """(data, problem): the stored JSON, or None and why it cannot be used."""
    try:
        return read_json(path), None
    except ConfigError as exc:
        return None, Problem(str(path), exc.reason, fix="the theme's default is shown; fix the file or save again")
    except OSError as exc:
        return None, Problem(str(path), f"cannot be read: {exc}", fix="check the file's permissions")


def resolve_layout(theme, site_folder, page: str, *, draft: bool = False) -> Layout:
    """The layout page key ``page`` shows: the site's published one (leniently checked), else the theme's default.

    ``draft``: the draft if there is one (an owner's preview), else the same as published.
    """
    kind = page_type(page)
    path = layout_path(site_folder, page, draft=True) if draft else None
    if path is None or not path.is_file():
        path = layout_path(site_folder, page)
    default = theme.layouts.get(kind) or fallback_layout(kind, theme.section_types)
    if not path.is_file():
        return default
    data, problem = _read_stored(path)
    if problem is not None:
        log.warning("layout %s", problem)
        return Layout(page=kind, sections=default.sections, source=default.source, problems=(problem,))
    layout, problems = check_layout(theme.section_types, kind, data, str(path), strict=False)
    for p in problems:
        log.warning("layout %s", p)
    if layout is None:
        return Layout(page=kind, sections=default.sections, source=default.source, problems=tuple(problems))
    return layout


def resolve_theme_settings(theme, site_folder) -> tuple[dict, list[Problem]]:
    path = Path(site_folder) / THEME_SETTINGS_FILE
    stored, problems = {}, []
    if path.is_file():
        data, problem = _read_stored(path)
        if problem is not None:
            problems.append(problem)
        elif not isinstance(data, dict):
            problems.append(Problem(str(path), "must be a JSON object of setting: value", fix="save the settings again"))
        else:
            stored = data
    values = check_settings(theme.settings_schema, stored, strict=False,
                            problem=lambda s, r, f: problems.append(Problem(str(path), r, setting=s, fix=f)))
    for p in problems:
        log.warning("theme settings %s", p)
    return values, problems


class SiteLayouts:
    """One site app's layouts and theme settings, parsed and checked once per file version."""

    def __init__(self, theme, site_folder):
        self.theme = theme
        self.folder = Path(site_folder)
        self._cache: dict = {}
        self._lock = threading.Lock()
        self.loads = 0  # how often a file was actually read and checked (tests, diagnostics)
        self._stamp_paths: dict = {}

    def _cached(self, name, path, build):
        key = (_stat_key(path), self.theme.version)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        with self._lock:
            self.loads += 1
            value = build()
            self._cache[name] = (key, value)
        return value

    def layout(self, page: str, draft: bool = False) -> Layout:
        """Page key ``page``'s published layout; with ``draft``, its draft if it has one (never shown otherwise)."""
        if draft:
            path = layout_path(self.folder, page, draft=True)
            if _stat_key(path) is not None:
                return self._cached(("draft", page), path,
                                    lambda: resolve_layout(self.theme, self.folder, page, draft=True))
        return self._cached(("layout", page), layout_path(self.folder, page),
                            lambda: resolve_layout(self.theme, self.folder, page))

    def stamp(self, page: str) -> tuple:
        """A cheap key that changes whenever ``page``'s published layout, the theme settings or the theme change.

        Two ``stat()`` calls, no file read (a page cache keys rendered pages by it).
        """
        paths = self._stamp_paths.get(page)
        if paths is None:  # built once per page: path joins cost more than the stat() calls
            paths = self._stamp_paths[page] = (layout_path(self.folder, page), self.folder / THEME_SETTINGS_FILE)
        return (page, self.theme.name, self.theme.version, _stat_key(paths[0]), _stat_key(paths[1]))

    def has_page(self, page: str, draft: bool = False) -> bool:
        """Whether the site stored page key ``page`` (a custom page exists only once stored)."""
        if draft and _stat_key(layout_path(self.folder, page, draft=True)) is not None:
            return True
        return _stat_key(layout_path(self.folder, page)) is not None

    def theme_settings(self) -> dict:
        return self._cached("settings", self.folder / THEME_SETTINGS_FILE,
                            lambda: resolve_theme_settings(self.theme, self.folder))[0]

    def problems(self) -> list[Problem]:
        found = []
        for page in page_keys(self.folder):
            found.extend(self.layout(page).problems)
        found.extend(self._cached("settings", self.folder / THEME_SETTINGS_FILE,
                                  lambda: resolve_theme_settings(self.theme, self.folder))[1])
        return found


def site_layouts(app=None) -> SiteLayouts:
    """The ``SiteLayouts`` of a site app (the current one by default); built once per app."""
    if app is None:
        from flask import current_app

        app = current_app
    layouts = app.extensions.get("kamengsite.layouts")
    if layouts is None:
        site = app.extensions["kamengsite.site"]
        layouts = app.extensions.setdefault("kamengsite.layouts", SiteLayouts(site.theme, site.config.path))
    return layouts


def layout_problems(site) -> list[Problem]:
    """What is wrong with a site's stored layouts and theme settings for its current theme, and what to do.

    ``site``: a site app, or a ``SiteContext``. Nothing stored is changed: the page shows what still
    fits (see the module's docstring) until the owner saves again.
    """
    if hasattr(site, "extensions"):
        return site_layouts(site).problems()
    return SiteLayouts(site.theme, site.config.path).problems()


def page_keys(site_folder) -> list[str]:
    """Every page key of a site: the fixed pages and its custom pages."""
    return [p for p in PAGES if p != "custom"] + [CUSTOM_PREFIX + h for h, _ in custom_pages(site_folder)]


def custom_pages(site_folder) -> list[tuple[str, str]]:
    """The site's custom pages as (handle, title), by handle; a page only drafted so far is listed too."""
    folder = Path(site_folder) / LAYOUTS_DIR / "custom"
    if not folder.is_dir():
        return []
    handles = {p.name.split(".", 1)[0] for p in folder.glob("*.json") if not p.name.startswith(".")}
    found = []
    for handle in sorted(h for h in handles if HANDLE_RE.match(h)):
        path = folder / f"{handle}.json"
        data, _ = _read_stored(path if path.is_file() else folder / f"{handle}.draft.json")
        title = data.get("title") if isinstance(data, dict) else None
        found.append((handle, title if isinstance(title, str) and title else handle))
    return found


def create_custom_page(site_folder, handle: str, title: str, *, theme) -> Path:
    """A new custom page ``/pages/<handle>``, published with the theme's default custom layout and ``title``.

    ``ConfigError`` when the handle is not valid or already taken, or the title does not fit.
    """
    key = CUSTOM_PREFIX + handle
    if not isinstance(handle, str) or not HANDLE_RE.match(handle):
        raise ConfigError(f"layouts/{key}.json", "handle",
                          "lowercase letters, digits and -, starting with a letter or digit, at most 40")
    if not isinstance(title, str) or not title.strip() or len(title) > TITLE_LIMIT or "\n" in title:
        raise ConfigError(f"layouts/{key}.json", "title", f"one line of 1-{TITLE_LIMIT} characters")
    if layout_path(site_folder, key).exists() or layout_path(site_folder, key, draft=True).exists():
        raise ConfigError(f"layouts/{key}.json", "handle", f"a page {handle!r} already exists")
    default = theme.layouts.get("custom") or fallback_layout("custom", theme.section_types)
    data = dict(layout_data(default), title=title.strip())
    return save_layout(site_folder, key, data, theme=theme, publish=True)


def delete_custom_page(site_folder, handle: str) -> bool:
    """Remove custom page ``handle`` (published and draft); False if there was none."""
    key = CUSTOM_PREFIX + handle
    removed = False
    for draft in (False, True):
        try:
            os.remove(layout_path(site_folder, key, draft=draft))
            removed = True
        except FileNotFoundError:
            pass
    return removed


def layout_data(layout: Layout) -> dict:
    """A ``Layout`` back as the JSON a layout file holds (e.g. to start an owner's page from a theme default)."""
    data = {"sections": {}, "order": []}
    for s in layout.sections:
        entry = {"type": s.type, "settings": dict(s.settings)}
        if s.blocks:
            entry["blocks"] = {b.id: {"type": b.type, "settings": dict(b.settings)} for b in s.blocks}
            entry["block_order"] = [b.id for b in s.blocks]
        if s.disabled:
            entry["disabled"] = True
        data["sections"][s.id] = entry
        data["order"].append(s.id)
    if layout.title:
        data["title"] = layout.title
    return data


def save_layout(site_folder, page: str, data, *, theme, publish: bool) -> Path:
    """Validate ``data`` strictly and write it as page key ``page``'s draft or published layout (atomically).

    ``page``: ``home`` …, or ``custom/<handle>``. Raises ``ConfigError`` (file, section, setting) for the
    first problem; nothing is written then. Publishing also removes the draft.
    """
    problems = validate_layout(theme, page, data)
    if problems:
        raise problems[0].error()
    path = layout_path(site_folder, page, draft=not publish)
    _write_json(path, data)
    if publish:
        try:
            os.remove(layout_path(site_folder, page, draft=True))
        except FileNotFoundError:
            pass
    return path


def save_theme_settings(site_folder, values: dict, *, theme) -> Path:
    path = Path(site_folder) / THEME_SETTINGS_FILE
    problems: list[Problem] = []
    check_settings(theme.settings_schema, values, strict=True,
                   problem=lambda s, r, f: problems.append(Problem(str(path), r, setting=s, fix=f)))
    if problems:
        raise problems[0].error()
    _write_json(path, values)
    return path


def _write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=2)
    os.replace(tmp, path)


# -- rendering -------------------------------------------------------------------------------------


@dataclass
class PageData:
    """What sections may show, fetched only when a section asks (one query each, per request)."""

    loaders: dict
    _values: dict = field(default_factory=dict)

    def __getattr__(self, name):
        if name.startswith("_") or name not in self.loaders:
            raise AttributeError(name)
        if name not in self._values:
            self._values[name] = self.loaders[name]()
        return self._values[name]


def render_layout_sections(env, layout: Layout, context: dict, *, only=None) -> list[tuple[PlacedSection, Markup]]:
    """(section, HTML) for the shown sections of ``layout``; a section that fails is logged and left out.

    ``only``: these section ids, disabled or not and even when empty (an editor's preview of one section).
    """
    out = []
    for section in layout.sections:
        if only is not None and section.id not in only:
            continue
        if section.disabled and only is None:
            continue
        try:
            html = env.get_template(f"sections/{section.type}.html").render(context, section=section)
        except Exception:  # noqa: BLE001 - one broken section must not break the page
            log.exception("section %s (%s) failed to render", section.id, section.type)
            continue
        if only is None and not html.strip():
            continue  # nothing to show (no categories, no plugin sections): no empty wrapper either
        out.append((section, Markup(
            '<section id="section-{0}" class="section section-{1}" data-section-id="{0}" data-section-type="{1}">'
        ).format(section.id, section.type) + Markup(html) + Markup("</section>")))
    return out
