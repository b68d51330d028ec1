"""What the sync-illusion rule (domain.checks.despatched_still_open) reads from the ingested tables,
in one place for its two readers: the `sync_illusion` asset check and the `sync_exceptions` table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from sage_wms_pipeline.defs.checks._support import read_table, to_e5
from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.domain.manifests import parse_order_number
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables

SAGE_OPEN_STATUS = "EnumDocumentStatusLive"
STOCK_LINE = "EnumLineTypeStandard"


@dataclass(frozen=True)
class SyncState:
    wms_despatched: pd.DataFrame  # order_number (Sage document no), despatched_at
    sage_open: pd.DataFrame  # order_number
    measured_to: datetime  # waits run to this time


def read(engine: Any, policy: Any, now: datetime) -> SyncState:
    despatched, wms_latest = wms_despatched_orders(engine)
    # Waits run to now, or to the WMS's latest stamp if its clock runs ahead of ours (skew), so a
    # wait is never negative.
    measured_to = max(now, wms_latest) if wms_latest is not None else now
    return SyncState(despatched, sage_open_orders(engine, policy), measured_to)


def sync_illusions(engine: Any, policy: Any, now: datetime) -> pd.DataFrame:
    """Orders despatched in the WMS and still open in Sage past the policy's SLA, longest wait first:
    ``order_number``, ``despatched_at``, ``waited``."""
    state = read(engine, policy, now)
    still_open = checks.despatched_still_open(state.wms_despatched, state.sage_open, state.measured_to)
    return checks.late_despatches(still_open, checks.Thresholds.from_policy(policy).sync_sla)


def wms_despatched_orders(engine: Any) -> tuple[pd.DataFrame, datetime | None]:
    """WMS orders (all parts) that have despatched, under their Sage document number; and the WMS's
    latest update time."""
    orders = read_table(engine, store.wms_orders)
    desp = orders[orders["despatched_at"].notna()]
    latest = orders["updated_at"].max() if len(orders) else None
    frame = pd.DataFrame(
        {
            "order_number": [parse_order_number(str(n))[0] for n in desp["order_number"]],
            "despatched_at": desp["despatched_at"].to_numpy(),
        }
    )
    return frame, (None if latest is None or pd.isna(latest) else latest.to_pydatetime())


def sage_open_orders(engine: Any, policy: Any) -> pd.DataFrame:
    """Sage orders still Live with a line the WMS ships (stock items, and miscellaneous ones when the
    policy sends them) not fully despatched, as last ingested. Service and excluded lines stay
    outstanding in Sage by design and do not make an order "open" here."""
    orders = read_table(engine, store.sage_orders)
    live = orders[orders["document_status"] == SAGE_OPEN_STATUS]
    if live.empty:
        return pd.DataFrame({"order_number": pd.Series([], dtype=str)})
    shipped_types = {"Stock"}
    if policy.manifest.miscellaneous_lines == "include":
        shipped_types.add("Miscellaneous")
    products = read_table(engine, tables.sage_products)
    shipped_codes = set(products.loc[products["product_type"].isin(shipped_types), "sku"])
    lines = read_table(engine, store.sage_order_lines)
    stock = lines[(lines["line_type"] == STOCK_LINE) & lines["code"].isin(shipped_codes)]
    outstanding = stock[
        to_e5(stock["line_quantity"]).to_numpy() > to_e5(stock["despatch_receipt_quantity"]).to_numpy()
    ]
    open_ids = set(outstanding["order_id"].astype(int))
    return pd.DataFrame(
        {"order_number": live.loc[live["id"].astype(int).isin(open_ids), "document_no"].astype(str)}
    )
