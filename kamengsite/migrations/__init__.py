"""Versioned schema migrations (``playhouse.migrations``): ``NNNN_name.py`` files with ``up(migrator, db)``.

Each migration declares frozen copies of the tables it creates, independent of
``kamengsite.models``, so old migrations keep meaning what they meant.
"""

from __future__ import annotations

from pathlib import Path

from playhouse.migrations import Runner

DIRECTORY = Path(__file__).parent


def runner(db) -> Runner:
    return Runner(db, directory=str(DIRECTORY), table_name="schema_migration")


def upgrade(db) -> list[str]:
    """Apply every pending migration in order; return the names applied."""
    with db.connection_context():
        return runner(db).up()


def pending(db) -> list[str]:
    with db.connection_context():
        return [m.name for m in runner(db).status() if m.path and not m.applied]
