"""The audit log (``kamengsite/audit.py``): one row per console write, sign-in and card-key reveal.

``account_id`` is a plain integer and ``username`` a copy, so an entry still says who acted after
the account is deleted. Entries are never deleted by the application (see docs/audit.md). The three
indexes serve the console's filters: a site's newest entries, by action prefix, by account.
"""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class AuditEntry(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        account_id = IntegerField(null=True)
        username = CharField(max_length=64, default="")
        action = CharField(max_length=64)
        target = CharField(max_length=120, default="")
        details = TextField(default="")
        ip = CharField(max_length=45, default="")
        user_agent = CharField(max_length=255, default="")
        status = IntegerField(default=0)
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "audit_entry"
            indexes = ((("site", "created_at"), False), (("site", "action", "created_at"), False),
                       (("site", "account_id", "created_at"), False))

    db.create_tables([AuditEntry])


def down(migrator, db):
    db.execute_sql("DROP TABLE audit_entry")
