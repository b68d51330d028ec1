"""Request bodies of the Mintsoft simulator, PascalCase as the real API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _In(BaseModel):
    # Mintsoft accepts many more fields than the simulator uses; unknown ones are ignored.
    model_config = ConfigDict(extra="ignore")


class OrderItemIn(_In):
    SKU: str | None = None
    ProductId: int | None = None
    Quantity: Decimal
    UnitPrice: Decimal = Field(default=Decimal(0), ge=0)
    UnitPriceVat: Decimal = Field(default=Decimal(0), ge=0)
    Discount: Decimal = Field(default=Decimal(0), ge=0)
    WarehouseId: int | None = None


class OrderIn(_In):
    OrderNumber: str = Field(min_length=1, max_length=100)
    ExternalOrderReference: str | None = Field(default=None, max_length=100)
    WarehouseId: int | None = None
    Warehouse: str | None = None
    CourierService: str | None = None
    CourierServiceId: int | None = None
    Channel: str | None = None
    Currency: str = "GBP"
    FirstName: str | None = None
    LastName: str | None = None
    CompanyName: str | None = None
    Address1: str | None = None
    Address2: str | None = None
    Address3: str | None = None
    Town: str | None = None
    County: str | None = None
    PostCode: str | None = None
    Country: str = Field(min_length=2)
    Email: str | None = None
    Phone: str | None = None
    Mobile: str | None = None
    RequiredDespatchDate: datetime | None = None
    DeliveryNotes: str | None = None
    OrderValue: Decimal | None = None
    OrderItems: list[OrderItemIn] | None = None
    Items: list[OrderItemIn] | None = None

    @model_validator(mode="after")
    def _has_items(self) -> OrderIn:
        if not (self.OrderItems or self.Items):
            raise ValueError("OrderItems: at least one item is required")
        return self

    @property
    def lines(self) -> list[OrderItemIn]:
        return self.OrderItems or self.Items or []

    def address(self) -> dict[str, Any]:
        keys = (
            "FirstName",
            "LastName",
            "CompanyName",
            "Address1",
            "Address2",
            "Address3",
            "Town",
            "County",
            "PostCode",
            "Country",
            "Email",
            "Phone",
            "Mobile",
            "DeliveryNotes",
        )
        return {k: getattr(self, k) for k in keys}


class QuantityLine(_In):
    SKU: str | None = None
    ProductId: int | None = None
    Quantity: Decimal


class AsnItemIn(QuantityLine):
    SourceLineId: str | None = None


class AsnIn(_In):
    WarehouseId: int
    POReference: str | None = None
    Supplier: str | None = None
    EstimatedDelivery: datetime | None = None
    Comments: str | None = None
    Items: list[AsnItemIn] = Field(min_length=1)


class StockMovementIn(_In):
    SKU: str | None = None
    ProductId: int | None = None
    WarehouseId: int
    LocationId: int | None = None
    Quantity: Decimal
    Comment: str | None = None
    Action: int | str


class OnHandIn(_In):
    SKU: str | None = None
    ProductId: int | None = None
    WarehouseId: int
    Quantity: Decimal


class ReturnItemIn(QuantityLine):
    ReturnReasonId: int = 1
    Action: str = "Restock"
    Comments: str | None = None


class AuthIn(_In):
    Username: str
    Password: str


class ClockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    advance_seconds: Decimal | None = None
    set: datetime | None = None
    speed: Decimal | None = None


class FaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int | None = None
    duplicate_rate: Decimal | None = Field(default=None, ge=0, le=1)
    out_of_order_rate: Decimal | None = Field(default=None, ge=0, le=1)
    late_rate: Decimal | None = Field(default=None, ge=0, le=1)
    late_seconds: int | None = Field(default=None, ge=0)
    malformed_rate: Decimal | None = Field(default=None, ge=0, le=1)
    rate_429: Decimal | None = Field(default=None, ge=0, le=1)
    retry_after_seconds: int | None = Field(default=None, ge=0)
    rate_5xx: Decimal | None = Field(default=None, ge=0, le=1)
    key_ttl_seconds: int | None = Field(default=None, gt=0)
    expire_keys: bool = False


def describe(exc: ValidationError, prefix: str = "") -> str:
    """`OrderItems[1].Quantity: Field required`-style text naming every bad field."""
    parts = []
    for err in exc.errors():
        path = prefix
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}" if path and not msg.startswith(path) else msg)
    return "; ".join(parts)
