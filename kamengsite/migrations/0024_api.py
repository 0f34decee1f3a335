"""The reseller API: app keys, remembered nonces, the callers' orders (idempotency), callback deliveries;
and ``product.supplier``: the plugin whose upstream supplies a product's goods."""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


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

    class ApiKey(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member_id = IntegerField(index=True)
        app_key = CharField(max_length=32, unique=True)
        salt = CharField(max_length=64)
        label = CharField(max_length=60, default="")
        callback_url = CharField(max_length=500, default="")
        status = CharField(max_length=12, default="active")
        created_at = DateTimeField(default=now)
        last_used_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "api_key"

    class ApiNonce(Model):
        app_key = CharField(max_length=32)
        nonce = CharField(max_length=64)
        created_at = DateTimeField(default=now, index=True)

        class Meta:
            database = db
            table_name = "api_nonce"
            indexes = ((("app_key", "nonce"), True),)

    class ApiOrder(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        api_key = ForeignKeyField(ApiKey, on_delete="RESTRICT")
        out_trade_no = CharField(max_length=64)
        order = ForeignKeyField(Order, unique=True, on_delete="RESTRICT")
        callback_url = CharField(max_length=500, default="")
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "api_order"
            indexes = ((("api_key", "out_trade_no"), True),)

    class ApiCallback(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        api_key = ForeignKeyField(ApiKey, on_delete="CASCADE", index=True)
        order = ForeignKeyField(Order, on_delete="CASCADE", index=True)
        event = CharField(max_length=32)
        url = CharField(max_length=500)
        payload = TextField()
        state = CharField(max_length=12, default="pending")  # pending | delivered | failed
        attempts = IntegerField(default=0)
        last_status = IntegerField(null=True)
        last_error = TextField(default="")
        next_at = DateTimeField(null=True)
        created_at = DateTimeField(default=now)
        updated_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "api_callback"
            indexes = ((("order", "event"), True),)

    db.create_tables([ApiKey, ApiNonce, ApiOrder, ApiCallback])
    migrator.migrate(migrator.add_column("product", "supplier", CharField(max_length=32, default="")))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("product", "supplier"))
    for table in ("api_callback", "api_order", "api_nonce", "api_key"):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
