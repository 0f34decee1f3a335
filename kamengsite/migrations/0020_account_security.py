"""Console account security: TOTP state, recovery codes, login failures, console sessions."""
import datetime

from peewee import (BigIntegerField, BlobField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model)


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Account(Model):
        class Meta:
            database = db
            table_name = "account"

    class AccountTotp(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        account = ForeignKeyField(Account, on_delete="CASCADE", unique=True)
        secret = BlobField()
        enabled_at = DateTimeField(null=True)
        last_step = BigIntegerField(default=0)

        class Meta:
            database = db
            table_name = "account_totp"

    class RecoveryCode(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        account = ForeignKeyField(Account, on_delete="CASCADE", index=True)
        digest = CharField(max_length=64)
        used_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "account_recovery_code"

    class LoginFailure(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        subject = CharField(max_length=80)
        failures = IntegerField(default=0)
        locked_until = DateTimeField(null=True)
        last_failed_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "login_failure"
            indexes = ((("site", "subject"), True),)

    class ConsoleSession(Model):
        id = CharField(max_length=64, primary_key=True)
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        account = ForeignKeyField(Account, on_delete="CASCADE", index=True)
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        last_seen_at = DateTimeField(default=datetime.datetime.utcnow)
        ip = CharField(max_length=64, default="")
        user_agent = CharField(max_length=255, default="")

        class Meta:
            database = db
            table_name = "console_session"

    db.create_tables([AccountTotp, RecoveryCode, LoginFailure, ConsoleSession])


def down(migrator, db):
    for table in ("console_session", "login_failure", "account_recovery_code", "account_totp"):
        db.execute_sql(f"DROP TABLE {table}")
