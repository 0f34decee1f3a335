"""Admin notices (low stock, undeliverable mail, …), one site's each."""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, Model, TextField


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Notice(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE")
        kind = CharField(max_length=32)
        title = CharField(max_length=200)
        body = TextField(default="")
        ref = CharField(max_length=64, default="")
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        read_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "notice"
            indexes = ((("site", "read_at", "id"), False),)

    db.create_tables([Notice])


def down(migrator, db):
    db.execute_sql("DROP TABLE notice")
