"""`sage-wms`: everything a user does outside the Dagster UI."""

from __future__ import annotations

import os
from pathlib import Path

import click

from sage_wms_pipeline import settings

DEFAULT_SAGE_PORT = 8200
DEFAULT_WMS_PORT = 8300


@click.group()
def main() -> None:
    """Sage 200 <-> WMS pipeline: simulators, scenarios and the demo."""


@main.group()
def sandbox() -> None:
    """The Sage 200 and Mintsoft simulators."""


@sandbox.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--sage-port", type=int, default=DEFAULT_SAGE_PORT, show_default=True)
@click.option("--wms-port", type=int, default=DEFAULT_WMS_PORT, show_default=True)
@click.option("--no-wms", is_flag=True, help="Serve the Sage 200 simulator only.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the simulators keep their SQLite state (default: data/runtime/sandbox).",
)
def serve(host: str, sage_port: int, wms_port: int, no_wms: bool, data_dir: Path | None) -> None:
    """Serve both simulators until interrupted. State survives restarts."""
    from sage_wms_pipeline.simulators.serve import serve as run

    data_dir = data_dir or settings.runtime_dir() / "sandbox"
    click.echo(f"Sage 200 simulator on http://{host}:{sage_port}  (state in {data_dir})")
    if not no_wms:
        click.echo(f"Mintsoft simulator on http://{host}:{wms_port}")
    run(host, sage_port, None if no_wms else wms_port, data_dir)


@sandbox.command()
@click.argument("scenario_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sage-url",
    default=lambda: os.environ.get("SAGE200_SANDBOX_URL", f"http://127.0.0.1:{DEFAULT_SAGE_PORT}"),
)
@click.option(
    "--wms-url",
    default=lambda: os.environ.get("MINTSOFT_SANDBOX_URL", f"http://127.0.0.1:{DEFAULT_WMS_PORT}"),
)
def load(scenario_file: Path, sage_url: str, wms_url: str) -> None:
    """Validate SCENARIO_FILE and load it into both running simulators."""
    from sage_wms_pipeline.scenario.io import (
        SandboxLoadError,
        ScenarioError,
        load_into_sandbox,
        read_scenario,
    )

    try:
        scenario = read_scenario(scenario_file)
        load_into_sandbox(scenario, sage_url=sage_url, wms_url=wms_url)
    except (ScenarioError, SandboxLoadError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"loaded {scenario.name!r}: {len(scenario.products)} SKUs, {len(scenario.orders)} orders")


@sandbox.command()
@click.option("--skus", type=int, default=200, show_default=True)
@click.option("--warehouses", type=int, default=3, show_default=True)
@click.option("--orders-per-day", type=int, default=200, show_default=True)
@click.option("--days", type=int, default=7, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def generate(skus: int, warehouses: int, orders_per_day: int, days: int, seed: int, output: Path) -> None:
    """Generate a realistic scenario with planted drift and its ground truth."""
    from sage_wms_pipeline.scenario.generate import generate as make
    from sage_wms_pipeline.scenario.io import write_scenario

    scenario = make(skus=skus, warehouses=warehouses, orders_per_day=orders_per_day, days=days, seed=seed)
    write_scenario(scenario, output)
    click.echo(f"wrote {output}: {len(scenario.products)} SKUs, {len(scenario.orders)} orders")


@main.group()
def scenario() -> None:
    """Scenario files."""


@scenario.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def schema(output: Path | None) -> None:
    """Print (or write) the JSON Schema of a scenario file."""
    from sage_wms_pipeline.jsonutil import dumps
    from sage_wms_pipeline.scenario.io import scenario_json_schema

    text = dumps(scenario_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        click.echo(text)


@scenario.command()
@click.argument("scenario_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(scenario_file: Path) -> None:
    """Validate a scenario file without loading it."""
    from sage_wms_pipeline.scenario.io import ScenarioError, read_scenario

    try:
        s = read_scenario(scenario_file)
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"ok: {s.name!r}, {len(s.products)} SKUs, {len(s.orders)} orders, {len(s.drift)} planted drift"
    )


@main.command()
@click.option("--sage-port", type=int, default=DEFAULT_SAGE_PORT, show_default=True)
@click.option("--wms-port", type=int, default=DEFAULT_WMS_PORT, show_default=True)
@click.option("--ui-port", type=int, default=3000, show_default=True)
@click.option(
    "--fresh", is_flag=True, help="Start over: delete the demo's state (simulators, tables, runs) first."
)
def demo(sage_port: int, wms_port: int, ui_port: int, fresh: bool) -> None:
    """Bring up the simulators with demo data and the Dagster UI."""
    from sage_wms_pipeline.demo import run_demo

    run_demo(sage_port=sage_port, wms_port=wms_port, ui_port=ui_port, fresh=fresh)


if __name__ == "__main__":
    main()
