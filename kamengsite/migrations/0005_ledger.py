"""Double-entry ledger: accounts, transactions (unique per kind and reference) and their signed entries."""
import datetime

from peewee import BigIntegerField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Base(Model):
        class Meta:
            database = db

    class Site(Base):
        class Meta:
            table_name = "site"

    class LedgerAccount(Base):
        code = CharField(max_length=64, unique=True)  # "kind:site:member": unique even where site/member are NULL
        kind = CharField(max_length=24)
        site = ForeignKeyField(Site, null=True, on_delete="RESTRICT")
        member_id = IntegerField(null=True)
        currency = CharField(max_length=3, default="CNY")
        created_at = DateTimeField(default=now)

        class Meta:
            table_name = "ledger_account"
            indexes = ((("kind", "site"), False),)

    class LedgerTxn(Base):
        kind = CharField(max_length=16)
        reference = CharField(max_length=128)
        reverses = ForeignKeyField("self", null=True, unique=True, on_delete="RESTRICT")
        memo = TextField(default="")
        created_at = DateTimeField(default=now)

        class Meta:
            table_name = "ledger_txn"
            indexes = ((("kind", "reference"), True), (("created_at",), False))

    class LedgerEntry(Base):
        txn = ForeignKeyField(LedgerTxn, on_delete="RESTRICT")
        account = ForeignKeyField(LedgerAccount, on_delete="RESTRICT")
        amount_fen = BigIntegerField()
        created_at = DateTimeField(default=now)

        class Meta:
            table_name = "ledger_entry"

    db.create_tables([LedgerAccount, LedgerTxn, LedgerEntry])


def down(migrator, db):
    for table in ("ledger_entry", "ledger_txn", "ledger_account"):
        db.execute_sql(f"DROP TABLE {table}")
