"""``kamengsite i18n update|compile|check``: the translation catalogs (see ``catalogs.py``).

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

import sys

import click


@click.group()
def i18n():
    """Translation catalogs (zh_CN, en) of the host and the plugin packages."""


def _chosen(names):
    from .catalogs import packages

    found = packages()
    unknown = set(names) - {p.name for p in found}
    if unknown:
        raise click.UsageError(f"unknown package {', '.join(sorted(unknown))} (known: {', '.join(p.name for p in found)})")
    return [p for p in found if not names or p.name in names]


@i18n.command("update")
@click.argument("names", nargs=-1)
def i18n_update(names):
    """Add new strings to the catalogs, drop unused ones; list what still needs translating.

    NAMES: only these packages (``kamengsite``, ``kamengsite_coupons``, ``theme light``…).
    """
    from .catalogs import update

    for package in _chosen(names):
        counts = update(package)
        todo = ", ".join(f"{locale}: {n} to translate" for locale, n in counts.items() if n) or "complete"
        click.echo(f"{package.name}: {todo}")


@i18n.command("compile")
def i18n_compile():
    """Compile every catalog (.po → .mo); ``make install`` runs this, and the host when a .po is newer."""
    from .catalogs import packages
    from .i18n import compile_catalogs

    for package in packages():
        if package.translations.is_dir():
            click.echo(f"{package.name}: {compile_catalogs(package.translations)}")


@i18n.command("check")
@click.argument("names", nargs=-1)
def i18n_check(names):
    """Exit 1 and list every string a catalog lacks (NAMES: only these packages)."""
    from .catalogs import missing
    from .i18n import LOCALES

    bad = 0
    for package in _chosen(names):
        for locale in LOCALES:
            for gap in missing(package, locale):
                click.echo(f"{package.name} [{locale}] untranslated: {gap}")
                bad += 1
    if bad:
        click.echo(f"{bad} untranslated strings", err=True)
        sys.exit(1)
    click.echo("every catalog is complete")


@i18n.command("scan")
def i18n_scan():
    """Exit 1 and list every line with Chinese written into code instead of a catalog."""
    from .catalogs import packages, untranslatable

    lines = [line for package in packages() for line in untranslatable(package)]
    for line in lines:
        click.echo(line)
    if lines:
        click.echo(f"{len(lines)} lines with hard-coded Chinese: write the English in _() and translate it in the catalog", err=True)
        sys.exit(1)
    click.echo("no hard-coded Chinese")
