"""Fixtures for the Dagster layer: resources pointed at the session's simulators and a fresh database.

`pipeline(...)` gives a `Pipeline`: the four resources wired to `sandbox` (demo credentials, a token
store and a SQLite database under tmp_path, small retry budgets so faults resolve in seconds), and
`materialize(*asset_names)` running those assets in process. Other test files in this folder may
use `pipeline`, `pipeline_resources`, `all_assets` and `write_policy`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
import yaml

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.defs.finance import assets as finance_assets
from sage_wms_pipeline.defs.fulfilment import assets as fulfilment_assets
from sage_wms_pipeline.defs.ingest import sage as sage_assets
from sage_wms_pipeline.defs.ingest import wms as wms_assets
from sage_wms_pipeline.defs.resources import ParityDatabase, PolicyResource, Sage200Resource, WmsResource
from sage_wms_pipeline.domain.policy import Policy, load_policy
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.storage.db import Database

POSTGRES_URL = os.environ.get(
    "SAGE_WMS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

ALL_ASSETS: list[dg.AssetsDefinition] = [
    a
    for module in (sage_assets, wms_assets, fulfilment_assets, finance_assets)
    for a in vars(module).values()
    if isinstance(a, dg.AssetsDefinition)
]
INGEST = [
    "sage_products",
    "sage_warehouse_holdings",
    "sage_sales_orders",
    "wms_orders",
    "wms_despatches",
    "wms_stock_levels",
    "wms_stock_movements",
    "wms_returns",
    "wms_receipts",
]


def write_policy(policy: Policy, path: Path) -> Path:
    """A policy as YAML (exact: numbers as strings), for a PolicyResource or a subprocess."""
    path.write_text(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False))
    return path


def pipeline_resources(
    sage_url: str,
    wms_url: str,
    tmp_path: Path,
    *,
    db_url: str | None = None,
    db_schema: str | None = None,
    policy_path: Path | None = None,
) -> dict[str, Any]:
    return {
        "sage": Sage200Resource(
            base_url=f"{sage_url}/uk/sage200extra/accounts/v1/",
            token_url=f"{sage_url}/oauth/token",
            client_id="sandbox",
            client_secret="sandbox",
            refresh_token="sandbox-refresh",
            token_store=str(tmp_path / "sage-token.json"),
            max_attempts=8,
            deadline_seconds=30,
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.5,
        ),
        "wms": WmsResource(base_url=wms_url, username="sandbox", password="sandbox", deadline_seconds=30),
        "parity_db": ParityDatabase(
            url=db_url or f"sqlite:///{tmp_path / 'pipeline.sqlite'}", db_schema=db_schema
        ),
        "policy": PolicyResource(path=str(policy_path) if policy_path else None),
    }


@dataclass
class Pipeline:
    sage_url: str
    wms_url: str
    resources: dict[str, Any]
    runs: list[dg.ExecuteInProcessResult] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return self.resources["parity_db"].database()

    @property
    def policy(self) -> Policy:
        return self.resources["policy"].load()

    def materialize(
        self, *names: str, run_config: dict[str, Any] | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            ALL_ASSETS,
            selection=list(names),
            resources=self.resources,
            run_config=run_config,
            raise_on_error=raise_on_error,
        )
        self.runs.append(result)
        return result

    def run_job(
        self, job: dg.UnresolvedAssetJobDefinition, run_config: dict[str, Any] | None = None
    ) -> dg.ExecuteInProcessResult:
        defs = dg.Definitions(assets=ALL_ASSETS, jobs=[job], resources=self.resources)
        result = defs.resolve_job_def(job.name).execute_in_process(run_config=run_config)
        self.runs.append(result)
        return result

    def query(self, table: sa.Table, where: Any = None) -> list[dict[str, Any]]:
        stmt = sa.select(table)
        if where is not None:
            stmt = stmt.where(where)
        with self.db.read() as conn:
            return [r._asdict() for r in conn.execute(stmt)]

    # --- simulator admin -------------------------------------------------------------------
    def advance_wms_clock(self, seconds: int) -> None:
        _post(f"{self.wms_url}/_sandbox/clock", {"advance_seconds": seconds})

    def wms_now(self) -> datetime:
        body = jsonutil.loads(httpx.get(f"{self.wms_url}/_sandbox/clock", timeout=30).content)
        return datetime.fromisoformat(str(body["now"]).replace("Z", "+00:00"))

    def parity_config(self) -> dict[str, Any]:
        """Run config for stock_parity as at now: the later of our clock and the WMS's simulated one
        (a scenario may be set in the future, and WMS event times are on the WMS clock)."""
        cutoff = max(datetime.now(UTC), self.wms_now())
        return {"ops": {"stock_parity": {"config": {"cutoff": cutoff.isoformat()}}}}

    def sage_faults(self, **faults: Any) -> None:
        _post(f"{self.sage_url}/_sandbox/faults", faults)


def _post(url: str, body: Any) -> httpx.Response:
    resp = httpx.post(
        url, content=jsonutil.dumps(body), headers={"Content-Type": "application/json"}, timeout=60
    )
    resp.raise_for_status()
    return resp


def quiet(scenario: Scenario) -> Scenario:
    """The scenario with a warehouse that only does what it is told: no shrink, returns, short picks,
    cancellations or splits, so the only differences are the planted ones (and what tests do)."""
    zero = dict.fromkeys(
        ("short_pick_rate", "split_rate", "cancel_after_print_rate", "return_rate", "shrink_rate"), Decimal(0)
    )
    return scenario.model_copy(update={"behaviour": scenario.behaviour.model_copy(update=zero)})


@pytest.fixture
def all_assets() -> list[dg.AssetsDefinition]:
    return ALL_ASSETS


@pytest.fixture
def demo_policy() -> Policy:
    return load_policy()


@pytest.fixture
def pipeline(sandbox: Any, tmp_path: Path) -> Pipeline:
    """The demo data in both simulators, the shipped policy, a fresh SQLite database."""
    return Pipeline(
        sandbox.sage_url, sandbox.wms_url, pipeline_resources(sandbox.sage_url, sandbox.wms_url, tmp_path)
    )


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server, dropped afterwards. Fails under CI when the server
    is unreachable, skips locally."""
    name = f"t_defs_{uuid.uuid4().hex[:10]}"
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()
