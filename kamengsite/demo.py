"""Demo data: a main site, two sub-sites with different themes, products with real (random) keys."""

from __future__ import annotations

import secrets

from .accounts import create_account, find_account, generate_password
from .cardkeys import import_keys
from .catalog import Category, Product, create_product
from .crypto import CardKeyCipher
from .db import database
from .host import Host
from .levels import seed_default_levels
from .models import Site
from .pricing import PriceRule, set_rule
from .tenancy import site_scope

DEMO_OPERATOR = "admin"
DEMO_RESELLER = "reseller@example.com"

DEMO_SITES = (
    # slug, template, name, level, the owner's markup (basis points, rounding)
    ("shop1", "gaming", "电竞点卡铺", "silver", (1200, "nine")),
    ("shop2", "wholesale", "商务批发站", "gold", (300, "jiao")),
)

#: The built-in plugins each demo site turns on (those installed), and what they show there.
DEMO_PLUGINS = {
    "main": ("seo", "coupons", "recommendations", "member_levels", "crm", "upstreams"),
    "shop1": ("seo", "coupons", "groupbuy", "distribution", "recommendations"),
    "shop2": ("seo", "coupons", "member_levels"),
}
DEMO_FLASH_DAYS = 7

DEMO_CATALOG = (
    # category, product name, summary, [(sku name, price in fen)], keys per SKU
    ("游戏点卡", "王者荣耀 点券", "官方直充点券兑换码，秒发", [("60 点券", 600), ("300 点券", 3000)], 40),
    ("游戏点卡", "Steam 钱包充值卡", "国区可用，自动发货", [("50 元", 5200), ("100 元", 10300)], 25),
    ("视频会员", "腾讯视频 VIP 月卡", "激活码兑换，1 个月", [("", 1500)], 60),
    ("视频会员", "爱奇艺黄金会员 季卡", "激活码兑换，3 个月", [("", 4200)], 30),
    ("软件激活", "Windows 11 专业版 激活密钥", "零售版密钥，一机一码", [("", 9900)], 15),
    ("话费充值", "移动话费卡 50 元", "全国通用充值卡密", [("", 4950)], 50),
)


def demo_settings() -> dict:
    """Settings of a new demo instance: pay through the sandbox channel when its plugin is installed."""
    from importlib.metadata import entry_points

    if any(ep.name == "sandbox" for ep in entry_points(group="kamengsite")):
        return {"payments": {"sandbox": {"demo": {"label": "沙箱支付（演示）"}}}}
    return {}


def setup_demo(instance, port: int = 8000):
    """Create (once) the demo sites and catalogue; yield progress lines."""
    host = Host(instance)
    registry = host.registry
    if instance.main_site not in registry.slugs():
        registry.create(instance.main_site, template="main")
        yield f"created main site {instance.main_site!r}"
    with database.connection_context():
        if seed_default_levels():
            yield "created the default site levels (青铜/白银/黄金)"
    for slug, template, name, level, _ in DEMO_SITES:
        if slug not in registry.slugs():
            registry.create(slug, template=template, name=name)
            registry.update(slug, level=level)
            yield f"created sub-site {slug!r} from template {template!r} at level {level!r}"
    broken = registry.sync()
    for slug, error in broken.items():
        yield f"warning: site {slug} is broken: {error}"
    with database.connection_context():
        main = Site.get(Site.slug == instance.main_site)
        if Product.select().where(Product.site == main).exists():
            yield "demo catalogue already present"
        else:
            yield from _demo_catalog(main, CardKeyCipher.from_instance(instance))
        yield from _demo_operator(main)
        for slug, *_ in DEMO_SITES:
            yield from _demo_operator(Site.get(Site.slug == slug), label=f"{slug} owner")
        yield from _demo_markups()
        yield from _demo_reseller(main, instance)
    yield from _demo_plugins(registry, instance.main_site)
    port_hint = f":{port}"
    yield f"main site:  http://{instance.main_site}.{instance.base_domain}{port_hint}/"
    yield f"console:    http://{instance.main_site}.{instance.base_domain}{port_hint}/admin/"
    for slug, *_ in DEMO_SITES:
        yield f"sub-site:   http://{slug}.{instance.base_domain}{port_hint}/"


def _demo_catalog(main, cipher):
    categories = {}
    for sort, (category, name, summary, skus, per_sku) in enumerate(DEMO_CATALOG):
        if category not in categories:
            categories[category] = Category.create(site=main, name=category, sort=len(categories))
        product = create_product(main, name, skus[0][1], category=categories[category], summary=summary,
                                 skus=skus, sort=sort, low_stock_threshold=5)
        for sku in product.skus:
            codes = [_fake_code() for _ in range(per_sku)]
            import_keys(sku, codes, cipher)
        yield f"product {name}: {len(skus)} SKU(s), {per_sku} keys each"


def _demo_markups():
    """Each demo sub-site's own markup on its cost (once): the same card costs differently per site."""
    for slug, _, _, _, (markup_bp, rounding) in DEMO_SITES:
        site = Site.get(Site.slug == slug)
        with site_scope(site.id):
            if PriceRule.select().exists():
                continue
        set_rule(site.id, "all", markup_percent_bp=markup_bp, rounding=rounding)
        yield f"sub-site {slug}: prices = cost + {markup_bp / 100:g} %, rounded {rounding}"


def _installed_plugins() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="kamengsite")}


def _demo_plugins(registry, main_slug: str):
    """Turn the growth plugins on (once per site) and give them something to show."""
    installed = _installed_plugins()
    for slug, wanted in DEMO_PLUGINS.items():
        slug = main_slug if slug == "main" else slug
        config = registry.load(slug)
        missing = [name for name in wanted if name in installed and name not in config.plugins]
        if missing:
            registry.update(slug, plugins=list(config.plugins) + missing)
            yield f"site {slug}: plugins {', '.join(missing)} turned on"
    with database.connection_context():
        if "coupons" in installed:
            yield from _demo_promotions(main_slug)
        if "groupbuy" in installed:
            yield from _demo_group_offer()


def _demo_sku(product_name: str, index: int = 0):
    from .catalog import Sku

    product = Product.get(Product.name == product_name)
    return Sku.select().where(Sku.product == product).order_by(Sku.sort, Sku.id)[index]


def _site_floor(site_id: int, sku) -> tuple[int, int]:
    """(the site's price, its cost) of a SKU: demo promotions stay between the two."""
    from .pricing import quote_sku

    quote = quote_sku(site_id, sku.id)
    return quote.unit_price_fen, (quote.costs[0][1] if quote.costs else 0)


def _demo_promotions(main_slug: str):
    import datetime

    from kamengsite_coupons import rules
    from kamengsite_coupons.models import Coupon

    main = Site.get(Site.slug == main_slug)
    with site_scope(main.id):
        if Coupon.select().exists():
            return
    rules.create_coupon(main.id, "NEW10", "percent", 1000, min_spend_fen=2000, max_discount_fen=1000,
                        per_member_limit=1, note="演示：满 20 元打九折")
    vip = _demo_sku("腾讯视频 VIP 月卡")
    now = datetime.datetime.utcnow().replace(microsecond=0)
    rules.create_flash_sale(main.id, vip.id, 990, 20, now, now + datetime.timedelta(days=DEMO_FLASH_DAYS),
                            per_member_limit=2)
    rules.set_newcomer_price(main.id, _demo_sku("王者荣耀 点券").id, 500)
    yield "main site: coupon NEW10 (满 20 元 9 折), a flash sale on 腾讯视频 VIP 月卡 (¥9.90), a 新人价"
    shop2 = Site.get(Site.slug == "shop2")
    windows = _demo_sku("Windows 11 专业版 激活密钥")
    price, cost = _site_floor(shop2.id, windows)
    rules.set_tier(shop2.id, windows.id, 5, max(cost, price * 95 // 100))
    rules.set_tier(shop2.id, windows.id, 20, max(cost, price * 90 // 100))
    yield "shop2: wholesale tiers on Windows 11 keys (5+ and 20+)"


def _demo_group_offer():
    from kamengsite_groupbuy.groups import GroupOffer, create_offer

    shop1 = Site.get(Site.slug == "shop1")
    with site_scope(shop1.id):
        if GroupOffer.select().exists():
            return
    points = _demo_sku("王者荣耀 点券", 1)
    price, cost = _site_floor(shop1.id, points)
    create_offer(shop1.id, points.id, group_size=2, group_price_fen=max(cost, price * 85 // 100), window_minutes=1440)
    yield "shop1: a 2-person group-buy on 王者荣耀 300 点券"


def _demo_operator(site, label="operator"):
    """A console account ``admin`` on ``site``, once, with a generated password printed this one time."""
    if find_account(site.id, DEMO_OPERATOR) is not None:
        yield (f"{label} account {DEMO_OPERATOR!r} already present "
               f"(new password: `kamengsite account set-password {DEMO_OPERATOR} --site {site.slug}`)")
        return
    password = generate_password()
    create_account(site.id, DEMO_OPERATOR, password, role="operator")
    yield f"{label} account: {DEMO_OPERATOR} / password: {password}  (shown once)"


def _demo_reseller(main, instance):
    """A reseller member of the main site with ¥500 in the wallet and an API key, printed this one time."""
    from .api.keys import issue_key
    from .members import credit_wallet, find_member, register

    if find_member(main.id, DEMO_RESELLER) is not None:
        yield f"reseller {DEMO_RESELLER} already present (new key: sign in and open 我的账户 → API 对接)"
        return
    password = generate_password()
    member = register(main.id, DEMO_RESELLER, password, display_name="演示分销商")
    credit_wallet(main.id, member.id, 50000, "demo-reseller-topup", memo="demo")
    key, secret = issue_key(main.id, member.id, instance.secret_key, label="demo")
    yield f"reseller member: {DEMO_RESELLER} / password: {password}, wallet ¥500.00  (shown once)"
    yield f"reseller API key: {key.app_key} / secret: {secret}  (shown once; docs at /api/docs)"


def _fake_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4))
