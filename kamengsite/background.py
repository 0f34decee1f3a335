"""Long console operations as background jobs with progress: card-key imports and order exports.

A key file of a million lines takes minutes, longer than a request may: the console stores
the upload in the instance folder (``work/``), records a ``ConsoleJob`` row of its site and
queues ``run_console_job`` (``jobs.py``); the job page shows the progress the worker writes
every ``PROGRESS_EVERY`` lines, then the report. Exports write a CSV file the console of the
same site downloads (``exports/<site id>/``); files older than ``KEEP_DAYS`` are swept.

A job runs once: the worker moves it from ``queued`` to ``running`` with a conditional
update, so a job delivered twice by the queue is done by whichever worker got there first.
Only ids travel through the queue; a job's rows are its site's (``TenantModel``).
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import secrets
import shutil
from pathlib import Path

import peewee

from .models import utcnow
from .tenancy import TenantModel, acting_for

log = logging.getLogger(__name__)

KINDS = ("key_import", "order_export")
PROGRESS_EVERY = 10_000  # lines or rows between progress writes
KEEP_DAYS = 7
EXPORT_COLUMNS = ("order_no", "created_at", "status", "product", "sku", "quantity", "amount_yuan", "channel",
                  "paid_at", "delivered_at")


class ConsoleJob(TenantModel):
    kind = peewee.CharField(max_length=24)
    status = peewee.CharField(max_length=12, default="queued")  # queued, running, done, failed
    done = peewee.BigIntegerField(default=0)
    total = peewee.BigIntegerField(default=0)
    params = peewee.TextField(default="{}")
    result = peewee.TextField(default="")
    error = peewee.CharField(max_length=255, default="")
    account_id = peewee.IntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "console_job"

    @property
    def percent(self) -> int:
        if self.status == "done":
            return 100
        return min(99, int(self.done * 100 / self.total)) if self.total else 0

    @property
    def report(self) -> dict:
        return json.loads(self.result) if self.result else {}

    @property
    def settings(self) -> dict:
        return json.loads(self.params or "{}")


# -- files ----------------------------------------------------------------------------


def work_dir(instance) -> Path:
    folder = Path(instance.path) / "work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_dir(instance, site_id: int) -> Path:
    folder = Path(instance.path) / "exports" / str(int(site_id))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def count_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


# -- starting -------------------------------------------------------------------------


def _create(site_id: int, kind: str, account_id: int | None, params: dict, total: int = 0) -> ConsoleJob:
    with acting_for(site_id):
        return ConsoleJob.create(site=site_id, kind=kind, account_id=account_id, params=json.dumps(params),
                                 total=total)


def start_key_import(instance, site_id: int, account_id: int | None, product_id: int, sku_id: int,
                     upload: Path, skip_header: bool) -> ConsoleJob:
    """Take over ``upload`` (a UTF-8 key file) and queue its import; the job row to show."""
    from .jobs import jobs_for

    kept = work_dir(instance) / f"import-{secrets.token_hex(12)}{upload.suffix}"
    shutil.move(upload, kept)  # a rename on the same disk
    job = _create(site_id, "key_import", account_id,
                  {"product_id": product_id, "sku_id": sku_id, "file": kept.name, "skip_header": skip_header},
                  total=count_lines(kept))
    jobs_for(instance).run_console_job(site_id, job.id)
    return reload(site_id, job.id)


def start_order_export(instance, site_id: int, account_id: int | None, status: str = "") -> ConsoleJob:
    from .jobs import jobs_for

    job = _create(site_id, "order_export", account_id, {"status": status})
    jobs_for(instance).run_console_job(site_id, job.id)
    return reload(site_id, job.id)


def reload(site_id: int, job_id: int) -> ConsoleJob | None:
    with acting_for(site_id):
        return ConsoleJob.get_or_none(ConsoleJob.id == job_id)


def recent(site_id: int, kinds=KINDS, limit: int = 30) -> list[ConsoleJob]:
    with acting_for(site_id):
        return list(ConsoleJob.select().where(ConsoleJob.kind.in_(list(kinds)))
                    .order_by(ConsoleJob.id.desc()).limit(limit))


# -- running (in the worker) ------------------------------------------------------------


def _progress(site_id: int, job_id: int, done: int, total: int | None = None):
    changes = {"done": done}
    if total is not None:
        changes["total"] = total
    with acting_for(site_id):
        ConsoleJob.update(changes).where(ConsoleJob.id == job_id).execute()


def run(instance, site_id: int, job_id: int) -> str:
    """Do a queued job (once); its status at the end."""
    with acting_for(site_id):
        claimed = ConsoleJob.update(status="running", started_at=utcnow()).where(
            (ConsoleJob.id == job_id) & (ConsoleJob.status == "queued")).execute()
        job = ConsoleJob.get_or_none(ConsoleJob.id == job_id)
    if not claimed or job is None:
        return "skipped"
    try:
        result = {"key_import": _run_key_import, "order_export": _run_order_export}[job.kind](instance, job)
    except Exception as exc:  # noqa: BLE001 - the job fails, visibly; the worker goes on
        log.exception("console job %s (%s) of site %s failed", job_id, job.kind, site_id)
        with acting_for(site_id):
            ConsoleJob.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:255],
                              finished_at=utcnow()).where(ConsoleJob.id == job_id).execute()
        return "failed"
    with acting_for(site_id):
        ConsoleJob.update(status="done", result=json.dumps(result, ensure_ascii=False),
                          finished_at=utcnow()).where(ConsoleJob.id == job_id).execute()
    return "done"


class _Counted:
    """Iterate ``lines`` and write the count to the job every ``PROGRESS_EVERY`` lines."""

    def __init__(self, lines, job: ConsoleJob):
        self.lines, self.job = lines, job

    def __iter__(self):
        count = 0
        for count, line in enumerate(self.lines, start=1):
            if count % PROGRESS_EVERY == 0:
                _progress(self.job.site_id, self.job.id, count)
            yield line
        _progress(self.job.site_id, self.job.id, count)


def _run_key_import(instance, job: ConsoleJob) -> dict:
    from .alerts import check_low_stock
    from .cardkeys import import_keys
    from .catalog import Sku
    from .crypto import CardKeyCipher
    from .keys_cli import KeyFile

    params = job.settings
    path = work_dir(instance) / Path(params["file"]).name
    try:
        with acting_for(job.site_id):
            sku = Sku.get_by_id(params["sku_id"])
        source = KeyFile(path, skip_header=bool(params.get("skip_header")))
        report = import_keys(sku, _Counted(source, job), CardKeyCipher.from_instance(instance))
        if source.invalid:
            report.invalid = sorted(report.invalid + source.invalid)
        check_low_stock(params["product_id"], instance=instance)
    finally:
        path.unlink(missing_ok=True)  # the keys in clear text must not outlive the import
    return report.as_dict()


def _run_order_export(instance, job: ConsoleJob) -> dict:
    from .catalog import Product
    from .orders import Order
    from .themes import format_fen

    status = job.settings.get("status") or ""
    name = f"orders-{job.id}-{secrets.token_hex(8)}.csv"
    target = export_dir(instance, job.site_id) / name
    with acting_for(job.site_id):
        query = Order.select(Order, Product.name).join(Product).where(Order.site == job.site_id)
        if status:
            query = query.where(Order.status == status)
        total = query.count()
        _progress(job.site_id, job.id, 0, total)
        rows = 0
        with open(target, "w", encoding="utf-8-sig", newline="") as out:  # Excel reads UTF-8 with a BOM
            writer = csv.writer(out)
            writer.writerow(EXPORT_COLUMNS)
            for order in query.order_by(Order.id).iterator():
                writer.writerow([order.order_no, _iso(order.created_at), order.status, order.product.name, order.sku_id,
                                 order.quantity, format_fen(order.amount_fen), order.channel,
                                 _iso(order.paid_at), _iso(order.delivered_at)])
                rows += 1
                if rows % PROGRESS_EVERY == 0:
                    _progress(job.site_id, job.id, rows)
    _progress(job.site_id, job.id, rows)
    return {"rows": rows, "file": name}


def _iso(value) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value else ""


def export_file(instance, job: ConsoleJob) -> Path | None:
    """The finished export of ``job`` (a row of the asking site), if it is still there."""
    name = job.report.get("file") if job.status == "done" else None
    if not name:
        return None
    path = export_dir(instance, job.site_id) / Path(name).name
    return path if path.exists() else None


def sweep(instance, now=None) -> int:
    """Delete exports and stale uploads older than ``KEEP_DAYS``; how many files went."""
    cutoff = (now or datetime.datetime.now()).timestamp() - KEEP_DAYS * 86400
    gone = 0
    for folder in (Path(instance.path) / "exports", Path(instance.path) / "work"):
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                gone += 1
    return gone
