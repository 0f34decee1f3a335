"""``kamengsite keys …`` (import, recount, rotate) and ``kamengsite worker``.

Registered on the main command group by ``cli._register_more_commands``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import click

from .cli import _fail_cleanly, bound_database, pass_ctx
from .errors import KamengsiteError

log = logging.getLogger(__name__)

SHOW_INVALID = 100  # invalid lines listed one by one; the rest are counted


# -- reading key files -----------------------------------------------------------


class KeyFile:
    """The candidate keys of a .txt (one per line) or .csv (first column) file, read line by line.

    Iterating yields one string per physical line, so ``import_keys`` numbers
    lines as an editor does. A line that is not UTF-8 is yielded as '' (skipped
    as blank) and recorded in ``invalid`` with its number instead.
    """

    def __init__(self, path, *, csv_mode: bool | None = None, skip_header: bool = False):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv" if csv_mode is None else csv_mode
        self.skip_header = skip_header
        self.invalid: list[tuple[int, str]] = []

    def __iter__(self):
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # Excel's UTF-8 BOM
                    if self.skip_header:
                        yield ""
                        continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.invalid.append((number, "not valid UTF-8"))
                    yield ""
                    continue
                if self.csv:
                    line = line.rstrip("\r\n")
                    fields = next(csv.reader([line]), None) if line else None
                    line = fields[0] if fields else ""
                yield line


def resolve_sku(product_id: int, sku_id: int | None):
    """The (product, sku) keys are imported into; refuses products that hold no key rows."""
    from .catalog import Product, Sku

    product = Product.get_or_none(Product.id == product_id)
    if product is None:
        raise KamengsiteError(f"product {product_id} not found")
    if product.kind != "card":
        raise KamengsiteError(f"product {product_id} ({product.name}) is a {product.kind} product: only card "
                              f"products hold card keys")
    if product.loop_key:
        raise KamengsiteError(f"product {product_id} ({product.name}) sells one looping key (loop_key): "
                              f"its stock is a counter, not imported keys")
    skus = list(Sku.select().where(Sku.product == product_id).order_by(Sku.sort, Sku.id))
    if sku_id is None:
        if len(skus) != 1:
            listed = ", ".join(f"{s.id} ({s.name or '-'})" for s in skus) or "none"
            raise KamengsiteError(f"product {product_id} has {len(skus)} SKUs: choose one with --sku (SKUs: {listed})")
        return product, skus[0]
    for sku in skus:
        if sku.id == sku_id:
            return product, sku
    raise KamengsiteError(f"SKU {sku_id} is not a SKU of product {product_id}")


def import_key_file(instance, product_id: int, path, *, sku_id: int | None = None, skip_header: bool = False,
                    cipher=None):
    """Import the keys of a file into a product's SKU; the ``ImportReport`` (invalid lines merged in)."""
    from .alerts import check_low_stock
    from .cardkeys import import_keys
    from .crypto import CardKeyCipher

    product, sku = resolve_sku(product_id, sku_id)
    cipher = cipher or CardKeyCipher.from_instance(instance)
    source = KeyFile(path, skip_header=skip_header)
    report = import_keys(sku, source, cipher)
    if source.invalid:
        report.invalid = sorted(report.invalid + source.invalid)
    check_low_stock(product.id, instance=instance)
    return product, sku, report


# -- commands ----------------------------------------------------------------------


@click.group()
def keys():
    """Card keys: import, recount stock, rotate the encryption key."""


@keys.command("import")
@click.argument("product_id", type=int)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sku", "sku_id", type=int, default=None, help="SKU to fill (needed when the product has several).")
@click.option("--skip-header", is_flag=True, help="The file's first line is a header, not a key.")
@pass_ctx
@_fail_cleanly
def keys_import(ctx, product_id, file, sku_id, skip_header):
    """Import card keys from FILE into PRODUCT_ID: .txt one key per line, .csv the first column.

    Keys are encrypted at rest; duplicates (within the file and against the
    SKU's existing keys) are skipped and counted; invalid lines are listed with
    their line numbers. The file is streamed, never read whole.
    """
    instance = ctx.instance()
    with bound_database(instance):
        product, sku, report = import_key_file(instance, product_id, file, sku_id=sku_id, skip_header=skip_header)
        from .catalog import Sku

        stock = Sku.get_by_id(sku.id).stock
    label = f"product {product.id} ({product.name})" + (f", SKU {sku.id} ({sku.name})" if sku.name else f", SKU {sku.id}")
    click.echo(f"imported {report.imported} keys into {label}, batch {report.batch}")
    click.echo(f"duplicates skipped: {report.duplicates} "
               f"({report.duplicates_in_batch} repeated in the file, {report.duplicates_in_stock} already in stock)")
    click.echo(f"invalid lines: {len(report.invalid)}")
    for number, reason in report.invalid[:SHOW_INVALID]:
        click.echo(f"  line {number}: {reason}")
    if len(report.invalid) > SHOW_INVALID:
        click.echo(f"  … and {len(report.invalid) - SHOW_INVALID} more")
    click.echo(f"stock of SKU {sku.id} is now {stock}")


@keys.command("recount")
@pass_ctx
@_fail_cleanly
def keys_recount(ctx):
    """Recompute every card SKU's stock from its available keys and report what was fixed."""
    instance = ctx.instance()
    with bound_database(instance):
        checked, fixes = recount_stock()
    for fix in fixes:
        click.echo(f"SKU {fix['sku']} of product {fix['product']} ({fix['name']}): stock {fix['was']} -> {fix['now']}")
    click.echo(f"checked {checked} SKUs, fixed {len(fixes)}")


def recount_stock():
    """Set ``sku.stock`` to the count of its available keys for card products; (checked, fixes)."""
    from .alerts import check_low_stock
    from .cardkeys import CardKey
    from .catalog import Product, Sku
    from .db import database, is_sqlite, retry_transient

    skus = list(Sku.select(Sku.id, Sku.product, Product.name).join(Product)
                .where((Product.kind == "card") & (Product.loop_key == False))  # noqa: E712
                .order_by(Sku.id).tuples())
    fixes = []

    def recount(sku_id):
        with database.atomic():
            # Lock the SKU row first: reservations and imports change it before (or while) they
            # touch keys, so none of them runs between this count and the update.
            query = Sku.select(Sku.stock).where(Sku.id == sku_id)
            if not is_sqlite():
                query = query.for_update()
            was = query.scalar()
            now = CardKey.select().where((CardKey.sku == sku_id) & (CardKey.status == "available")).count()
            if was != now:
                Sku.update(stock=now).where(Sku.id == sku_id).execute()
            return was, now

    for sku_id, product_id, name in skus:
        was, now = retry_transient(lambda: recount(sku_id))
        if was != now:
            fixes.append({"sku": sku_id, "product": product_id, "name": name, "was": was, "now": now})
    for product_id in sorted({f["product"] for f in fixes}):
        check_low_stock(product_id)
    return len(skus), fixes


@keys.command("rotate")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@pass_ctx
@_fail_cleanly
def keys_rotate(ctx, batch_size):
    """Re-seal every key not sealed with the active encryption key (the first of card_key_keys).

    Put the new key first in ``card_key_keys`` and keep the old ones after it
    until this reports nothing left to re-seal.
    """
    from .crypto import CardKeyCipher

    instance = ctx.instance()
    cipher = CardKeyCipher.from_instance(instance)
    with bound_database(instance):
        result = rotate_keys(cipher, batch_size=batch_size,
                             progress=lambda n: click.echo(f"  re-sealed {n} so far", err=True))
    click.echo(f"scanned {result['scanned']} keys, re-sealed {result['resealed']}, "
               f"already current {result['scanned'] - result['resealed'] - len(result['failed'])}")
    if result["failed"]:
        shown = ", ".join(str(i) for i in result["failed"][:20])
        raise click.ClickException(f"{len(result['failed'])} keys could not be opened and were left as they are "
                                   f"(ids {shown}{', …' if len(result['failed']) > 20 else ''}): "
                                   f"is an old key missing from card_key_keys?")


def rotate_keys(cipher, *, batch_size: int = 1000, progress=None) -> dict:
    """Re-seal, in batches of ``batch_size`` rows (one transaction each), keys sealed with an older key."""
    from .cardkeys import CardKey
    from .crypto import CardKeyCipherError
    from .db import database, retry_transient

    scanned = resealed = batches = 0
    failed: list[int] = []
    last_id = 0
    while True:
        rows = list(CardKey.select(CardKey.id, CardKey.sku, CardKey.sealed).where(CardKey.id > last_id)
                    .order_by(CardKey.id).limit(batch_size).tuples())
        if not rows:
            break
        last_id = rows[-1][0]
        scanned += len(rows)
        updates = []
        for key_id, sku_id, sealed in rows:
            sealed = bytes(sealed)
            if not cipher.needs_reseal(sealed):
                continue
            try:
                updates.append((key_id, sealed, cipher.seal(cipher.open(sealed, sku_id), sku_id)))
            except CardKeyCipherError:
                failed.append(key_id)

        def write():
            done = 0
            with database.atomic():
                for key_id, old, new in updates:
                    # Only if the row still holds what was read: never overwrite a concurrent change.
                    done += CardKey.update(sealed=new).where((CardKey.id == key_id) & (CardKey.sealed == old)).execute()
            return done

        if updates:
            resealed += retry_transient(write)
            batches += 1
            if progress and batches % 10 == 0:
                progress(resealed)
    return {"scanned": scanned, "resealed": resealed, "failed": failed}


# -- the job worker ------------------------------------------------------------------


@click.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Concurrent jobs.")
@click.option("--worker-type", default="thread", show_default=True, type=click.Choice(["thread", "process"]))
@pass_ctx
@_fail_cleanly
def worker(ctx, workers, worker_type):
    """Run the background jobs: order expiry every minute, mail with retries (stop with Ctrl-C).

    The queue is SQLite in the instance folder, or Redis when REDIS_URL (or
    redis_url in the instance config) is set; run one worker per queue on
    SQLite, as many as you like on Redis.
    """
    from .jobs import run_worker

    run_worker(ctx.instance(), workers=workers, worker_type=worker_type)
