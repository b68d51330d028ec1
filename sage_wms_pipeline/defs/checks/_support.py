"""Shared plumbing of the asset checks: reading tables, and turning a `Finding` into a result."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from sage_wms_pipeline.domain.checks import Finding
from sage_wms_pipeline.domain.units import QTY_SCALE

# How many record names go into metadata for the alert sensors to quote.
RECORDS_IN_METADATA = 50


def read_table(engine: sa.Engine, table: sa.Table, where: Any = None) -> pd.DataFrame:
    """The table as a DataFrame: timestamps as UTC-aware, NUMERIC kept Decimal, empty if absent."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(table.name):
            return pd.DataFrame(columns=[c.name for c in table.columns])
        query = sa.select(table)
        if where is not None:
            query = query.where(where)
        result = conn.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for column in table.columns:
        if isinstance(column.type, sa.DateTime) and column.name in frame.columns:
            # SQLite hands back naive datetimes; everything stored is UTC.
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True)
    return frame


def to_e5(values: Iterable[Any]) -> pd.Series:
    """Decimal amounts (NUMERIC columns) -> int × 10^5, exactly; None counts as 0."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            out.append(0)
            continue
        scaled = Decimal(str(v)) * QTY_SCALE
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{v} has more than 5 decimal places")
        out.append(int(scaled))
    return pd.Series(out, dtype="int64")


def result_from(finding: Finding, extra: dict[str, Any] | None = None) -> dg.AssetCheckResult:
    """Figures as numeric metadata (plotted over time), the summary, and the rows at fault as markdown."""
    metadata: dict[str, Any] = {"summary": finding.summary}
    for key, value in finding.figures.items():
        metadata[key] = value
    if not finding.rows.empty:
        metadata["rows_at_fault"] = dg.MetadataValue.md(finding.rows_markdown())
    if finding.records:
        shown = list(finding.records[:RECORDS_IN_METADATA])
        metadata["records"] = dg.MetadataValue.json(shown)
        metadata["records_at_fault"] = len(finding.records)
    metadata.update(extra or {})
    return dg.AssetCheckResult(
        passed=finding.passed,
        severity=dg.AssetCheckSeverity(finding.severity),
        description=finding.summary,
        metadata=metadata,
    )
