"""Long console operations as background jobs (kamengsite/background.py, admin_jobs.py)."""

from __future__ import annotations

import csv
import io
import os
import time

import pytest

from kamengsite import background, jobs
from kamengsite.accounts import Account, create_account
from kamengsite.cardkeys import MAX_KEY_LENGTH
from kamengsite.catalog import Sku, create_product
from kamengsite.models import Site
from kamengsite.tenancy import site_scope
from kamengsite.testing import csrf_token, new_order, open_channel_shop, sign_in_console, site_id

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def immediate_jobs(monkeypatch):
    monkeypatch.setenv("KAMENGSITE_JOBS_IMMEDIATE", "1")
    yield
    jobs.bind(None)


def key_file(tmp_path, lines) -> "os.PathLike":
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_large_key_file_is_imported_by_the_worker_with_progress(host, tmp_path, monkeypatch):
    monkeypatch.setattr(background, "PROGRESS_EVERY", 1000)
    seen = []
    real = background._progress
    monkeypatch.setattr(background, "_progress", lambda *a, **k: (seen.append(a[2]), real(*a, **k)))
    main = Site.get(Site.slug == "main")
    product = create_product(main, "月卡", 1500)
    sku = product.skus[0]
    lines = [f"KEY-{i:06d}" for i in range(5000)] + ["KEY-000001", "", "x" * (MAX_KEY_LENGTH + 1)]
    upload = key_file(tmp_path, lines)
    job = background.start_key_import(host.instance, main.id, None, product.id, sku.id, upload, False)
    assert job.status == "done" and job.total == len(lines)
    assert job.report["imported"] == 5000 and job.report["duplicates_in_batch"] == 1 and job.report["invalid"] == 1
    assert seen[:5] == [1000, 2000, 3000, 4000, 5000]  # progress written along the way
    assert Sku.get_by_id(sku.id).stock == 5000
    assert not upload.exists() and list(background.work_dir(host.instance).iterdir()) == []  # no key left on disk


def test_a_job_runs_once_and_a_failure_is_recorded(host, tmp_path):
    main = Site.get(Site.slug == "main")
    product = create_product(main, "月卡", 1500)
    job = background.start_key_import(host.instance, main.id, None, product.id, product.skus[0].id,
                                      key_file(tmp_path, ["A-1"]), False)
    assert background.run(host.instance, main.id, job.id) == "skipped"  # delivered twice: done once
    with site_scope(main.id):
        broken = background.ConsoleJob.create(site=main.id, kind="key_import",
                                              params='{"product_id": 1, "sku_id": 999999, "file": "gone.txt"}')
    assert background.run(host.instance, main.id, broken.id) == "failed"
    assert "DoesNotExist" in background.reload(main.id, broken.id).error


@pytest.fixture
def shop(host):
    shop = open_channel_shop(host, 1500)
    create_account(shop.site_id, "owner", PASSWORD)
    return shop


def test_an_order_export_is_downloaded_by_its_own_site_only(host, shop, client_for):
    for _ in range(3):
        new_order(shop, "demo", client=shop.client())
    owner = sign_in_console(client_for("shop1.localhost"), "owner", PASSWORD)
    page = owner.get("/admin/jobs/")
    response = owner.post("/admin/jobs/export-orders", data={"csrf_token": csrf_token(page), "status": ""})
    assert response.status_code == 302
    job_page = owner.get(response.headers["Location"])
    assert job_page.status_code == 200 and 'data-status="done"' in job_page.get_data(as_text=True)
    job_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    download = owner.get(f"/admin/jobs/{job_id}/download")
    assert download.status_code == 200
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0][0] == "order_no" and len(rows) == 4 and rows[1][3] == "测试月卡"

    create_account(site_id("main"), "boss", PASSWORD)
    boss = sign_in_console(client_for("main.localhost"), "boss", PASSWORD)
    assert boss.get(f"/admin/jobs/{job_id}").status_code == 404
    assert boss.get(f"/admin/jobs/{job_id}/download").status_code == 404


def test_staff_see_only_the_jobs_of_their_areas(host, shop, client_for):
    create_account(shop.site_id, "clerk", PASSWORD, role="staff")
    with site_scope(shop.site_id):
        Account.update(permissions="catalogue").where(Account.username == "clerk").execute()
    job = background.start_order_export(host.instance, shop.site_id, None)
    clerk = sign_in_console(client_for("shop1.localhost"), "clerk", PASSWORD)
    assert clerk.get(f"/admin/jobs/{job.id}").status_code == 404
    token = csrf_token(clerk.get("/admin/jobs/"))
    assert clerk.post("/admin/jobs/export-orders", data={"csrf_token": token}).status_code == 403


def test_old_files_are_swept(host):
    folder = background.export_dir(host.instance, 1)
    old, new = folder / "old.csv", folder / "new.csv"
    old.write_text("x")
    new.write_text("y")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    assert background.sweep(host.instance) == 1
    assert not old.exists() and new.exists()
