"""代充 (direct top-up) fields: what a buyer fills in for a product that is topped up, not keyed.

A top-up product stores its fields as JSON in ``product.topup_fields``::

    [{"name": "phone", "label": "充值手机号", "pattern": "^1\\d{10}$", "help": "11 位手机号"},
     {"name": "server", "label": "区服", "choices": ["电信一区", "网通一区"]}]

Every field is required and at most ``max_length`` characters (default 64,
hard cap 200). ``pattern`` is matched against the whole value; ``choices``
restricts it to a list. Values reach the order as a dict (``order.fields``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import jsonschema

from .i18n import _

MAX_LENGTH_CAP = 200
FIELDS_SCHEMA = {
    "type": "array",
    "maxItems": 8,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "label"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,30}\Z"},
            "label": {"type": "string", "minLength": 1, "maxLength": 40},
            "help": {"type": "string", "maxLength": 120},
            "pattern": {"type": "string", "maxLength": 200},
            "choices": {"type": "array", "items": {"type": "string", "maxLength": 60}, "minItems": 1, "maxItems": 50},
            "max_length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH_CAP},
        },
    },
}


@dataclass(frozen=True)
class TopupField:
    name: str
    label: str
    help: str = ""
    pattern: str = ""
    choices: tuple = ()
    max_length: int = 64

    def check(self, value: str) -> str | None:
        """Why ``value`` is not acceptable, in the buyer's language; None when it is."""
        if not value:
            return _("Please fill in %(label)s", label=self.label)
        if len(value) > self.max_length:
            return _("%(label)s can be at most %(max)s characters", label=self.label, max=self.max_length)
        if self.choices and value not in self.choices:
            return _("Please choose a valid %(label)s", label=self.label)
        if self.pattern and not re.fullmatch(self.pattern, value):
            if self.help:
                return _("%(label)s is not in the right format (%(help)s)", label=self.label, help=self.help)
            return _("%(label)s is not in the right format", label=self.label)
        return None


def parse_fields(raw: str | list | None) -> list[TopupField]:
    """The fields a top-up product asks for; raises ValueError saying which entry is wrong."""
    if not raw:
        return []
    data = json.loads(raw) if isinstance(raw, str) else raw
    errors = sorted(jsonschema.Draft202012Validator(FIELDS_SCHEMA).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errors[0].absolute_path)
        raise ValueError(f"topup_fields{where}: {errors[0].message}")
    fields = []
    for i, item in enumerate(data):
        if item.get("pattern"):
            try:
                re.compile(item["pattern"])
            except re.error as exc:
                raise ValueError(f"topup_fields[{i}].pattern: not a valid regular expression ({exc})") from None
        fields.append(TopupField(name=item["name"], label=item["label"], help=item.get("help", ""),
                                 pattern=item.get("pattern", ""), choices=tuple(item.get("choices", ())),
                                 max_length=item.get("max_length", 64)))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError("topup_fields: field names must be unique")
    return fields


def collect(fields: list[TopupField], form) -> tuple[dict, dict]:
    """(values, errors by field name) from a submitted form mapping."""
    values, errors = {}, {}
    for field in fields:
        value = (form.get(f"topup_{field.name}") or "").strip()
        problem = field.check(value)
        if problem:
            errors[field.name] = problem
        values[field.name] = value
    return values, errors
