"""The seo plugin: sitemap and robots per site, escaped head tags, JSON-LD at the site's own price."""

from __future__ import annotations

import json
import logging
import re

import pytest

from kamengsite import pricing
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import create_product
from kamengsite.config import SiteConfig
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site
from kamengsite_seo import json_for_script, load_settings, yuan

EVIL = "</script><script>alert(1)</script>"
JSON_LD = re.compile(r'<script type="application/ld\+json">(.*?)</script>', re.S)


@pytest.fixture
def shop(host, site_files):
    """shop1 enables seo, shop2 does not; two main-catalogue products, the first in stock."""
    host.registry.create("shop1", template="gaming")
    host.registry.create("shop2", template="wholesale")
    site_files.edit("shop1", plugins=["seo"], settings={"seo": {
        "description": '好店 "正品" <秒发>', "keywords": ["点卡", "月卡"],
        "og_image": "/static/og.png", "robots_disallow": ["/lookup"]}})
    main = Site.get(Site.slug == "main")
    card = create_product(main, "测试月卡", 1500, summary="月卡 & 点卡")
    import_keys(card.skus[0], ["CODE-0001", "CODE-0002"], CardKeyCipher.from_instance(host.instance))
    other = create_product(main, "周卡", 500)
    return {"card": card, "other": other, "shop1": Site.get(Site.slug == "shop1").id}


def text(response):
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def json_ld(page):
    return json.loads(JSON_LD.search(page).group(1))


def test_the_sitemap_lists_what_the_site_sells_on_its_own_host(shop, client_for):
    pricing.set_rule(shop["shop1"], "product", shop["other"].id, hidden=True)
    client = client_for("shop1.localhost")
    assert client.get(f"/p/{shop['other'].id}").status_code == 404  # the 404 page renders the head tags too
    response = client.get("/sitemap.xml")
    assert response.mimetype == "application/xml"
    xml = text(response)
    assert "<loc>http://shop1.localhost/</loc>" in xml
    assert f"<loc>http://shop1.localhost/p/{shop['card'].id}</loc>" in xml
    assert f"/p/{shop['other'].id}<" not in xml  # hidden on shop1


def test_robots_keeps_crawlers_out_of_private_pages_and_points_to_the_sitemap(shop, client_for):
    robots = text(client_for("shop1.localhost").get("/robots.txt"))
    for path in ("/admin/", "/member/", "/order/", "/pay/", "/lookup"):
        assert f"Disallow: {path}\n" in robots
    assert "Sitemap: http://shop1.localhost/sitemap.xml\n" in robots


def test_head_tags_are_escaped(shop, client_for):
    page = text(client_for("shop1.localhost").get("/?utm_source=x"))
    assert '<link rel="canonical" href="http://shop1.localhost/">' in page
    assert '<meta name="description" content="好店 &#34;正品&#34; &lt;秒发&gt;">' in page
    assert '<meta name="keywords" content="点卡, 月卡">' in page
    assert '<meta property="og:type" content="website">' in page
    assert '<meta property="og:image" content="http://shop1.localhost/static/og.png">' in page
    assert "application/ld+json" not in page  # only product pages describe a product


def test_a_product_name_cannot_break_out_of_the_json_ld(shop, host, client_for):
    evil = create_product(Site.get(Site.slug == "main"), EVIL, 990)
    page = text(client_for("shop1.localhost").get(f"/p/{evil.id}"))
    head = page.split("</head>")[0]
    assert "<script>alert(1)" not in head
    assert head.count("</script>") == 1  # the JSON-LD block's own end tag only
    data = json_ld(head)
    assert data["name"] == EVIL and data["offers"][0]["availability"] == "https://schema.org/OutOfStock"
    assert '<meta property="og:type" content="product">' in head


def test_json_ld_carries_the_price_of_the_site_that_sells(shop, host, client_for):
    pricing.set_rule(shop["shop1"], "all", markup_percent_bp=2000, rounding="nine")
    expected = pricing.Pricer.for_site(shop["shop1"]).quote(
        shop["card"], shop["card"].skus[0].id, 1500).unit_price_fen
    assert expected != 1500
    data = json_ld(text(client_for("shop1.localhost").get(f"/p/{shop['card'].id}")))
    assert data["@type"] == "Product" and data["name"] == "测试月卡" and data["description"] == "月卡 & 点卡"
    assert data["offers"][0]["price"] == yuan(expected) and data["offers"][0]["priceCurrency"] == "CNY"
    assert data["offers"][0]["availability"] == "https://schema.org/InStock"


def test_a_site_without_the_plugin_gets_none_of_it(shop, client_for):
    client = client_for("shop2.localhost")
    assert client.get("/sitemap.xml").status_code == 404
    assert client.get("/robots.txt").status_code == 404
    page = text(client.get(f"/p/{shop['card'].id}"))
    assert 'rel="canonical"' not in page and "og:title" not in page and "ld+json" not in page


def test_a_broken_setting_is_logged_and_the_site_keeps_serving_with_defaults(shop, site_files, client_for, caplog):
    site_files.edit("shop1", settings={"seo": {"robots_disallow": "/secret\nDisallow: /", "title": "好店"}})
    client = client_for("shop1.localhost")
    with caplog.at_level(logging.ERROR, logger="kamengsite_seo"):
        robots = text(client.get("/robots.txt"))
    assert "robots_disallow" in caplog.text
    assert "/secret" not in robots and "Disallow: /\n" not in robots
    assert '<meta property="og:title" content="好店">' in text(client.get("/"))


def test_settings_default_to_the_site_and_helpers_never_use_floats(tmp_path):
    site = SiteConfig(slug="shop9", path=tmp_path, name="九号店", theme="light", tagline="秒发")
    assert load_settings(site) == {
        "title": "九号店", "description": "秒发", "keywords": "", "og_image": "", "robots_disallow": [], "products": {}}
    assert yuan(1500) == "15.00" and yuan(7) == "0.07"
    assert json_for_script({"n": "<&>"}) == '{"n": "\\u003c\\u0026\\u003e"}'


def test_owners_edit_the_seo_settings_in_the_console(shop, host, client_for, site_files):
    import re

    from kamengsite.accounts import create_account
    from kamengsite.testing import sign_in_console

    site = Site.get(Site.slug == "shop1")
    create_account(site.id, "owner1", "correct horse battery")
    client = client_for("shop1.localhost")
    token = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
    sign_in_console(client, "owner1", "correct horse battery")
    form = client.get("/admin/plugins/seo/settings")
    assert "网站标题" in text(form)
    data = {"csrf_token": token.search(text(form)).group(1), "title": "新标题", "description": "",
            "keywords": "点卡, 月卡", "og_image": "javascript:alert(1)", "robots_disallow": "/lookup, /member/",
            "products": [str(shop["card"].id), "月卡特价", "", "", "", "", "", ""]}
    refused = client.post("/admin/plugins/seo/settings", data=data)
    assert refused.status_code == 200 and "新标题" not in str(site_files.read("shop1").get("settings", {}))
    assert client.post("/admin/plugins/seo/settings", data={**data, "og_image": "/static/share.png"}).status_code == 302
    assert site_files.read("shop1")["settings"]["seo"]["title"] == "新标题"
    assert site_files.read("shop1")["settings"]["seo"]["robots_disallow"] == ["/lookup", "/member/"]
    assert site_files.read("shop1")["settings"]["seo"]["products"] == [{"product_id": shop["card"].id, "title": "月卡特价"}]
    assert '<meta property="og:title" content="新标题">' in text(client_for("shop1.localhost").get("/"))


def test_a_product_gets_its_own_title_description_and_keywords_on_one_site(shop, host, client_for, site_files):
    card = shop["card"]
    settings = site_files.read("shop1")["settings"]
    settings["seo"]["products"] = [{"product_id": card.id, "title": "月卡 <限时>", "description": "秒发的月卡",
                                    "keywords": "月卡, 秒发"}]
    site_files.edit("shop1", settings=settings)
    site_files.edit("shop2", plugins=["seo"])
    page = text(client_for("shop1.localhost").get(f"/p/{card.id}"))
    assert '<meta property="og:title" content="月卡 &lt;限时&gt;">' in page
    assert '<meta name="description" content="秒发的月卡">' in page and '<meta name="keywords" content="月卡, 秒发">' in page
    other = text(client_for("shop1.localhost").get(f"/p/{shop['other'].id}"))
    assert '<meta name="keywords" content="点卡, 月卡">' in other  # other products keep the site's words
    elsewhere = text(client_for("shop2.localhost").get(f"/p/{card.id}"))
    assert "秒发的月卡" not in elsewhere and '<meta property="og:title" content="测试月卡">' in elsewhere


def test_the_settings_form_speaks_english_on_request(shop, client_for):
    from kamengsite.accounts import create_account
    from kamengsite.testing import sign_in_console

    site = Site.get(Site.slug == "shop1")
    create_account(site.id, "owner1", "correct horse battery")
    client = client_for("shop1.localhost")
    sign_in_console(client, "owner1", "correct horse battery")
    assert "网站标题（留空用站点名称）" in text(client.get("/admin/plugins/seo/settings"))
    english = text(client.get("/admin/plugins/seo/settings?lang=en"))
    assert "Site title (empty: the site name)" in english and "Keywords (comma-separated)" in english
    assert "网站标题" not in english and "关键词" not in english
