"""Sites and their domains."""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, Model


def up(migrator, db):
    class Site(Model):
        slug = CharField(max_length=32, unique=True)
        parent = ForeignKeyField("self", null=True, on_delete="RESTRICT")
        status = CharField(max_length=16, default="active")
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "site"

    class SiteDomain(Model):
        domain = CharField(max_length=253, unique=True)
        site = ForeignKeyField(Site, on_delete="CASCADE")

        class Meta:
            database = db
            table_name = "site_domain"

    db.create_tables([Site, SiteDomain])


def down(migrator, db):
    db.execute_sql("DROP TABLE site_domain")
    db.execute_sql("DROP TABLE site")
