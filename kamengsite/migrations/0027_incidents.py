"""Operational alerts (故障预警): the incidents and the worker's heartbeat (kamengsite/incidents.py)."""
import datetime

from peewee import CharField, DateTimeField, Model, TextField


def up(migrator, db):
    class Incident(Model):
        kind = CharField(max_length=32)
        key = CharField(max_length=120)
        # "kind:key" while open, NULL once cleared: the unique index allows one open incident per (kind, key).
        open_key = CharField(max_length=160, null=True, unique=True)
        detail = TextField(default="")
        opened_at = DateTimeField(default=datetime.datetime.utcnow)
        last_seen_at = DateTimeField(default=datetime.datetime.utcnow)
        cleared_at = DateTimeField(null=True, index=True)
        notified_at = DateTimeField(null=True)
        cleared_notified_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "incident"
            indexes = ((("kind", "key"), False),)

    class Heartbeat(Model):
        name = CharField(max_length=32, unique=True)
        beat_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "heartbeat"

    db.create_tables([Incident, Heartbeat])


def down(migrator, db):
    db.execute_sql("DROP TABLE heartbeat")
    db.execute_sql("DROP TABLE incident")
