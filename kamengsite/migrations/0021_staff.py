"""Staff accounts: per-area permissions, and an e-mail address for password resets."""
from peewee import CharField, TextField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("account", "permissions", TextField(default="")),
        migrator.add_column("account", "email", CharField(max_length=254, default="")),
    )


def down(migrator, db):
    migrator.migrate(migrator.drop_column("account", "email"), migrator.drop_column("account", "permissions"))
