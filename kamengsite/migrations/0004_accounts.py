"""Console accounts: one site's operators (username unique per site)."""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Account(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        username = CharField(max_length=32)
        password_hash = CharField(max_length=255)
        role = CharField(max_length=16, default="operator")
        session_version = IntegerField(default=1)
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        last_login_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "account"
            indexes = ((("site", "username"), True),)

    db.create_tables([Account])


def down(migrator, db):
    db.execute_sql("DROP TABLE account")
