"""Bench: many sub-sites served by one host process.

Creates ``--sites`` (default 10,000) sub-site folders from the ``shop`` template
through the real creation path (``SiteRegistry.create``: copy the template,
write ``site.toml``, index the row), serves one request to each through the
host's WSGI app in this process (a *cold* request: the site's app is built on
first use), then repeats requests to recently used sites (*warm*: their apps are
in the host's LRU). Prints progress on stderr and, last, exactly one JSON line::

    {"sites": 10000, "rss_mb": ..., "cold_p50_ms": ..., "cold_p99_ms": ...,
     "warm_p50_ms": ..., "create_site_ms": ..., ...}

Targets (2-core machine): rss_mb <= 512 after all sites, cold_p99_ms <= 50,
warm_p50_ms <= 5, create_site_ms <= 100.

    python bench/sites.py                 # the full run
    python bench/sites.py --sites 500     # a quick one
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time

from _common import percentile, temp_instance

from kamengsite.host import Host

TARGETS = {"rss_mb": 512, "cold_p99_ms": 50, "warm_p50_ms": 5, "create_site_ms": 100}


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB."""
    current = peak = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current if current is not None else peak, peak


def environ_for(host_name: str, path: str = "/") -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": host_name,
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": host_name,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def request(app, host_name: str, path: str = "/") -> tuple[str, bytes, float]:
    """One request through the WSGI app; (status, body, milliseconds including reading the body)."""
    environ = environ_for(host_name, path)
    status_line = []

    def start_response(status, headers, exc_info=None):
        status_line.append(status)
        return lambda data: None

    t0 = time.perf_counter()
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    ms = (time.perf_counter() - t0) * 1000
    return status_line[0], body, ms


class GcPauses:
    """Time spent in the cyclic garbage collector, by generation (evicted site apps are cyclic garbage)."""

    def __init__(self):
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self._start) * 1000)

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)


def ms(value: float) -> float:
    return round(value, 3)


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def run(instance, n_sites: int, warm_requests: int, seed: int) -> dict:
    rng = random.Random(seed)
    host = Host(instance)
    host.registry.create(instance.main_site, template="main")
    status, _, _ = request(host, f"{instance.main_site}.{instance.base_domain}")
    assert status.startswith("200"), status
    base = instance.base_domain
    rss_start, _ = rss_mb()

    # -- creating sites ---------------------------------------------------
    create_ms = []
    t_all = time.perf_counter()
    for i in range(n_sites):
        t0 = time.perf_counter()
        host.registry.create(f"s{i}", template="shop")
        create_ms.append((time.perf_counter() - t0) * 1000)
        if (i + 1) % 1000 == 0:
            log(f"created {i + 1} sites ({time.perf_counter() - t_all:.1f}s)")
    create_total_s = time.perf_counter() - t_all
    rss_created, _ = rss_mb()

    # What `kamengsite serve` does at start-up: check every folder against the index.
    t0 = time.perf_counter()
    broken = host.registry.sync()
    sync_s = time.perf_counter() - t0
    assert not broken, broken

    # -- cold: the first request to every site -----------------------------
    cold_ms = []
    t_all = time.perf_counter()
    with GcPauses() as gc_pauses:
        for i in range(n_sites):
            status, body, took = request(host, f"s{i}.{base}")
            if not status.startswith("200"):
                raise SystemExit(f"s{i}: {status} {body[:200]!r}")
            cold_ms.append(took)
            if (i + 1) % 1000 == 0:
                log(f"served {i + 1} cold ({time.perf_counter() - t_all:.1f}s, rss {rss_mb()[0]:.0f} MB)")
    cold_total_s = time.perf_counter() - t_all
    full_gc = gc_pauses.pauses[2]

    # -- warm: repeat requests to recently used sites (inside the LRU) ------
    recent = min(n_sites, max(1, host.cache_size // 2))
    warm_slugs = [f"s{i}" for i in range(n_sites - recent, n_sites)]
    for slug in warm_slugs:  # one untimed pass: every one of them is cached
        request(host, f"{slug}.{base}")
    warm_ms = []
    for _ in range(warm_requests):
        slug = rng.choice(warm_slugs)
        status, body, took = request(host, f"{slug}.{base}")
        if not status.startswith("200"):
            raise SystemExit(f"{slug}: {status} {body[:200]!r}")
        warm_ms.append(took)
    # An unknown host name, for the record (the host's own 404 page).
    unknown_status, _, unknown_ms = request(host, f"nosuchsite.{base}")
    assert unknown_status.startswith("404"), unknown_status

    rss_now, rss_peak = rss_mb()
    gc.collect()
    rss_after_gc, _ = rss_mb()
    host.close()
    return {
        "sites": n_sites,
        "rss_mb": round(rss_now, 1),
        "cold_p50_ms": ms(statistics.median(cold_ms)),
        "cold_p99_ms": ms(percentile(cold_ms, 99)),
        "warm_p50_ms": ms(statistics.median(warm_ms)),
        "create_site_ms": ms(statistics.median(create_ms)),
        # extra figures
        "create_site_p99_ms": ms(percentile(create_ms, 99)),
        "cold_max_ms": ms(max(cold_ms)),
        "warm_p99_ms": ms(percentile(warm_ms, 99)),
        "warm_requests": len(warm_ms),
        "unknown_host_ms": ms(unknown_ms),
        "rss_peak_mb": round(rss_peak, 1),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_create_mb": round(rss_created, 1),
        "rss_after_gc_mb": round(rss_after_gc, 1),
        "create_total_s": round(create_total_s, 1),
        "sync_s": round(sync_s, 2),
        "cold_gc_full_collections": len(full_gc),
        "cold_gc_full_max_ms": ms(max(full_gc, default=0.0)),
        "cold_total_s": round(cold_total_s, 1),
        "app_cache_size": host.cache_size,
        "cached_apps": len(host.cached_sites()),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10_000, help="number of sub-sites (default 10000)")
    parser.add_argument("--warm", type=int, default=5000, help="number of timed warm requests (default 5000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary instance folder")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.sites < 1:
        parser.error("--sites must be at least 1")

    instance = temp_instance()  # SQLite, in a new temporary folder
    try:
        result = run(instance, args.sites, args.warm, args.seed)
    finally:
        if args.keep:
            log(f"kept {instance.path.parent}")
        else:
            shutil.rmtree(instance.path.parent, ignore_errors=True)
    missed = [k for k, limit in TARGETS.items() if result[k] > limit]
    for key in missed:
        log(f"target missed: {key} = {result[key]} > {TARGETS[key]}")
    print(json.dumps(result), flush=True)
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
