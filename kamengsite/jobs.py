"""Background jobs: the reservation-expiry sweep and outgoing mail, on huey.

Why huey: it is small (one pure-Python package, no broker of its own to run),
its SQLite storage keeps the queue in a file in the instance folder so a
single-server shop needs no extra service, the same code moves to Redis
(``REDIS_URL``) when several app servers and workers share one queue, and it
has what these jobs need built in: periodic (cron-like) tasks and retries with
a delay. Celery or RQ would bring a broker to run (or no periodic tasks and no
SQLite storage) for no gain at this size.

* ``expire_orders`` runs every minute and calls ``orders.expire_due()``, which
  is safe to run concurrently, so two workers (or a manual run) do no harm.
* ``send_order_mail`` mails a delivered order's card keys to its buyer; it is
  enqueued after the delivering transaction committed and is retried
  (``MAIL_RETRIES`` times, ``MAIL_RETRY_DELAY`` seconds apart) when the SMTP
  server fails. Only the order id travels through the queue, never a key: the
  worker decrypts the keys when it writes the mail.
* ``send_operator_mail`` sends operator notices (low stock), also retried.
* ``send_mail`` sends one notice to one address (buyer messages), ``send_password_reset`` a
  console account its reset link (made in the worker, so the link never waits in the queue).
* ``run_console_job`` does a long console operation (``background.py``: key imports, exports)
  and ``sweep_console_files`` removes its week-old files.

Nothing is created on import: ``jobs_for(instance)`` builds the huey of an
instance on first use (``make_jobs`` builds a fresh one), and
``kamengsite worker`` runs its consumer. Tests run jobs in huey's immediate
mode (``make_jobs(instance, immediate=True)``, or ``KAMENGSITE_JOBS_IMMEDIATE=1``
for every instance): a task runs at once, in the caller, and a retry is kept in
huey's in-memory schedule.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from huey import RedisHuey, SqliteHuey, crontab

log = logging.getLogger(__name__)

QUEUE_FILE = "jobs.db"  # in the instance folder
QUEUE_NAME = "kamengsite"
MAIL_RETRIES = 5
MAIL_RETRY_DELAY = 60  # seconds
EXPIRE_BATCH = 500
EXPIRE_ROUNDS = 20  # at most EXPIRE_BATCH * EXPIRE_ROUNDS orders per minute and per worker


@dataclass
class Jobs:
    """One instance's huey and its tasks (call a task to enqueue it, ``.call_local`` to run it here)."""

    instance: object
    huey: object
    expire_orders: object
    send_order_mail: object
    send_operator_mail: object
    release_margins: object = None
    expire_sites: object = None
    send_password_reset: object = None
    send_mail: object = None
    run_console_job: object = None
    sweep_console_files: object = None


def redis_url(instance) -> str:
    """The Redis queue URL (``REDIS_URL`` wins over the instance's ``redis_url``); '' for SQLite."""
    return os.environ.get("REDIS_URL") or getattr(instance, "redis_url", "") or ""


def _immediate_default() -> bool:
    return os.environ.get("KAMENGSITE_JOBS_IMMEDIATE", "").lower() in ("1", "true", "yes")


def make_jobs(instance, *, immediate: bool | None = None, name: str = QUEUE_NAME) -> Jobs:
    """A new huey for ``instance`` with the kamengsite tasks registered on it.

    Redis when ``redis_url(instance)`` is set (nothing connects until a job is
    queued), else SQLite at ``<instance>/jobs.db`` (created on first use, not here
    in immediate mode).
    """
    immediate = _immediate_default() if immediate is None else immediate
    url = redis_url(instance)
    if url:
        huey = RedisHuey(name, url=url, results=False, immediate=immediate)
    else:
        huey = SqliteHuey(name, filename=str(Path(instance.path) / QUEUE_FILE), results=False,
                          immediate=immediate)

    @huey.periodic_task(crontab(minute="*"))
    def expire_orders():
        """Expire unpaid orders past their deadline (every minute)."""
        from .hooks import expiring_callback
        from .orders import expire_due

        total = 0
        expiring = expiring_callback()
        for _ in range(EXPIRE_ROUNDS):
            done = expire_due(limit=EXPIRE_BATCH, expiring=expiring)
            total += done
            if done < EXPIRE_BATCH:
                break
        if total:
            log.info("expired %d unpaid orders", total)
        return total

    @huey.periodic_task(crontab(minute="*/15"))
    def release_margins():
        """Release sites' margins whose freeze period is over to their available balance (every 15 minutes)."""
        from .settlement import release_due

        return release_due()

    @huey.task(retries=MAIL_RETRIES, retry_delay=MAIL_RETRY_DELAY, context=True)
    def send_order_mail(order_id: int, site: dict, task=None):
        """Mail a delivered order's keys to its buyer; raises (and is retried) when SMTP fails."""
        from . import mail

        return mail.deliver_order_mail(instance, order_id, site, last_attempt=task is None or task.retries == 0)

    @huey.task(retries=MAIL_RETRIES, retry_delay=MAIL_RETRY_DELAY)
    def send_operator_mail(subject: str, body: str):
        """Mail the operator (``operator_email``) a notice; raises (and is retried) when SMTP fails."""
        from . import mail

        return mail.send_operator_mail(instance, subject, body)

    @huey.task()
    def run_console_job(site_id: int, job_id: int):
        """A long console operation (key import, export) with its progress in ``console_job``."""
        from . import background

        return background.run(instance, site_id, job_id)

    @huey.periodic_task(crontab(minute="17", hour="*"))
    def sweep_console_files():
        """Delete exports and left-over uploads older than a week (hourly)."""
        from . import background

        return background.sweep(instance)

    @huey.task(retries=MAIL_RETRIES, retry_delay=MAIL_RETRY_DELAY)
    def send_mail(to: str, subject: str, body: str, from_name: str):
        """A notice to one address (a buyer's answered message, a shop's new one); never a key."""
        from . import mail

        sent = mail.send_message(instance, mail.build_message(instance, to=to, subject=subject, body=body,
                                                              from_name=from_name))
        return "sent" if sent else "skipped"

    @huey.task(retries=MAIL_RETRIES, retry_delay=MAIL_RETRY_DELAY)
    def send_password_reset(slug: str, site_id: int, account_id: int, base_url: str, subject: str, body: str,
                            from_name: str):
        """Mail a console account its password-reset link (made here, so it never waits in the queue)."""
        from . import password_reset

        return password_reset.send_reset_mail(instance, slug, site_id, account_id, base_url, subject, body, from_name)

    @huey.periodic_task(crontab(minute="*/10"))
    def expire_sites():
        """Turn off sub-sites past their term, back on those renewed since (every ten minutes)."""
        from . import opening

        return opening.expire_sites(opening.registry_for(instance))

    _plugin_jobs(huey, instance)
    return Jobs(instance=instance, huey=huey, expire_orders=expire_orders,
                send_order_mail=send_order_mail, send_operator_mail=send_operator_mail,
                release_margins=release_margins, expire_sites=expire_sites, send_password_reset=send_password_reset,
                send_mail=send_mail, run_console_job=run_console_job, sweep_console_files=sweep_console_files)


def _plugin_jobs(huey, instance):
    """Let every installed plugin add its tasks (``register_jobs``); one that raises is reported and skipped."""
    from .hooks import call_isolated, instance_plugins

    plugins = instance_plugins()
    if plugins is not None:
        call_isolated(plugins.pm.hook.register_jobs, "register_jobs", huey=huey, instance=instance)


_cache: dict[tuple, Jobs] = {}
_cache_lock = threading.Lock()
_bound = None  # the instance of this process, for code that runs outside a request


def jobs_for(instance) -> Jobs:
    """The process-wide ``Jobs`` of ``instance`` (built on first use)."""
    key = (str(Path(instance.path).resolve()), redis_url(instance))
    jobs = _cache.get(key)
    if jobs is None:
        with _cache_lock:
            jobs = _cache.get(key)
            if jobs is None:
                jobs = _cache[key] = make_jobs(instance)
    return jobs


def bind(instance):
    """Make ``instance`` the one ``current_instance()`` falls back to outside a site request."""
    global _bound
    _bound = instance


def current_instance():
    """The instance of the current site request, else the bound one (worker, CLI), else None."""
    try:
        from flask import current_app, has_app_context

        if has_app_context():
            site = current_app.extensions.get("kamengsite.site")
            if site is not None and site.instance is not None:
                return site.instance
    except ImportError:  # pragma: no cover - flask is a dependency
        pass
    return _bound


def run_worker(instance, *, workers: int = 2, worker_type: str = "thread", **consumer_options):
    """Run the job consumer of ``instance`` until it is stopped (SIGINT/SIGTERM)."""
    from . import migrations
    from .db import database, init_database, is_sqlite
    from .errors import KamengsiteError

    db = init_database(instance.database_url)
    pending = migrations.pending(db)
    db.close()
    if pending:
        raise KamengsiteError(f"database needs migrations ({', '.join(pending)}): run `kamengsite db upgrade`")
    bind(instance)
    jobs = jobs_for(instance)
    if jobs.huey.immediate:
        raise KamengsiteError("jobs run in immediate mode (KAMENGSITE_JOBS_IMMEDIATE): there is no queue to consume")

    @jobs.huey.post_execute()
    def _release_connection(task, task_value, exc):
        if not is_sqlite() and not database.is_closed():
            database.close()  # back to the pool; SQLite keeps one connection per worker thread

    where = redis_url(instance) or str(Path(instance.path) / QUEUE_FILE)
    log.info("kamengsite worker: %d %s worker(s), queue %s", workers, worker_type, _redact(where))
    consumer = jobs.huey.create_consumer(workers=workers, worker_type=worker_type, periodic=True,
                                         **consumer_options)
    consumer.run()


def _redact(url: str) -> str:
    """A URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
