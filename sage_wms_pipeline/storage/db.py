"""The pipeline's database: whole-table snapshots written atomically, and the despatch outbox.

``Database(url)`` takes any SQLAlchemy URL; PostgreSQL first, SQLite for the demo (the default,
``data/runtime/pipeline.sqlite``, or ``SAGE_WMS_DATABASE_URL``). On SQLite the file runs in WAL
mode so a reader keeps seeing the previous table while a writer replaces it, and writes start
with ``BEGIN IMMEDIATE`` so two writers queue instead of deadlocking.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pandera.errors
import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.domain import outbox as ob
from sage_wms_pipeline.domain.manifests import ManifestPlan
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.settings import runtime_dir
from sage_wms_pipeline.storage import migrations, schemas, tables

DATABASE_URL_ENV = "SAGE_WMS_DATABASE_URL"
Row = dict[str, Any]


class StorageError(ValueError):
    """Refused write: names the table, and the column or record where it can."""


def default_url() -> str:
    return os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{runtime_dir() / 'pipeline.sqlite'}"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("naive datetime refused; pass a timezone-aware UTC time")
    return now.astimezone(UTC)


class Database:
    def __init__(self, url: str | None = None, *, schema: str | None = None, echo: bool = False) -> None:
        self.url = url or default_url()
        self.schema = schema
        sa_url = sa.make_url(self.url)
        self.dialect = sa_url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(sa_url, **kwargs)
        if self.dialect == "sqlite":
            self._sqlite_setup()
        elif schema is not None:
            self._search_path(schema)

    # --- connections --------------------------------------------------------------------
    def _sqlite_setup(self) -> None:
        @sa.event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy's begin event issues BEGIN itself
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @sa.event.listens_for(self.engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def _search_path(self, schema: str) -> None:
        @sa.event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction (BEGIN IMMEDIATE on SQLite); commits on success."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def migrate(self) -> list[int]:
        with self.write() as conn:
            return migrations.migrate(conn)

    def dispose(self) -> None:
        self.engine.dispose()

    # --- whole tables -------------------------------------------------------------------
    def _table(self, name: str) -> sa.Table:
        try:
            return tables.metadata.tables[name]
        except KeyError:
            raise StorageError(f"replace_table: no table named {name!r}") from None

    def _checked(self, name: str, df: pd.DataFrame, table: sa.Table) -> pd.DataFrame:
        model = schemas.TABLE_SCHEMAS.get(name)
        if model is not None:
            try:
                return model.validate(df, lazy=True)
            except pandera.errors.SchemaErrors as exc:
                cases = exc.failure_cases.head(5)
                detail = "; ".join(
                    f"column {r.column!r}: {r.check} (row {r.index}, value {r.failure_case!r})"
                    for r in cases.itertuples()
                )
                raise StorageError(f"{name}: frame refused, nothing written: {detail}") from None
        cols = tables.frame_columns(table)
        missing = [c for c in cols if c not in df.columns]
        extra = [c for c in df.columns if c not in cols]
        if missing or extra:
            raise StorageError(
                f"{name}: frame refused, nothing written: missing columns {missing}, "
                f"unexpected columns {extra}"
            )
        for c in table.columns:
            if not c.nullable and df[c.name].isna().any():
                row = int(np.flatnonzero(df[c.name].isna().to_numpy())[0])
                raise StorageError(
                    f"{name}: frame refused, nothing written: column {c.name!r} is null at row {row}"
                )
        return df[cols]

    def replace_table(self, name: str, df: pd.DataFrame) -> int:
        """Validate, then replace the whole table in one transaction; returns rows written."""
        table = self._table(name)
        df = self._checked(name, df, table)
        columns = tables.frame_columns(table)
        # Timestamp columns are converted in bulk here; everything else goes through the column type.
        ready = {c for c in columns if _is_datetime64(df[c])}
        data = [
            _timestamps(df[c], as_sqlite_text=self.dialect == "sqlite")
            if c in ready
            else _python_values(df[c])
            for c in columns
        ]
        try:
            with self.write() as conn:
                conn.execute(table.delete())
                if len(df):
                    if self.dialect == "postgresql":
                        self._copy_rows(conn, table, columns, data, ready)
                    else:
                        self._insert_rows(conn, table, columns, data, ready)
        except (sa.exc.DBAPIError, psycopg.Error) as exc:
            first_line = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StorageError(f"{name}: write failed, previous table kept: {first_line}") from exc
        return len(df)

    def _insert_rows(
        self, conn: sa.Connection, table: sa.Table, cols: list[str], data: list[list[Any]], ready: set[str]
    ) -> None:
        dialect = conn.dialect
        for i, c in enumerate(cols):
            if c in ready:
                continue
            proc = table.c[c].type.bind_processor(dialect)
            if proc is not None:
                data[i] = [proc(v) for v in data[i]]
        prep = dialect.identifier_preparer
        sql = (
            f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)})"
        )
        rows = list(zip(*data, strict=True))
        for start in range(0, len(rows), 50_000):
            conn.exec_driver_sql(sql, rows[start : start + 50_000])

    def _copy_rows(
        self, conn: sa.Connection, table: sa.Table, cols: list[str], data: list[list[Any]], ready: set[str]
    ) -> None:
        for i, c in enumerate(cols):
            t = table.c[c].type
            if isinstance(t, sa.types.TypeDecorator) and c not in ready:
                data[i] = [t.process_bind_param(v, conn.dialect) for v in data[i]]
        prep = conn.dialect.identifier_preparer
        sql = f"COPY {prep.format_table(table)} ({', '.join(prep.quote(c) for c in cols)}) FROM STDIN"
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[union-attr]
            for row in zip(*data, strict=True):
                copy.write_row(row)

    def read_table(self, name: str) -> pd.DataFrame:
        """A whole table as a frame (derived tables come back in their schema's dtypes)."""
        table = self._table(name)
        with self.read() as conn:
            rows = conn.execute(sa.select(table)).all()
        df = pd.DataFrame(rows, columns=tables.frame_columns(table))
        model = schemas.TABLE_SCHEMAS.get(name)
        if model is None:
            return df
        for col, spec in model.to_schema().columns.items():
            text = str(spec.dtype)
            if text.startswith("datetime64"):
                df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ns, UTC]")
            elif text == "Int64":
                df[col] = df[col].astype("Int64")
            elif text == "int64":
                df[col] = df[col].astype(np.int64)
            elif text == "bool":
                df[col] = df[col].astype(bool)
        return df

    # --- cursors and quarantine ----------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        with self.read() as conn:
            return conn.execute(
                sa.select(tables.ingest_cursors.c.value).where(tables.ingest_cursors.c.name == name)
            ).scalar()

    def set_cursor(self, name: str, value: str, *, now: datetime | None = None) -> None:
        row = {"name": name, "value": value, "updated_at": _now(now)}
        with self.write() as conn:
            ins = self._insert(conn, tables.ingest_cursors).values(row)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
                )
            )

    def quarantine(
        self,
        source: str,
        reason: str,
        raw: Any,
        *,
        record_key: str | None = None,
        now: datetime | None = None,
    ) -> None:
        with self.write() as conn:
            conn.execute(
                tables.wms_quarantine.insert().values(
                    source=source,
                    record_key=record_key,
                    reason=reason,
                    raw=raw if isinstance(raw, str) else jsonutil.dumps(raw),
                    received_at=_now(now),
                )
            )

    def _insert(self, conn: sa.Connection, table: sa.Table) -> Any:
        return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)

    # --- sync exceptions -----------------------------------------------------------------
    def record_exception(
        self,
        kind: str,
        record: str,
        context: Mapping[str, Any],
        owner: str,
        *,
        now: datetime | None = None,
        conn: sa.Connection | None = None,
    ) -> None:
        """One row per (kind, record): first_seen kept, last_seen and context refreshed, reopened."""
        if owner not in ("finance", "operations"):
            raise StorageError(f"sync_exceptions: owner: {owner!r} is not finance or operations")
        t = _now(now)
        if conn is None:
            with self.write() as c:
                self.record_exception(kind, record, context, owner, now=t, conn=c)
            return
        ins = self._insert(conn, tables.sync_exceptions).values(
            kind=kind,
            record=record,
            context=jsonutil.dumps(dict(context)),
            owner=owner,
            first_seen=t,
            last_seen=t,
            resolved=False,
            resolved_at=None,
        )
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=["kind", "record"],
                set_={
                    "context": ins.excluded.context,
                    "owner": ins.excluded.owner,
                    "last_seen": ins.excluded.last_seen,
                    "resolved": False,
                    "resolved_at": None,
                },
            )
        )

    def resolve_exceptions(self, kind: str, still_open: Iterable[str], *, now: datetime | None = None) -> int:
        """Mark resolved every open exception of ``kind`` whose record is not in ``still_open``."""
        keep = list(still_open)
        t = tables.sync_exceptions
        stmt = t.update().where(t.c.kind == kind, t.c.resolved.is_(False))
        if keep:
            stmt = stmt.where(t.c.record.not_in(keep))
        with self.write() as conn:
            return conn.execute(stmt.values(resolved=True, resolved_at=_now(now))).rowcount

    def exceptions(self, *, open_only: bool = True) -> list[Row]:
        t = tables.sync_exceptions
        stmt = sa.select(t).order_by(t.c.id)
        if open_only:
            stmt = stmt.where(t.c.resolved.is_(False))
        with self.read() as conn:
            return [_with_context(r._asdict()) for r in conn.execute(stmt)]

    # --- manifests -----------------------------------------------------------------------
    def save_manifest_plan(self, plan: ManifestPlan, *, now: datetime | None = None) -> list[str]:
        """Store the manifests (insert-if-absent by order number) and excluded lines; returns new numbers."""
        t = _now(now)
        created = []
        with self.write() as conn:
            for m in plan.manifests:
                ins = (
                    self._insert(conn, tables.order_manifests)
                    .values(
                        order_number=m.order_number,
                        sage_order_id=m.sage_order_id,
                        sage_document_no=m.sage_document_no,
                        part=m.part,
                        warehouse=m.warehouse,
                        wms_warehouse_id=m.wms_warehouse_id,
                        total=m.total,
                        lines=jsonutil.dumps([line.model_dump() for line in m.lines]),
                        created_at=t,
                    )
                    .on_conflict_do_nothing(index_elements=["order_number"])
                )
                if conn.execute(ins.returning(tables.order_manifests.c.order_number)).first():
                    created.append(m.order_number)
            for e in plan.excluded:
                conn.execute(
                    self._insert(conn, tables.order_manifest_excluded)
                    .values(
                        sage_order_id=e.sage_order_id,
                        sage_line_id=e.sage_line_id,
                        sage_document_no=e.sage_document_no,
                        line_type=e.line_type,
                        code=e.code,
                        description=e.description[:200],
                        reason=e.reason,
                        line_total=e.line_total,
                    )
                    .on_conflict_do_nothing(index_elements=["sage_order_id", "sage_line_id"])
                )
        return created

    def mark_manifest_sent(
        self, order_number: str, wms_order_id: int, *, now: datetime | None = None
    ) -> bool:
        t = tables.order_manifests
        with self.write() as conn:
            return (
                conn.execute(
                    t.update()
                    .where(t.c.order_number == order_number, t.c.sent_at.is_(None))
                    .values(wms_order_id=wms_order_id, sent_at=_now(now))
                ).rowcount
                == 1
            )

    # --- despatch outbox -----------------------------------------------------------------
    def outbox_add(self, postings: Iterable[Mapping[str, Any]], *, now: datetime | None = None) -> list[str]:
        """Insert each posting unless its dedupe_key exists; returns the keys actually added.

        A posting maps: dedupe_key, order_id, document_no, line_id, sku, warehouse, quantity
        (Decimal, Sage units) and optionally source (the WMS line, any JSON-able mapping).
        """
        t = _now(now)
        added: list[str] = []
        out = tables.despatch_outbox
        with self.write() as conn:
            for i, p in enumerate(postings):
                try:
                    qty = p["quantity"]
                    if isinstance(qty, float) or Decimal(qty) <= 0:
                        raise ValueError(f"quantity {qty!r} must be a positive Decimal")
                    values = {
                        "dedupe_key": str(p["dedupe_key"]),
                        "order_id": int(p["order_id"]),
                        "document_no": str(p["document_no"]),
                        "line_id": int(p["line_id"]),
                        "sku": str(p["sku"]),
                        "warehouse": str(p["warehouse"]),
                        "quantity": Decimal(qty),
                        "source": jsonutil.dumps(p.get("source", {})),
                    }
                except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
                    raise StorageError(
                        f"despatch_outbox: posting {i} ({p.get('dedupe_key', '?')}): {exc}; nothing added"
                    ) from None
                ins = (
                    self._insert(conn, out)
                    .values(
                        **values, state="pending", attempts=0, created_at=t, updated_at=t, next_attempt_at=t
                    )
                    .on_conflict_do_nothing(index_elements=["dedupe_key"])
                )
                if conn.execute(ins.returning(out.c.dedupe_key)).first() is not None:
                    added.append(values["dedupe_key"])
        return added

    def outbox_claim(
        self,
        worker: str,
        *,
        limit: int = 50,
        lease: timedelta | None = None,
        policy: Policy | None = None,
        now: datetime | None = None,
    ) -> list[Row]:
        """Claim up to ``limit`` due rows for ``worker``: pending/deferred and due, or posting with
        an expired lease (its worker died). Each claimed row gets a fresh claim_token.

        The lease is ``lease``, else the policy's ``outbox.lease_seconds``, else 300 s."""
        t = _now(now)
        if lease is None:
            lease = timedelta(seconds=policy.outbox.lease_seconds if policy is not None else 300)
        out = tables.despatch_outbox
        due = sa.or_(
            sa.and_(out.c.state.in_(ob.CLAIMABLE), out.c.next_attempt_at <= t),
            sa.and_(out.c.state == "posting", out.c.lease_expires_at <= t),
        )
        token = uuid.uuid4().hex
        pick = sa.select(out.c.id).where(due).order_by(out.c.next_attempt_at, out.c.id).limit(limit)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            out.update()
            # The due predicate again: on SQLite the statement is atomic, on PostgreSQL belt and braces.
            .where(out.c.id.in_(pick.scalar_subquery()), due)
            .values(
                state="posting",
                claimed_by=worker,
                claim_token=token,
                lease_expires_at=t + lease,
                attempts=out.c.attempts + 1,
                updated_at=t,
            )
            .returning(*out.c)
        )
        with self.write() as conn:
            rows = [r._asdict() for r in conn.execute(stmt)]
        return sorted(rows, key=lambda r: r["id"])

    def outbox_mark_posted(self, dedupe_key: str, *, now: datetime | None = None) -> bool:
        """posted, whoever holds the claim (Sage has the despatch). A second call is a no-op: False."""
        out = tables.despatch_outbox
        t = _now(now)
        with self.write() as conn:
            return (
                conn.execute(
                    out.update()
                    .where(out.c.dedupe_key == dedupe_key, out.c.state != "posted")
                    .values(
                        state="posted",
                        posted_at=t,
                        updated_at=t,
                        claim_token=None,
                        lease_expires_at=None,
                        next_attempt_at=None,
                        last_error=None,
                    )
                ).rowcount
                == 1
            )

    def outbox_fail(
        self,
        dedupe_key: str,
        claim_token: str,
        kind: ob.FailureKind,
        error: str,
        policy: Policy,
        *,
        now: datetime | None = None,
        jitter_key: str | None = None,
    ) -> ob.Decision | None:
        """Record a failed post by the claim holder: deferred with backoff, or stuck (then also a
        sync exception). None when the claim is no longer held (lease lost or already posted).

        Rows failed together with one `jitter_key` (their order) come due together again."""
        out = tables.despatch_outbox
        t = _now(now)
        with self.write() as conn:
            row = conn.execute(
                sa.select(out).where(
                    out.c.dedupe_key == dedupe_key, out.c.claim_token == claim_token, out.c.state == "posting"
                )
            ).first()
            if row is None:
                return None
            r = row._asdict()
            decision = ob.after_failure(
                kind,
                attempts=r["attempts"],
                created_at=r["created_at"],
                now=t,
                policy=policy,
                error=error,
                key=jitter_key or dedupe_key,
            )
            conn.execute(
                out.update()
                .where(out.c.id == r["id"], out.c.claim_token == claim_token)
                .values(
                    state=decision.state,
                    next_attempt_at=decision.next_attempt_at,
                    last_error=decision.reason,
                    claim_token=None,
                    lease_expires_at=None,
                    updated_at=t,
                )
            )
            if decision.state == "stuck":
                self.record_exception(
                    "despatch_stuck",
                    dedupe_key,
                    {
                        "document_no": r["document_no"],
                        "line_id": r["line_id"],
                        "sku": r["sku"],
                        "warehouse": r["warehouse"],
                        "quantity": r["quantity"],
                        "attempts": r["attempts"],
                        "error": decision.reason,
                    },
                    "finance" if kind == "refused" else "operations",
                    now=t,
                    conn=conn,
                )
        return decision

    def outbox_retry(self, dedupe_key: str, *, now: datetime | None = None) -> bool:
        """stuck -> pending, due now (after the cause has been fixed by hand)."""
        out = tables.despatch_outbox
        t = _now(now)
        with self.write() as conn:
            return (
                conn.execute(
                    out.update()
                    .where(out.c.dedupe_key == dedupe_key, out.c.state == "stuck")
                    .values(state="pending", next_attempt_at=t, updated_at=t)
                ).rowcount
                == 1
            )

    def outbox_next_due(self) -> datetime | None:
        """When the earliest deferred row is due again (None when nothing is deferred)."""
        out = tables.despatch_outbox
        stmt = sa.select(sa.func.min(out.c.next_attempt_at)).where(out.c.state == "deferred")
        with self.read() as conn:
            due = conn.execute(stmt).scalar()
        return None if due is None else _now(due)

    def outbox_rows(self, *, state: str | None = None) -> list[Row]:
        out = tables.despatch_outbox
        stmt = sa.select(out).order_by(out.c.id)
        if state is not None:
            stmt = stmt.where(out.c.state == state)
        with self.read() as conn:
            return [r._asdict() for r in conn.execute(stmt)]


def _with_context(row: Row) -> Row:
    row["context"] = jsonutil.loads(row["context"])
    return row


def _is_datetime64(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.DatetimeTZDtype) or str(s.dtype).startswith("datetime64")


def _timestamps(s: pd.Series, *, as_sqlite_text: bool) -> list[Any]:
    """A datetime64 column as UTC values ready for the driver: SQLAlchemy's SQLite text form
    (naive UTC, microseconds) or aware datetimes for PostgreSQL. Naive timestamps are refused."""
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        raise StorageError(f"column {s.name!r}: naive timestamps refused; use timezone-aware UTC")
    utc = s.dt.tz_convert("UTC")
    missing = utc.isna().to_numpy()
    if as_sqlite_text:
        values = utc.dt.strftime("%Y-%m-%d %H:%M:%S.%f").to_numpy(dtype=object)
    else:
        values = np.asarray(pd.DatetimeIndex(utc).to_pydatetime(), dtype=object)
    values[missing] = None
    return values.tolist()


def _python_values(s: pd.Series) -> list[Any]:
    """A column as plain Python values (int, bool, str, Decimal, datetime, None), no numpy types."""
    if isinstance(s.dtype, pd.DatetimeTZDtype) or str(s.dtype).startswith("datetime64"):
        return [None if pd.isna(v) else v.to_pydatetime() for v in s]
    if s.dtype == np.int64 or s.dtype == bool:
        return s.tolist()
    if str(s.dtype) == "Int64":
        return [None if v is pd.NA else int(v) for v in s.astype(object)]
    return [None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else v for v in s]
