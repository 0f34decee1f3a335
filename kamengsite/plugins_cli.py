"""``kamengsite plugins …``: what the plugin host knows (``list``) and a new plugin package (``new``).

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import click

from . import plugins as plugin_host
from .cli import _fail_cleanly, pass_ctx
from .errors import InstanceError, KamengsiteError


@click.group()
def plugins():
    """Plugins: what is installed, where it is enabled, and a new plugin package."""


# -- list -------------------------------------------------------------------------


def _entry_points() -> dict:
    """{name: EntryPoint} of the ``kamengsite`` group, the first of a name winning, as in PluginHost."""
    found = {}
    # Looked up through kamengsite.plugins, so what is listed is exactly what the host loads.
    for ep in plugin_host.entry_points(group=plugin_host.ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _distribution(ep) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown distribution)"
    return f"{dist.metadata['Name'] or dist.name} {dist.version}"


def _sites_listing_plugins(instance) -> tuple[dict[str, list[str]], list[str]]:
    """{plugin name: [sites whose site.toml lists it]}, and the sites whose site.toml cannot be read."""
    from .sites import SiteRegistry

    listed, unreadable = defaultdict(list), []
    for slug, result in SiteRegistry(instance).scan():
        if isinstance(result, KamengsiteError):
            unreadable.append(slug)
            continue
        label = slug if result.enabled else f"{slug} (site disabled)"
        for name in result.plugins:
            listed[name].append(label)
    return listed, unreadable


def _is_payment_channel(host, name: str) -> bool:
    # Payment channels are collected through the full hook (instance-wide), not a site's subset.
    plugin = host.pm.get_plugin(name)
    callers = (host.pm.get_hookcallers(plugin) or []) if plugin is not None else []
    return any(caller.name == "payment_channels" for caller in callers)


def _sites_text(listed, name) -> str:
    if listed is None:
        return "sites: unknown (no instance)"
    return f"sites: {', '.join(listed.get(name, ())) or 'none'}"


def _listing(host, eps: dict, listed) -> list[str]:
    """The lines of `plugins list`: core, then installed, then broken plugins."""
    lines = ["core plugins (built in, enabled on every site):"]
    lines += [f"  {name}" for name in sorted(host.core)]
    lines.append(f"installed plugins (entry points of the group {plugin_host.ENTRY_POINT_GROUP!r}):")
    loaded = [name for name in host.names() if name in eps]
    for name in loaded:
        line = f"  {name:<16} {_distribution(eps[name]):<28} {_sites_text(listed, name)}"
        if _is_payment_channel(host, name):
            line += "; payment channels on every site (instance-wide)"
        lines.append(line)
    if not loaded:
        lines.append("  (none)")
    for name, reason in sorted(host.broken.items()):
        dist = _distribution(eps[name]) if name in eps else "(unknown distribution)"
        lines.append(f"  {name:<16} {dist:<28} BROKEN: {reason} (not loaded; {_sites_text(listed, name)})")
    return lines


def _warnings(host, listed, unreadable) -> list[str]:
    """Site lists naming plugins that are not installed, and sites that could not be read."""
    known = set(host.names()) | set(host.broken)
    lines = [f"warning: site {site} lists plugin {name!r}, which is not installed"
             for name, sites in sorted(listed.items()) if name not in known for site in sites]
    lines += [f"warning: site {slug} has an unreadable site.toml (see `kamengsite site list`)" for slug in unreadable]
    return lines


@plugins.command("list")
@pass_ctx
@_fail_cleanly
def plugins_list(ctx):
    """Core, installed (with versions) and broken plugins, and the sites that enable each."""
    host = plugin_host.PluginHost()
    try:
        listed, unreadable = _sites_listing_plugins(ctx.instance())
    except InstanceError as exc:
        # Listing what is installed needs no instance; only the per-site part does.
        listed, unreadable = None, []
        click.echo(f"note: {exc}", err=True)
    for line in _listing(host, _entry_points(), listed):
        click.echo(line)
    if listed is not None:
        for line in _failure_lines(ctx.instance()):
            click.echo(line)
    for line in _warnings(host, listed or {}, unreadable):
        click.echo(line, err=True)


def _failure_lines(instance) -> list[str]:
    """Hooks that raised at run time (recorded in ``plugin_error``): the plugin was skipped or failed closed."""
    from .cli import bound_database

    try:
        with bound_database(instance):
            failures = plugin_host.recent_failures()
    except Exception as exc:  # noqa: BLE001 - a listing must not fail because the database is away
        return [f"hook failures: unknown ({type(exc).__name__}: {exc})"]
    if not failures:
        return []
    lines = ["hook failures (the plugin was skipped, or the money change rolled back):"]
    lines += [f"  {f.plugin:<16} {f.hook:<22} {f.count}× last {f.last_at:%Y-%m-%d %H:%M} UTC: {f.message}"
              for f in failures]
    return lines


# -- new --------------------------------------------------------------------------


def _check_new_name(name: str) -> str:
    from .scaffold import PLUGIN_NAME_RE, plugin_names

    if not PLUGIN_NAME_RE.match(name):
        raise KamengsiteError(f"{name!r} is not a valid plugin name: use 1-32 lowercase letters, digits, "
                              f"'-' and '_', starting with a letter (e.g. hello or group-buy)")
    ep = plugin_names(name)["ep"]
    if ep in _entry_points():
        # The host loads one plugin per entry-point name: a second one would be silently skipped.
        raise KamengsiteError(f"a plugin named {ep!r} is already installed (see `kamengsite plugins list`)")
    return name


def write_plugin_package(name: str, parent: Path) -> Path:
    """Write ``parent/kamengsite-NAME/``; refuses an existing folder. Returns the folder."""
    from .scaffold import plugin_files, plugin_names

    folder = Path(parent) / plugin_names(name)["dist"]
    if folder.exists():
        raise KamengsiteError(f"{folder} already exists; choose another name or remove it")
    for relative, text in plugin_files(name).items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return folder


@plugins.command("new")
@click.argument("name")
@click.option("--dir", "parent", default="plugins", show_default=True, type=click.Path(file_okay=False),
              help="Folder the package is created in.")
@_fail_cleanly
def plugins_new(name, parent):
    """Scaffold a plugin package kamengsite-NAME: hook, settings schema, test, README."""
    from .scaffold import plugin_names

    folder = write_plugin_package(_check_new_name(name), Path(parent))
    names = plugin_names(name)
    click.echo(f"created {folder}")
    click.echo(f"  install:  pip install -e {folder}")
    click.echo(f"  test:     pytest {folder}")
    click.echo(f"  enable:   add \"{names['ep']}\" to plugins = [...] in a site's site.toml")
