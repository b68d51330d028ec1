"""Checks on the fulfilment flow: sync illusion, stuck and orphaned records, despatch latency,
manifest totals, and the open exceptions summarised by owner (the daily sync check's digest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
import pandas as pd

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.defs.checks import sync_state
from sage_wms_pipeline.defs.checks._support import read_table, result_from, to_e5
from sage_wms_pipeline.defs.resources import ParityDatabase, PolicyResource
from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables

# Latency is measured over recent postings, so the plot shows today's performance, not history's.
LATENCY_WINDOW = timedelta(hours=24)


def _now() -> datetime:
    return datetime.now(UTC)


# -------------------------------------------------------------------------------- frame builders


def outbox_frame(db: Any) -> pd.DataFrame:
    rows = db.outbox_rows()
    frame = pd.DataFrame(rows, columns=[c.name for c in tables.despatch_outbox.columns])
    return frame.rename(columns={"document_no": "order_number"})


def exceptions_frame(db: Any) -> pd.DataFrame:
    rows = db.exceptions(open_only=True)
    return pd.DataFrame(rows, columns=[c.name for c in tables.sync_exceptions.columns])


def _source_time(source: Any) -> Any:
    """The WMS despatch time carried in an outbox row's source JSON, if any."""
    try:
        data = jsonutil.loads(source) if isinstance(source, str) else source
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("despatched_at", "event_at", "despatch_date", "occurred_at"):
        if data.get(key):
            return data[key]
    return None


def postings_frame(db: Any, now: datetime | None = None) -> tuple[pd.DataFrame, str]:
    """Rows posted in the last LATENCY_WINDOW with the WMS despatch time (from the row's source,
    else the WMS feed)."""
    out = outbox_frame(db)
    since = pd.Timestamp((now or _now()) - LATENCY_WINDOW)
    posted = out[(out["state"] == "posted") & (pd.to_datetime(out["posted_at"], utc=True) >= since)]
    if posted.empty:
        return pd.DataFrame(columns=["order_number", "despatched_at", "posted_at"]), "none posted"
    desp = posted["source"].map(_source_time)
    origin = "outbox source"
    if desp.isna().any():
        feed = read_table(db.engine, tables.wms_despatches)
        by_order = (
            feed.groupby("order_number")["event_at"].min() if not feed.empty else pd.Series(dtype=object)
        )
        fallback = posted["order_number"].map(by_order)
        desp = desp.where(desp.notna(), fallback)
        origin = "outbox source / wms_despatches"
    frame = pd.DataFrame(
        {
            "order_number": posted["order_number"].astype(str),
            "despatched_at": pd.to_datetime(desp, utc=True, errors="coerce"),
            "posted_at": pd.to_datetime(posted["posted_at"], utc=True),
        }
    )
    return frame, origin


def manifest_totals_frame(engine: Any) -> pd.DataFrame:
    """Per Sage order sent to the WMS: its manifests' total, excluded lines' total, Sage's total."""
    manifests = read_table(engine, tables.order_manifests)
    sent = manifests[manifests["sent_at"].notna()]
    cols = ["order_number", "sage_total_e5", "manifest_total_e5", "excluded_total_e5"]
    if sent.empty:
        return pd.DataFrame(columns=cols)
    sent = sent.assign(total_e5=to_e5(sent["total"]).to_numpy())
    shipped = sent.groupby(["sage_order_id", "sage_document_no"], as_index=False)["total_e5"].sum()
    excluded = read_table(engine, tables.order_manifest_excluded)
    excluded = excluded.assign(total_e5=to_e5(excluded["line_total"]).to_numpy())
    left_out = excluded.groupby("sage_order_id")["total_e5"].sum()
    orders = read_table(engine, store.sage_orders).set_index("id")
    lines = read_table(engine, store.sage_order_lines)
    line_sum = (
        lines.assign(total_e5=to_e5(lines["line_total_value"]).to_numpy())
        .groupby("order_id")["total_e5"]
        .sum()
        if not lines.empty
        else pd.Series(dtype="int64")
    )

    def sage_total(order_id: int) -> int:
        header = orders["total_net_value"].get(order_id) if order_id in orders.index else None
        if header is not None and not pd.isna(header):
            return int(to_e5([Decimal(str(header))]).iloc[0])
        return int(line_sum.get(order_id, 0))

    return pd.DataFrame(
        {
            "order_number": shipped["sage_document_no"].astype(str),
            "sage_total_e5": [sage_total(int(i)) for i in shipped["sage_order_id"]],
            "manifest_total_e5": shipped["total_e5"].astype("int64"),
            "excluded_total_e5": [int(left_out.get(i, 0)) for i in shipped["sage_order_id"]],
        }
    )


# ------------------------------------------------------------------------------------- checks


@dg.asset_check(
    asset="despatch_postings",
    name="sync_illusion",
    description=(
        "Orders despatched in the WMS and still open in Sage past the despatch SLA, by order number "
        "with hours waited. WARN; ERROR once one has waited twice the SLA."
    ),
)
def sync_illusion(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    pol = policy.load()
    state = sync_state.read(parity_db.database().engine, pol, _now())
    finding = checks.sync_illusion(
        state.wms_despatched, state.sage_open, state.measured_to, checks.Thresholds.from_policy(pol)
    )
    return result_from(finding, {"measured_to": dg.MetadataValue.timestamp(state.measured_to)})


@dg.asset_check(
    asset="despatch_postings",
    name="stuck_and_orphaned",
    description=(
        "Outbox rows stuck or retrying past the lock deadline, WMS shipments with no Sage line, "
        "despatches Sage refused for the order's status, and orders Sage holds as despatched beyond the "
        "WMS. ERROR when a person must act; WARN while still retrying."
    ),
)
def stuck_and_orphaned(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    db = parity_db.database()
    finding = checks.stuck_and_orphaned(
        outbox_frame(db), exceptions_frame(db), _now(), checks.Thresholds.from_policy(policy.load())
    )
    return result_from(finding)


@dg.asset_check(
    asset="despatch_postings",
    name="despatch_latency",
    description=(
        "WMS despatch to Sage posting over the last 24 h of postings: p50/p95/max seconds. WARN when p95 "
        "exceeds the policy's despatch_latency_target_seconds, listing the slower postings."
    ),
)
def despatch_latency(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    frame, origin = postings_frame(parity_db.database())
    finding = checks.despatch_latency(frame, checks.Thresholds.from_policy(policy.load()))
    return result_from(finding, {"despatch_time_from": origin})


@dg.asset_check(
    asset="order_manifests",
    name="manifest_totals",
    description=(
        "For every order sent to the WMS: manifest totals plus excluded (non-stock, comment, free-text, "
        "charge) lines equal the Sage order total, exactly. ERROR otherwise."
    ),
)
def manifest_totals(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    frame = manifest_totals_frame(parity_db.database().engine)
    finding = checks.manifest_totals(frame, checks.Thresholds.from_policy(policy.load()))
    return result_from(finding)


@dg.asset_check(
    asset="sync_exceptions",
    name="open_exceptions_by_owner",
    description=(
        "Open sync exceptions counted by owner (finance / operations) and kind. WARN while any are open."
    ),
)
def open_exceptions_by_owner(parity_db: ParityDatabase) -> dg.AssetCheckResult:
    exceptions = exceptions_frame(parity_db.database())
    summary = checks.exceptions_by_owner(exceptions)
    metadata: dict[str, Any] = {
        "open_exceptions": len(exceptions),
        "summary": dg.MetadataValue.md(checks.markdown_table(summary, 50) or "no open exceptions"),
    }
    for owner in ("finance", "operations"):
        metadata[f"open_{owner}"] = (
            int(summary.loc[summary["owner"] == owner, "open"].sum()) if len(summary) else 0
        )
    if len(exceptions):
        metadata["records"] = dg.MetadataValue.json(
            [f"{k}: {r}" for k, r in zip(exceptions["kind"], exceptions["record"], strict=True)][:50]
        )
    return dg.AssetCheckResult(
        passed=exceptions.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(exceptions)} open sync exception(s)",
        metadata=metadata,
    )
