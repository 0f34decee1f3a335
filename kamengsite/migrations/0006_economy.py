"""Sub-site economy: levels and their tier prices, owners' price rules, each site's level and
term, the price chain and fee frozen into every order, refunds, withdrawals, and channel ledger accounts."""
import datetime

from peewee import (BigIntegerField, BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model,
                    TextField)


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Base(Model):
        class Meta:
            database = db

    class Site(Base):
        class Meta:
            table_name = "site"

    class Sku(Base):
        class Meta:
            table_name = "sku"

    class Order(Base):
        class Meta:
            table_name = "shop_order"

    class SiteLevel(Base):
        code = CharField(max_length=32, unique=True)
        name = CharField(max_length=32)
        sort = IntegerField(default=0)
        cost_percent_bp = IntegerField(default=0)
        cost_fixed_fen = BigIntegerField(default=0)
        max_child_markup_bp = IntegerField(default=0)
        may_bind_domain = BooleanField(default=False)
        may_open_children = BooleanField(default=False)
        may_list_own_goods = BooleanField(default=False)
        own_goods_commission_bp = IntegerField(default=0)
        opening_fee_fen = BigIntegerField(default=0)
        renewal_fee_fen = BigIntegerField(default=0)
        term_days = IntegerField(default=0)
        self_service = BooleanField(default=False)
        freeze_days = IntegerField(default=7)
        withdraw_min_fen = BigIntegerField(default=10000)
        withdraw_fee_bp = IntegerField(default=0)
        created_at = DateTimeField(default=now)

        class Meta:
            table_name = "site_level"

    class LevelPrice(Base):
        level = ForeignKeyField(SiteLevel, on_delete="CASCADE")
        sku = ForeignKeyField(Sku, on_delete="CASCADE")
        price_fen = BigIntegerField()

        class Meta:
            table_name = "level_price"
            indexes = ((("level", "sku"), True),)

    class PriceRule(Base):
        site = ForeignKeyField(Site, on_delete="CASCADE")
        scope = CharField(max_length=12)  # all | category | product | children
        target_id = IntegerField(default=0)  # category or product id; 0 for all / children
        markup_percent_bp = IntegerField(default=0)
        markup_fixed_fen = BigIntegerField(default=0)
        rounding = CharField(max_length=8, default="none")
        hidden = BooleanField(default=False)
        rename = CharField(max_length=120, default="")
        updated_at = DateTimeField(default=now)

        class Meta:
            table_name = "price_rule"
            indexes = ((("site", "scope", "target_id"), True),)

    class Refund(Base):
        site = ForeignKeyField(Site, on_delete="RESTRICT")
        order = ForeignKeyField(Order, unique=True, on_delete="RESTRICT")
        refund_no = CharField(max_length=40, unique=True)
        amount_fen = BigIntegerField()
        destination = CharField(max_length=12)  # channel | balance | manual
        status = CharField(max_length=12, default="pending")  # pending | done | failed
        gateway_refund_no = CharField(max_length=64, default="")
        reason = TextField(default="")
        message = TextField(default="")
        created_at = DateTimeField(default=now)
        done_at = DateTimeField(null=True)

        class Meta:
            table_name = "refund"

    class Withdrawal(Base):
        site = ForeignKeyField(Site, on_delete="RESTRICT")
        amount_fen = BigIntegerField()
        fee_fen = BigIntegerField(default=0)
        status = CharField(max_length=12, default="requested")  # requested | approved | paid | rejected
        payee = TextField(default="")
        note = TextField(default="")
        requested_at = DateTimeField(default=now)
        decided_at = DateTimeField(null=True)
        paid_at = DateTimeField(null=True)

        class Meta:
            table_name = "withdrawal"
            indexes = ((("site", "status"), False),)

    db.create_tables([SiteLevel, LevelPrice, PriceRule, Refund, Withdrawal])
    migrator.migrate(
        migrator.add_column("site", "level", CharField(max_length=32, default="")),
        migrator.add_column("site", "settlement", CharField(max_length=16, default="platform")),
        migrator.add_column("site", "expires_at", DateTimeField(null=True)),
        migrator.add_column("shop_order", "goods_fen", BigIntegerField(default=0)),
        migrator.add_column("shop_order", "fee_fen", BigIntegerField(default=0)),
        migrator.add_column("shop_order", "fee_bearer", CharField(max_length=8, default="")),
        migrator.add_column("shop_order", "cost_chain", TextField(default="")),
        migrator.add_column("ledger_account", "channel", CharField(max_length=32, default="")),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_column("ledger_account", "channel"),
        *(migrator.drop_column("shop_order", c) for c in ("cost_chain", "fee_bearer", "fee_fen", "goods_fen")),
        *(migrator.drop_column("site", c) for c in ("expires_at", "settlement", "level")),
    )
    for table in ("withdrawal", "refund", "price_rule", "level_price", "site_level"):
        db.execute_sql(f"DROP TABLE {table}")
