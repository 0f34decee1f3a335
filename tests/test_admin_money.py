"""The money pages of the console (kamengsite/admin_money.py): an owner's prices and balance on their
own sub-site, withdrawals, reconciliation and refunds on the main site — with the prices of the
make_tree tree (test_economy.py) computed by hand, real site folders, and tenant isolation."""

from __future__ import annotations

import csv
import datetime
import io
import re
from dataclasses import dataclass

import pytest

from kamengsite import ledger, levels, orders, pricing, refunds, settlement, withdrawals
from kamengsite.accounts import create_account
from kamengsite.admin_money import parse_fixed_fen, parse_percent_bp, percent_text
from kamengsite.cardkeys import import_keys
from kamengsite.catalog import Category, create_product
from kamengsite.crypto import CardKeyCipher
from kamengsite.models import Site, utcnow
from kamengsite.tenancy import all_sites, site_scope
from kamengsite.testing import form_errors as errors, SiteClient, csrf_token

BASE = 10000  # ¥100.00 on the main site, as in test_economy.make_tree
PASSWORD = "correct horse battery staple"
C_COST = 9818  # c pays b's 9350 + 5 % (467.5 → 468); b pays a's 8500 + 10 %; a (gold) pays 85 % of BASE


def text(response) -> str:
    return response.get_data(as_text=True)


@dataclass
class Tree:
    host: object
    ids: dict
    product: object

    @property
    def sku(self) -> int:
        return self.product.skus[0].id

    def client(self, slug) -> SiteClient:
        return SiteClient(self.host, f"{slug}.localhost")

    def console(self, slug) -> SiteClient:
        """A client signed in to ``slug``'s console with that site's own account."""
        client = self.client(slug)
        assert login(client, "boss" if slug == "main" else f"owner-{slug}").status_code == 302
        return client


def login(client, username, password=PASSWORD):
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": username,
                                             "password": password})


def make_tree(host) -> Tree:
    """main → a (gold) → b (silver) → c (bronze), as real site folders; the levels and children rules
    of test_economy.make_tree (plus a 1 % withdrawal fee on bronze); c has no markup rule yet."""
    levels.save_level(code="gold", name="黄金", cost_percent_bp=-1500, max_child_markup_bp=2000,
                      may_open_children=True, freeze_days=1, withdraw_min_fen=500, withdraw_fee_bp=100)
    levels.save_level(code="silver", name="白银", cost_percent_bp=-1000, max_child_markup_bp=1000,
                      may_open_children=True, freeze_days=3, withdraw_min_fen=500)
    levels.save_level(code="bronze", name="青铜", cost_percent_bp=-500, freeze_days=3, withdraw_min_fen=500,
                      withdraw_fee_bp=100)
    for slug, parent, level in (("a", "main", "gold"), ("b", "a", "silver"), ("c", "b", "bronze")):
        host.registry.create(slug, template="shop", parent=parent, name=f"{slug} 店")
        host.registry.update(slug, level=level)
    ids = {slug: Site.get(Site.slug == slug).id for slug in ("main", "a", "b", "c")}
    product = create_product(ids["main"], "月卡", BASE, max_qty=10)
    import_keys(product.skus[0], [f"KEY-{i:03d}" for i in range(20)], CardKeyCipher.from_instance(host.instance))
    pricing.set_rule(ids["a"], "children", markup_percent_bp=1000)
    pricing.set_rule(ids["b"], "children", markup_percent_bp=500)
    create_account(ids["main"], "boss", PASSWORD)
    for slug in ("b", "c"):
        create_account(ids[slug], f"owner-{slug}", PASSWORD)
    return Tree(host, ids, product)


@pytest.fixture
def tree(host):
    return make_tree(host)


@pytest.fixture
def db_tree(db_host):
    return make_tree(db_host)


def paid_order(tree, slug, member_id=None) -> orders.Order:
    """One unit bought on ``slug`` at its current price through epay, paid."""
    quote = pricing.quote_sku(tree.ids[slug], tree.sku)
    order = orders.create_order(site_id=tree.ids[slug], sku_id=tree.sku, quantity=1, contact="buyer@example.com",
                                unit_price_fen=quote.unit_price_fen, costs=quote.costs, channel="epay",
                                channel_profile="main", member_id=member_id)
    orders.mark_paid(order.order_no, channel="epay", trade_no=f"T-{order.order_no}", amount_fen=order.amount_fen,
                     channel_profile="main")
    return order


def storefront_price(tree, slug) -> str:
    page = tree.client(slug).get(f"/p/{tree.product.id}")
    assert page.status_code == 200
    return re.search(r'class="price">¥([\d.]+)<', text(page)).group(1)


def price_cells(page) -> tuple[int, int]:
    """(cost, price) in fen of the first row of the prices table."""
    html = text(page)
    return int(re.search(r'data-cost="(\d+)"', html).group(1)), int(re.search(r'data-price="(\d+)"', html).group(1))


def rules_of(site_id) -> dict:
    with site_scope(site_id):
        return {(r.scope, r.target_id): (r.markup_percent_bp, r.markup_fixed_fen, r.rounding, r.hidden, r.rename)
                for r in pricing.PriceRule.select()}


def rule_form(page, scope, **fields) -> dict:
    data = {"csrf_token": csrf_token(page), "scope": scope, "target": "", "percent": "", "fixed": "",
            "rounding": "none", "rename": ""}
    data.update(fields)
    return data


def bal(kind, site_id=None, channel="") -> int:
    return ledger.balance(ledger.account(kind, site=site_id, channel=channel))



# -- parsing at the form boundary ------------------------------------------------------------------


def test_percent_and_yuan_text_become_basis_points_and_fen():
    assert [parse_percent_bp(t) for t in ("12.5", "30", "-5", "０.０１", "12.5%", "")] == [1250, 3000, -500, 1, 1250, 0]
    assert [parse_fixed_fen(t) for t in ("1.50", "-2", "¥0.07", "3元", "")] == [150, -200, 7, 300, 0]
    for bad in ("12.345", "abc", "1e3", "--1", "1.2.3"):
        with pytest.raises(ValueError):
            parse_percent_bp(bad)
        with pytest.raises(ValueError):
            parse_fixed_fen(bad)
    assert [percent_text(bp) for bp in (1250, 3000, -500, 1, 0)] == ["12.5", "30", "-5", "0.01", "0"]


# -- 价格 --------------------------------------------------------------------------------------------


def test_owner_sets_a_markup_and_the_storefront_follows(tree):
    assert storefront_price(tree, "c") == "100.00"  # no rule: the base price (above c's cost of 98.18)
    console = tree.console("c")
    page = console.get("/admin/prices")
    assert page.status_code == 200 and "月卡" in text(page)
    assert price_cells(page) == (C_COST, BASE)

    response = console.post("/admin/prices", data=rule_form(page, "all", percent="30", rounding="yuan"))
    assert response.status_code == 302
    assert rules_of(tree.ids["c"]) == {("all", 0): (3000, 0, "yuan", False, "")}
    # 9818 + 30 % (2945.4 → 2946) = 12764, rounded up to the yuan: 12800.
    assert storefront_price(tree, "c") == "128.00"
    assert pricing.quote_sku(tree.ids["c"], tree.sku).unit_price_fen == 12800
    assert price_cells(console.get("/admin/prices")) == (C_COST, 12800)
    assert storefront_price(tree, "b") == "100.00"  # c's rule is c's only

    # Decimals at the boundary: 12.5 % → 1250 bp, ¥1.50 → 150 fen: 9818 + 1228 (1227.25 up) + 150 = 11196.
    response = console.post("/admin/prices", data=rule_form(page, "all", percent="12.5", fixed="1.50"))
    assert response.status_code == 302
    assert rules_of(tree.ids["c"])[("all", 0)] == (1250, 150, "none", False, "")
    assert storefront_price(tree, "c") == "111.96"


def test_bad_markups_are_refused_with_a_reason_and_nothing_is_written(tree):
    console = tree.console("c")
    page = console.get("/admin/prices")
    for fields, message in (({"percent": "12.345"}, "百分比格式不对"), ({"percent": "abc"}, "百分比格式不对"),
                            ({"percent": "1001"}, "加价请在 -100% 到 1000% 之间"), ({"fixed": "1.234"}, "金额格式不对")):
        response = console.post("/admin/prices", data=rule_form(page, "all", **fields))
        assert response.status_code == 200 and any(message in e for e in errors(response)), (fields, errors(response))
    response = console.post("/admin/prices", data=rule_form(page, "product", target="999999", percent="10"))
    assert "请选择商品" in errors(response)
    assert rules_of(tree.ids["c"]) == {}


def test_hide_and_rename_a_product_on_one_site_only(tree):
    console = tree.console("c")
    page = console.get("/admin/prices")
    response = console.post("/admin/prices", data=rule_form(page, "product", target=str(tree.product.id),
                                                            percent="30", rounding="yuan", hidden="y"))
    assert response.status_code == 302
    shop = tree.client("c")
    assert shop.get(f"/p/{tree.product.id}").status_code == 404
    assert "月卡" not in text(shop.get("/"))
    assert "已隐藏" in text(console.get("/admin/prices"))  # the owner still sees it, to show it again
    assert tree.client("b").get(f"/p/{tree.product.id}").status_code == 200  # hidden on c only

    console.post("/admin/prices", data=rule_form(page, "product", target=str(tree.product.id), percent="30",
                                                 rounding="yuan", rename="超值月卡"))
    assert "超值月卡" in text(shop.get(f"/p/{tree.product.id}")) and storefront_price(tree, "c") == "128.00"
    assert "超值月卡" not in text(tree.client("b").get(f"/p/{tree.product.id}"))


def test_the_edit_link_prefills_a_product_rule_with_the_markup_in_effect(tree):
    pricing.set_rule(tree.ids["c"], "all", markup_percent_bp=2000, rounding="nine")
    console = tree.console("c")
    html = text(console.get(f"/admin/prices?scope=product&target={tree.product.id}"))
    product_form = html[html.index('id="form-product"'):]
    assert re.search(r'<input id="product-percent"[^>]* value="20">', product_form)
    assert re.search(r'<option selected value="nine">|<option value="nine" selected>', product_form)


def test_the_price_floor_is_shown(tree):
    console = tree.console("c")
    page = console.get("/admin/prices")
    console.post("/admin/prices", data=rule_form(page, "product", target=str(tree.product.id), percent="-50"))
    html = text(console.get("/admin/prices"))
    assert price_cells(console.get("/admin/prices")) == (C_COST, C_COST)  # 9818 - 4909 is below cost: the cost
    assert "按成本价" in html
    assert storefront_price(tree, "c") == "98.18"


def test_a_parent_sets_what_its_children_pay_within_its_levels_cap(tree):
    b = tree.console("b")
    page = b.get("/admin/prices")
    assert 'id="children"' in text(page) and 'id="child-cap">10%' in text(page)  # silver: at most 10 %
    response = b.post("/admin/prices", data=rule_form(page, "children", percent="15"))
    assert "当前等级最多加价 10%" in errors(response)
    assert rules_of(tree.ids["b"])[("children", 0)][0] == 500  # unchanged
    assert b.post("/admin/prices", data=rule_form(page, "children", percent="8")).status_code == 302
    # c now pays 9350 + 8 % = 10098: above the base price, so c sells at cost — and says so.
    c = tree.console("c")
    html = text(c.get("/admin/prices"))
    assert price_cells(c.get("/admin/prices")) == (10098, 10098) and "按成本价" in html
    assert 'id="children"' not in html  # bronze may not open child sites
    response = c.post("/admin/prices", data=rule_form(c.get("/admin/prices"), "children", percent="5"))
    assert response.status_code == 404 and ("children", 0) not in rules_of(tree.ids["c"])


def test_deleting_a_rule(tree):
    console = tree.console("c")
    page = console.get("/admin/prices")
    console.post("/admin/prices", data=rule_form(page, "all", percent="30", rounding="yuan"))
    with site_scope(tree.ids["c"]):
        rule_id = pricing.PriceRule.get().id
    response = console.post(f"/admin/prices/rules/{rule_id}/delete", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 302 and rules_of(tree.ids["c"]) == {}
    assert storefront_price(tree, "c") == "100.00"


# -- isolation ---------------------------------------------------------------------------------------


def test_one_owner_can_neither_see_nor_change_another_sites_rules_or_money(tree):
    c_rule = pricing.set_rule(tree.ids["c"], "product", tree.product.id, markup_percent_bp=2000, rename="C专属名")
    before = rules_of(tree.ids["c"])
    b = tree.console("b")
    page = b.get("/admin/prices")
    assert "C专属名" not in text(page) and f'id="rule-{c_rule.id}"' not in text(page)
    # b's console knows nothing of c's rule: a 404, and the rule stays.
    response = b.post(f"/admin/prices/rules/{c_rule.id}/delete", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 404 and rules_of(tree.ids["c"]) == before

    # b's session cookie replayed on c's console is void there.
    cookie = b.get_cookie("ks_session", domain="b.localhost").value
    stranger = tree.client("c")
    headers = {"Cookie": f"ks_session={cookie}"}
    assert stranger.get("/admin/prices", headers=headers).status_code == 302
    assert stranger.post(f"/admin/prices/rules/{c_rule.id}/delete", headers=headers,
                         data={"csrf_token": csrf_token(page)}).status_code == 400
    assert stranger.post("/admin/prices", headers=headers, data=rule_form(page, "all", percent="99")).status_code == 400
    # … and b's password is nobody's on c.
    assert "用户名或密码错误" in text(login(tree.client("c"), "owner-b"))
    assert rules_of(tree.ids["c"]) == before

    # Money: b has 777.77 available and a withdrawal with its payee; c's balance page shows none of it.
    ledger.post("adjustment", "fund-b", [(ledger.account("site_available", site=tree.ids["b"]), 77777),
                                         (ledger.account("channel_clearing", channel="test"), -77777)])
    withdrawals.request_withdrawal(tree.ids["b"], 600, "B的收款账号")
    order = paid_order(tree, "c")  # c sells at 9818 + 20 % = 11782: c earns 1964, b 468 on it
    c_page = text(tree.console("c").get("/admin/balance"))
    assert 'id="frozen">¥19.64<' in c_page and 'id="available">¥0.00<' in c_page
    for secret in ("777.77", "771.77", "6.00", "B的收款账号", "4.68"):
        assert secret not in c_page, secret
    assert f"订单 {order.order_no}" in c_page
    # b sees its margin of c's sale, but not c's order number.
    b_page = text(b.get("/admin/balance"))
    assert 'id="frozen">¥4.68<' in b_page and order.order_no not in b_page and "下级分站的订单" in b_page


def test_money_pages_belong_to_their_kind_of_site(tree):
    c = tree.console("c")
    token = csrf_token(c.get("/admin/prices"))
    for path in ("/admin/withdrawals", "/admin/reconcile", "/admin/reconcile.csv", "/admin/refunds"):
        assert c.get(path).status_code == 404, path
    assert c.post("/admin/withdrawals/1/approve", data={"csrf_token": token}).status_code == 404
    assert c.post("/admin/refunds", data={"csrf_token": token, "order_no": "X", "destination": "manual"}).status_code == 404
    main = tree.console("main")
    for path in ("/admin/prices", "/admin/balance"):
        assert main.get(path).status_code == 404, path
    assert main.get("/admin/orders").status_code == 200
    # The menu offers each site its own pages only.
    c_menu, main_menu = text(c.get("/admin/orders")), text(main.get("/admin/orders"))
    assert 'href="/admin/prices"' in c_menu and 'href="/admin/withdrawals"' not in c_menu
    assert 'href="/admin/categories"' not in c_menu
    assert 'href="/admin/withdrawals"' in main_menu and 'href="/admin/prices"' not in main_menu


# -- 余额 and 提现 --------------------------------------------------------------------------------------


def test_withdrawal_from_request_to_paid(db_tree):
    tree = db_tree
    pricing.set_rule(tree.ids["c"], "all", markup_percent_bp=2000, rounding="nine")  # c sells at 11790
    paid_order(tree, "c")  # margins: c 1972, b 468, a 850
    settlement.release_due(utcnow() + datetime.timedelta(days=4))
    c = tree.console("c")
    page = c.get("/admin/balance")
    assert 'id="available">¥19.72<' in text(page) and 'id="frozen">¥0.00<' in text(page)

    for amount, payee, message in (("50", "支付宝 c@example.com", "可提现余额不足"), ("1", "支付宝", "最低提现 5.00 元"),
                                   ("15", "", "请填写收款信息"), ("1.234", "支付宝", "价格最多两位小数（精确到分）")):
        response = c.post("/admin/balance", data={"csrf_token": csrf_token(page), "amount": amount, "payee": payee})
        assert response.status_code == 200 and any(message in e for e in errors(response)), (amount, errors(response))
    assert withdrawals.Withdrawal.select().count() == 0

    response = c.post("/admin/balance", data={"csrf_token": csrf_token(page), "amount": "15",
                                              "payee": "支付宝 c@example.com"})
    assert response.status_code == 302
    assert (bal("site_available", tree.ids["c"]), bal("site_payout", tree.ids["c"])) == (472, 1500)
    html = text(c.get("/admin/balance"))
    assert 'id="available">¥4.72<' in html and 'id="payout">¥15.00<' in html and "待审核" in html
    w = withdrawals.Withdrawal.get()
    assert (w.site_id, w.amount_fen, w.fee_fen) == (tree.ids["c"], 1500, 15)  # bronze: 1 % fee

    main = tree.console("main")
    queue = main.get("/admin/withdrawals")
    row = text(queue)[text(queue).index(f'id="withdrawal-{w.id}"'):]
    for cell in ("<td>c</td>", ">15.00<", ">0.15<", ">14.85<", "支付宝 c@example.com"):
        assert cell in row[:row.index("</tr>")], cell
    token = csrf_token(queue)
    assert main.post(f"/admin/withdrawals/{w.id}/pay", data={"csrf_token": token}).status_code == 302
    assert "不能这样操作" in text(main.get("/admin/withdrawals"))  # paid before approved: refused
    assert withdrawals.Withdrawal.get().status == "requested"
    assert main.post(f"/admin/withdrawals/{w.id}/approve", data={"csrf_token": token, "note": "ok"}).status_code == 302
    assert withdrawals.Withdrawal.get().status == "approved"
    assert main.post(f"/admin/withdrawals/{w.id}/pay", data={"csrf_token": token, "note": "流水 123"}).status_code == 302
    assert withdrawals.Withdrawal.get().status == "paid"
    assert bal("site_payout", tree.ids["c"]) == 0 and bal("channel_clearing", channel="payout") == 1485
    assert f'id="withdrawal-{w.id}"' not in text(main.get("/admin/withdrawals"))  # no longer waiting
    assert "已打款" in text(c.get("/admin/balance"))
    assert ledger.check() == []


def test_the_operator_rejects_a_withdrawal_and_the_money_comes_back(tree):
    ledger.post("adjustment", "fund-c", [(ledger.account("site_available", site=tree.ids["c"]), 2000),
                                         (ledger.account("channel_clearing", channel="test"), -2000)])
    w = withdrawals.request_withdrawal(tree.ids["c"], 1500, "bank")
    main = tree.console("main")
    token = csrf_token(main.get("/admin/withdrawals"))
    main.post(f"/admin/withdrawals/{w.id}/reject", data={"csrf_token": token, "note": "收款信息有误"})
    assert withdrawals.Withdrawal.get().status == "rejected" and bal("site_available", tree.ids["c"]) == 2000
    assert "收款信息有误" in text(tree.console("c").get("/admin/balance"))


# -- 订单 --------------------------------------------------------------------------------------------


def test_each_site_lists_its_own_orders_newest_first_with_a_status_filter(tree, monkeypatch):
    first = paid_order(tree, "c")
    second = orders.create_order(site_id=tree.ids["c"], sku_id=tree.sku, quantity=1, contact="x@example.com",
                                 unit_price_fen=BASE, costs=pricing.quote_sku(tree.ids["c"], tree.sku).costs,
                                 channel="epay")
    on_b = paid_order(tree, "b")
    c = tree.console("c")
    html = text(c.get("/admin/orders"))
    assert html.index(second.order_no) < html.index(first.order_no) and on_b.order_no not in html
    delivered = text(c.get("/admin/orders?status=delivered"))
    assert first.order_no in delivered and second.order_no not in delivered
    monkeypatch.setattr("kamengsite.admin_money.ORDERS_PER_PAGE", 1)
    page1, page2 = text(c.get("/admin/orders")), text(c.get("/admin/orders?page=2"))
    assert second.order_no in page1 and first.order_no not in page1 and "下一页" in page1
    assert first.order_no in page2 and "上一页" in page2
    assert "/admin/refunds" not in page1  # refunds are the operator's


# -- 对账 --------------------------------------------------------------------------------------------


def test_reconcile_page_and_csv_after_a_paid_order(tree):
    pricing.set_rule(tree.ids["c"], "all", markup_percent_bp=2000, rounding="nine")
    paid_order(tree, "c")  # 11790 in: platform 8500, sites 1972 + 468 + 850 = 3290
    main = tree.console("main")
    today = utcnow().date().isoformat()
    html = text(main.get("/admin/reconcile"))
    total = html[html.index('id="total"'):]
    for column, fen in (("gross", "117.90"), ("fees", "0.00"), ("platform", "85.00"), ("sites", "32.90")):
        assert f'data-column="{column}">{fen}<' in total, column

    response = main.get(f"/admin/reconcile.csv?start={today}&end={today}")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(text(response))))
    assert rows == [["day", "channel", "site", "orders", "gross", "fees", "platform", "sites", "owed", "wallet"],
                    [today, "epay", "c", "1", "117.90", "0.00", "85.00", "32.90", "0.00", "0.00"],
                    ["total", "", "", "1", "117.90", "0.00", "85.00", "32.90", "0.00", "0.00"]]

    assert "这段时间没有收款或退款" in text(main.get("/admin/reconcile?start=2020-01-01&end=2020-01-02"))
    assert "日期格式不对" in text(main.get("/admin/reconcile?start=yesterday"))
    assert "结束日期早于开始日期" in text(main.get("/admin/reconcile?start=2020-01-02&end=2020-01-01"))


# -- 退款 --------------------------------------------------------------------------------------------


def refund_form(page, order_no, destination="auto", **fields) -> dict:
    return dict({"csrf_token": csrf_token(page), "order_no": order_no, "destination": destination, "reason": "测试"},
                **fields)


def test_refund_form_refunds_once_and_shows_errors(tree):
    order = paid_order(tree, "c")  # no member: nothing to refund "to balance"
    main = tree.console("main")
    listing = text(main.get("/admin/orders"))
    assert order.order_no not in listing  # the main site's own orders only; c's are refunded by number
    page = main.get(f"/admin/refunds?order_no={order.order_no}")
    assert 'id="order-summary"' in text(page) and "<dd>c</dd>" in text(page)

    response = main.post("/admin/refunds", data=refund_form(page, order.order_no, "balance"))
    assert response.status_code == 200
    assert any("退款失败" in e and "cannot be refunded to balance" in e for e in errors(response)), errors(response)
    response = main.post("/admin/refunds", data=refund_form(page, "NO-SUCH-ORDER"))
    assert any("unknown order" in e for e in errors(response))
    assert refunds.Refund.select().count() == 0

    response = main.post("/admin/refunds", data=refund_form(page, order.order_no, "manual"))
    assert response.status_code == 302
    refund = refunds.Refund.get()
    assert (refund.destination, refund.status, refund.amount_fen) == ("manual", "pending", BASE)
    with all_sites():
        assert orders.Order.get_by_id(order.id).status == "refunded"
    assert [bal("site_frozen", tree.ids[s]) for s in "cba"] == [0, 0, 0]
    again = main.post("/admin/refunds", data=refund_form(page, order.order_no, "manual"))
    assert any("已经退过款" in e for e in errors(again)) and refunds.Refund.select().count() == 1

    response = main.post(f"/admin/refunds/{refund.refund_no}/confirm", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 302 and refunds.Refund.get().status == "done"
    assert ledger.check() == []


def test_refund_after_a_withdrawal_needs_the_absorb_box(tree):
    pricing.set_rule(tree.ids["c"], "all", markup_percent_bp=2000, rounding="nine")
    order = paid_order(tree, "c")
    settlement.release_due(utcnow() + datetime.timedelta(days=5))
    withdrawals.request_withdrawal(tree.ids["c"], 1500, "bank")  # c keeps 472 of its 1972
    main = tree.console("main")
    page = main.get("/admin/refunds")
    response = main.post("/admin/refunds", data=refund_form(page, order.order_no, "manual"))
    assert any("1500 fen too little" in e for e in errors(response)) and refunds.Refund.select().count() == 0
    response = main.post("/admin/refunds", data=refund_form(page, order.order_no, "manual", absorb="y"))
    assert response.status_code == 302 and refunds.Refund.get().status == "pending"
    assert bal("site_available", tree.ids["c"]) == 0 and bal("platform_revenue") == 8500 - 8500 - 1500
    assert ledger.check() == []


# -- CSRF ---------------------------------------------------------------------------------------------


def test_every_money_form_without_its_csrf_token_is_a_400_and_writes_nothing(tree):
    pricing.set_rule(tree.ids["c"], "all", markup_percent_bp=2000, rounding="nine")
    order = paid_order(tree, "c")
    settlement.release_due(utcnow() + datetime.timedelta(days=5))
    w = withdrawals.request_withdrawal(tree.ids["c"], 1000, "bank")
    with site_scope(tree.ids["c"]):
        rule_id = pricing.PriceRule.get().id
    before = (rules_of(tree.ids["c"]), withdrawals.Withdrawal.select().count(), refunds.Refund.select().count(),
              ledger.LedgerTxn.select().count())
    c, main = tree.console("c"), tree.console("main")
    for client, path, data in (
            (c, "/admin/prices", {"scope": "all", "percent": "50"}),
            (c, f"/admin/prices/rules/{rule_id}/delete", {}),
            (c, "/admin/balance", {"amount": "5", "payee": "bank"}),
            (main, f"/admin/withdrawals/{w.id}/approve", {}),
            (main, f"/admin/withdrawals/{w.id}/reject", {"note": "x"}),
            (main, "/admin/refunds", {"order_no": order.order_no, "destination": "manual"})):
        assert client.post(path, data=data).status_code == 400, path
        assert client.post(path, data=dict(data, csrf_token="forged")).status_code == 400, path
    assert withdrawals.Withdrawal.get().status == "requested"
    assert before == (rules_of(tree.ids["c"]), withdrawals.Withdrawal.select().count(),
                      refunds.Refund.select().count(), ledger.LedgerTxn.select().count())


def test_the_catalogue_of_categories_is_the_main_sites(tree):
    """Category rules target the main catalogue's categories; another site's category is refused."""
    main_category = Category.create(site=tree.ids["main"], name="点卡")
    foreign = Category.create(site=tree.ids["b"], name="b 自己的")
    console = tree.console("c")
    page = console.get("/admin/prices")
    assert "点卡" in text(page) and "b 自己的" not in text(page)
    response = console.post("/admin/prices", data=rule_form(page, "category", target=str(foreign.id), percent="10"))
    assert "请选择分类" in errors(response) and rules_of(tree.ids["c"]) == {}
    response = console.post("/admin/prices", data=rule_form(page, "category", target=str(main_category.id),
                                                            percent="10", hidden="y"))
    assert response.status_code == 302
    assert rules_of(tree.ids["c"]) == {("category", main_category.id): (1000, 0, "none", True, "")}


# -- languages ----------------------------------------------------------------------------------------


CONTENT = re.compile(r"月卡|青铜|c 店")  # what the owner or the operator wrote: stays as written


def chinese_in_main(html: str) -> list[str]:
    """The Chinese left in a page's <main> (the menu is the layout's), content aside."""
    main = html[html.index("<main>"):html.index("</main>")]
    return re.findall(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]+", CONTENT.sub("", main))


def test_owner_pages_in_english_on_request_chinese_by_default(tree):
    pricing.set_rule(tree.ids["c"], "all", markup_percent_bp=2000, rounding="nine")
    order = paid_order(tree, "c")
    settlement.release_due(utcnow() + datetime.timedelta(days=5))
    withdrawals.request_withdrawal(tree.ids["c"], 500, "bank")
    c = tree.console("c")
    for path, chinese, english in (("/admin/prices", "<h1>价格</h1>", "<h1>Prices</h1>"),
                                   ("/admin/balance", "<h1>余额</h1>", "<h1>Balance</h1>"),
                                   ("/admin/orders", "<h1>订单</h1>", "<h1>Orders</h1>"),
                                   (f"/admin/orders/{order.order_no}/keys", "<h1>查看卡密</h1>",
                                    "<h1>View card keys</h1>")):
        html = text(c.get(path))
        assert chinese in html and english not in html, path
    prices = text(c.get("/admin/prices?lang=en"))  # the cookie keeps English from here on
    assert "<h1>Prices</h1>" in prices and "<h1>价格</h1>" not in prices
    assert "Markup on all products" in prices and "全部商品加价" not in prices and "End in .9" in prices
    balance = text(c.get("/admin/balance"))
    assert "<h1>Balance</h1>" in balance and "Available to withdraw" in balance and "可提现" not in balance
    assert "Awaiting review" in balance and "Minimum withdrawal ¥5.00, fee 1%" in balance
    orders_page = text(c.get("/admin/orders"))
    assert "Paid, processing" in orders_page or "Delivered" in orders_page
    assert "View card keys" in orders_page and "查看卡密" not in orders_page
    keys = text(c.get(f"/admin/orders/{order.order_no}/keys"))
    assert "<h1>View card keys</h1>" in keys and f"Order {order.order_no}" in keys
    for html in (prices, balance, orders_page, keys):
        assert chinese_in_main(html) == [], chinese_in_main(html)
    # a form error and a flash come in English too
    page = c.get("/admin/prices")
    response = c.post("/admin/prices", data=rule_form(page, "all", percent="abc"))
    assert any("Invalid percentage" in e for e in errors(response)), errors(response)
    assert c.post("/admin/prices", data=rule_form(page, "all", percent="10")).status_code == 302
    assert "Price rule saved: All products" in text(c.get("/admin/prices"))


def test_operator_pages_in_english_on_request_chinese_by_default(tree):
    order = paid_order(tree, "c")
    ledger.post("adjustment", "fund-c", [(ledger.account("site_available", site=tree.ids["c"]), 2000),
                                         (ledger.account("channel_clearing", channel="test"), -2000)])
    withdrawals.request_withdrawal(tree.ids["c"], 1500, "bank")
    main = tree.console("main")
    for path, chinese, english in (("/admin/withdrawals", "<h1>提现审核</h1>", "<h1>Withdrawal review</h1>"),
                                   ("/admin/reconcile", "<h1>对账</h1>", "<h1>Reconciliation</h1>"),
                                   ("/admin/refunds", "<h1>退款</h1>", "<h1>Refunds</h1>")):
        html = text(main.get(path))
        assert chinese in html and english not in html, path
    queue = text(main.get("/admin/withdrawals?lang=en"))
    assert "<h1>Withdrawal review</h1>" in queue and "Awaiting review" in queue and "待审核" not in queue
    assert 'placeholder="Reason for rejecting"' in queue
    report = text(main.get("/admin/reconcile"))
    assert "Received (¥)" in report and "收款（元）" not in report and "Download CSV" in report
    assert "Invalid date" in text(main.get("/admin/reconcile?start=yesterday"))
    refunds_page = text(main.get(f"/admin/refunds?order_no={order.order_no}"))
    assert "<h1>Refunds</h1>" in refunds_page and f"Order {order.order_no}" in refunds_page
    assert "Back the way it was paid" not in refunds_page  # not offered on the form
    assert "member balance</option>" in refunds_page and "买家的会员余额" not in refunds_page
    for html in (queue, report, refunds_page):
        assert chinese_in_main(html) == [], chinese_in_main(html)
    # English money and times: thousands separators, the site's timezone written the English way
    ledger.post("adjustment", "fund-c-2", [(ledger.account("site_available", site=tree.ids["c"]), 500000),
                                           (ledger.account("channel_clearing", channel="test"), -500000)])
    c = tree.console("c")
    balance = text(c.get("/admin/balance?lang=en"))
    assert 'id="available">¥5,005.00<' in balance
    assert re.search(r"<td>\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d</td>", balance)
    assert 'id="available">¥5005.00<' in text(tree.console("c").get("/admin/balance"))  # Chinese: as before
