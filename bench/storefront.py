"""A sub-site's home page against a bare Flask "hello", under the same server and the same load.

Sets up an instance whose main catalogue has 50 products on sale and a sub-site that sells
them (its home page lists all 50), serves it with ``kamengsite serve`` (gunicorn, 1 worker,
8 threads, no job worker, a production instance), then serves a bare Flask app answering
"Hello, World!" with gunicorn and the same settings. Each gets the same load for the same time:
wrk from Debian's packages (``make bench-deps``), or a Python keep-alive load generator when
wrk is missing (the JSON says which). Both fetch ``/`` with the sub-site's Host header.

The sub-site's home is published from its theme's home layout cut to 6 sections, the product grid
showing all 50 products. The load is anonymous visitors, so after the first request the page
comes from the page cache (``kamengsite/pagecache.py``); each request still pays the host's
dispatch and the cache's stamps (two ``stat()`` calls and one catalogue query).

Prints one JSON line: storefront_rps, flask_hello_rps, ratio (issue 7's target: >= 0.5),
p50/p99 latency of both, and the settings.

    python bench/storefront.py [--seconds 10] [--connections 16] [--threads 8] [--products 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from _common import (fresh_server_database, free_port, percentile, run_concurrently, start_process, start_server,
                     stop_server, temp_instance)

SUBSITE = "shop1"
CATEGORIES = 5  # the home's category list has something to show
HELLO_APP = textwrap.dedent('''
    from flask import Flask

    app = Flask(__name__)


    @app.get("/")
    def hello():
        return "Hello, World!"
''')


def prepare(instance, products: int, template: str) -> str:
    """Main site with ``products`` products on sale (3 keys each) in ``CATEGORIES`` categories, a sub-site
    selling them; returns its host name and what its home layout is."""
    from kamengsite.cardkeys import import_keys
    from kamengsite.catalog import Category, create_product
    from kamengsite.crypto import CardKeyCipher
    from kamengsite.db import database
    from kamengsite.host import Host
    from kamengsite.models import Site

    host = Host(instance)
    host.registry.create(instance.main_site, template="main")
    host.registry.create(SUBSITE, template=template)
    cipher = CardKeyCipher.from_instance(instance)
    with database.connection_context():
        main = Site.get(Site.slug == instance.main_site)
        categories = [Category.create(site=main, name=f"压测分类 {c}", sort=c) for c in range(CATEGORIES)]
        for i in range(products):
            product = create_product(main, f"压测商品 {i:02d}", 100 + i * 7, summary=f"第 {i} 号测试商品",
                                     category=categories[i % CATEGORIES])
            import_keys(product.skus[0], (f"SF-{i:02d}-{k}" for k in range(3)), cipher)
    database.close()
    layout = _show_every_product(instance, host, products)
    host.close()
    return f"{SUBSITE}.{instance.base_domain}", layout


SECTIONS = 6  # issue 7's case: a sub-site home from a 6-section layout showing 50 products


def _show_every_product(instance, host, products: int) -> str:
    """Publish the theme's own home layout cut to ``SECTIONS`` sections, its product grid showing
    ``products`` (as an owner would, through ``layouts.save_layout``: validated, then written).

    Best effort and said in the JSON: on a tree whose home page is not built from layouts
    (kamengsite.layouts missing), or a theme without a home.json, the page is served as it is.
    """
    try:
        from kamengsite import layouts
    except ImportError:
        return "no layouts"
    theme = host.registry.load(SUBSITE).theme
    default = Path(instance.themes_dir) / theme / "templates" / "home.json"
    if not default.is_file():
        return f"theme {theme} has no home.json"
    data = json.loads(default.read_text(encoding="utf-8"))
    sections, order = data.get("sections", {}), data.get("order", [])
    for section in sections.values():
        if section.get("type") == "product_grid":
            section.setdefault("settings", {})["count"] = products
    while len(order) > SECTIONS:  # drop from the end, never the product grid
        victim = next(sid for sid in reversed(order) if sections[sid].get("type") != "product_grid")
        order.remove(victim)
        sections.pop(victim)
    layouts.save_layout(host.registry.root / SUBSITE, "home", data, theme=host.themes.get(theme), publish=True)
    return f"{theme}/home.json, {len(order)} sections ({', '.join(order)}), product grid count {products}"


def check_page(port: int, host_name: str, products: int | None) -> dict:
    """One GET / before the load: it must answer 200; counts the bench's products on the storefront's page."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/", headers={"Host": host_name})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET / on {host_name} answered {resp.status}")
    info = {"bytes": len(body.encode())}
    if products is not None:
        # Reported, not enforced: how many the home page shows is the layout's business (issue 7's
        # bench wants all 50; a layout's product grid may show fewer until the bench sets its count).
        info["products_on_page"] = len(set(re.findall(r"压测商品 \d\d", body)))
        info["sections_on_page"] = len(re.findall(r"<section [^>]*data-section-id=", body))
    return info


# -- load generators ---------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNIT_MS[unit]


def load_wrk(port: int, host_name: str, seconds: float, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "--timeout", "10s",
         "-H", f"Host: {host_name}", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s|m))$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": round(_ms(latency["50"]), 2),
        "p99_ms": round(_ms(latency["99"]), 2),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def load_python(port: int, host_name: str, seconds: float, connections: int) -> dict:
    """wrk's job in Python: ``connections`` keep-alive clients in threads, GET / in a loop."""
    latencies, errors = [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine, failed = [], 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/", headers={"Host": host_name})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                ok = False
            if ok:
                mine.append((time.perf_counter() - t0) * 1000)
            else:
                failed += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.append(failed)

    wall = run_concurrently(client, connections)
    return {
        "rps": round(len(latencies) / wall, 1),
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "errors": sum(errors),
    }


def run_load(generator: str, port: int, host_name: str, seconds: float, connections: int) -> dict:
    load = load_wrk if generator == "wrk" else load_python
    load(port, host_name, min(2.0, seconds), connections)  # warm-up: caches, lazy imports, first connections
    return load(port, host_name, seconds, connections)


# -- the two servers ---------------------------------------------------------------


def bench_storefront(args, generator: str) -> dict:
    url = drop = None
    if args.backend != "sqlite":
        url, drop = fresh_server_database(args.backend)
    instance = temp_instance(url, production=not args.dev)
    try:
        host_name, layout = prepare(instance, args.products, args.template)
        port = free_port()
        server = start_server(instance, port, workers=1, threads=args.threads, extra_args=["--no-worker"])
        try:
            page = check_page(port, host_name, args.products)
            return {**run_load(generator, port, host_name, args.seconds, args.connections), **page, "layout": layout}
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(instance.path.parent, ignore_errors=True)
        if drop:
            drop()


def bench_hello(args, generator: str, host_name: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="kamengsite-bench-hello-"))
    (folder / "hello_app.py").write_text(HELLO_APP, encoding="utf-8")
    port = free_port()
    # kamengsite/serve.py's settings: gthread worker class for threads > 1, 60 s timeout, no access log.
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
           "--threads", str(args.threads), "--worker-class", "gthread" if args.threads > 1 else "sync",
           "--timeout", "60", "--graceful-timeout", "20", "--chdir", str(folder), "hello_app:app"]
    server = start_process(cmd, port, cwd=folder)
    try:
        page = check_page(port, host_name, None)
        return {**run_load(generator, port, host_name, args.seconds, args.connections), **page}
    finally:
        stop_server(server)
        shutil.rmtree(folder, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads of the one worker (both servers)")
    parser.add_argument("--products", type=int, default=50)
    parser.add_argument("--template", default="shop", help="site template of the sub-site (its theme)")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--dev", action="store_true", help="a development instance (templates auto-reload)")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args()

    generator = args.load_generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    result = {"load_generator": generator, "seconds": args.seconds, "connections": args.connections,
              "workers": 1, "threads": args.threads, "products": args.products, "template": args.template,
              "backend": args.backend, "production": not args.dev, "target_ratio": 0.5}
    host_name = f"{SUBSITE}.localhost"
    try:
        store = bench_storefront(args, generator)
        hello = bench_hello(args, generator, host_name)
    except Exception as exc:  # report, do not hide: a failed run is a figure too
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(result, ensure_ascii=False))
        sys.exit(1)
    result.update({
        "storefront_rps": store["rps"],
        "flask_hello_rps": hello["rps"],
        "ratio": round(store["rps"] / hello["rps"], 3) if hello["rps"] else None,
        "storefront_p50_ms": store["p50_ms"],
        "storefront_p99_ms": store["p99_ms"],
        "hello_p50_ms": hello["p50_ms"],
        "hello_p99_ms": hello["p99_ms"],
        "storefront_errors": store["errors"],
        "hello_errors": hello["errors"],
        "storefront_requests": store["requests"],
        "hello_requests": hello["requests"],
        "storefront_page_bytes": store["bytes"],
        "products_on_page": store.get("products_on_page"),
        "sections_on_page": store.get("sections_on_page"),
        "home_layout": store["layout"],
    })
    if result["products_on_page"] != args.products:
        result["warning"] = f"the home page lists {result['products_on_page']} of the {args.products} products"
    elif result["sections_on_page"] not in (None, SECTIONS):
        result["warning"] = f"the home page shows {result['sections_on_page']} sections, not {SECTIONS}"
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
