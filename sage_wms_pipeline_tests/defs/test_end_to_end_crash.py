"""Crash safety of the despatch postings, against the simulators over HTTP.

A separate process materializes `despatch_postings` and is killed with SIGKILL once the outbox shows
some rows posted and some not; the asset is then materialized again. Sage must end up holding exactly
the WMS's despatched quantities: nothing lost, nothing posted twice. The same with 20% of Sage writes
meeting a record lock (deferred through the outbox and retried).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sage_wms_pipeline.defs.fulfilment.assets import enqueue_postings
from sage_wms_pipeline.domain.policy import load_policy
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline_tests.defs.conftest import (
    INGEST,
    POSTGRES_URL,
    Pipeline,
    pipeline_resources,
    quiet,
    write_policy,
)
from sage_wms_pipeline_tests.defs.test_end_to_end import assert_sage_matches_wms_despatches

POSTING_SCRIPT = """
import sys
from pathlib import Path
import dagster as dg
from sage_wms_pipeline_tests.defs.conftest import ALL_ASSETS, pipeline_resources
sage_url, wms_url, tmp, policy = sys.argv[1:5]
resources = pipeline_resources(sage_url, wms_url, Path(tmp), policy_path=Path(policy))
dg.materialize(ALL_ASSETS, selection=["despatch_postings"], resources=resources)
"""


def outbox_states(pipeline: Pipeline) -> dict[str, int]:
    out = core.despatch_outbox
    with pipeline.db.read() as conn:
        return dict(conn.execute(sa.select(out.c.state, sa.func.count()).group_by(out.c.state)).all())


def prepared(sandbox: Any, tmp_path: Path, seed: int, **db: Any) -> Pipeline:
    """Many orders despatched in the WMS and queued, nothing posted to Sage yet."""
    scenario = quiet(generate(skus=60, warehouses=3, orders_per_day=40, days=1, seed=seed))
    sandbox.load(scenario)
    # Short lease and backoff so the test sees a dead worker's rows and deferred rows come due in seconds.
    policy = load_policy(scenario=scenario)
    policy = policy.model_copy(
        update={
            "outbox": policy.outbox.model_copy(
                update={"lease_seconds": 2, "backoff_base_seconds": 1, "backoff_max_seconds": 2}
            )
        }
    )
    path = write_policy(policy, tmp_path / "policy.yaml")
    pipeline = Pipeline(
        sandbox.sage_url,
        sandbox.wms_url,
        pipeline_resources(sandbox.sage_url, sandbox.wms_url, tmp_path, policy_path=path, **db),
    )
    pipeline.materialize(*INGEST)
    pipeline.materialize("order_manifests")
    pipeline.advance_wms_clock(10 * 3600)
    pipeline.materialize("wms_orders", "wms_despatches")
    return pipeline


def kill_mid_posting(pipeline: Pipeline, tmp_path: Path) -> dict[str, int]:
    """Run the posting in a subprocess, SIGKILL it once some rows are posted and some are not."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            POSTING_SCRIPT,
            pipeline.sage_url,
            pipeline.wms_url,
            str(tmp_path),
            str(tmp_path / "policy.yaml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = outbox_states(pipeline)
            posted, total = states.get("posted", 0), sum(states.values())
            if posted >= 2 and total - posted >= 5:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the posting finished before it could be killed: {states}")
            time.sleep(0.05)
        else:
            pytest.fail(f"no posting progress within 120 s: {outbox_states(pipeline)}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return outbox_states(pipeline)


@pytest.mark.parametrize("lock_rate", ["0", "0.2"], ids=["no-locks", "locks-20pct"])
def test_killed_posting_run_loses_nothing_and_posts_nothing_twice(
    sandbox: Any, tmp_path: Path, lock_rate: str
) -> None:
    pipeline = prepared(sandbox, tmp_path, seed=21)
    # Slow Sage answers so the kill lands mid-run; locks, when asked for, held briefly.
    pipeline.sage_faults(slow_seconds="0.15", lock_rate=lock_rate, lock_seconds="3", seed=7)
    at_kill = kill_mid_posting(pipeline, tmp_path)
    assert at_kill.get("posted", 0) < sum(at_kill.values()), at_kill

    pipeline.sage_faults(slow_seconds="0")
    time.sleep(2.5)  # the dead worker's lease (2 s) runs out
    for _ in range(30):
        pipeline.materialize("despatch_postings")
        states = outbox_states(pipeline)
        if set(states) == {"posted"}:
            break
        assert not states.get("stuck"), states
        time.sleep(1)  # deferred rows (lock) come due after the short backoff
    assert set(outbox_states(pipeline)) == {"posted"}, outbox_states(pipeline)
    assert_sage_matches_wms_despatches(pipeline)
    if lock_rate != "0":
        attempts = [r["attempts"] for r in pipeline.query(core.despatch_outbox)]
        assert max(attempts) > 1, "no posting met a lock; the lock case proved nothing"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_posting_applied_in_sage_but_not_recorded_is_not_repeated(
    sandbox: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """The worst moment to die: Sage applied the despatch, the outbox still says `posting`."""
    db: dict[str, Any] = {}
    if backend == "postgres":
        db = {"db_url": POSTGRES_URL, "db_schema": request.getfixturevalue("postgres_schema")}
    pipeline = prepared(sandbox, tmp_path, seed=22, **db)
    added, _ = enqueue_postings(pipeline.db, pipeline.policy)
    assert added >= 5
    claimed = pipeline.db.outbox_claim("worker-that-dies", limit=5, lease=timedelta(seconds=2))
    targets: dict[int, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in claimed:
        targets[int(row["order_id"])][int(row["line_id"])] += Decimal(row["quantity"])
    with pipeline.resources["sage"].client() as client:
        for order_id, lines in targets.items():
            result = client.confirm_despatch(order_id, sorted(lines.items()))
            assert result["applied"], result
    assert outbox_states(pipeline).get("posting") == len(claimed)  # ... and then the worker died

    time.sleep(2.5)
    pipeline.materialize("despatch_postings")
    assert set(outbox_states(pipeline)) == {"posted"}, outbox_states(pipeline)
    assert_sage_matches_wms_despatches(pipeline)


def test_lost_sage_answers_are_settled_without_double_posting(sandbox: Any, tmp_path: Path) -> None:
    """Sage applies a despatch but the answer is lost (504) — three times over: still posted once."""
    pipeline = prepared(sandbox, tmp_path, seed=23)
    for _ in range(3):
        httpx.post(
            f"{pipeline.sage_url}/_sandbox/drop_next_response",
            json={"method": "POST", "path_contains": "sop_confirm_despatch", "status": 504},
            timeout=30,
        ).raise_for_status()
    for _ in range(5):
        pipeline.materialize("despatch_postings")
        if set(outbox_states(pipeline)) == {"posted"}:
            break
        time.sleep(1.5)  # an answer lost on every attempt defers the rows (backoff 1 s)
    assert set(outbox_states(pipeline)) == {"posted"}, outbox_states(pipeline)
    assert_sage_matches_wms_despatches(pipeline)
