"""Long console operations run by the worker, with their progress (card-key imports, order exports)."""
import datetime

from peewee import BigIntegerField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class ConsoleJob(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        kind = CharField(max_length=24)
        status = CharField(max_length=12, default="queued")
        done = BigIntegerField(default=0)
        total = BigIntegerField(default=0)
        params = TextField(default="{}")
        result = TextField(default="")
        error = CharField(max_length=255, default="")
        account_id = IntegerField(null=True)
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        started_at = DateTimeField(null=True)
        finished_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "console_job"

    db.create_tables([ConsoleJob])


def down(migrator, db):
    db.execute_sql("DROP TABLE console_job")
