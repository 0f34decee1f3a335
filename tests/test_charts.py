"""Server-rendered SVG charts (kamengsite/charts.py): well-formed, accessible, one mark per value,
and labels escaped (a product named ``<script>`` is text)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kamengsite.charts import Point, bar_chart, line_chart
from kamengsite.themes import format_fen

SVG = "{http://www.w3.org/2000/svg}"
EVIL = '<script>alert("x")</script>'


def parse(markup) -> ET.Element:
    return ET.fromstring(str(markup))


def test_line_chart_has_one_point_per_day_a_title_and_a_description():
    points = [Point(f"03-{day:02d}", fen) for day, fen in ((1, 0), (2, 12345), (3, 999), (4, 0), (5, 50000))]
    svg = parse(line_chart(points, title="每日成交额", desc="每天的金额", fmt=format_fen, unit=" 元"))
    assert svg.tag == f"{SVG}svg" and svg.get("role") == "img"
    assert svg.find(f"{SVG}title").text == "每日成交额" and svg.find(f"{SVG}desc").text == "每天的金额"
    title_id, desc_id = svg.get("aria-labelledby").split()
    assert svg.find(f"{SVG}title").get("id") == title_id and svg.find(f"{SVG}desc").get("id") == desc_id
    circles = svg.findall(f"{SVG}circle")
    assert len(circles) == 5
    assert [c.find(f"{SVG}title").text for c in circles][1] == "03-02: 123.45 元"  # outside a request: the English msgid
    assert len(svg.find(f"{SVG}polyline").get("points").split()) == 5
    highest = min(circles, key=lambda c: float(c.get("cy")))  # SVG y grows downwards
    assert highest.find(f"{SVG}title").text.startswith("03-05")


def test_line_chart_of_one_or_no_points_still_renders():
    assert len(parse(line_chart([Point("03-01", 7)], title="t", desc="d")).findall(f"{SVG}circle")) == 1
    empty = parse(line_chart([], title="t", desc="d"))
    assert empty.findall(f"{SVG}circle") == [] and empty.find(f"{SVG}polyline") is None


def test_bar_chart_has_one_bar_per_row_longest_for_the_largest():
    rows = [Point("月卡", 30000), Point("季卡", 15000), Point("年卡", 0)]
    svg = parse(bar_chart(rows, title="商品销售额前 10", desc="按金额", fmt=format_fen))
    bars = svg.findall(f"{SVG}rect")
    assert len(bars) == 3
    widths = [float(b.get("width")) for b in bars]
    assert widths[0] == 2 * widths[1] and widths[2] == 0
    assert bars[1].find(f"{SVG}title").text == "季卡: 150.00"


def test_labels_and_titles_are_escaped():
    for markup in (bar_chart([Point(EVIL, 5)], title=EVIL, desc=EVIL),
                   line_chart([Point(EVIL, 5)], title=EVIL, desc=EVIL, unit=EVIL)):
        html = str(markup)
        assert "<script" not in html
        svg = parse(markup)  # still well-formed
        assert svg.find(f"{SVG}title").text == EVIL  # the name is shown as text
        assert not list(svg.iter("script")) and not list(svg.iter(f"{SVG}script"))


def test_an_empty_bar_chart_says_so():
    svg = parse(bar_chart([], title="t", desc="d"))
    assert svg.findall(f"{SVG}rect") == [] and "No data" in "".join(svg.itertext())  # English outside a request


def test_value_fmt_formats_tooltips_and_bar_labels():
    svg = parse(bar_chart([Point("a", 5)], title="t", desc="d", fmt=str, value_fmt=lambda n: f"{n} pcs"))
    assert svg.find(f"{SVG}rect").find(f"{SVG}title").text == "a: 5 pcs"
    assert "5 pcs" in [t.text for t in svg.findall(f"{SVG}text")]


def test_two_charts_never_share_ids():
    first, second = parse(line_chart([], title="a", desc="a")), parse(line_chart([], title="b", desc="b"))
    assert first.get("aria-labelledby") != second.get("aria-labelledby")


def test_tooltips_and_the_empty_text_follow_the_request_s_language(host):
    app = host.app_for("main")
    with app.test_request_context("/"):
        assert "暂无数据" in "".join(parse(bar_chart([], title="t", desc="d")).itertext())
        tip = parse(bar_chart([Point("季卡", 15000)], title="t", desc="d", fmt=format_fen))
        assert tip.find(f"{SVG}rect").find(f"{SVG}title").text == "季卡：150.00"
    with app.test_request_context("/?lang=en"):
        assert "No data" in "".join(parse(bar_chart([], title="t", desc="d")).itertext())
