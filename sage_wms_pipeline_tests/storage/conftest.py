"""Database fixtures: every storage test runs against SQLite (a temp file) and PostgreSQL.

PostgreSQL: ``SAGE_WMS_TEST_POSTGRES_URL`` (default: trust auth on 127.0.0.1:5432, database
``test``). A uniquely named schema is created for the session and dropped after. When the server
is unreachable the PostgreSQL cases are skipped locally, but FAIL when ``CI`` is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from sage_wms_pipeline.storage import tables
from sage_wms_pipeline.storage.db import Database

PG_URL = os.environ.get("SAGE_WMS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class DbTarget:
    url: str
    schema: str | None = None

    def database(self) -> Database:
        return Database(self.url, schema=self.schema)


@pytest.fixture(scope="session")
def _pg_schema() -> Iterator[str]:
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        message = f"PostgreSQL unreachable at {PG_URL}: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"t_h6_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> DbTarget:
    if request.param == "sqlite":
        return DbTarget(f"sqlite:///{tmp_path / 'pipeline.sqlite'}")
    return DbTarget(PG_URL, request.getfixturevalue("_pg_schema"))


@pytest.fixture
def database(db_url: DbTarget) -> Iterator[Database]:
    db = db_url.database()
    db.migrate()
    # The PostgreSQL schema lives for the session: start each test from empty tables.
    with db.write() as conn:
        for table in reversed(tables.metadata.sorted_tables):
            if table.name != "schema_version":
                conn.execute(table.delete())
    yield db
    db.dispose()
