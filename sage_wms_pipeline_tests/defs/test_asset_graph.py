"""The asset graph as committed: keys, groups, deps, kinds, tags, pools, jobs.

The live graph is compared with `asset_graph_snapshot.json`. After an intended change, rewrite it:

    SAGE_WMS_UPDATE_SNAPSHOTS=1 .venv/bin/pytest sage_wms_pipeline_tests/defs/test_asset_graph.py

and review the diff like code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from sage_wms_pipeline.definitions import defs as load_defs
from sage_wms_pipeline.defs import jobs

SNAPSHOT = Path(__file__).with_name("asset_graph_snapshot.json")
UPDATE = os.environ.get("SAGE_WMS_UPDATE_SNAPSHOTS") == "1"
CONTRACT_ASSETS = {
    "sage_ingest": {"sage_products", "sage_warehouse_holdings", "sage_sales_orders", "sage_despatches"},
    "wms_ingest": {
        "wms_orders",
        "wms_despatches",
        "wms_stock_levels",
        "wms_stock_movements",
        "wms_returns",
        "wms_receipts",
    },
    "fulfilment": {"order_manifests", "despatch_postings", "stock_adjustments"},
    "finance": {"available_stock", "stock_parity", "valuation_deltas", "sync_exceptions"},
}
OUR_GROUPS = set(CONTRACT_ASSETS)


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return load_defs()


def graph_snapshot(definitions: dg.Definitions) -> dict[str, Any]:
    repo = definitions.get_repository_def()
    graph = repo.asset_graph
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if node.group_name not in OUR_GROUPS:
            continue  # other engineers' nodes are snapshotted by their own tests
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "kinds": sorted(node.kinds),
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")},
            "pools": sorted(node.pools or []),
            "has_freshness_policy": node.freshness_policy is not None,
        }
    job_names = sorted(
        j.name for j in vars(jobs).values() if type(j).__name__ == "UnresolvedAssetJobDefinition"
    )
    job_assets = {}
    for name in job_names:
        job = repo.get_job(name)
        job_assets[name] = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
        checks = job.asset_layer.asset_graph.asset_check_keys if name == "sync_check_job" else set()
        if checks:
            job_assets[f"{name}/runs_checks"] = ["yes"]
    return {"assets": assets, "jobs": job_assets}


def test_asset_graph_matches_snapshot(definitions: dg.Definitions) -> None:
    live = graph_snapshot(definitions)
    text = json.dumps(live, indent=2, sort_keys=True) + "\n"
    if UPDATE or not SNAPSHOT.exists():
        SNAPSHOT.write_text(text)
        if not UPDATE:
            pytest.fail(f"no snapshot existed; wrote {SNAPSHOT.name}, review and commit it")
    committed = json.loads(SNAPSHOT.read_text())
    assert live == committed, (
        "the asset graph differs from asset_graph_snapshot.json; if intended, rerun with "
        "SAGE_WMS_UPDATE_SNAPSHOTS=1 and review the diff"
    )


def test_contract_keys_groups_and_pools(definitions: dg.Definitions) -> None:
    graph = definitions.get_repository_def().asset_graph
    by_group: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        by_group.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    for group, names in CONTRACT_ASSETS.items():
        assert by_group.get(group) == names, group
    for name in ("despatch_postings", "stock_adjustments"):
        assert graph.get(dg.AssetKey(name)).pools == {"sage_writes"}
    # The audit jobs never write to Sage or the WMS.
    repo = definitions.get_repository_def()
    for job in ("stock_parity_job", "month_end_job", "sync_check_job"):
        selected = {k.to_user_string() for k in repo.get_job(job).asset_layer.selected_asset_keys}
        assert not selected & CONTRACT_ASSETS["fulfilment"], job


def test_definitions_validate_loadable(definitions: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(definitions)


def test_dagster_definitions_validate_cli() -> None:
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(exe), "definitions", "validate", "-m", "sage_wms_pipeline.definitions"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DAGSTER_HOME": ""},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation successful" in proc.stdout + proc.stderr
