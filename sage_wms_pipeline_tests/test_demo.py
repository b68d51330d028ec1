"""The demo's data: the demo scenario, paced for a ten-minute visit and moved to start now, so the
warehouse clock, Sage's stamps and the pipeline's clock are one clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.demo import DEMO_WAREHOUSE, clear_demo_state, demo_scenario, load_demo_data
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline_tests.conftest import Sandbox


def test_rebased_scenario_moves_every_timestamp_alike() -> None:
    base = read_scenario(demo_scenario_path())
    now = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
    moved = base.rebased(now)
    shift = now - base.starts_at
    assert moved.starts_at == now
    assert [o.document_date for o in moved.orders] == [o.document_date + shift for o in base.orders]
    assert [r.expected for r in moved.receipts] == [r.expected + shift for r in base.receipts]
    # Only times move: quantities, money and the ground truth are untouched.
    assert moved.expected == base.expected
    assert [o.lines for o in moved.orders] == [o.lines for o in base.orders]


def test_demo_scenario_runs_the_warehouse_on_the_wall_clock() -> None:
    now = datetime.now(UTC)
    scenario = demo_scenario(now)
    assert scenario.starts_at == now
    assert scenario.behaviour.clock_speed == Decimal(1)
    # An order is worked NEW -> DESPATCHED in minutes, not hours.
    stage_hours = DEMO_WAREHOUSE["hours_to_print"] + DEMO_WAREHOUSE["hours_to_pick"]
    stage_hours += DEMO_WAREHOUSE["hours_to_pack"] + DEMO_WAREHOUSE["hours_to_despatch"]
    assert stage_hours * 60 < 10


def test_loaded_demo_keeps_the_warehouse_clock_on_wall_time(sandbox: Sandbox) -> None:
    assert sandbox.wms_url is not None
    load_demo_data(sandbox.sage_url, sandbox.wms_url)
    clock = jsonutil.loads(httpx.get(sandbox.wms_url + "/_sandbox/clock", timeout=10).text)
    warehouse_now = datetime.fromisoformat(str(clock["now"]).replace("Z", "+00:00"))
    assert abs(warehouse_now - datetime.now(UTC)) < timedelta(seconds=5)
    assert Decimal(str(clock["speed"])) == 1


def test_fresh_start_deletes_the_demo_state_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "sandbox" / "mintsoft.sqlite").write_text("x")
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "pipeline.sqlite").write_text("x")
    (tmp_path / "notes.txt").write_text("someone else's")
    clear_demo_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
