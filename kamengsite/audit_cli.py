"""``kamengsite audit list [--site SLUG] [--action PREFIX] [--since DATE] [--limit N]``: read the audit log.

One line per entry, newest first, tab-separated: time (UTC), site, account, action, target,
status, IP. Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

import datetime

import click

from .cli import _fail_cleanly, bound_database, pass_ctx
from .errors import KamengsiteError


@click.group()
def audit():
    """The audit log of the consoles (every admin write, sign-in and card-key reveal)."""


@audit.command("list")
@click.option("--site", "slug", default=None, help="Only this site (default: the main site).")
@click.option("--action", default="", help="Only actions starting with this (e.g. 'cardkey.').")
@click.option("--since", default=None, help="Only entries from this UTC date on (YYYY-MM-DD).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@pass_ctx
@_fail_cleanly
def audit_list(ctx, slug, action, since, limit):
    """The newest entries of one site's audit log."""
    from .audit import search
    from .models import Site
    from .tenancy import site_scope

    instance = ctx.instance()
    try:
        since_date = datetime.date.fromisoformat(since) if since else None
    except ValueError:
        raise KamengsiteError(f"--since {since!r}: use a date like 2026-01-31") from None
    slug = slug or instance.main_site
    with bound_database(instance):
        site = Site.get_or_none(Site.slug == slug)
        if site is None:
            raise KamengsiteError(f"no site {slug!r}")
        with site_scope(site.id):
            rows = list(search(action=action, since=since_date).limit(limit))
    for e in rows:
        click.echo("\t".join([e.created_at.strftime("%Y-%m-%d %H:%M:%S"), slug, e.username or "-", e.action,
                              e.target or "-", str(e.status), e.ip or "-"]))
    if not rows:
        click.echo(f"no audit entries for {slug}")
