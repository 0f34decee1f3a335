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
from .errors import KamengsiteError
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
               f"http://{application.slug}.{instance.base_domain}/ (applicant: {application.notice_label or '-'})")


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


_PERCENT_OPTIONS = {"cost_percent": "cost_percent_bp", "max_child_markup": "max_child_markup_bp",
                    "own_goods_commission": "own_goods_commission_bp", "withdraw_fee": "withdraw_fee_bp"}
_YUAN_OPTIONS = {"cost_fixed": "cost_fixed_fen", "opening_fee": "opening_fee_fen", "renewal_fee": "renewal_fee_fen",
                 "withdraw_min": "withdraw_min_fen"}
_FLAG_OPTIONS = {"domain": "may_bind_domain", "children": "may_open_children", "own_goods": "may_list_own_goods",
                 "self_service": "self_service"}


def _level_values(options: dict) -> dict:
    """The level fields given on the command line, converted (percent → basis points, yuan → fen)."""
    from .admin import PriceError, parse_yuan
    from .admin_money import parse_percent_bp

    values = {}
    for option, field in _PERCENT_OPTIONS.items():
        if options.get(option) is not None:
            try:
                values[field] = parse_percent_bp(options[option])
            except ValueError:
                raise KamengsiteError(f"--{option.replace('_', '-')}: a percentage like 12.5 or -15") from None
    for option, field in _YUAN_OPTIONS.items():
        if options.get(option) is not None:
            try:
                values[field] = parse_yuan(options[option])
            except PriceError as exc:
                raise KamengsiteError(f"--{option.replace('_', '-')}: {exc}") from None
    for option, field in _FLAG_OPTIONS.items():
        if options.get(option) is not None:
            values[field] = options[option]
    for field in ("name", "term_days", "freeze_days", "sort"):
        if options.get(field) is not None:
            values[field] = options[field]
    return values


@level.command("set")
@click.argument("code")
@click.option("--name", help="What owners see, e.g. Silver (required for a new level).")
@click.option("--cost-percent", help="Cost of its sites over the main price, percent (-15 = 85 %).")
@click.option("--cost-fixed", help="Then added to that cost, yuan.")
@click.option("--max-child-markup", help="The most its sites may add for their child sites, percent.")
@click.option("--own-goods-commission", help="The platform's cut of its sites' own goods, percent.")
@click.option("--opening-fee", help="Yuan.")
@click.option("--renewal-fee", help="Yuan.")
@click.option("--term-days", type=int, help="0: no expiry.")
@click.option("--freeze-days", type=int, help="How long profit stays frozen.")
@click.option("--withdraw-min", help="Yuan.")
@click.option("--withdraw-fee", help="Percent of each withdrawal.")
@click.option("--sort", type=int)
@click.option("--domain/--no-domain", default=None, help="May bind its own domain.")
@click.option("--children/--no-children", default=None, help="May open child sites.")
@click.option("--own-goods/--no-own-goods", default=None, help="May list goods of its own.")
@click.option("--self-service/--no-self-service", default=None, help="May be opened (and switched to) without approval.")
@pass_ctx
@_fail_cleanly
def level_set(ctx, code, **options):
    """Create level CODE or change the given fields of it."""
    from .levels import LevelError, get_level, save_level

    with _registry(ctx.instance()):
        existing = get_level(code)
        values = _level_values(options)
        if existing is None and "name" not in values:
            raise KamengsiteError(f"level {code!r} is new: give it a --name")
        current = {f.name: getattr(existing, f.name) for f in existing._meta.sorted_fields
                   if f.name not in ("id", "created_at")} if existing else {}
        try:
            saved = save_level(**{**current, **values, "code": code})
        except LevelError as exc:
            raise KamengsiteError(f"level {code!r}: {exc}") from None
    click.echo(f"level {saved.code!r} ({saved.name}) {'changed' if existing else 'created'}")


@level.command("price")
@click.argument("code")
@click.argument("sku_id", type=int)
@click.argument("yuan")
@pass_ctx
@_fail_cleanly
def level_price(ctx, code, sku_id, yuan):
    """Set the explicit cost of SKU_ID for sites of level CODE (a price template row); YUAN "none" removes it."""
    from .catalog import Sku
    from .levels import get_level, set_tier_price

    fen = None if yuan.lower() == "none" else _level_values({"cost_fixed": yuan})["cost_fixed_fen"]
    with _registry(ctx.instance()):
        found = get_level(code)
        if found is None:
            raise KamengsiteError(f"no level {code!r}: see `kamengsite level list`")
        if Sku.get_or_none(Sku.id == sku_id) is None:
            raise KamengsiteError(f"no SKU {sku_id}")
        set_tier_price(found, sku_id, fen)
    click.echo(f"level {code!r}: SKU {sku_id} " + ("uses the percent rule again" if fen is None else f"costs {yuan}"))
