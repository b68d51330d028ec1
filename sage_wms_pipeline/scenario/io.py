"""Read, check, write and load scenario files (JSON or YAML), keeping every number exact.

Reading validates in two passes: pydantic checks each field, then `checks.scenario_problems`
checks that rows refer to each other. Either pass reports all its problems at once, one line each,
naming the field path and the row (`orders[12].lines[1].sku: unknown SKU 'ABC' (order SO0001013)`).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
import simplejson
import yaml
from pydantic import ValidationError

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.checks import scenario_problems
from sage_wms_pipeline.scenario.model import Scenario

MAX_LISTED = 50
YAML_SUFFIXES = {".yaml", ".yml"}
# Above this many rows a file is written compactly: simplejson's C encoder only runs without indent.
INDENT_LIMIT = 20_000
LOAD_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class ScenarioError(ValueError):
    """A scenario that cannot be used; `problems` lists each one (field path, message, row)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in shown) + more
        )


# --- YAML that keeps decimals exact -------------------------------------------------------------


class _DecimalSafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader whose floats become Decimal from their written digits."""


def _decimal_from_yaml(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # e.g. .inf / .nan written as YAML floats
        raise yaml.constructor.ConstructorError(
            None, None, f"not a finite number: {text!r}", node.start_mark
        ) from exc
    if not value.is_finite():
        raise yaml.constructor.ConstructorError(None, None, f"not a finite number: {text!r}", node.start_mark)
    return value


_DecimalSafeLoader.add_constructor("tag:yaml.org,2002:float", _decimal_from_yaml)


class _DecimalSafeDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """SafeDumper that writes Decimal as a plain YAML number with all its digits."""


def _decimal_to_yaml(dumper: yaml.SafeDumper, value: Decimal) -> yaml.ScalarNode:
    text = format(value, "f")
    # An integral Decimal would read back as a YAML int, which is fine: pydantic makes it Decimal.
    return dumper.represent_scalar(
        "tag:yaml.org,2002:float" if "." in text else "tag:yaml.org,2002:int", text
    )


_DecimalSafeDumper.add_representer(Decimal, _decimal_to_yaml)


# --- reading ------------------------------------------------------------------------------------


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            return yaml.load(text, Loader=_DecimalSafeLoader)
        except yaml.YAMLError as exc:
            raise ScenarioError(str(path), [f"not valid YAML: {exc}"]) from exc
    try:
        return jsonutil.loads(text)
    except simplejson.JSONDecodeError as exc:
        raise ScenarioError(str(path), [f"not valid JSON: {exc}"]) from exc


# How messages name a row of each top-level list (same wording as checks.scenario_problems).
_ROW_LABELS: dict[str, str] = {
    "product_groups": "group {code}",
    "products": "product {sku}",
    "warehouses": "warehouse {sage_name}",
    "opening_stock": "stock {sku} at {warehouse}",
    "customers": "customer {account}",
    "orders": "order {document_no}",
    "receipts": "receipt {reference}",
    "drift": "{kind} {sku} at {warehouse}",
    "expected": "expected {cause} for {sku} at {warehouse}",
}


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _row_label(data: Any, loc: tuple[int | str, ...]) -> str:
    if len(loc) < 2 or not isinstance(loc[1], int) or not isinstance(data, dict):
        return ""
    label = _ROW_LABELS.get(str(loc[0]))
    rows = data.get(str(loc[0]))
    if label is None or not isinstance(rows, list) or not 0 <= loc[1] < len(rows):
        return ""
    row = rows[loc[1]]
    if not isinstance(row, dict):
        return ""
    try:
        return f" ({label.format_map({k: v for k, v in row.items() if v is not None})})"
    except (KeyError, ValueError, IndexError):
        return ""  # the fields that name the row are themselves missing


def _pydantic_problems(exc: ValidationError, data: Any) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = _loc_path(loc) or "scenario"
        value = ""
        if err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
            shown = repr(err.get("input"))
            value = f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
        problems.append(f"{where}: {err['msg']}{value}{_row_label(data, loc)}")
    return problems


def validate_data(data: Any, source: str = "scenario") -> Scenario:
    """Validate parsed scenario data (dicts and lists) fully; raise ScenarioError listing every problem."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [f"the top level must be an object, not {type(data).__name__}"])
    try:
        scenario = Scenario.model_validate(data, context={"skip_cross_checks": True})
    except ValidationError as exc:
        raise ScenarioError(source, _pydantic_problems(exc, data)) from None
    problems = scenario_problems(scenario)
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def validate_scenario(scenario: Scenario, source: str = "scenario") -> Scenario:
    """Re-validate a Scenario object (which may have been built with model_construct)."""
    return validate_data(scenario.model_dump(mode="python"), source)


def read_scenario(path: str | Path) -> Scenario:
    """Read a .json, .yaml or .yml scenario file with exact decimals, and validate it fully."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(str(path), ["no such file"])
    return validate_data(_parse(path), str(path))


# --- writing ------------------------------------------------------------------------------------


def _row_count(s: Scenario) -> int:
    return len(s.products) + len(s.opening_stock) + len(s.orders) + len(s.customers)


def write_scenario(scenario: Scenario, path: str | Path, *, indent: int | None = -1) -> None:
    """Write a scenario as JSON (or YAML by suffix). Decimals keep all their digits.

    `indent` -1 (default) indents small scenarios by 2 and writes large ones compactly, for speed.
    """
    path = Path(path)
    data = scenario.model_dump(mode="python")
    if path.suffix.lower() in YAML_SUFFIXES:
        text = yaml.dump(data, Dumper=_DecimalSafeDumper, sort_keys=False, allow_unicode=True, width=110)
    else:
        if indent == -1:
            indent = 2 if _row_count(scenario) <= INDENT_LIMIT else None
        text = jsonutil.dumps(data, indent=indent) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # never leave a half-written file under the real name


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a scenario file, with the model's descriptions."""
    schema = Scenario.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://sage-wms-pipeline.local/scenario.schema.json"
    schema["description"] = (
        (schema.get("description") or "")
        + " Cross-references (groups, SKUs, warehouses, customers, unique keys, FIFO layer sums) are "
        "checked by `sage-wms scenario check`; see docs/scenarios.md."
    ).strip()
    return schema


# --- loading into the simulators ----------------------------------------------------------------


class SandboxLoadError(RuntimeError):
    """A simulator refused or could not take a scenario."""


def load_into_sandbox(
    scenario: Scenario, *, sage_url: str, wms_url: str | None, timeout: httpx.Timeout = LOAD_TIMEOUT
) -> None:
    """Validate `scenario`, then POST it to `{url}/_sandbox/scenario` on the Sage and the WMS simulator.

    Nothing is sent when the scenario is invalid. If the Sage simulator refuses, the WMS is not
    touched; if the WMS refuses after Sage took it, the error says the two now disagree.
    """
    validate_scenario(scenario)
    body = jsonutil.dumps(scenario.model_dump(mode="python")).encode("utf-8")
    targets = [("Sage 200 simulator", sage_url)] + ([("WMS simulator", wms_url)] if wms_url else [])
    loaded: list[str] = []
    with httpx.Client(timeout=timeout) as client:
        for name, base in targets:
            url = base.rstrip("/") + "/_sandbox/scenario"
            try:
                resp = client.post(url, content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise SandboxLoadError(_refusal(name, url, f"unreachable: {exc}", loaded)) from exc
            if resp.status_code >= 300:
                raise SandboxLoadError(
                    _refusal(name, url, f"HTTP {resp.status_code}: {resp.text[:2000]}", loaded)
                )
            loaded.append(name)


def _refusal(name: str, url: str, why: str, loaded: list[str]) -> str:
    msg = f"{name} at {url} did not load the scenario ({why})"
    if loaded:
        msg += (
            f"; {' and '.join(loaded)} already loaded it, so the simulators now disagree: load again or reset"
        )
    return msg
