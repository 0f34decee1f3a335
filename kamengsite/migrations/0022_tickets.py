"""Buyer messages: a thread per order (ticket, ticket_message) and each site's FAQ (faq_entry)."""
import datetime

from peewee import BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Ticket(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        order_no = CharField(max_length=32, unique=True)
        status = CharField(max_length=16, default="open")
        shop_unread = BooleanField(default=True)
        buyer_unread = BooleanField(default=False)
        messages = IntegerField(default=0)
        created_at = DateTimeField(default=now)
        updated_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "ticket"
            indexes = ((("site", "status", "updated_at"), False),)

    class TicketMessage(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        ticket = ForeignKeyField(Ticket, on_delete="CASCADE", index=True)
        author = CharField(max_length=8)
        account_id = IntegerField(null=True)
        body = TextField()
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "ticket_message"

    class FaqEntry(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        question = CharField(max_length=200)
        answer = TextField()
        position = IntegerField(default=0)

        class Meta:
            database = db
            table_name = "faq_entry"

    db.create_tables([Ticket, TicketMessage, FaqEntry])


def down(migrator, db):
    for table in ("ticket_message", "ticket", "faq_entry"):
        db.execute_sql(f"DROP TABLE {table}")
