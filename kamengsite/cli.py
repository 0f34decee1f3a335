"""The ``kamengsite`` command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from contextlib import contextmanager

import click

from .config import check_slug
from .errors import KamengsiteError
from .instance import DEFAULT_INSTANCE, Instance


class Context:
    def __init__(self, instance_path):
        self.instance_path = Path(instance_path)

    def instance(self) -> Instance:
        return Instance.load(self.instance_path)


pass_ctx = click.make_pass_decorator(Context)


def _fail_cleanly(fn):
    """Operator errors print as one clear line and exit 1, without a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KamengsiteError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
@click.option("--instance", "instance_path", envvar="KAMENGSITE_INSTANCE", default=str(DEFAULT_INSTANCE),
              show_default=True, type=click.Path(file_okay=False), help="Instance folder (secrets, sites, database).")
@click.version_option(package_name="kamengsite")
@click.pass_context
def main(ctx, instance_path):
    """kamengsite: a 卡盟 platform of a main site and white-label sub-sites."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(instance_path)


# -- init / db -------------------------------------------------------------------


@main.command()
@click.option("--base-domain", default=None, help="Platform domain; sub-sites answer at <name>.<base-domain>.")
@click.option("--database-url", default=None, help="Database URL stored in the instance (DATABASE_URL overrides it).")
@pass_ctx
@_fail_cleanly
def init(ctx, base_domain, database_url):
    """Create the instance folder with generated secrets, migrate the database, create the main site."""
    instance = Instance.create(ctx.instance_path, base_domain=base_domain, database_url=database_url)
    for key, asked in (("base_domain", base_domain), ("database_url", database_url)):
        if asked is not None and getattr(instance, key) != asked and not os.environ.get(key.upper()):
            raise KamengsiteError(f"{instance.path / 'config.toml'} already sets {key} = "
                                  f"{getattr(instance, key)!r}; edit that file to change it")
    applied = _upgrade(instance)
    click.echo(f"instance ready at {instance.path}")
    if applied:
        click.echo(f"applied migrations: {', '.join(applied)}")
    _ensure_main_site(instance)


@main.group()
def db():
    """Database schema."""


@db.command("upgrade")
@pass_ctx
@_fail_cleanly
def db_upgrade(ctx):
    """Apply pending schema migrations."""
    applied = _upgrade(ctx.instance())
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@db.command("status")
@pass_ctx
@_fail_cleanly
def db_status(ctx):
    """List migrations and whether they are applied."""
    from . import migrations

    database = _database(ctx.instance())
    try:
        for m in migrations.runner(database).status():
            click.echo(f"{'applied' if m.applied else 'pending'}  {m.name}")
    finally:
        database.close()


def _database(instance):
    """A connected database; an unreachable or misspelt DATABASE_URL is an operator error, not a traceback."""
    import peewee

    from .db import make_database

    try:
        database = make_database(instance.database_url)
        database.connect()
    except (peewee.PeeweeException, peewee.ImproperlyConfigured, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # drivers' messages span lines
        raise KamengsiteError(f"cannot open the database {_redact(instance.database_url)}: {reason}") from None
    return database


@contextmanager
def bound_database(instance):
    """For one command: the instance's database bound to the models and connected (and the job
    queue bound); refuses a schema that is behind its migrations."""
    from . import jobs, migrations
    from .db import init_database

    db = init_database(instance.database_url)
    try:
        pending = migrations.pending(db)
        if pending:
            raise KamengsiteError(f"database needs migrations ({', '.join(pending)}): run `kamengsite db upgrade`")
        jobs.bind(instance)
        with db.connection_context():
            yield db
    finally:
        if not db.is_closed():
            db.close()


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def _upgrade(instance) -> list[str]:
    from . import migrations

    database = _database(instance)
    try:
        return migrations.upgrade(database)
    finally:
        database.close()


def _host(instance):
    from .host import Host

    _database(instance).close()
    return Host(instance)


def _existing_site(host, slug) -> str:
    if check_slug(slug) not in host.registry.slugs():
        raise KamengsiteError(f"no site {slug!r} in {host.registry.root} (see `kamengsite site list`)")
    return slug


def _ensure_main_site(instance):
    host = _host(instance)
    if instance.main_site not in host.registry.slugs():
        host.registry.create(instance.main_site, template="main")
        click.echo(f"created main site {instance.main_site!r}")


# -- sites -----------------------------------------------------------------------


@main.group()
def site():
    """Sub-sites: create, list, disable."""


@site.command("new")
@click.argument("slug")
@click.option("--template", default="shop", show_default=True, help="Site template to copy (see `site templates`).")
@click.option("--domain", "domains", multiple=True, help="A custom domain for the site (repeatable).")
@click.option("--name", default=None, help="Shop name shown to visitors.")
@click.option("--parent", default=None, help="Parent site (default: the main site).")
@click.option("--theme", default=None, help="Theme (default: the template's).")
@pass_ctx
@_fail_cleanly
def site_new(ctx, slug, template, domains, name, parent, theme):
    """Create site SLUG from a template; it serves at once, no restart needed."""
    instance = ctx.instance()
    config = _host(instance).registry.create(slug, template=template, domains=domains, name=name,
                                             parent=parent, theme=theme)
    click.echo(f"created site {config.slug!r} ({config.name}, theme {config.theme})")
    click.echo(f"  http://{config.slug}.{instance.base_domain}/")
    for domain in config.domains:
        click.echo(f"  http://{domain}/")


@site.command("list")
@pass_ctx
@_fail_cleanly
def site_list(ctx):
    """List every site folder with its status; broken ones with the reason."""
    host = _host(ctx.instance())
    broken = host.registry.sync()
    for slug, result in host.registry.scan():
        if slug in broken:
            click.echo(f"{slug:<20} BROKEN    {broken[slug]}")
            continue
        status = "enabled " if result.enabled else "disabled"
        domains = ", ".join(result.domains) or "-"
        click.echo(f"{slug:<20} {status}  theme={result.theme:<10} parent={result.parent or '-':<10} domains={domains}")
    if broken:
        sys.exit(1)


@site.command("templates")
@pass_ctx
@_fail_cleanly
def site_templates(ctx):
    """List the site templates new sites can be created from."""
    for name in _host(ctx.instance()).registry.templates():
        click.echo(name)


@site.command("disable")
@click.argument("slug")
@pass_ctx
@_fail_cleanly
def site_disable(ctx, slug):
    """Close site SLUG: it shows a closed page; orders and money are kept."""
    host = _host(ctx.instance())
    host.registry.update(_existing_site(host, slug), enabled=False)
    click.echo(f"site {slug!r} disabled")


@site.command("enable")
@click.argument("slug")
@pass_ctx
@_fail_cleanly
def site_enable(ctx, slug):
    """Re-open site SLUG."""
    host = _host(ctx.instance())
    host.registry.update(_existing_site(host, slug), enabled=True)
    click.echo(f"site {slug!r} enabled")


# -- serving ---------------------------------------------------------------------


@main.command()
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Worker processes.")
@click.option("--threads", default=8, show_default=True, type=int, help="Threads per worker.")
@click.option("--access-log/--no-access-log", default=False)
@click.option("--worker/--no-worker", "with_worker", default=True, show_default=True,
              help="Also run the background jobs (order expiry, mail); use --no-worker when "
                   "`kamengsite worker` runs elsewhere.")
@pass_ctx
@_fail_cleanly
def serve(ctx, bind_host, port, workers, threads, access_log, with_worker):
    """Serve every site with gunicorn (a production WSGI server), with the job worker beside it."""
    from . import migrations
    from .serve import run

    instance = ctx.instance()
    database = _database(instance)
    pending = migrations.pending(database)
    database.close()
    if pending:
        raise KamengsiteError(f"database needs migrations ({', '.join(pending)}): run `kamengsite db upgrade`")
    broken = _host(instance).registry.sync()
    for slug, error in broken.items():
        click.echo(f"warning: site {slug} is broken and not served: {error}", err=True)
    click.echo(f"serving on http://{instance.main_site}.{instance.base_domain}:{port}/ "
               f"(every site at http://<name>.{instance.base_domain}:{port}/)")
    job_worker = _start_job_worker(ctx.instance_path) if with_worker else None
    try:
        run(instance, host=bind_host, port=port, workers=workers, threads=threads, access_log=access_log)
    finally:
        if job_worker is not None:
            job_worker.terminate()
            job_worker.wait(timeout=20)


def _start_job_worker(instance_path):
    """`kamengsite worker` as a child process that lives as long as the server."""
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "kamengsite", "--instance", str(instance_path), "worker"])


@main.command()
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True)
@click.option("--no-serve", is_flag=True, help="Set up the demo data, do not start the server.")
@pass_ctx
@_fail_cleanly
def demo(ctx, port, bind_host, no_serve):
    """Set up a demo instance (main site, two themed sub-sites, products and keys) and serve it."""
    from .demo import demo_settings, setup_demo

    instance = Instance.create(ctx.instance_path, **demo_settings())
    _upgrade(instance)
    for line in setup_demo(instance, port=port):
        click.echo(line)
    if no_serve:
        return
    click.get_current_context().invoke(serve, bind_host=bind_host, port=port, workers=2, threads=8,
                                       access_log=False, with_worker=True)


def _register_more_commands():
    """Command groups that live in their own modules (each may be absent while it is being built)."""
    import importlib

    for module_name, names in (
        ("kamengsite.keys_cli", ("keys", "worker")),
        ("kamengsite.accounts_cli", ("account",)),
        ("kamengsite.ledger_cli", ("ledger",)),
        ("kamengsite.members_cli", ("member",)),
        ("kamengsite.plugins_cli", ("plugins",)),
        ("kamengsite.themes_cli", ("theme",)),
        ("kamengsite.audit_cli", ("audit",)),
        ("kamengsite.i18n_cli", ("i18n",)),
        ("kamengsite.sites_cli", ("level",)),  # its `site …` commands join the `site` group on import
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for name in names:
            if hasattr(module, name):
                main.add_command(getattr(module, name))



def _register_plugin_commands():
    """Commands of installed plugins (``register_commands``); a plugin that raises is reported and skipped."""
    from .hooks import call_isolated, instance_plugins

    call_isolated(instance_plugins().pm.hook.register_commands, "register_commands", cli=main)


_register_more_commands()
_register_plugin_commands()
