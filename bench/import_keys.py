"""Bench: import 1,000,000 card keys (1% of them duplicates) into one product on SQLite.

Writes a key file (one key per line, untimed), then times the path of
``kamengsite keys import``: the file streamed line by line, every key
normalised, checked, digested (HMAC) and sealed (AES-256-GCM), stored in
batches with duplicates skipped by the unique (sku, digest) index. Prints
progress on stderr and, last, exactly one JSON line::

    {"keys": 1000000, "seconds": ..., "keys_per_s": ..., "imported": 990000, "duplicates": 10000, ...}

Target (2-core machine): seconds <= 30 for 1,000,000 keys.

    python bench/import_keys.py                # the full run
    python bench/import_keys.py --keys 50000   # a quick one
    python bench/import_keys.py --job          # through the console's background job (progress rows written)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kamengsite.catalog import Sku, create_product  # noqa: E402
from kamengsite.db import init_database, make_database  # noqa: E402
from kamengsite.instance import Instance  # noqa: E402
from kamengsite.keys_cli import import_key_file  # noqa: E402
from kamengsite.migrations import upgrade  # noqa: E402
from kamengsite.models import Site  # noqa: E402

TARGET_SECONDS_PER_MILLION = 30
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def write_key_file(path: Path, n_keys: int, dup_rate: float, seed: int) -> int:
    """``n_keys`` lines, ``dup_rate`` of them repeating an earlier line; returns the number of repeats."""
    rng = random.Random(seed)
    n_dups = int(n_keys * dup_rate)
    n_unique = n_keys - n_dups
    # Repeats sit at random positions after their original.
    dup_at = set(rng.sample(range(1, n_keys), n_dups)) if n_dups else set()
    written: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n_keys):
            if i in dup_at and written:
                key = rng.choice(written)
            else:
                body = "".join(rng.choices(ALPHABET, k=16))
                key = f"KM-{body[:4]}-{body[4:8]}-{body[8:12]}-{body[12:]}"
                written.append(key)
            fh.write(key + "\n")
    assert len(written) == n_unique, (len(written), n_unique)
    return n_dups


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def import_by_job(instance, product, key_file: Path):
    """The console's path for a large file: a ``ConsoleJob`` run by the worker (here: at once)."""
    from kamengsite import background
    from kamengsite.cardkeys import ImportReport

    os.environ["KAMENGSITE_JOBS_IMMEDIATE"] = "1"
    sku = product.skus[0]
    job = background.start_key_import(instance, product.site_id, None, product.id, sku.id, key_file, False)
    if job.status != "done":
        raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
    r = job.report
    report = ImportReport(imported=r["imported"], duplicates_in_batch=r["duplicates_in_batch"],
                          duplicates_in_stock=r["duplicates_in_stock"], invalid=[None] * r["invalid"])
    return sku, report, job.done


def run(n_keys: int, dup_rate: float, workdir: Path, seed: int, via_job: bool = False) -> dict:
    instance = Instance.create(workdir / "instance", database_url=f"sqlite:///{workdir / 'bench.db'}")
    db = make_database(instance.database_url)
    upgrade(db)
    db.close()
    init_database(instance.database_url)
    site = Site.create(slug=instance.main_site)
    product = create_product(site.id, "Bench card", 100, kind="card")

    key_file = workdir / "keys.txt"
    t0 = time.perf_counter()
    n_dups = write_key_file(key_file, n_keys, dup_rate, seed)
    log(f"wrote {n_keys} keys ({n_dups} repeats) in {time.perf_counter() - t0:.1f}s, "
        f"{key_file.stat().st_size / 1e6:.1f} MB")

    rss_before = rss_peak_mb()
    t0 = time.perf_counter()
    progress_lines = None
    if via_job:
        sku, report, progress_lines = import_by_job(instance, product, key_file)
    else:
        _, sku, report = import_key_file(instance, product.id, key_file)
    seconds = time.perf_counter() - t0
    stock = Sku.get_by_id(sku.id).stock
    if report.imported != n_keys - n_dups or report.duplicates != n_dups or stock != report.imported:
        raise SystemExit(f"wrong result: {report.as_dict()} stock={stock}")
    db_mb = sum(p.stat().st_size for p in workdir.glob("bench.db*")) / 1e6
    return {
        "keys": n_keys,
        "path": "background job" if via_job else "direct",
        "seconds": round(seconds, 2),
        "keys_per_s": round(n_keys / seconds),
        "imported": report.imported,
        "duplicates": report.duplicates,
        # extra figures
        "duplicates_in_batch": report.duplicates_in_batch,
        "duplicates_in_stock": report.duplicates_in_stock,
        "invalid": len(report.invalid),
        "stock": stock,
        "db_mb": round(db_mb, 1),
        "rss_peak_mb": round(rss_peak_mb(), 1),
        "rss_peak_before_import_mb": round(rss_before, 1),
        "job_progress_lines": progress_lines,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="number of key lines (default 1000000)")
    parser.add_argument("--dup-rate", type=float, default=0.01, help="share of repeated lines (default 0.01)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None, help="work in this folder (kept) instead of a temporary one")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--job", action="store_true", help="import through the console's background job")
    args = parser.parse_args(argv)
    if args.keys < 1 or not 0 <= args.dup_rate < 1:
        parser.error("--keys must be at least 1 and --dup-rate in [0, 1)")

    if args.dir:
        workdir = Path(args.dir)
        workdir.mkdir(parents=True, exist_ok=False)
        result = run(args.keys, args.dup_rate, workdir, args.seed, args.job)
    else:
        with tempfile.TemporaryDirectory(prefix="kamengsite-bench-") as tmp:
            result = run(args.keys, args.dup_rate, Path(tmp), args.seed, args.job)
    limit = TARGET_SECONDS_PER_MILLION * args.keys / 1_000_000
    missed = result["seconds"] > limit
    if missed:
        log(f"target missed: {result['seconds']}s > {limit:.1f}s for {args.keys} keys")
    print(json.dumps(result), flush=True)
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
