"""``kamengsite account …``: console accounts (/admin/) of the main site, or with ``--site`` of a sub-site's owner.

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from .cli import _fail_cleanly, bound_database, pass_ctx
from .errors import KamengsiteError


SITE_OPTION = click.option("--site", "slug", default=None, metavar="SLUG",
                           help="The site whose console it is (default: the main site).")


@contextmanager
def _console_site(instance, slug=None):
    """The id of site ``slug`` (default: the main site) with the database bound; refuses a schema that is behind."""
    from .models import Site

    with bound_database(instance):
        slug = slug or instance.main_site
        site = Site.get_or_none(Site.slug == slug)
        if site is None:
            hint = "run `kamengsite init`" if slug == instance.main_site else "see `kamengsite site list`"
            raise KamengsiteError(f"site {slug!r} not found: {hint}")
        yield site.id


def _password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated): the first line of stdin, or a new random one."""
    from .accounts import generate_password

    if not from_stdin:
        return generate_password(), True
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise KamengsiteError("--password-stdin: no password on standard input")
    return password, False


@click.group()
def account():
    """Console accounts (/admin/): the main site's operators, or a sub-site's owners with --site."""


@account.command("create")
@click.argument("username")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of generating one.")
@SITE_OPTION
@pass_ctx
@_fail_cleanly
def account_create(ctx, username, password_stdin, slug):
    """Create console account USERNAME (main site, or --site); prints a generated password unless --password-stdin."""
    from .accounts import create_account

    instance = ctx.instance()
    slug = slug or instance.main_site
    password, generated = _password(password_stdin)
    with _console_site(instance, slug) as site_id:
        created = create_account(site_id, username, password, role="operator")
    click.echo(f"created operator {created.username!r} on site {slug!r}")
    if generated:
        click.echo(f"password: {password}")
        click.echo("(shown once; change it with `kamengsite account set-password`)")
    click.echo(f"console: http://{slug}.{instance.base_domain}/admin/")


@account.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True,
              help="Read the new password from the first line of standard input instead of generating one.")
@SITE_OPTION
@pass_ctx
@_fail_cleanly
def account_set_password(ctx, username, password_stdin, slug):
    """Give USERNAME a new password (generated and printed unless --password-stdin); signs out its sessions."""
    from .accounts import set_password

    instance = ctx.instance()
    password, generated = _password(password_stdin)
    with _console_site(instance, slug) as site_id:
        changed = set_password(site_id, username, password)
    click.echo(f"password of {changed.username!r} changed; its open sessions are signed out")
    if generated:
        click.echo(f"password: {password}")


@account.command("reset-2fa")
@click.argument("username")
@SITE_OPTION
@pass_ctx
@_fail_cleanly
def account_reset_2fa(ctx, username, slug):
    """Turn off two-step login of USERNAME (lost phone and recovery codes); signs out its sessions."""
    from .account_security import clear_failures, reset_two_factor
    from .accounts import AccountError, end_sessions, find_account, normalize_username

    instance = ctx.instance()
    with _console_site(instance, slug) as site_id:
        found = find_account(site_id, username)
        if found is None:
            raise AccountError(f"no account {normalize_username(username)!r}")
        reset_two_factor(site_id, found.id)
        clear_failures(site_id, found.username)  # a locked-out owner may sign in at once
        end_sessions(site_id, found.id)
    click.echo(f"two-step login of {found.username!r} is off; its open sessions are signed out")
    click.echo("(the owner can turn it on again under Account security after signing in with the password)")
