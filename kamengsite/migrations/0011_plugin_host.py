"""The plugin host's columns and tables: order discounts and held delivery, and plugin failures.

``shop_order.discount_fen``: money plugins took off the order's goods (coupons, 满减);
``shop_order.hold``: the plugin that delivers this order itself (a group-buy delivers when
its group fills). ``plugin_error``: the last failure of each (plugin, hook), shown by
``kamengsite plugins list`` and the operator's console.
"""
import datetime

from peewee import BigIntegerField, CharField, DateTimeField, IntegerField, Model, TextField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("shop_order", "discount_fen", BigIntegerField(default=0)),
        migrator.add_column("shop_order", "hold", CharField(max_length=32, default="")),
    )

    class PluginError(Model):
        plugin = CharField(max_length=64)
        hook = CharField(max_length=64)
        site_id = IntegerField(null=True)
        message = TextField(default="")
        count = IntegerField(default=1)
        first_at = DateTimeField(default=datetime.datetime.utcnow)
        last_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "plugin_error"
            indexes = ((("plugin", "hook"), True),)

    db.create_tables([PluginError])


def down(migrator, db):
    db.execute_sql("DROP TABLE plugin_error")
    migrator.migrate(
        migrator.drop_column("shop_order", "hold"),
        migrator.drop_column("shop_order", "discount_fen"),
    )
