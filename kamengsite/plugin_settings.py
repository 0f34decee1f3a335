"""Per-site plugin settings: ``[settings.<plugin>]`` in a site's ``site.toml``, checked by the plugin's schema.

A plugin declares its settings with the ``plugin_settings_schema`` hook (a JSON schema
of an object). The owner's console renders that schema as a form and writes the
result back to ``site.toml`` (``kamengsite.sites.SiteRegistry.update``); plugins read
their checked settings with ``settings_for(site, plugin)``: defaults filled in,
``env:NAME`` references of secret (``writeOnly``) fields resolved. A setting that does
not fit the schema is a ``ConfigError`` naming the site file and the key.
"""

from __future__ import annotations

import copy
import os

import jsonschema

from .errors import ConfigError

ENV_PREFIX = "env:"
#: What the console shows in place of a stored secret.
SECRET_MASK = "••••••"


def secret_keys(schema: dict) -> frozenset:
    """The properties of ``schema`` marked ``writeOnly``: never shown back."""
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return frozenset(k for k, v in props.items() if isinstance(v, dict) and v.get("writeOnly"))


def with_defaults(schema: dict, values: dict) -> dict:
    """``values`` with each missing property's ``default`` filled in (top level only)."""
    merged = {k: copy.deepcopy(v["default"]) for k, v in schema.get("properties", {}).items()
              if isinstance(v, dict) and "default" in v}
    merged.update(values)
    return merged


def check_settings(schema: dict, values, *, where, plugin: str, environ=None) -> dict:
    """Validate a site's settings of ``plugin`` against ``schema``; returns them resolved.

    Raises ConfigError naming ``settings.<plugin>.<key>``; never quotes a secret's value.
    """
    environ = os.environ if environ is None else environ
    key = f"settings.{plugin}"
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(where, key, "must be a table of settings")
    secrets_ = secret_keys(schema)
    resolved = {}
    for name, value in with_defaults(schema, values).items():
        if name in secrets_ and isinstance(value, str) and value.startswith(ENV_PREFIX):
            var = value[len(ENV_PREFIX):]
            if not var or var not in environ:
                raise ConfigError(where, f"{key}.{name}", f"environment variable {var!r} is not set")
            value = environ[var]
        resolved[name] = value
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(resolved),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        error = errors[0]
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties":
            extra = sorted(set(resolved) - set(schema.get("properties", {})))
            path, reason = (extra[0] if extra else path), "unknown setting"
        elif error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            path, reason = ".".join(p for p in (path, missing) if p), "is required"
        elif path.split(".")[0] in secrets_:
            reason = f"invalid value ({error.validator})"
        else:
            reason = error.message
        failure = ConfigError(where, f"{key}.{path}" if path else key, reason)
        # For forms that say it in the owner's language: which rule failed, and its limit.
        failure.validator, failure.limit = error.validator, error.validator_value
        raise failure
    return resolved


def settings_for(site, plugin: str, schema: dict | None = None, environ=None) -> dict:
    """The checked settings of ``plugin`` on ``site`` (a ``SiteConfig``); ConfigError when they are wrong.

    ``schema`` defaults to the one the plugin declares through ``plugin_settings_schema``
    (looked up in the current site app's plugin host).
    """
    if schema is None:
        schema = _declared_schema(plugin)
    raw = (getattr(site, "settings", None) or {}).get(plugin, {})
    return check_settings(schema, raw, where=getattr(site, "config_file", "site.toml"), plugin=plugin,
                          environ=environ)


def _declared_schema(plugin: str) -> dict:
    from flask import current_app

    host = current_app.extensions["kamengsite.plugins"]
    schema = host.settings_schemas().get(plugin)
    if schema is None:
        raise KeyError(f"plugin {plugin!r} declares no settings schema")
    return schema
