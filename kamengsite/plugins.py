"""The plugin manager: built-in plugins plus those found through the ``kamengsite`` entry-point group.

Each entry point is loaded on its own: one that fails to import is recorded in
``broken`` and skipped, and the host keeps serving. Hooks for a site's requests
go only to the plugins that site enables (``subset_hook_caller``).
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib.metadata import entry_points

import peewee
import pluggy

from . import hookspecs
from .models import BaseModel, utcnow

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "kamengsite"

#: Modules that are plugins of the host itself; always enabled on every site.
CORE_PLUGINS = ("kamengsite.storefront", "kamengsite.mail", "kamengsite.admin", "kamengsite.payment_routes",
                "kamengsite.admin_payments", "kamengsite.member_routes", "kamengsite.opening_routes",
                "kamengsite.admin_sites", "kamengsite.admin_money", "kamengsite.admin_plugins",
                "kamengsite.admin_theme", "kamengsite.assets",
                "kamengsite.admin_dashboard", "kamengsite.audit",
                "kamengsite.admin_account", "kamengsite.admin_staff", "kamengsite.password_reset",
                "kamengsite.ticket_routes", "kamengsite.admin_tickets", "kamengsite.admin_jobs",
                "kamengsite.admin_settings", "kamengsite.admin_members",
                "kamengsite.api.routes", "kamengsite.api.callbacks", "kamengsite.api.console",
                "kamengsite.admin_risk", "kamengsite.incidents", "kamengsite.backup")


class PluginHost:
    def __init__(self, *, load_entry_points: bool = True, blocked=()):
        self.pm = pluggy.PluginManager("kamengsite")
        self.pm.add_hookspecs(hookspecs)
        self.broken: dict[str, str] = {}
        self.core: set[str] = set()
        for name in blocked:
            self.pm.set_blocked(name)
        for module_name in CORE_PLUGINS:
            self.pm.register(importlib.import_module(module_name), name=module_name)
            self.core.add(module_name)
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self):
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not take the host down
                self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                log.error("plugin %s failed to load and is skipped: %s", ep.name, self.broken[ep.name])

    def register(self, plugin, name: str):
        self.pm.register(plugin, name=name)

    def settings_schemas(self) -> dict[str, dict]:
        """``{plugin name: JSON schema}`` of every plugin that declares settings (``plugin_settings_schema``)."""
        schemas = {}
        for impl in self.pm.hook.plugin_settings_schema.get_hookimpls():
            try:
                schema = impl.function()
            except Exception as exc:  # noqa: BLE001 - a broken schema hides that plugin's form only
                record_failure(impl.plugin_name, "plugin_settings_schema", exc)
                continue
            if isinstance(schema, dict):
                schemas[impl.plugin_name] = schema
        return schemas

    def template_dirs(self) -> list:
        """The ``templates/`` folders next to the loaded plugins' modules (a theme may override their files)."""
        return self._plugin_folders("templates")

    def translation_dirs(self) -> list:
        """The ``translations/`` folders (gettext catalogs) next to the loaded plugins' modules."""
        return self._plugin_folders("translations")

    def _plugin_folders(self, name: str) -> list:
        from pathlib import Path

        folders = []
        for plugin_name, plugin in self.pm.list_name_plugin():
            # A module plugin has a __file__; an instance plugin (a payment channel's object) has its class's module's.
            source = getattr(plugin, "__file__", None) or getattr(sys.modules.get(type(plugin).__module__), "__file__", None)
            if plugin_name in self.core or not source:
                continue
            folder = Path(source).parent / name
            if folder.is_dir() and folder not in folders:
                folders.append(folder)
        return folders

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.pm.list_name_plugin() if name not in self.core)

    def hook_for(self, enabled: tuple[str, ...]):
        """A hook relay that reaches the core plugins and the plugins in ``enabled`` only."""
        wanted = set(enabled) | self.core
        excluded = [plugin for name, plugin in self.pm.list_name_plugin() if name not in wanted]
        if not excluded:
            return self.pm.hook
        return _SubsetRelay(self.pm, excluded)


class _SubsetRelay:
    """``pm.hook``-like object whose callers skip the excluded plugins."""

    def __init__(self, pm, excluded):
        self._pm = pm
        self._excluded = excluded

    def __getattr__(self, name):
        caller = self._pm.subset_hook_caller(name, remove_plugins=self._excluded)
        setattr(self, name, caller)
        return caller


class PluginError(BaseModel):
    """The last failure of a plugin in one hook (a row per plugin and hook, counted)."""

    plugin = peewee.CharField(max_length=64)
    hook = peewee.CharField(max_length=64)
    site_id = peewee.IntegerField(null=True)
    message = peewee.TextField(default="")
    count = peewee.IntegerField(default=1)
    first_at = peewee.DateTimeField(default=utcnow)
    last_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "plugin_error"
        indexes = ((("plugin", "hook"), True),)


def record_failure(plugin: str, hook: str, exc: BaseException, site_id: int | None = None):
    """Remember that ``plugin`` raised in ``hook`` (for ``plugins list`` and the console); never raises."""
    message = f"{type(exc).__name__}: {exc}"[:2000]
    now = utcnow()
    try:
        updated = PluginError.update(message=message, site_id=site_id, count=PluginError.count + 1, last_at=now).where(
            (PluginError.plugin == plugin[:64]) & (PluginError.hook == hook[:64])).execute()
        if not updated:
            PluginError.create(plugin=plugin[:64], hook=hook[:64], site_id=site_id, message=message,
                               first_at=now, last_at=now)
    except Exception:  # noqa: BLE001 - the database may be the very thing failing; the log has it
        log.warning("could not record the failure of plugin %s in %s", plugin, hook, exc_info=True)


def recent_failures(limit: int = 100) -> list[PluginError]:
    """The plugins' recorded hook failures, newest first."""
    return list(PluginError.select().order_by(PluginError.last_at.desc()).limit(limit))
