"""``kamengsite ledger …``: check the ledger's invariants, list derived balances, reconcile per day.

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations


import click

from .cli import _fail_cleanly, bound_database, pass_ctx
from .errors import KamengsiteError


def format_fen(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    yuan, rest = divmod(abs(fen), 100)
    return f"{sign}{yuan}.{rest:02d}"


@click.group()
def ledger():
    """The double-entry ledger (money in integer fen)."""


@ledger.command("check")
@pass_ctx
@_fail_cleanly
def check(ctx):
    """Verify every invariant; exit 1 listing each problem."""
    from . import ledger as core

    with bound_database(ctx.instance()):
        problems = core.check()
        txns = core.LedgerTxn.select().count()
        accounts = core.LedgerAccount.select().count()
    if problems:
        for problem in problems:
            click.echo(f"problem: {problem}")
        click.echo(f"ledger check failed: {len(problems)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo(f"ledger balances: {txns} transaction(s), {accounts} account(s), every invariant holds")


@ledger.command("balances")
@pass_ctx
@_fail_cleanly
def balances(ctx):
    """Every account with its balance derived from the entries."""
    from . import ledger as core

    with bound_database(ctx.instance()):
        rows = core.balances()
        slugs = {}
        if rows:
            from .models import Site

            slugs = dict(Site.select(Site.id, Site.slug).tuples())
    if not rows:
        click.echo("no ledger accounts")
        return
    click.echo(f"{'id':>6}  {'kind':<18} {'site':<16} {'member':>8}  {'channel':<10} {'balance_fen':>16}  {'CNY':>16}")
    for acct, amount in rows:
        site = slugs.get(acct.site_id, str(acct.site_id)) if acct.site_id is not None else "-"
        member = str(acct.member_id) if acct.member_id is not None else "-"
        channel = acct.channel or "-"
        click.echo(f"{acct.id:>6}  {acct.kind:<18} {site:<16} {member:>8}  {channel:<10} {amount:>16}  "
                   f"{format_fen(amount):>16}")


@ledger.command("report")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None, help="first day (UTC), default: today")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None, help="last day (UTC), default: --from")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@pass_ctx
@_fail_cleanly
def report(ctx, start, end, as_json):
    """Reconciliation: per day, channel and selling site, what came in and to whom it belongs."""
    import json

    from . import reconcile
    from .models import utcnow

    first = (start or utcnow()).date()
    last = end.date() if end else first
    if last < first:
        raise KamengsiteError("--to is before --from")
    with bound_database(ctx.instance()):
        rows = reconcile.report(first, last)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_dict(), ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no payments or refunds from {first} to {last}")
        return
    header = f"{'day':<10} {'channel':<10} {'site':<14} {'orders':>6} " + " ".join(f"{c:>12}" for c in reconcile.COLUMNS)
    click.echo(header)
    for row in rows + [reconcile.totals(rows)]:
        cells = " ".join(f"{format_fen(getattr(row, c)):>12}" for c in reconcile.COLUMNS)
        click.echo(f"{row.day:<10} {row.channel:<10} {row.site:<14} {row.orders:>6} {cells}")
