"""The asset checks on a real database (SQLite under tmp_path) filled by the domain functions.

Planted drift above and below tolerance and materiality gives WARN and ERROR where expected, a clean
position passes every check, and a blocking ERROR stops the valuation in the same run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from sage_wms_pipeline.defs.checks import contracts, finance, fulfilment
from sage_wms_pipeline.defs.resources import ParityDatabase, PolicyResource
from sage_wms_pipeline.domain.available_stock import available_stock
from sage_wms_pipeline.domain.manifests import SageOrder, SageOrderLine, build_manifests
from sage_wms_pipeline.domain.parity import stock_parity
from sage_wms_pipeline.domain.policy import validate_policy
from sage_wms_pipeline.domain.valuation import valuation_deltas
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables
from sage_wms_pipeline_tests.check_position import Catalogue, position_frames

CUTOFF = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)
CATALOGUE: Catalogue = {
    "MUG-STONE": ("Average", Decimal("2.15"), 100),
    "CANDLE-FIG": ("Standard", Decimal("3.60"), 100),
    "TSHIRT-BLK-M": ("Average", Decimal("4.20"), 50),
    "THROW-WOOL": ("Average", Decimal("22.40"), 20),
}
POLICY = {
    "tolerances": {"default": {"abs_units": "1", "percent": "0"}, "value_materiality_gbp": "50"},
    "despatch_sla_hours": "4",
    "lock_deadline_minutes": 60,
    "warehouses": [{"sage_name": "LEEDS", "wms_warehouse_id": 1}],
    "skus": [{"sage_code": s, "wms_sku": s} for s in CATALOGUE],
}


@pytest.fixture
def policy():
    return validate_policy(POLICY)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def resources(request: pytest.FixtureRequest, tmp_path: Path, policy) -> dict[str, dg.ConfigurableResource]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False))
    if request.param == "postgres":
        from sage_wms_pipeline_tests.defs.conftest import POSTGRES_URL

        db = ParityDatabase(url=POSTGRES_URL, db_schema=request.getfixturevalue("postgres_schema"))
    else:
        db = ParityDatabase(url=f"sqlite:///{tmp_path / 'pipeline.sqlite'}")
    return {"parity_db": db, "policy": PolicyResource(path=str(path))}


def fill_finance(resources, policy, wms_qty: dict[str, str]) -> None:
    """The finance tables exactly as the assets write them, computed by the domain functions."""
    db = resources["parity_db"].database()
    wms, sage, events, prices = position_frames(CATALOGUE, wms_qty)
    parity = stock_parity(wms, sage, events, policy, CUTOFF)
    detail, summary = valuation_deltas(parity, prices, policy)
    allocations = pd.DataFrame(
        {
            "order_number": pd.Series([], dtype=str),
            "wms_sku": pd.Series([], dtype=str),
            "wms_warehouse_id": pd.Series([], dtype="int64"),
            "wms_status": pd.Series([], dtype=str),
            "quantity_e5": pd.Series([], dtype="int64"),
        }
    )
    db.replace_table("stock_parity", parity)
    db.replace_table("valuation_deltas", detail)
    db.replace_table("valuation_summary", summary)
    db.replace_table("available_stock", available_stock(wms, allocations, policy, sage))


FINANCE_CHECKS = [
    ("inventory_drift", finance.inventory_drift, ("parity_db", "policy")),
    ("valuation_drift", finance.valuation_drift, ("parity_db", "policy")),
    ("free_stock_divergence", finance.free_stock_divergence, ("parity_db", "policy")),
    ("gx_data_contracts", finance.gx_data_contracts, ("parity_db",)),
]


def _call(check, resources, keys):
    return check(**{k: resources[k] for k in keys})


def test_clean_position_passes_every_finance_check(resources, policy):
    fill_finance(resources, policy, {})
    for name, check, keys in FINANCE_CHECKS:
        result = _call(check, resources, keys)
        assert result.passed, (name, result.metadata)
    for schema_check in finance.schema_checks:
        assert schema_check(parity_db=resources["parity_db"]).passed


def test_drift_beyond_tolerance_below_materiality_warns(resources, policy):
    fill_finance(resources, policy, {"TSHIRT-BLK-M": "45"})  # 5 missing × £4.20 = £21
    drift = finance.inventory_drift(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert drift.metadata["records"].data == ["TSHIRT-BLK-M@LEEDS"]
    assert drift.metadata["unexplained_value_net_gbp"].value == pytest.approx(-21.0)
    assert drift.metadata["valued_from"].value == "valuation_deltas (same cut-off)"
    assert "| TSHIRT-BLK-M | LEEDS" in drift.metadata["rows_at_fault"].md_str
    value = finance.valuation_drift(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not value.passed and value.severity == dg.AssetCheckSeverity.WARN
    # Within tolerance (0.5 of a 1-unit tolerance): parity passes.
    fill_finance(resources, policy, {"MUG-STONE": "99.5"})
    assert finance.inventory_drift(parity_db=resources["parity_db"], policy=resources["policy"]).passed


def test_material_drift_is_an_error_on_parity_and_valuation(resources, policy):
    fill_finance(resources, policy, {"THROW-WOOL": "10", "CANDLE-FIG": "104"})  # -£224.00, +£14.40
    drift = finance.inventory_drift(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
    assert drift.metadata["records"].data == ["THROW-WOOL@LEEDS", "CANDLE-FIG@LEEDS"]
    assert drift.metadata["material_lines"].value == 1
    value = finance.valuation_drift(parity_db=resources["parity_db"], policy=resources["policy"])
    assert value.severity == dg.AssetCheckSeverity.ERROR
    assert value.metadata["unexplained_value_abs_gbp"].value == pytest.approx(238.40)
    assert value.metadata["unexplained_value_net_gbp"].value == pytest.approx(-209.60)
    # The contracts still hold: drift is not a broken table.
    assert finance.gx_data_contracts(parity_db=resources["parity_db"]).passed


def test_parity_is_valued_from_sage_prices_while_valuation_is_stale(resources, policy):
    fill_finance(resources, policy, {"THROW-WOOL": "10"})
    db = resources["parity_db"].database()
    # valuation_deltas still holds an older cut-off: the check prices the lines itself.
    detail = db.read_table("valuation_deltas").assign(cutoff=CUTOFF - timedelta(days=1))
    db.replace_table("valuation_deltas", detail)
    with db.write() as conn:
        conn.execute(
            tables.sage_products.insert(),
            [
                {
                    "sku": s,
                    "name": s,
                    "product_group": "HOME",
                    "product_type": "Stock",
                    "costing_method": method,
                    "stock_nominal_code": "1002",
                    "standard_cost": cost,
                    "average_buying_price": cost,
                }
                for s, (method, cost, _) in CATALOGUE.items()
            ],
        )
    drift = finance.inventory_drift(parity_db=resources["parity_db"], policy=resources["policy"])
    assert drift.metadata["valued_from"].value == "Sage standard cost / average buying price"
    assert drift.severity == dg.AssetCheckSeverity.ERROR
    assert drift.metadata["unexplained_value_net_gbp"].value == pytest.approx(-224.0)


def test_free_stock_divergence_on_the_stored_table(resources, policy):
    fill_finance(resources, policy, {})
    db = resources["parity_db"].database()
    table = db.read_table("available_stock")
    table.loc[table["sku"] == "MUG-STONE", "available_e5"] = 0  # Sage offers 100 the WMS cannot ship
    table["difference_e5"] = (table["available_e5"] - table["sage_free_stock_e5"]).astype("Int64")
    db.replace_table("available_stock", table)
    result = finance.free_stock_divergence(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["records"].data == ["MUG-STONE@LEEDS"]
    assert result.metadata["oversell_risk_lines"].value == 1


def test_broken_tie_out_fails_the_contract_checks(resources, policy):
    fill_finance(resources, policy, {"THROW-WOOL": "10"})
    db = resources["parity_db"].database()
    summary = db.read_table("valuation_summary")
    summary.loc[0, "net_unexplained_pence"] += 1
    db.replace_table("valuation_summary", summary)
    gx = finance.gx_data_contracts(parity_db=resources["parity_db"])
    assert not gx.passed and gx.severity == dg.AssetCheckSeverity.ERROR
    assert any("net_unexplained_pence ties" in r for r in gx.metadata["records"].data)


# --------------------------------------------------------------------- blocking, in a real run


def _graph(resources, policy, wms_qty, *, rebuild_parity: bool = True):
    @dg.asset(name="stock_parity")
    def fake_parity(parity_db: ParityDatabase) -> dg.MaterializeResult:
        fill_finance({"parity_db": parity_db}, policy, wms_qty)
        return dg.MaterializeResult(metadata={"rows": len(CATALOGUE)})

    @dg.asset(name="valuation_deltas", deps=["stock_parity"])
    def fake_valuation() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": len(CATALOGUE)})

    checks = [finance.inventory_drift, finance.finance_gate]
    if rebuild_parity:
        return dg.materialize(
            [fake_parity, fake_valuation, *checks], resources=resources, raise_on_error=False
        )
    # Like the daily sync check: every check against the stored parity, and what is downstream of it.
    fill_finance(resources, policy, wms_qty)
    selection = dg.AssetSelection.assets("valuation_deltas") | dg.AssetSelection.all_asset_checks()
    defs = dg.Definitions(
        assets=[fake_parity, fake_valuation],
        asset_checks=checks,
        jobs=[dg.define_asset_job("sync_check_like", selection=selection)],
        resources=resources,
    )
    return defs.resolve_job_def("sync_check_like").execute_in_process(raise_on_error=False)


def _evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _materialized(result) -> set[str]:
    return {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}


def test_material_drift_in_a_rebuilt_parity_stops_valuation_in_the_same_run(resources, policy):
    result = _graph(resources, policy, {"THROW-WOOL": "10"})
    assert not result.success
    evaluations = _evaluations(result)
    assert evaluations["inventory_drift"].severity == dg.AssetCheckSeverity.ERROR
    gate = evaluations["finance_gate"]
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    assert gate.metadata["records"].data == ["THROW-WOOL@LEEDS"]
    assert _materialized(result) == {"stock_parity"}  # the month-end figures are not built on failing parity


def test_warning_lets_the_run_continue(resources, policy):
    result = _graph(resources, policy, {"TSHIRT-BLK-M": "45"})
    assert result.success
    evaluations = _evaluations(result)
    assert not evaluations["inventory_drift"].passed
    assert evaluations["inventory_drift"].severity == dg.AssetCheckSeverity.WARN
    assert evaluations["finance_gate"].passed
    assert _materialized(result) == {"stock_parity", "valuation_deltas"}


def test_a_run_that_does_not_rebuild_parity_reports_the_error_without_blocking(resources, policy):
    result = _graph(resources, policy, {"THROW-WOOL": "10"}, rebuild_parity=False)
    assert result.success
    evaluations = _evaluations(result)
    assert not evaluations["inventory_drift"].passed
    assert evaluations["inventory_drift"].severity == dg.AssetCheckSeverity.ERROR
    assert evaluations["finance_gate"].passed
    assert evaluations["finance_gate"].metadata["gated"].value is False
    assert _materialized(result) == {"valuation_deltas"}


# ------------------------------------------------------------------------------ fulfilment


def _posting(key: str, doc: str, line: int, event_at: datetime) -> dict:
    return {
        "dedupe_key": key,
        "order_id": int(doc[-4:]),
        "document_no": doc,
        "line_id": line,
        "sku": "MUG-STONE",
        "warehouse": "LEEDS",
        "quantity": Decimal(2),
        "source": {"dedupe_key": key, "order_number": doc, "event_at": event_at},
    }


def test_outbox_stuck_refused_orphaned_and_latency(resources, policy):
    db = resources["parity_db"].database()
    now = datetime.now(UTC)
    db.outbox_add(
        [
            _posting("k1", "SO0001001", 11, now - timedelta(minutes=30)),
            _posting("k2", "SO0001004", 41, now - timedelta(minutes=20)),
            _posting("k3", "SO0001006", 61, now - timedelta(minutes=10)),
        ],
        now=now - timedelta(minutes=5),
    )
    claimed = {r["dedupe_key"]: r for r in db.outbox_claim("test", now=now - timedelta(minutes=4))}
    assert set(claimed) == {"k1", "k2", "k3"}
    db.outbox_mark_posted("k1", now=now - timedelta(minutes=2))
    db.outbox_fail("k2", claimed["k2"]["claim_token"], "refused", "order is on hold", policy, now=now)
    db.outbox_fail("k3", claimed["k3"]["claim_token"], "lock", "in use by another user", policy, now=now)
    db.record_exception(
        "orphaned_shipment",
        "wms-despatch-77",
        {"order_number": "WEB-77", "reason": "no Sage order"},
        "operations",
    )

    stuck = fulfilment.stuck_and_orphaned(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not stuck.passed and stuck.severity == dg.AssetCheckSeverity.ERROR
    assert stuck.metadata["status_refusals"].value == 1
    assert stuck.metadata["orphaned_shipments"].value == 1
    assert stuck.metadata["records"].data[:2] == [f"outbox#{claimed['k2']['id']}", "wms-despatch-77"]
    assert "refused for Sage status" in stuck.metadata["rows_at_fault"].md_str

    latency = fulfilment.despatch_latency(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not latency.passed and latency.severity == dg.AssetCheckSeverity.WARN  # 28 min > 120 s target
    assert latency.metadata["postings_measured"].value == 1
    assert latency.metadata["latency_p50_seconds"].value == pytest.approx(28 * 60, abs=2)
    assert latency.metadata["despatch_time_from"].value == "outbox source"

    owners = fulfilment.open_exceptions_by_owner(parity_db=resources["parity_db"])
    assert not owners.passed and owners.severity == dg.AssetCheckSeverity.WARN
    assert owners.metadata["open_finance"].value == 1  # the refusal (despatch_stuck) is finance's
    assert owners.metadata["open_operations"].value == 1


def _sage_order(db, order_id: int, doc: str, status: str, total: Decimal, lines: list[dict]) -> None:
    with db.write() as conn:
        conn.execute(
            store.sage_orders.insert(),
            {
                "id": order_id,
                "document_no": doc,
                "document_status": status,
                "total_net_value": total,
                "date_time_updated": CUTOFF,
                "payload": "{}",
            },
        )
        conn.execute(
            store.sage_order_lines.insert(),
            [{"order_id": order_id, "document_no": doc, **ln} for ln in lines],
        )


def _line(
    line_id: int, qty: str, despatched: str, price: str = "10", line_type: str = "EnumLineTypeStandard"
):
    return {
        "id": line_id,
        "line_type": line_type,
        "code": "MUG-STONE" if line_type == "EnumLineTypeStandard" else None,
        "warehouse": "LEEDS" if line_type == "EnumLineTypeStandard" else None,
        "line_quantity": Decimal(qty),
        "allocated_quantity": Decimal(qty),
        "despatch_receipt_quantity": Decimal(despatched),
        "selling_unit_price": Decimal(price),
        "line_total_value": Decimal(qty) * Decimal(price),
    }


def _products(db, **types: str) -> None:
    with db.write() as conn:
        conn.execute(
            tables.sage_products.insert(),
            [
                {
                    "sku": sku,
                    "name": sku,
                    "product_group": "HOME",
                    "product_type": product_type,
                    "costing_method": "Average",
                    "stock_nominal_code": "1002",
                    "standard_cost": Decimal(1),
                    "average_buying_price": Decimal(1),
                }
                for sku, product_type in types.items()
            ],
        )


def test_sync_illusion_lists_orders_despatched_but_open_in_sage(resources, policy):
    db = resources["parity_db"].database()
    now = datetime.now(UTC)
    _products(db, **{"MUG-STONE": "Stock", "GIFTWRAP": "ServiceLabour"})
    _sage_order(db, 1, "SO0001001", "EnumDocumentStatusLive", Decimal(20), [_line(11, "2", "0")])
    _sage_order(db, 2, "SO0001002", "EnumDocumentStatusLive", Decimal(20), [_line(21, "2", "0")])
    _sage_order(db, 3, "SO0001003", "EnumDocumentStatusComplete", Decimal(20), [_line(31, "2", "2")])
    _sage_order(db, 4, "SO0001004", "EnumDocumentStatusLive", Decimal(20), [_line(41, "2", "0")])
    # Despatched in full; only a service line (never sent to the WMS) is outstanding in Sage.
    wrap = {**_line(52, "1", "0"), "code": "GIFTWRAP"}
    _sage_order(db, 5, "SO0001005", "EnumDocumentStatusLive", Decimal(30), [_line(51, "2", "2"), wrap])
    wms = [
        ("101", "SO0001001", now - timedelta(hours=10)),  # past twice the 4 h SLA
        ("102", "SO0001002-2", now - timedelta(hours=5)),  # a split part, past the SLA
        ("103", "SO0001003", now - timedelta(hours=30)),  # posted: complete in Sage
        ("104", "SO0001004", now - timedelta(hours=1)),  # within the SLA
        ("105", "SO0001005", now - timedelta(hours=30)),  # only the service line is left open
    ]
    with db.write() as conn:
        conn.execute(
            store.wms_orders.insert(),
            [
                {
                    "order_id": oid,
                    "order_number": number,
                    "status": "DESPATCHED",
                    "raw_status": "DESPATCHED",
                    "updated_at": at,
                    "despatched_at": at,
                    "dedupe_key": oid,
                }
                for oid, number, at in wms
            ],
        )
    result = fulfilment.sync_illusion(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["records"].data == ["SO0001001", "SO0001002"]
    assert result.metadata["oldest_wait_hours"].value == pytest.approx(10.0, abs=0.1)

    # A warehouse clock running ahead of ours (the demo's runs 60x): waits are measured on it.
    ahead = now + timedelta(hours=5)
    with db.write() as conn:
        conn.execute(
            store.wms_orders.insert(),
            {
                "order_id": "106",
                "order_number": "SO0001006",
                "status": "PICKED",
                "raw_status": "PICKED",
                "updated_at": ahead,
                "dedupe_key": "106",
            },
        )
    result = fulfilment.sync_illusion(parity_db=resources["parity_db"], policy=resources["policy"])
    assert result.metadata["records"].data == ["SO0001001", "SO0001002", "SO0001004"]
    assert result.metadata["measured_to"].value == pytest.approx(ahead.timestamp(), abs=1)


def test_manifest_totals_tie_to_sage(resources, policy):
    db = resources["parity_db"].database()
    order = SageOrder(
        id=7,
        document_no="SO0001007",
        total_net_value=Decimal("27.50"),
        lines=[
            SageOrderLine(
                id=71,
                line_type="EnumLineTypeStandard",
                code="MUG-STONE",
                product_type="Stock",
                warehouse_name="LEEDS",
                line_quantity=Decimal(2),
                selling_unit_price=Decimal("9.50"),
            ),
            SageOrderLine(
                id=72,
                line_type="EnumLineTypeCharge",
                description="Carriage",
                line_total_value=Decimal("8.50"),
            ),
            SageOrderLine(id=73, line_type="EnumLineTypeComment", description="Leave with neighbour"),
        ],
    )
    plan = build_manifests(order, policy)
    db.save_manifest_plan(plan)
    for m in plan.manifests:
        db.mark_manifest_sent(m.order_number, 9001)
    _sage_order(db, 7, "SO0001007", "EnumDocumentStatusLive", Decimal("27.50"), [_line(71, "2", "0", "9.50")])
    ok = fulfilment.manifest_totals(parity_db=resources["parity_db"], policy=resources["policy"])
    assert ok.passed and ok.metadata["orders_checked"].value == 1

    # Sage's total moves (a line added after the manifest went): the order no longer ties.
    with db.write() as conn:
        conn.execute(
            store.sage_orders.update()
            .where(store.sage_orders.c.id == 7)
            .values(total_net_value=Decimal("37.50"))
        )
    bad = fulfilment.manifest_totals(parity_db=resources["parity_db"], policy=resources["policy"])
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.ERROR
    assert bad.metadata["records"].data == ["SO0001007"]
    row = [c.strip() for c in bad.metadata["rows_at_fault"].md_str.splitlines()[2].strip("|").split("|")]
    assert row == ["SO0001007", "37.50", "19.00", "8.50", "-10.00"]


def test_checks_on_an_empty_database_pass(resources):
    db = resources["parity_db"].database()
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.despatch_outbox)).scalar() == 0
    for check in (
        fulfilment.sync_illusion,
        fulfilment.stuck_and_orphaned,
        fulfilment.despatch_latency,
        fulfilment.manifest_totals,
        finance.inventory_drift,
        finance.valuation_drift,
        finance.free_stock_divergence,
    ):
        assert check(parity_db=resources["parity_db"], policy=resources["policy"]).passed, check.name
    assert fulfilment.open_exceptions_by_owner(parity_db=resources["parity_db"]).passed
    for check in [*finance.schema_checks, *contracts.contract_checks, finance.gx_data_contracts]:
        assert check(parity_db=resources["parity_db"]).passed, check.name


def test_operational_contracts_name_the_broken_rows(resources, policy):
    db = resources["parity_db"].database()
    db.outbox_add([_posting("k1", "SO0001001", 11, CUTOFF)])
    with db.write() as conn:
        # A row marked posted by hand, without the time it was posted.
        conn.execute(tables.despatch_outbox.update().values(state="posted"))
        conn.execute(
            tables.sage_holdings.insert(),
            {
                "sku": "MUG-STONE",
                "warehouse": "LEEDS",
                "confirmed_qty_in_stock": Decimal(10),
                "unconfirmed_qty_in_stock": Decimal(2),
                "quantity_in_stock": Decimal(11),  # Sage's rule: confirmed + unconfirmed
                "quantity_allocated": Decimal(0),
                "free_stock_available": Decimal(11),
                "snapshot_at": CUTOFF,
            },
        )
    by_name = {next(iter(c.check_keys)).name: c for c in contracts.contract_checks}
    outbox = by_name["despatch_outbox_contract"](parity_db=resources["parity_db"])
    assert not outbox.passed and outbox.severity == dg.AssetCheckSeverity.ERROR
    assert "posted rows carry posted_at" in outbox.metadata["rows_at_fault"].md_str
    holdings = by_name["sage_holdings_contract"](parity_db=resources["parity_db"])
    assert not holdings.passed
    assert "quantity_in_stock = confirmed + unconfirmed" in holdings.metadata["rows_at_fault"].md_str
    assert by_name["wms_stock_contract"](parity_db=resources["parity_db"]).passed

    # An order line Sage shows as despatched beyond its quantity.
    _sage_order(db, 9, "SO0001009", "EnumDocumentStatusLive", Decimal(20), [_line(91, "2", "3")])
    lines = by_name["sage_order_lines_contract"](parity_db=resources["parity_db"])
    assert not lines.passed and "despatched <= ordered" in lines.metadata["rows_at_fault"].md_str
