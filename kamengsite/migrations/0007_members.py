"""Site members: each site's own buyers with accounts (email unique per site)."""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Member(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        email = CharField(max_length=254)  # normalised to lower case
        display_name = CharField(max_length=32, default="")
        password_hash = CharField(max_length=255)
        status = CharField(max_length=16, default="active")  # active | disabled
        session_version = IntegerField(default=1)
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        last_login_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "member"
            indexes = ((("site", "email"), True),)

    db.create_tables([Member])


def down(migrator, db):
    db.execute_sql("DROP TABLE member")
