"""Risk control (kamengsite/risk.py): per-site settings, blacklists, held orders, devices, sign-ups, gates."""
import datetime

from peewee import (BigIntegerField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model,
                    MySQLDatabase, TextField)


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Order(Model):
        class Meta:
            database = db
            table_name = "shop_order"

    class RiskSetting(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", unique=True)
        data = TextField(default="")
        updated_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "risk_setting"

    class RiskBlock(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        kind = CharField(max_length=16)
        value = CharField(max_length=120)
        note = CharField(max_length=200, default="")
        created_by = CharField(max_length=64, default="")
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "risk_block"
            indexes = ((("site", "kind", "value"), True),)

    class RiskHold(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        order = ForeignKeyField(Order, on_delete="CASCADE", unique=True)
        rule = CharField(max_length=64)
        detail = TextField(default="")
        amount_fen = BigIntegerField(default=0)
        decision = CharField(max_length=16, default="")
        decided_by = CharField(max_length=64, default="")
        decided_at = DateTimeField(null=True)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "risk_hold"
            indexes = ((("site", "decision", "created_at"), False),)

    class RiskDevice(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        order = ForeignKeyField(Order, on_delete="CASCADE", unique=True)
        device = CharField(max_length=64)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "risk_device"
            indexes = ((("site", "device", "created_at"), False),)

    class RiskSignup(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        ip = CharField(max_length=45)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "risk_signup"
            indexes = ((("site", "ip", "created_at"), False),)

    class RiskGate(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        slot = IntegerField()
        hits = BigIntegerField(default=0)

        class Meta:
            database = db
            table_name = "risk_gate"
            indexes = ((("site", "slot"), True),)

    db.create_tables([RiskSetting, RiskBlock, RiskHold, RiskDevice, RiskSignup, RiskGate])
    # The velocity rules count a site's recent orders by buyer IP and by contact.
    db.execute_sql("CREATE INDEX shop_order_risk_ip ON shop_order (site_id, buyer_ip, created_at)")
    db.execute_sql("CREATE INDEX shop_order_risk_contact ON shop_order (site_id, contact, created_at)")


def down(migrator, db):
    for index in ("shop_order_risk_ip", "shop_order_risk_contact"):
        suffix = " ON shop_order" if isinstance(db, MySQLDatabase) else ""
        db.execute_sql(f"DROP INDEX {index}{suffix}")
    for table in ("risk_gate", "risk_signup", "risk_device", "risk_hold", "risk_block", "risk_setting"):
        db.execute_sql(f"DROP TABLE {table}")
