"""`sage-wms demo`: the simulators with demo data, and the Dagster UI wired to them.

Everything lives under data/runtime/: the simulators' SQLite state, the project's tables, and
Dagster's instance (DAGSTER_HOME, with the top-level dagster.yaml copied in).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx

from sage_wms_pipeline import jsonutil, settings
from sage_wms_pipeline.scenario.model import Scenario

# The demo warehouse runs on the wall clock, so a WMS despatch time and its Sage posting time are
# on one clock and despatch latency means what it says; it works an order in about five minutes
# instead of about five hours, so the UI shows orders flowing soon after start.
DEMO_WAREHOUSE = {
    "clock_speed": Decimal(1),
    "hours_to_print": Decimal("0.02"),
    "hours_to_pick": Decimal("0.04"),
    "hours_to_pack": Decimal("0.01"),
    "hours_to_despatch": Decimal("0.01"),
}
# 10% of Sage writes meet a desktop user's lock, held 20 s: the retries show in the UI.
DEMO_SAGE_FAULTS = {"lock_rate": "0.10", "lock_seconds": "20"}


def demo_scenario(now: datetime) -> Scenario:
    """data/scenarios/demo.json with the demo warehouse's pace, moved in time to start `now`."""
    from sage_wms_pipeline.scenario.io import read_scenario

    base = read_scenario(settings.demo_scenario_path())
    paced = base.model_copy(update={"behaviour": base.behaviour.model_copy(update=DEMO_WAREHOUSE)})
    return paced.rebased(now)


def demo_environment(sage_port: int, wms_port: int, runtime: Path) -> dict[str, str]:
    """Environment for the pipeline in the demo: the simulators' demo credentials and local files."""
    sage_base = f"http://127.0.0.1:{sage_port}"
    return {
        "SAGE_WMS_DEMO": "1",
        "SAGE_WMS_PARITY_AUDIT_CRON": "*/10 * * * *",
        "SAGE_WMS_DESPATCH_POLL_SECONDS": "15",
        "DAGSTER_HOME": str(runtime / "dagster_home"),
        "SAGE200_BASE_URL": f"{sage_base}/uk/sage200extra/accounts/v1/",
        "SAGE200_TOKEN_URL": f"{sage_base}/oauth/token",
        "SAGE200_CLIENT_ID": "sandbox",
        "SAGE200_CLIENT_SECRET": "sandbox",
        "SAGE200_REFRESH_TOKEN": "sandbox-refresh",
        "SAGE200_TOKEN_STORE": str(runtime / "sage200-token.json"),
        "MINTSOFT_BASE_URL": f"http://127.0.0.1:{wms_port}",
        "MINTSOFT_USERNAME": "sandbox",
        "MINTSOFT_PASSWORD": "sandbox",
        "SAGE_WMS_DATABASE_URL": f"sqlite:///{runtime / 'pipeline.sqlite'}",
        "GX_ANALYTICS_ENABLED": "false",
    }


def load_demo_data(sage_url: str, wms_url: str) -> None:
    """Load the demo scenario into both simulators, starting now, and set the warehouse clock going."""
    from sage_wms_pipeline.scenario.io import load_into_sandbox

    load_into_sandbox(demo_scenario(datetime.now(UTC)), sage_url=sage_url, wms_url=wms_url)
    # A scenario loaded over HTTP holds the warehouse clock still; start it at wall time.
    _post(
        f"{wms_url}/_sandbox/clock",
        {"set": jsonutil.iso_z(datetime.now(UTC)), "speed": DEMO_WAREHOUSE["clock_speed"]},
    )


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the sandbox stopped during start-up (exit {proc.returncode})")
        try:
            if httpx.get(f"{url}/_sandbox/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become healthy within {timeout:.0f} s")


def _post(url: str, body: object) -> None:
    resp = httpx.post(
        url, content=jsonutil.dumps(body), headers={"Content-Type": "application/json"}, timeout=60
    )
    resp.raise_for_status()


DEMO_STATE_DIRS = ("sandbox", "dagster_home")
DEMO_STATE_FILES = ("pipeline.sqlite", "pipeline.sqlite-wal", "pipeline.sqlite-shm", "sage200-token.json")


def clear_demo_state(runtime: Path) -> None:
    """Delete what the demo keeps in `runtime`, and nothing else: the folder may be shared."""
    for name in DEMO_STATE_DIRS:
        shutil.rmtree(runtime / name, ignore_errors=True)
    for name in DEMO_STATE_FILES:
        (runtime / name).unlink(missing_ok=True)


def run_demo(sage_port: int, wms_port: int, ui_port: int, fresh: bool = False) -> None:
    runtime = settings.runtime_dir()
    if fresh:
        clear_demo_state(runtime)
    # A first start loads the demo data; a restart carries on from the state it left.
    first_start = not any((runtime / "sandbox").glob("*"))
    env = {**os.environ, **demo_environment(sage_port, wms_port, runtime)}
    dagster_home = Path(env["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(settings.PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")

    bin_dir = Path(sys.executable).parent
    sandbox = subprocess.Popen(
        [
            str(bin_dir / "sage-wms"),
            "sandbox",
            "serve",
            "--sage-port",
            str(sage_port),
            "--wms-port",
            str(wms_port),
            "--data-dir",
            str(runtime / "sandbox"),
        ],
        env=env,
    )
    try:
        sage_url, wms_url = f"http://127.0.0.1:{sage_port}", f"http://127.0.0.1:{wms_port}"
        _wait_healthy(sage_url, sandbox)
        _wait_healthy(wms_url, sandbox)
        if first_start:
            load_demo_data(sage_url, wms_url)
        _post(f"{sage_url}/_sandbox/faults", DEMO_SAGE_FAULTS)
        print(f"\nDagster UI: http://127.0.0.1:{ui_port}   (Ctrl-C stops everything)\n", flush=True)
        dagster = subprocess.Popen(
            [
                str(bin_dir / "dagster"),
                "dev",
                "-w",
                str(settings.PROJECT_ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(ui_port),
            ],
            env=env,
            cwd=settings.PROJECT_ROOT,
        )
        try:
            dagster.wait()
        except KeyboardInterrupt:
            dagster.send_signal(signal.SIGINT)
            dagster.wait(timeout=30)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=15)
