"""Versioned schema migrations, kept deliberately simple.

A new database gets every table from ``tables.metadata`` and is stamped with the latest version.
An existing database runs, in order, each migration newer than its stamp. To change the schema:
edit ``tables.py`` (so new databases get it) AND append a ``Migration`` that brings an existing
database to the same shape. Migrations run in one transaction under a lock (an advisory lock on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two processes starting together are safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from sage_wms_pipeline.storage import tables


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _initial(conn: sa.Connection) -> None:
    tables.metadata.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial schema", _initial),)
LATEST = MIGRATIONS[-1].version
_LOCK_ID = 0x5A6E_3D01  # arbitrary, constant: this project's advisory lock


def current_version(conn: sa.Connection) -> int | None:
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    return conn.execute(sa.select(sa.func.max(tables.schema_version.c.version))).scalar()


def migrate(conn: sa.Connection) -> list[int]:
    """Bring the schema to LATEST within the caller's transaction; returns versions applied."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    now = datetime.now(UTC)
    version = current_version(conn)
    if version is None:
        tables.metadata.create_all(conn, checkfirst=True)
        conn.execute(
            tables.schema_version.insert(),
            [{"version": m.version, "description": m.description, "applied_at": now} for m in MIGRATIONS],
        )
        return [m.version for m in MIGRATIONS]
    applied = []
    for m in MIGRATIONS:
        if m.version > version:
            m.apply(conn)
            conn.execute(
                tables.schema_version.insert(),
                {"version": m.version, "description": m.description, "applied_at": now},
            )
            applied.append(m.version)
    return applied
