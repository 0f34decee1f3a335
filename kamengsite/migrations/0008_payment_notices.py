"""Refused gateway notifications (and those acknowledged without a payment), platform-wide."""
import datetime

from peewee import CharField, DateTimeField, Model


def up(migrator, db):
    class PaymentNotice(Model):
        channel = CharField(max_length=32)
        profile = CharField(max_length=32)
        order_no = CharField(max_length=64, default="")
        outcome = CharField(max_length=16)  # rejected | acknowledged
        reason = CharField(max_length=255, default="")
        remote_ip = CharField(max_length=45, default="")
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "payment_notice"
            indexes = ((("channel", "id"), False),)  # the operator's filter, newest first

    db.create_tables([PaymentNotice])


def down(migrator, db):
    db.execute_sql("DROP TABLE payment_notice")
