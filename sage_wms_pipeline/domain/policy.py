"""The integration policy: who owns what, tolerances, mappings between Sage 200 and the WMS.

Validated when loaded; a bad value is refused with a message naming the field. The shipped,
documented default lives at ``data/policy.yaml``; the warehouse and SKU mappings can also be
taken from a scenario (``Policy.with_scenario_mappings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.settings import data_dir

Trigger = Literal["pick", "pack", "despatch"]
AbcClass = Literal["A", "B", "C"]


class PolicyError(ValueError):
    """The policy file or object is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    """A line is within tolerance when |unexplained| <= max(abs_units, percent% of Sage quantity)."""

    abs_units: Decimal = Field(default=Decimal(0), ge=0, decimal_places=5)
    percent: Decimal = Field(default=Decimal(0), ge=0, le=100, decimal_places=3)


class Tolerances(_Strict):
    default: Tolerance = Field(default_factory=Tolerance)
    by_product_group: dict[str, Tolerance] = Field(default_factory=dict)
    by_abc_class: dict[AbcClass, Tolerance] = Field(default_factory=dict)
    value_materiality_gbp: Decimal = Field(default=Decimal(100), ge=0, decimal_places=2)


class RestockPolicy(_Strict):
    # Which system decides that a returned item is sellable again; until then it sits in quarantine.
    authority: Literal["sage", "wms"] = "wms"
    quarantine_returns: bool = True
    # Unexplained differences go to Sage as a stocktake, or to finance as proposed adjustments.
    adjustments_route: Literal["stocktake", "finance_proposal"] = "finance_proposal"


class ManifestPolicy(_Strict):
    # Miscellaneous items are physical but not stock-counted (packaging, sundries).
    miscellaneous_lines: Literal["include", "exclude"] = "exclude"


class OutboxPolicy(_Strict):
    backoff_base_seconds: int = Field(default=30, ge=1)
    backoff_max_seconds: int = Field(default=3600, ge=1)
    lease_seconds: int = Field(default=300, ge=1, description="A claimed row is due again after this")
    lock_linger_seconds: int = Field(
        default=45,
        ge=0,
        description="How long a posting run waits for a locked order to come due again before "
        "leaving it to the retry sensor",
    )
    lock_retry_seconds: int = Field(
        default=10, ge=1, description="A locked posting is retried this often during lock_linger_seconds"
    )

    @model_validator(mode="after")
    def _max_not_below_base(self) -> OutboxPolicy:
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_base_seconds")
        return self


class WarehouseMapping(_Strict):
    sage_name: str = Field(min_length=1, max_length=20)
    wms_warehouse_id: int = Field(ge=1)


class SkuMapping(_Strict):
    sage_code: str = Field(min_length=1, max_length=30)
    wms_sku: str = Field(min_length=1)
    wms_units_per_sage_unit: int = Field(default=1, ge=1)
    abc_class: AbcClass | None = None


class Policy(_Strict):
    valuation_master: Literal["sage", "wms"] = "sage"
    fulfilment_trigger: Trigger = "despatch"
    allocation_owner: Literal["sage", "wms"] = "sage"
    restock: RestockPolicy = Field(default_factory=RestockPolicy)
    tolerances: Tolerances = Field(default_factory=Tolerances)
    despatch_sla_hours: Decimal = Field(default=Decimal(24), gt=0)
    despatch_latency_target_seconds: int = Field(
        default=120, ge=1, description="p95 WMS despatch to Sage posting the despatch_latency check expects"
    )
    lock_deadline_minutes: int = Field(
        default=120, ge=1, description="A posting still locked this long after creation is stuck"
    )
    # FIFO variances are valued from the newest layers (those that make up stock on hand) by default.
    fifo_variance_layers: Literal["newest_first", "oldest_first"] = "newest_first"
    # A code absent from sku_mappings is taken to be the same code on both sides, 1:1.
    sku_identity_fallback: bool = True
    manifest: ManifestPolicy = Field(default_factory=ManifestPolicy)
    outbox: OutboxPolicy = Field(default_factory=OutboxPolicy)
    warehouses: list[WarehouseMapping] = Field(default_factory=list)
    skus: list[SkuMapping] = Field(default_factory=list)

    @model_validator(mode="after")
    def _mappings_are_one_to_one(self) -> Policy:
        for field, pairs in (
            ("warehouses", [(w.sage_name, w.wms_warehouse_id) for w in self.warehouses]),
            ("skus", [(s.sage_code, s.wms_sku) for s in self.skus]),
        ):
            for side, idx in (("Sage", 0), ("WMS", 1)):
                seen: dict[Any, int] = {}
                for row, pair in enumerate(pairs):
                    if pair[idx] in seen:
                        first = seen[pair[idx]]
                        raise ValueError(
                            f"{field}[{row}]: {side} key {pair[idx]!r} already mapped at {field}[{first}]"
                        )
                    seen[pair[idx]] = row
        return self

    # --- look-ups -------------------------------------------------------------------------
    def wms_warehouse_id(self, sage_name: str) -> int:
        try:
            return self._warehouse_index[0][sage_name]
        except KeyError:
            raise KeyError(f"warehouse {sage_name!r} has no WMS mapping in the policy") from None

    def sage_warehouse(self, wms_warehouse_id: int) -> str:
        try:
            return self._warehouse_index[1][wms_warehouse_id]
        except KeyError:
            raise KeyError(f"WMS warehouse {wms_warehouse_id} has no Sage mapping in the policy") from None

    def sku_for_sage(self, sage_code: str) -> SkuMapping | None:
        found = self._by_sage().get(sage_code)
        if found is None and self.sku_identity_fallback:
            return SkuMapping(sage_code=sage_code, wms_sku=sage_code)
        return found

    def sku_for_wms(self, wms_sku: str) -> SkuMapping | None:
        found = self._by_wms().get(wms_sku)
        if found is None and self.sku_identity_fallback and wms_sku not in self._by_sage():
            return SkuMapping(sage_code=wms_sku, wms_sku=wms_sku)
        return found

    # Built once per (immutable) policy: look-ups run per despatch line.
    @cached_property
    def _sku_index(self) -> tuple[dict[str, SkuMapping], dict[str, SkuMapping]]:
        return {s.sage_code: s for s in self.skus}, {s.wms_sku: s for s in self.skus}

    @cached_property
    def _warehouse_index(self) -> tuple[dict[str, int], dict[int, str]]:
        return (
            {w.sage_name: w.wms_warehouse_id for w in self.warehouses},
            {w.wms_warehouse_id: w.sage_name for w in self.warehouses},
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Policy:
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("_sku_index", "_warehouse_index"):  # a copy may change the mappings
            copy.__dict__.pop(cached, None)
        return copy

    def _by_sage(self) -> dict[str, SkuMapping]:
        return self._sku_index[0]

    def _by_wms(self) -> dict[str, SkuMapping]:
        return self._sku_index[1]

    def tolerance_for(self, product_group: str | None, abc_class: str | None) -> Tolerance:
        """Product-group rule first, then ABC class, then the default."""
        t = self.tolerances
        if product_group is not None and product_group in t.by_product_group:
            return t.by_product_group[product_group]
        if abc_class is not None and abc_class in t.by_abc_class:
            return t.by_abc_class[abc_class]  # type: ignore[index]
        return t.default

    def with_scenario_mappings(self, scenario: Scenario) -> Policy:
        """This policy with its warehouse and SKU mappings replaced by the scenario's."""
        data = self.model_dump()
        data["warehouses"] = [
            {"sage_name": w.sage_name, "wms_warehouse_id": w.wms_warehouse_id} for w in scenario.warehouses
        ]
        data["skus"] = [
            {
                "sage_code": p.sku,
                "wms_sku": p.wms_code,
                "wms_units_per_sage_unit": p.wms_units_per_sage_unit,
                "abc_class": p.abc_class,
            }
            for p in scenario.products
        ]
        return validate_policy(data, source="scenario mappings")


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid policy ({source}): " + "; ".join(parts)


def validate_policy(data: Any, *, source: str = "policy") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"invalid policy ({source}): expected a mapping at the top level")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_format_errors(exc, source)) from None


def default_policy_path() -> Path:
    return data_dir() / "policy.yaml"


def load_policy(path: Path | str | None = None, *, scenario: Scenario | None = None) -> Policy:
    """Read policy.yaml (default: data/policy.yaml); with a scenario, take its mappings."""
    p = Path(path) if path is not None else default_policy_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {p}: {exc}") from None
    try:
        # Numbers must stay exact: parse YAML floats as Decimal via their source text.
        data = yaml.load(text, Loader=_DecimalLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid policy ({p}): not valid YAML: {exc}") from None
    policy = validate_policy(data, source=str(p))
    return policy.with_scenario_mappings(scenario) if scenario is not None else policy


class _DecimalLoader(yaml.SafeLoader):
    pass


def _decimal_constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    return Decimal(loader.construct_scalar(node).replace("_", ""))


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal_constructor)
