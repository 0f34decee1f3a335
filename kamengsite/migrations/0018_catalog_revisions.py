"""Revision counters for the storefront's page cache (``kamengsite/pagecache.py``).

``rev`` on every row a listing page is built from: each update adds 1 in the same statement,
so a change never takes a lock the write did not already hold (no hot counter row across
SKUs). ``catalog_epoch``: one row counting deletes of those rows (admin actions only, never
an order). The page cache's stamp is the sums of ``rev`` and that count, in one query; the two
indexes let it sum a catalogue's products and SKUs from the indexes alone. ``id`` comes before
``rev`` in both: an update moves ``rev``, and a scan of one product's SKUs (or one site's products)
on an index ordered by ``rev`` would meet the row it just updated again, without end (SQLite).
"""
from peewee import IntegerField, Model

REVISED = ("product", "sku", "category", "price_rule", "site_level", "level_price")


def up(migrator, db):
    class CatalogEpoch(Model):
        deletes = IntegerField(default=0)

        class Meta:
            database = db
            table_name = "catalog_epoch"

    migrator.migrate(*(migrator.add_column(table, "rev", IntegerField(default=1)) for table in REVISED),
                     migrator.add_index("product", ("site_id", "id", "rev")),
                     migrator.add_index("sku", ("product_id", "id", "rev")))
    db.create_tables([CatalogEpoch])
    CatalogEpoch.create(id=1, deletes=0)


def down(migrator, db):
    db.execute_sql("DROP TABLE catalog_epoch")
    migrator.migrate(migrator.drop_index("sku", "sku_product_id_id_rev"),
                     migrator.drop_index("product", "product_site_id_id_rev"),
                     *(migrator.drop_column(table, "rev") for table in REVISED))
