"""The recommendations plugin's table: which products each visitor of a site viewed last.

``recommend_product_view``: one row per (site, visitor, product), written anew on each view
(so the newest view has the highest id); the plugin keeps the newest 20 per visitor. ``visitor`` is ``m<member id>``
for a signed-in member or ``g<random token>`` kept in a guest's session.
"""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, Model


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Product(Model):
        class Meta:
            database = db
            table_name = "product"

    class ProductView(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        product = ForeignKeyField(Product, on_delete="CASCADE", backref="+")
        visitor = CharField(max_length=40)
        viewed_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "recommend_product_view"
            indexes = ((("site", "visitor", "product"), True),)  # one row per product a visitor viewed

    db.create_tables([ProductView])


def down(migrator, db):
    db.execute_sql("DROP TABLE recommend_product_view")
