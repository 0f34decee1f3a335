"""``kamengsite theme list`` and ``kamengsite theme check [--site SLUG]``.

``check`` is what an operator runs after installing or upgrading a theme: it lists every theme
that fails to load (file, section, setting) and, for each site, what in its stored layouts and
theme settings no longer fits its theme (``layouts.layout_problems``) with what to do. Nothing
is changed. Exit 1 when anything was found.

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

import click

from .cli import _fail_cleanly, pass_ctx
from .errors import ConfigError, KamengsiteError


@click.group()
def theme():
    """Themes: list them; check them and the sites' stored page layouts."""


def _themes(instance):
    from .themes import ThemeRegistry

    return ThemeRegistry(instance.themes_dir)


def _sites(instance):
    from .sites import SiteRegistry

    return SiteRegistry(instance)  # without themes: a site on a broken theme is reported, not refused


@theme.command("list")
@pass_ctx
@_fail_cleanly
def theme_list(ctx):
    """Every theme: name, version, label, and whether it loads."""
    instance = ctx.instance()
    themes = _themes(instance)
    for name in sorted(set(themes.themes) | set(themes.errors)):
        if name in themes.themes:
            found = themes.get(name)
            label = found.label.get("zh_CN") or found.label.get("en") or name
            state = "broken (serving its last good version)" if name in themes.errors else "ok"
            click.echo(f"{name}\t{found.version}\t{label}\t{state}")
        else:
            click.echo(f"{name}\t-\t-\tbroken: {themes.errors[name]}")
    if not themes.themes and not themes.errors:
        click.echo(f"no themes in {instance.themes_dir}")


@theme.command("check")
@click.option("--site", "slug", default=None, help="Check this site only (default: every site).")
@pass_ctx
@_fail_cleanly
def theme_check(ctx, slug):
    """List theme load errors and each site's stored layouts that no longer fit; exit 1 if any."""
    from . import layouts

    instance = ctx.instance()
    themes = _themes(instance)
    sites = _sites(instance)
    found = 0
    for name, error in sorted(themes.errors.items()):
        click.echo(f"theme {name}: {error} — fix the file; the theme is not offered until it loads")
        found += 1
    slugs = [slug] if slug else sites.slugs()
    if slug and not sites.folder(slug).is_dir():
        raise KamengsiteError(f"no site {slug!r} in {instance.sites_dir}")
    for site in slugs:
        try:
            config = sites.load(site)
        except ConfigError as exc:
            click.echo(f"site {site}: {exc}")
            found += 1
            continue
        if not themes.has(config.theme):
            click.echo(f"site {site}: theme {config.theme!r} is not installed — install it or choose another theme")
            found += 1
            continue
        for problem in layouts.SiteLayouts(themes.get(config.theme), sites.folder(site)).problems():
            click.echo(f"site {site}: {problem}")
            found += 1
    if found:
        click.echo(f"theme check: {found} problem(s)", err=True)
        raise SystemExit(1)
    checked = f"site {slug}" if slug else f"{len(slugs)} site(s)"
    click.echo(f"theme check: {len(themes.names())} theme(s) and {checked}: no problems")
