"""``kamengsite site applications|approve|reject|suspend|resume|close|renew|upgrade|expire`` and
``kamengsite level list|seed``.

Imported by ``cli._register_more_commands``: the ``site`` commands join the existing ``site``
group, ``level`` is a group of its own.
"""

from __future__ import annotations

from contextlib import contextmanager

import click

from .cli import _fail_cleanly, bound_database, pass_ctx
from .cli import site as site_group
from .themes import format_fen


@contextmanager
def _registry(instance):
    """The instance's site registry with the database bound; refuses a schema that is behind."""
    from . import opening

    with bound_database(instance):
        yield opening.registry_for(instance)


# -- applications ---------------------------------------------------------------------------


@site_group.command("applications")
@click.option("--status", type=click.Choice(["requested", "approving", "approved", "rejected", "all"]),
              default="requested", show_default=True)
@pass_ctx
@_fail_cleanly
def site_applications(ctx, status):
    """List applications for new sub-sites (default: those waiting for a decision)."""
    from . import opening

    with _registry(ctx.instance()):
        rows = opening.applications(None if status == "all" else status)
        for application in rows:
            click.echo(opening.describe(application))
    if not rows:
        click.echo("no applications" if status == "all" else f"no {status} applications")


@site_group.command("approve")
@click.argument("application_id", type=int)
@pass_ctx
@_fail_cleanly
def site_approve(ctx, application_id):
    """Approve application APPLICATION_ID: create the site, its owner's account and its term."""
    from . import opening

    instance = ctx.instance()
    with _registry(instance) as registry:
        application = opening.approve(registry, application_id)
    click.echo(f"application {application.id} approved: site {application.slug!r} is open at "
               f"http://{application.slug}.{instance.base_domain}/ (applicant: {application.notice or '-'})")


@site_group.command("reject")
@click.argument("application_id", type=int)
@click.option("--reason", required=True, help="Why; the applicant is told.")
@pass_ctx
@_fail_cleanly
def site_reject(ctx, application_id, reason):
    """Reject application APPLICATION_ID with a reason (a fee already paid goes back)."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        application = opening.reject(registry, application_id, reason)
    click.echo(f"application {application.id} ({application.slug}) rejected")


# -- lifecycle -----------------------------------------------------------------------------


@site_group.command("suspend")
@click.argument("slug")
@click.option("--reason", default="", help="Noted in the site's settings.")
@pass_ctx
@_fail_cleanly
def site_suspend(ctx, slug, reason):
    """Suspend SLUG: the closed page, no checkout; orders and balances are kept."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        opening.suspend(registry, slug, reason)
    click.echo(f"site {slug!r} suspended")


@site_group.command("resume")
@click.argument("slug")
@pass_ctx
@_fail_cleanly
def site_resume(ctx, slug):
    """Resume a suspended site (an expired one must be renewed)."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        opening.resume(registry, slug)
    click.echo(f"site {slug!r} resumed")


@site_group.command("close")
@click.argument("slug")
@click.option("--reason", default="")
@pass_ctx
@_fail_cleanly
def site_close(ctx, slug, reason):
    """Close SLUG for good (listed as closed; its money and data are kept)."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        opening.close(registry, slug, reason)
    click.echo(f"site {slug!r} closed")


@site_group.command("renew")
@click.argument("slug")
@click.option("--pay-from", type=click.Choice(["site", "wallet"]), default="site", show_default=True,
              help="The site's available balance, or the wallet of the member who opened it.")
@pass_ctx
@_fail_cleanly
def site_renew(ctx, slug, pay_from):
    """Renew SLUG for another term of its level, paying the renewal fee."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        until = opening.renew(registry, slug, pay_from=pay_from)
    click.echo(f"site {slug!r} renewed until {until:%Y-%m-%d %H:%M} UTC")


@site_group.command("upgrade")
@click.argument("slug")
@click.argument("level")
@pass_ctx
@_fail_cleanly
def site_upgrade(ctx, slug, level):
    """Move SLUG to LEVEL, paying the difference of the opening fees from its balance."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        config = opening.change_level(registry, slug, level)
    click.echo(f"site {slug!r} is now at level {config.level!r}")


@site_group.command("expire")
@pass_ctx
@_fail_cleanly
def site_expire(ctx):
    """Turn off sites past their term and back on those renewed since (run it from cron)."""
    from . import opening

    with _registry(ctx.instance()) as registry:
        done = opening.expire_sites(registry)
    click.echo(f"expired: {', '.join(done['expired']) or 'none'}")
    click.echo(f"reopened: {', '.join(done['reopened']) or 'none'}")


# -- levels ---------------------------------------------------------------------------------


@click.group()
def level():
    """Site levels (青铜/白银/黄金 …): what sub-sites pay and may do."""


@level.command("list")
@pass_ctx
@_fail_cleanly
def level_list(ctx):
    """List the levels with their fees, term and permissions."""
    from .levels import all_levels

    with _registry(ctx.instance()):
        levels = all_levels()
        for lv in levels:
            allowed = [name for name, yes in (("domain", lv.may_bind_domain), ("children", lv.may_open_children),
                                              ("own-goods", lv.may_list_own_goods), ("self-service", lv.self_service))
                       if yes]
            term = f"{lv.term_days}d" if lv.term_days else "no-term"
            click.echo(f"{lv.code:<12} {lv.name:<6} cost={lv.cost_percent_bp:+d}bp{lv.cost_fixed_fen:+d}fen  "
                       f"opening={format_fen(lv.opening_fee_fen)}  renewal={format_fen(lv.renewal_fee_fen)}  "
                       f"{term}  {' '.join(allowed) or '-'}")
    if not levels:
        click.echo("no levels: run `kamengsite level seed`")


@level.command("seed")
@pass_ctx
@_fail_cleanly
def level_seed(ctx):
    """Create the default levels (青铜/白银/黄金) that do not exist yet."""
    from .levels import seed_default_levels

    with _registry(ctx.instance()):
        created = seed_default_levels()
    click.echo(f"created {created} level(s)" if created else "the default levels already exist")
