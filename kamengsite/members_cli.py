"""``kamengsite member …``: look up a site's members and adjust their wallets (the operator's hand).

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

import click

from .cli import _fail_cleanly, bound_database, pass_ctx
from .errors import KamengsiteError


@click.group()
def member():
    """A site's members (buyers with accounts) and their wallets."""


def _site_and_member(instance, slug: str, email: str):
    from . import members
    from .models import Site

    site = Site.get_or_none(Site.slug == slug)
    if site is None:
        raise KamengsiteError(f"site {slug!r} not found: see `kamengsite site list`")
    found = members.find_member(site.id, email)
    if found is None:
        raise KamengsiteError(f"no member {email!r} on site {slug!r}")
    return site, found


def _amount(text: str) -> int:
    from .admin import PriceError, parse_yuan

    try:
        return parse_yuan(text)
    except PriceError as exc:
        raise KamengsiteError(f"amount: {exc}") from None


@member.command("list")
@click.option("--site", "slug", required=True, metavar="SLUG")
@pass_ctx
@_fail_cleanly
def member_list(ctx, slug):
    """The members of SLUG with their wallet balances."""
    from . import members
    from .ledger_cli import format_fen
    from .models import Site
    from .tenancy import site_scope

    with bound_database(ctx.instance()):
        site = Site.get_or_none(Site.slug == slug)
        if site is None:
            raise KamengsiteError(f"site {slug!r} not found: see `kamengsite site list`")
        with site_scope(site.id):
            rows = [(m.id, m.email, m.status, members.wallet_balance(site.id, m.id))
                    for m in members.Member.select().order_by(members.Member.id)]
    if not rows:
        click.echo(f"no members on {slug!r}")
    for member_id, email, status, balance in rows:
        click.echo(f"{member_id:>6}  {email:<40} {status:<9} {format_fen(balance):>12}")


def _adjustment_options(fn):
    for option in reversed((
            click.option("--site", "slug", required=True, metavar="SLUG"),
            click.argument("email"),
            click.argument("yuan"),
            click.option("--reference", required=True, help="Unique per adjustment: running it again changes nothing."),
            click.option("--memo", default="", help="Shown on the member's statement."))):
        fn = option(fn)
    return fn


def _adjust(instance, slug, email, yuan, reference, memo, *, credit: bool) -> str:
    """Credit or debit a member's wallet by hand; the line to print."""
    from . import ledger, members

    amount = _amount(yuan)
    with bound_database(instance):
        site, found = _site_and_member(instance, slug, email)
        try:
            (members.credit_wallet if credit else members.debit_wallet)(site.id, found.id, amount, reference, memo)
        except ledger.InsufficientFunds:
            raise KamengsiteError(f"the wallet of {email} holds less than {yuan}") from None
        balance = members.wallet_balance(site.id, found.id)
    done = f"credited {yuan} to" if credit else f"debited {yuan} from"
    return f"{done} {email} on {slug}; wallet now {balance / 100:.2f}"


@member.command("credit")
@_adjustment_options
@pass_ctx
@_fail_cleanly
def member_credit(ctx, slug, email, yuan, reference, memo):
    """Put YUAN into EMAIL's wallet on SLUG (out of platform revenue)."""
    click.echo(_adjust(ctx.instance(), slug, email, yuan, reference, memo, credit=True))


@member.command("debit")
@_adjustment_options
@pass_ctx
@_fail_cleanly
def member_debit(ctx, slug, email, yuan, reference, memo):
    """Take YUAN out of EMAIL's wallet on SLUG (refused when the wallet is short)."""
    click.echo(_adjust(ctx.instance(), slug, email, yuan, reference, memo, credit=False))
