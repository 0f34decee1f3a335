"""End-to-end checkout over HTTP against `kamengsite serve`.

Each simulated buyer keeps one keep-alive connection and one session; an order
is three requests: POST the product form (order created, stock reserved), POST
the demo payment (the test payment path: paid and delivered in one transaction),
GET the order page and check that the keys are on it. Runs on SQLite and on
PostgreSQL (skipped if the server is not reachable) and prints one JSON line.

    python bench/checkout.py [--buyers 32] [--seconds 10] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import time
import urllib.parse

from _common import (fresh_server_database, free_port, percentile, run_concurrently, start_server, stop_server,
                     temp_instance)

TOKEN_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SKU_RE = re.compile(r'name="sku" value="(\d+)"')
KEY_RE = re.compile(r"<code>([^<]+)</code>")


def prepare(instance, keys: int) -> int:
    """Main site + one sub-site, one product with ``keys`` card keys; returns the product id."""
    from kamengsite import risk
    from kamengsite.cardkeys import import_keys
    from kamengsite.catalog import create_product
    from kamengsite.crypto import CardKeyCipher
    from kamengsite.db import database
    from kamengsite.host import Host
    from kamengsite.models import Site

    host = Host(instance)
    host.registry.create(instance.main_site, template="main")
    host.registry.create("shop1", template="gaming")
    with database.connection_context():
        main = Site.get(Site.slug == instance.main_site)
        product = create_product(main, "Bench card", 100, max_qty=5)
        import_keys(product.skus[0], (f"BENCH-{i:09d}" for i in range(keys)), CardKeyCipher.from_instance(instance))
        # The bench's buyers all come from 127.0.0.1: the risk rules would hold them after ten a minute.
        risk.save_settings(Site.get(Site.slug == "shop1").id,
                           {"ip_limit": 0, "contact_limit": 0, "device_limit": 0, "small_limit": 0})
    database.close()
    return product.id


class Buyer:
    def __init__(self, port: int, product_id: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.product_path = f"/p/{product_id}"
        self.token = self.sku = None

    def request(self, method, path, form=None):
        headers = {"Host": "shop1.localhost", "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read().decode()
        for cookie in resp.headers.get_all("Set-Cookie") or ():  # the session and the risk rules' device cookie
            name, _, value = cookie.split(";", 1)[0].partition("=")
            self.cookies[name.strip()] = value
        return resp.status, resp.getheader("Location") or "", data

    def start(self):
        status, _, page = self.request("GET", self.product_path)
        self.token = TOKEN_RE.search(page).group(1)
        self.sku = SKU_RE.search(page).group(1)

    def buy_one(self) -> tuple[bool, str]:
        form = {"csrf_token": self.token, "sku": self.sku, "quantity": "1",
                "contact": "bench@example.com", "query_password": "bench-pass"}
        status, location, page = self.request("POST", self.product_path, form)
        if status != 302:
            return False, "out of stock" if "库存不足" in page else f"create {status}"
        order_path = urllib.parse.urlparse(location).path
        status, _, _ = self.request("POST", order_path + "/demo-pay", {"csrf_token": self.token})
        if status != 302:
            return False, f"pay {status}"
        status, _, page = self.request("GET", order_path)
        keys = KEY_RE.findall(page)
        if status != 200 or len(keys) != 1:
            return False, f"order page {status} with {len(keys)} keys"
        return True, keys[0]


def run_load(port, product_id, buyers: int, seconds: float):
    latencies, errors, keys = [], [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def work():
        buyer = Buyer(port, product_id)
        buyer.start()
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            ok, detail = buyer.buy_one()
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                if ok:
                    latencies.append(elapsed)
                    keys.append(detail)
                else:
                    errors.append(detail)

    wall = run_concurrently(work, buyers)
    return {
        "orders": len(latencies),
        "orders_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "duplicate_keys": len(keys) - len(set(keys)),
    }


def bench_backend(backend: str, buyers: int, seconds: float, keys: int):
    drop = None
    url = None
    if backend != "sqlite":
        url, drop = fresh_server_database(backend)
    # 32 buyers share one IP here: lift the per-IP order limit that protects a real shop.
    instance = temp_instance(url, rate_limits={"order": "1000000/minute", "lookup": "1000000/minute"})
    try:
        product_id = prepare(instance, keys)
        port = free_port()
        server = start_server(instance, port)
        try:
            Buyer(port, product_id).start()  # warm-up: one buyer's first page
            return run_load(port, product_id, buyers, seconds)
        finally:
            stop_server(server)
    finally:
        if drop:
            drop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--buyers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    result = {"buyers": args.buyers, "seconds": args.seconds}
    for backend in args.backends.split(","):
        try:
            result[backend] = bench_backend(backend, args.buyers, args.seconds, args.keys)
        except Exception as exc:  # report, do not hide: a failed backend is a figure too
            result[backend] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
