"""A realistic, seeded scenario generator with planted drift and its ground truth.

The shape follows /work/shared/reference/stock-accounting.md §4 (a mid-size UK retailer) and is
documented in docs/scenarios.md, which is the contract the reconciliation relies on. Everything
is drawn from one numpy Generator seeded by `seed`, so the same arguments give the same file.

Speed: the draws are vectorised and rows are built with `model_construct` (no validation) from
values that are correct by construction; `scenario.io` validates fully when a file is read, and
the tests validate generated scenarios.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np

from sage_wms_pipeline.scenario.model import (
    CostLayer,
    Customer,
    ExpectedVariance,
    Faults,
    OpeningStock,
    OrderLine,
    PlantedDrift,
    Product,
    ProductGroup,
    Receipt,
    SageSettings,
    SalesOrder,
    Scenario,
    VarianceCause,
    Warehouse,
    WarehouseBehaviour,
    WmsOrderState,
)

DEFAULT_STARTS_AT = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
MIN_SKUS = 50
MIN_EACH = 2  # at least this many Standard-costed SKUs, and three times as many pack-sized ones
CENT = Decimal("0.01")
ZERO = Decimal(0)

# code, name, product type, costing, stock nominal, issue nominal, share of stock SKUs, SKU prefix
GROUPS: list[tuple[str, str, str, str, str, str, float, str]] = [
    ("APPAREL", "Apparel", "Stock", "FIFO", "1001", "5000", 0.26, "APP"),
    ("FOOTWEAR", "Footwear", "Stock", "FIFO", "1001", "5000", 0.08, "FTW"),
    ("HOME", "Homeware", "Stock", "Average", "1002", "5010", 0.20, "HOM"),
    ("KITCHEN", "Kitchen and dining", "Stock", "Average", "1002", "5010", 0.12, "KIT"),
    ("BEAUTY", "Beauty and fragrance", "Stock", "Average", "1003", "5020", 0.08, "BTY"),
    ("GIFTS", "Gifts and cards", "Stock", "Standard", "1004", "5030", 0.14, "GFT"),
    ("STATIONERY", "Stationery", "Stock", "Standard", "1004", "5030", 0.07, "STN"),
    ("TOYS", "Toys and games", "Stock", "FIFO", "1005", "5040", 0.05, "TOY"),
    ("SERVICES", "Services", "ServiceLabour", "Average", "4100", "5100", 0.0, "SVC"),
    ("MISC", "Packaging and sundries", "Miscellaneous", "Average", "5200", "5200", 0.0, "MSC"),
]
NOUNS = {
    "APPAREL": ["T-shirt", "Hoodie", "Jumper", "Shirt", "Dress", "Scarf", "Jacket", "Chinos", "Socks"],
    "FOOTWEAR": ["Trainer", "Boot", "Slipper", "Sandal", "Loafer"],
    "HOME": ["Candle", "Cushion", "Throw", "Vase", "Lamp", "Frame", "Rug", "Diffuser"],
    "KITCHEN": ["Mug", "Bowl", "Plate", "Tea towel", "Jug", "Board", "Tumbler"],
    "BEAUTY": ["Hand cream", "Soap", "Bath oil", "Lip balm", "Body wash"],
    "GIFTS": ["Gift box", "Card", "Gift bag", "Ribbon", "Tag set", "Advent calendar"],
    "STATIONERY": ["Notebook", "Pen set", "Planner", "Wrapping paper", "Envelope set"],
    "TOYS": ["Puzzle", "Plush bear", "Card game", "Wooden train", "Kite"],
}
ADJECTIVES = ["Organic", "Classic", "Linen", "Stoneware", "Recycled", "Heritage", "Nordic", "Velvet", "Luxe"]
COLOURS = ["black", "white", "navy", "sage", "ochre", "grey", "rust", "cream", "teal", "plum"]
SIZES = ["XS", "S", "M", "L", "XL"]
PACKS = np.array([4, 6, 10, 12, 24])  # Sage sells these in packs, the WMS counts eaches
SERVICES = [
    ("SVC-GIFTWRAP", "Gift wrapping service", "SERVICES", "0.40", "3.50"),
    ("SVC-ENGRAVE", "Personal engraving", "SERVICES", "1.20", "7.50"),
    ("SVC-ASSEMBLY", "Assembly service", "SERVICES", "6.00", "25.00"),
    ("MSC-TISSUE", "Tissue paper", "MISC", "0.05", "0.00"),
    ("MSC-BOX-M", "Shipping box medium", "MISC", "0.35", "0.00"),
]
OWN_SITES = [
    ("LEEDS", "Leeds DC"),
    ("BRISTOL", "Bristol Hub"),
    ("GLASGOW", "Glasgow DC"),
    ("DERBY", "Derby Returns Centre"),
    ("NEWPORT", "Newport Store Hub"),
    ("NORWICH", "Norwich DC"),
]
THREE_PLS = [("3PL-MK", "Milton Keynes 3PL"), ("3PL-DAV", "Daventry 3PL"), ("3PL-WAR", "Warrington 3PL")]
TOWNS = [
    ("York", "YO1"),
    ("Bath", "BA1"),
    ("Leicester", "LE1"),
    ("Norwich", "NR2"),
    ("Exeter", "EX1"),
    ("Chester", "CH1"),
    ("Durham", "DH1"),
    ("Harrogate", "HG1"),
    ("Bristol", "BS1"),
    ("Cardiff", "CF10"),
    ("Glasgow", "G1"),
    ("Leeds", "LS1"),
    ("Brighton", "BN1"),
    ("Oxford", "OX1"),
    ("Belfast", "BT1"),
]
STREETS = ["High St", "Mill Lane", "Quay St", "Rose Row", "Church Rd", "Station Rd", "Market Pl", "Park Ave"]
TRADE_WORDS = ["Interiors", "Gifts", "Boutique", "Home", "Emporium", "Trading", "Living", "Design"]
SURNAMES = ["Jones", "Harris", "Patel", "Smith", "Khan", "Taylor", "Evans", "Walsh", "Brown", "Reid", "Shah"]
CHANNELS = [
    ("WEB001", "Web shop customers"),
    ("AMZ001", "Amazon marketplace"),
    ("EBAY001", "eBay marketplace"),
    ("NOTHS01", "Not On The High Street"),
]
CHANNEL_SHARE = np.array([0.62, 0.22, 0.08, 0.08])
COURIERS = ["Royal Mail 48", "Royal Mail 24", "DPD Next Day", "Evri 48"]
COMMENTS = [
    "Deliver to rear entrance",
    "Leave with neighbour",
    "Gift message: Happy Christmas!",
    "Call before delivery",
    "Fragile: pack with care",
]
FREE_TEXT = [("Custom ribbon, gold", "0.50"), ("Personalised card", "1.50"), ("Sample swatch", "0.00")]
CHARGES_B2C = ["3.95", "4.99", "6.95"]
HOURLY = np.array([1, 1, 1, 1, 1, 2, 3, 4, 6, 7, 7, 7, 8, 8, 7, 6, 6, 7, 8, 9, 10, 9, 6, 3], dtype=float)

DRIFT_CAUSE: dict[str, VarianceCause] = {
    "despatched_not_posted": "timing",
    "received_not_in_sage": "timing",
    "return_in_quarantine": "status",
    "uom_mismatch": "mapping",
    "bin_mis_slot": "unexplained",
    "true_shrink": "unexplained",
    "true_gain": "unexplained",
}


def seasonal_factor(day: date, peak_factor: float) -> float:
    """Relative order volume of a calendar day: the November-December peak and a weekly rhythm.

    Base 1; 1 Nov - 19 Nov ramps towards the peak; 20 Nov - 18 Dec (Black Friday to the last
    posting days) is `peak_factor`; 19 - 24 Dec half-peak; 25 - 26 Dec quiet; 27 - 31 Dec sales.
    Mondays are busier (weekend web orders land), Saturdays quieter.
    """
    m, d = day.month, day.day
    if m == 11 and d < 20:
        f = 1 + (peak_factor - 1) * d / 40
    elif (m == 11 and d >= 20) or (m == 12 and d <= 18):
        f = peak_factor
    elif m == 12 and d <= 24:
        f = max(1.0, peak_factor / 2)
    elif m == 12 and d <= 26:
        f = 0.3
    elif m == 12:
        f = 1.5
    else:
        f = 1.0
    return f * (1.15, 1.0, 1.0, 1.0, 1.0, 0.85, 1.0)[day.weekday()]


def _dec_pence(pence: np.ndarray) -> list[Decimal]:
    """Integer pence -> Decimal pounds with two places, exactly."""
    return [Decimal(int(p)).scaleb(-2) for p in pence]


def _ean13(numbers: np.ndarray) -> list[str]:
    """Valid EAN-13 barcodes with the UK '50' prefix from distinct integers."""
    digits = [f"50{int(n) % 10**10:010d}" for n in numbers]
    out = []
    for d in digits:
        s = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(d))
        out.append(d + str((10 - s % 10) % 10))
    return out


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split `total` into integers proportional to `weights` (largest remainder; deterministic)."""
    raw = weights / weights.sum() * total
    base = np.floor(raw).astype(np.int64)
    rest = total - int(base.sum())
    if rest:
        base[np.argsort(-(raw - base), kind="stable")[:rest]] += 1
    return base


@dataclass
class _Catalogue:
    products: list[Product]
    stock_idx: np.ndarray  # indices into products of Stock items
    group_of: np.ndarray  # group index per product
    units: np.ndarray  # wms units per Sage unit per product
    cost_pence: np.ndarray
    price_pence: np.ndarray
    demand_p: np.ndarray  # probability of being picked for an order line, over stock_idx
    abc: np.ndarray
    service_idx: np.ndarray


def _catalogue(rng: np.random.Generator, n: int, groups: list[ProductGroup]) -> _Catalogue:
    n_service = len(SERVICES)
    n_stock = n - n_service
    stock_groups = [i for i, g in enumerate(GROUPS) if g[6] > 0]
    shares = np.array([GROUPS[i][6] for i in stock_groups])
    group_of_stock = np.array(stock_groups)[
        rng.choice(len(stock_groups), size=n_stock, p=shares / shares.sum())
    ]
    # Small catalogues still need Standard-costed items, for the standard cost change.
    standard = [i for i in stock_groups if GROUPS[i][3] == "Standard"]
    while np.isin(group_of_stock, standard).sum() < MIN_EACH:
        group_of_stock[np.flatnonzero(~np.isin(group_of_stock, standard))[-1]] = standard[0]
    # Costs log-normal around £6; retail markup 2-3.2x, priced to .99 / .49 / .00 endings.
    cost = np.clip(np.round(np.exp(rng.normal(math.log(600), 0.8, n_stock))), 20, 60_000).astype(np.int64)
    markup = rng.uniform(2.0, 3.2, n_stock)
    price = np.ceil(cost * markup / 100) * 100 - rng.choice([1, 51, 0], size=n_stock, p=[0.6, 0.25, 0.15])
    price = np.maximum(price, cost + 1).astype(np.int64)
    units = np.ones(n_stock, dtype=np.int64)
    packed = rng.random(n_stock) < 0.04
    if packed.sum() < MIN_EACH * 3:  # a few packs even in a small catalogue, for the UoM drift
        packed[: MIN_EACH * 3] = True
    units[packed] = rng.choice(PACKS, size=int(packed.sum()))
    cost[packed] *= units[packed]  # a pack costs k eaches
    price[packed] = cost[packed] * 2 + 99
    # Pareto value curve: annual value per SKU log-normal with sigma 1.68 puts ~80% in the top 20%.
    value = np.exp(rng.normal(0.0, 1.68, n_stock))
    order = np.argsort(-value, kind="stable")
    cum = np.cumsum(value[order]) / value.sum()
    abc = np.empty(n_stock, dtype="<U1")
    abc[order] = np.where(cum <= 0.80, "A", np.where(cum <= 0.95, "B", "C"))
    demand = value / cost  # units per period, proportional
    barcodes = _ean13(rng.choice(9 * 10**9, size=n_stock, replace=False) + 10**9)
    wms_alias = rng.random(n_stock) < 0.08  # the WMS knows these by barcode

    adj = rng.integers(0, len(ADJECTIVES), n_stock)
    col = rng.integers(0, len(COLOURS), n_stock)
    size = rng.integers(0, len(SIZES), n_stock)
    noun_pick = rng.integers(0, 1000, n_stock)
    costs, prices = _dec_pence(cost), _dec_pence(price)
    products: list[Product] = []
    counters: dict[int, int] = defaultdict(int)
    for i in range(n_stock):
        g = int(group_of_stock[i])
        code, _, _, _, _, _, _, prefix = GROUPS[g]
        counters[g] += 1
        nouns = NOUNS[code]
        name = f"{ADJECTIVES[adj[i]]} {nouns[noun_pick[i] % len(nouns)]} {COLOURS[col[i]]}"
        if code in ("APPAREL", "FOOTWEAR"):
            name += f" {SIZES[size[i]]}"
        k = int(units[i])
        if k > 1:
            name += f" pack of {k}"
        products.append(
            Product.model_construct(
                sku=f"{prefix}-{counters[g]:06d}",
                name=name,
                group=code,
                unit_cost=costs[i],
                selling_price=prices[i],
                wms_sku=barcodes[i] if wms_alias[i] else None,
                wms_units_per_sage_unit=k,
                abc_class=str(abc[i]),
                barcode=barcodes[i],
            )
        )
    group_index = {g.code: i for i, g in enumerate(groups)}
    for sku, name, grp, c, p in SERVICES:
        products.append(
            Product.model_construct(
                sku=sku,
                name=name,
                group=grp,
                unit_cost=Decimal(c),
                selling_price=Decimal(p),
                wms_sku=None,
                wms_units_per_sage_unit=1,
                abc_class="C",
                barcode=None,
            )
        )
    svc_cost = np.array([int(Decimal(c) * 100) for _, _, _, c, _ in SERVICES], dtype=np.int64)
    svc_price = np.array([int(Decimal(p) * 100) for _, _, _, _, p in SERVICES], dtype=np.int64)
    group_of = np.concatenate([group_of_stock, [group_index[s[2]] for s in SERVICES]])
    return _Catalogue(
        products=products,
        stock_idx=np.arange(n_stock),
        group_of=group_of,
        units=np.concatenate([units, np.ones(n_service, dtype=np.int64)]),
        cost_pence=np.concatenate([cost, svc_cost]),
        price_pence=np.concatenate([price, svc_price]),
        demand_p=demand / demand.sum(),
        abc=abc,
        service_idx=np.arange(n_stock, n_stock + 3),  # the three ServiceLabour items
    )


def _warehouses(n: int) -> list[Warehouse]:
    if n < 1 or n > len(OWN_SITES) + len(THREE_PLS):
        raise ValueError(f"warehouses must be between 1 and {len(OWN_SITES) + len(THREE_PLS)}, not {n}")
    n_3pl = 0 if n == 1 else max(1, n // 4)
    sites = [(s, w, "own") for s, w in OWN_SITES[: n - n_3pl]] + [(s, w, "3pl") for s, w in THREE_PLS[:n_3pl]]
    return [
        Warehouse.model_construct(sage_name=s, wms_warehouse_id=i + 1, wms_name=w, kind=kind)
        for i, (s, w, kind) in enumerate(sites)
    ]


def _customers(rng: np.random.Generator, n_trade: int) -> list[Customer]:
    out = [
        Customer.model_construct(
            account=acc,
            name=name,
            address_1="Unit 1, Canal Wharf",
            town="Leeds",
            postcode="LS11 5PS",
            country="GB",
            email=None,
        )
        for acc, name in CHANNELS
    ]
    town = rng.integers(0, len(TOWNS), n_trade)
    street = rng.integers(0, len(STREETS), n_trade)
    num = rng.integers(1, 200, n_trade)
    sur = rng.integers(0, len(SURNAMES), n_trade)
    word = rng.integers(0, len(TRADE_WORDS), n_trade)
    inward = rng.integers(0, 10, n_trade)
    letters = rng.integers(0, 26, (n_trade, 2))
    for i in range(n_trade):
        t, pc = TOWNS[town[i]]
        out.append(
            Customer.model_construct(
                account=f"T{i + 1:05d}",
                name=f"{SURNAMES[sur[i]]} {TRADE_WORDS[word[i]]} Ltd",
                address_1=f"{num[i]} {STREETS[street[i]]}",
                town=t,
                postcode=f"{pc} {inward[i]}{chr(65 + letters[i, 0])}{chr(65 + letters[i, 1])}",
                country="GB",
                email=None,
            )
        )
    return out


def _order_times(
    rng: np.random.Generator, total: int, days: int, starts_at: datetime, peak_factor: float
) -> list[datetime]:
    """`total` order timestamps in the `days` 24-hour periods before `starts_at`, shaped by date and hour."""
    period_start = [starts_at - timedelta(days=days - i) for i in range(days)]
    weights = np.array([seasonal_factor((p + timedelta(hours=12)).date(), peak_factor) for p in period_start])
    per_day = _allocate(total, weights)
    hour_p = HOURLY / HOURLY.sum()
    out: list[datetime] = []
    for p, count in zip(period_start, per_day, strict=True):
        hours = rng.choice(24, size=int(count), p=hour_p)
        offset = ((hours - p.hour) % 24) * 3600 + rng.integers(0, 3600, int(count))
        offset.sort()
        out.extend(p + timedelta(seconds=int(s)) for s in offset)
    return out


def generate(
    *,
    skus: int,
    warehouses: int,
    orders_per_day: int,
    days: int,
    seed: int,
    starts_at: datetime = DEFAULT_STARTS_AT,
    peak_factor: float = 4.0,
    drift_per_kind: int | None = None,
) -> Scenario:
    """A scenario of `skus` products in `warehouses` warehouses with `orders_per_day * days` orders.

    Orders fall in the `days` days before `starts_at`, spread by `seasonal_factor` (so a window that
    spans November shows the peak). `drift_per_kind` instances of each drift kind are planted
    (default: 2 for small catalogues up to 50 for 50,000 SKUs). Deterministic from `seed`.
    """
    if skus < MIN_SKUS:
        raise ValueError(f"skus must be at least {MIN_SKUS} to plant every drift kind, not {skus}")
    if orders_per_day < 1 or days < 1:
        raise ValueError("orders_per_day and days must be at least 1")
    if starts_at.tzinfo is None:
        starts_at = starts_at.replace(tzinfo=UTC)
    rng = np.random.default_rng(seed)
    groups = [
        ProductGroup.model_construct(
            code=c, name=n, product_type=t, costing_method=m, stock_nominal_code=sn, issue_nominal_code=iss
        )
        for c, n, t, m, sn, iss, _, _ in GROUPS
    ]
    cat = _catalogue(rng, skus, groups)
    whs = _warehouses(warehouses)
    n_wh = len(whs)
    n_stock = len(cat.stock_idx)

    # Which warehouses stock which SKU: the main DC holds everything, others A items mostly.
    stocked = np.zeros((n_stock, n_wh), dtype=bool)
    stocked[:, 0] = True
    reach = {"A": 0.95, "B": 0.7, "C": 0.4}
    for w in range(1, n_wh):
        scale = 0.6 if whs[w].kind == "3pl" else 1.0
        p = np.vectorize(reach.__getitem__)(cat.abc) * scale
        stocked[:, w] = rng.random(n_stock) < p
    wh_share = np.array([0.55] + [0.45 / max(1, n_wh - 1)] * (n_wh - 1)) if n_wh > 1 else np.array([1.0])

    # --- orders ---------------------------------------------------------------------------
    n_orders = orders_per_day * days
    times = _order_times(rng, n_orders, days, starts_at, peak_factor)
    n_trade = int(min(5000, max(10, n_orders // 40)))
    customers = _customers(rng, n_trade)
    is_trade = rng.random(n_orders) < 0.12
    channel = rng.choice(len(CHANNELS), size=n_orders, p=CHANNEL_SHARE)
    trade_acc = rng.integers(0, n_trade, n_orders)
    order_wh = rng.choice(n_wh, size=n_orders, p=wh_share)
    n_lines = np.where(
        is_trade,
        rng.choice([1, 2, 3], size=n_orders, p=[0.3, 0.35, 0.35]),
        rng.choice([1, 2, 3], size=n_orders, p=[0.55, 0.30, 0.15]),
    )
    total_lines = int(n_lines.sum())
    line_order = np.repeat(np.arange(n_orders), n_lines)
    line_sku = cat.stock_idx[rng.choice(n_stock, size=total_lines, p=cat.demand_p)]
    line_wh = order_wh[line_order]
    line_wh = np.where(stocked[line_sku, line_wh], line_wh, 0)
    b2c_qty = rng.choice([1, 2, 3], size=total_lines, p=[0.82, 0.14, 0.04])
    trade_qty = rng.choice([6, 12, 24, 36], size=total_lines, p=[0.4, 0.35, 0.2, 0.05])
    line_qty = np.where(is_trade[line_order], trade_qty, b2c_qty)
    trade_price = (cat.price_pence[line_sku] * 85 + 50) // 100  # 15% trade discount, to the penny
    line_price = np.where(is_trade[line_order], trade_price, cat.price_pence[line_sku])
    status_draw = rng.random(n_orders)
    status = np.where(
        status_draw < 0.02,
        "OnHold",
        np.where(status_draw < 0.03, "Cancelled", np.where(status_draw < 0.035, "Draft", "Live")),
    )
    has_charge = rng.random(n_orders) < 0.35
    charge_pick = rng.integers(0, len(CHARGES_B2C), n_orders)
    has_comment = rng.random(n_orders) < 0.04
    comment_pick = rng.integers(0, len(COMMENTS), n_orders)
    has_free = rng.random(n_orders) < 0.02
    free_pick = rng.integers(0, len(FREE_TEXT), n_orders)
    has_service = rng.random(n_orders) < 0.05
    service_pick = cat.service_idx[rng.integers(0, len(cat.service_idx), n_orders)]
    courier = rng.choice(len(COURIERS), size=n_orders, p=[0.5, 0.25, 0.15, 0.1])

    skus_s = [p.sku for p in cat.products]
    wh_names = [w.sage_name for w in whs]
    qty_dec = {q: Decimal(int(q)) for q in [*np.unique(line_qty).tolist(), 1]}
    price_cache: dict[int, Decimal] = {}

    def pounds(pence: int) -> Decimal:
        d = price_cache.get(pence)
        if d is None:
            d = price_cache[pence] = Decimal(pence).scaleb(-2)
        return d

    charge_lines = [
        OrderLine.model_construct(
            line_type="Charge",
            sku=None,
            warehouse=None,
            quantity=Decimal(1),
            unit_price=Decimal(c),
            description="Carriage",
        )
        for c in CHARGES_B2C
    ]
    trade_charge = OrderLine.model_construct(
        line_type="Charge",
        sku=None,
        warehouse=None,
        quantity=Decimal(1),
        unit_price=Decimal("9.95"),
        description="Carriage (pallet)",
    )
    comment_lines = [
        OrderLine.model_construct(
            line_type="Comment", sku=None, warehouse=None, quantity=ZERO, unit_price=ZERO, description=c
        )
        for c in COMMENTS
    ]
    free_lines = [
        OrderLine.model_construct(
            line_type="FreeText",
            sku=None,
            warehouse=None,
            quantity=Decimal(1),
            unit_price=Decimal(p),
            description=t,
        )
        for t, p in FREE_TEXT
    ]
    first_no = 2_000_001
    orders: list[SalesOrder] = []
    starts = np.concatenate([[0], np.cumsum(n_lines)])
    ls_sku, ls_wh, ls_qty, ls_price = (
        line_sku.tolist(),
        line_wh.tolist(),
        line_qty.tolist(),
        line_price.tolist(),
    )
    for o in range(n_orders):
        lines = [
            OrderLine.model_construct(
                line_type="Standard",
                sku=skus_s[ls_sku[j]],
                warehouse=wh_names[ls_wh[j]],
                quantity=qty_dec[ls_qty[j]],
                unit_price=pounds(ls_price[j]),
                description="",
            )
            for j in range(starts[o], starts[o + 1])
        ]
        if has_service[o]:
            svc = int(service_pick[o])
            lines.append(
                OrderLine.model_construct(
                    line_type="Standard",
                    sku=skus_s[svc],
                    warehouse=wh_names[ls_wh[starts[o]]],
                    quantity=qty_dec[1],
                    unit_price=pounds(int(cat.price_pence[svc])),
                    description="",
                )
            )
        if has_free[o]:
            lines.append(free_lines[free_pick[o]].model_copy())  # own object: callers may edit lines
        if has_charge[o]:
            lines.append((trade_charge if is_trade[o] else charge_lines[charge_pick[o]]).model_copy())
        if has_comment[o]:
            lines.append(comment_lines[comment_pick[o]].model_copy())
        orders.append(
            SalesOrder.model_construct(
                document_no=f"SO{first_no + o:07d}",
                customer=customers[4 + int(trade_acc[o])].account if is_trade[o] else CHANNELS[channel[o]][0],
                document_date=times[o],
                status=str(status[o]),
                lines=lines,
                courier_service=COURIERS[courier[o]],
                in_wms=None,
            )
        )

    # --- opening stock: cover the ordered quantity plus weeks of demand --------------------
    ordered = np.zeros((n_stock, n_wh), dtype=np.int64)
    np.add.at(ordered, (line_sku, line_wh), line_qty)
    daily = cat.demand_p * (n_orders / days) * 1.6
    cover = rng.uniform(7, 35, (n_stock, n_wh)) * daily[:, None] * wh_share[None, :]
    stock = ordered + np.ceil(cover).astype(np.int64) + rng.integers(2, 12, (n_stock, n_wh))
    stock[~stocked] = 0
    unconfirmed = np.where(
        rng.random((n_stock, n_wh)) < 0.04, np.ceil(stock * rng.uniform(0.1, 0.4, (n_stock, n_wh))), 0
    ).astype(np.int64)
    confirmed = stock - unconfirmed
    layer_n = rng.choice([1, 2, 3], size=(n_stock, n_wh), p=[0.3, 0.45, 0.25])
    wms_on_hand = stock * cat.units[:n_stock, None]
    quarantine = np.zeros_like(stock)

    # --- planted drift -------------------------------------------------------------------
    per_kind = drift_per_kind or int(max(2, min(50, n_stock // 1000)))
    drift: list[PlantedDrift] = []
    used = np.zeros((n_stock, n_wh), dtype=bool)
    plain = (cat.units[:n_stock] == 1)[:, None] & stocked

    # Standard cost changed mid-month: Sage holds the new cost; the old one and the date are kept.
    # Chosen first so the items are certain to be found; their pairs then carry no other drift.
    effective = starts_at.replace(day=15, hour=0, minute=0, second=0, microsecond=0)
    if starts_at.day <= 15:
        effective = (effective - timedelta(days=28)).replace(day=15)
    std_group = np.array([groups[g].costing_method == "Standard" for g in cat.group_of[:n_stock]])
    std_cand = np.flatnonzero(std_group & ~used.any(axis=1))
    for s in np.sort(rng.choice(std_cand, size=min(per_kind, std_cand.size), replace=False)).tolist():
        p = cat.products[s]
        old = p.unit_cost
        new = (old * Decimal(str(round(float(rng.uniform(1.04, 1.15)), 2)))).quantize(CENT)
        p.unit_cost = new
        for w in np.flatnonzero(stocked[s]).tolist():
            used[s, w] = True
            d = _drift(
                "standard_cost_change",
                p.sku,
                wh_names[w],
                ZERO,
                f"standard cost {old} -> {new} from {effective.date()}; revalues stock, no quantity change",
            )
            d.cause = None
            d.new_standard_cost = new
            d.previous_standard_cost = old
            d.effective = effective
            drift.append(d)

    # Despatched in the WMS, not posted to Sage: recent Live orders of plain stock lines.
    recent = np.flatnonzero(status == "Live")[::-1][: max(50, per_kind * 20)].tolist()
    despatched: list[int] = []
    for o in recent:
        js = range(starts[o], starts[o + 1])
        if (
            all(plain[ls_sku[j], ls_wh[j]] and not used[ls_sku[j], ls_wh[j]] for j in js)
            and not has_service[o]
        ):
            despatched.append(o)
            for j in js:
                used[ls_sku[j], ls_wh[j]] = True
            if len(despatched) == per_kind:
                break
    for o in despatched:
        order = orders[o]
        order.in_wms = WmsOrderState.model_construct(
            status="DESPATCHED",
            despatched_quantities={
                i: ln.quantity for i, ln in enumerate(order.lines) if ln.line_type == "Standard"
            },
        )
        for ln in order.lines:
            if ln.line_type == "Standard":
                drift.append(
                    _drift(
                        "despatched_not_posted",
                        ln.sku,
                        ln.warehouse,
                        -ln.quantity,
                        f"{order.document_no} despatched in the WMS, not posted to Sage",
                        order.document_no,
                    )
                )

    def pick_pairs(mask: np.ndarray, n: int) -> list[tuple[int, int]]:
        cand = np.flatnonzero((mask & ~used).ravel())
        chosen = rng.choice(cand, size=min(n, cand.size), replace=False) if cand.size else cand
        out = [(int(c) // n_wh, int(c) % n_wh) for c in np.sort(chosen)]
        for s, w in out:
            used[s, w] = True
        return out

    receipts: list[Receipt] = []
    rno = 1

    def receipt(s: int, w: int, qty: int, when: datetime, booked: bool, posted: bool) -> Receipt:
        nonlocal rno
        r = Receipt.model_construct(
            reference=f"ASN{rno:06d}",
            sku=skus_s[s],
            warehouse=wh_names[w],
            quantity=Decimal(qty),
            unit_cost=cat.products[s].unit_cost,
            expected=when,
            booked_in_wms=booked,
            posted_to_sage=posted,
        )
        rno += 1
        receipts.append(r)
        return r

    for s, w in pick_pairs(plain, per_kind):
        qty = int(rng.integers(2, 11)) * 12
        r = receipt(s, w, qty, starts_at - timedelta(hours=int(rng.integers(2, 30))), True, False)
        drift.append(
            _drift(
                "received_not_in_sage",
                skus_s[s],
                wh_names[w],
                Decimal(qty),
                f"{r.reference} booked in at the WMS, not yet received in Sage",
                r.reference,
            )
        )
    for s, w in pick_pairs(plain, per_kind):
        q = int(rng.integers(1, 6))
        quarantine[s, w] += q
        drift.append(
            _drift(
                "return_in_quarantine",
                skus_s[s],
                wh_names[w],
                Decimal(q),
                f"{q} returned unit(s) awaiting inspection in WMS quarantine",
            )
        )
    # UoM: the WMS counts eaches; a broken pack leaves k/2 loose eaches = half a Sage unit.
    even_pack = ((cat.units[:n_stock] % 2) == 0)[:, None] & stocked
    for s, w in pick_pairs(even_pack, per_kind):
        k = int(cat.units[s])
        loose = k // 2
        wms_on_hand[s, w] += loose
        q = Decimal(loose) / Decimal(k)
        drift.append(
            _drift(
                "uom_mismatch",
                skus_s[s],
                wh_names[w],
                q,
                f"WMS counts eaches ({k} per Sage pack): {loose} loose eaches from a broken pack",
            )
        )
    for s, w in pick_pairs(plain, per_kind):
        q = int(rng.integers(1, 11))
        drift.append(
            _drift(
                "bin_mis_slot",
                skus_s[s],
                wh_names[w],
                ZERO,
                f"{q} unit(s) slotted in bin B-{s % 40 + 1:02d}-{w + 1} instead of A-{s % 40 + 1:02d}-"
                f"{w + 1}: -{q} in one bin, +{q} in the other; nets to zero",
            )
        )
    for s, w in pick_pairs(plain & (stock >= 4), per_kind):
        q = int(rng.integers(1, min(5, int(stock[s, w]) // 2) + 1))
        wms_on_hand[s, w] -= q
        drift.append(
            _drift("true_shrink", skus_s[s], wh_names[w], Decimal(-q), f"{q} unit(s) missing in the WMS")
        )
    for s, w in pick_pairs(plain, per_kind):
        q = int(rng.integers(1, 6))
        wms_on_hand[s, w] += q
        drift.append(_drift("true_gain", skus_s[s], wh_names[w], Decimal(q), f"{q} unit(s) found in the WMS"))

    # Receipts without a variance: booked and posted (both sides), or expected later (neither).
    for s, w in pick_pairs(plain, per_kind):
        receipt(s, w, int(rng.integers(1, 6)) * 24, starts_at - timedelta(days=1), True, True)
    for s, w in pick_pairs(stocked, per_kind * 4):
        receipt(
            s,
            w,
            int(rng.integers(1, 11)) * 12,
            starts_at + timedelta(days=int(rng.integers(1, 15))),
            False,
            False,
        )

    opening = _opening_stock(
        rng, cat, groups, whs, stocked, confirmed, unconfirmed, wms_on_hand, quarantine, layer_n, starts_at
    )

    expected_sum: dict[tuple[str, str, VarianceCause], Decimal] = defaultdict(Decimal)
    for d in drift:
        if d.cause is not None:
            expected_sum[(d.sku, d.warehouse, d.cause)] += d.quantity
    expected = [
        ExpectedVariance.model_construct(sku=s, warehouse=w, cause=c, quantity=q)
        for (s, w, c), q in expected_sum.items()
    ]

    behaviour = WarehouseBehaviour.model_construct(
        **{
            **WarehouseBehaviour().model_dump(),
            "seed": seed,
            "return_rate": Decimal(str(round(float(rng.uniform(0.08, 0.12)), 3))),
            "shrink_rate": Decimal(str(round(float(rng.uniform(0.01, 0.02)), 3))),
        }
    )
    return Scenario.model_construct(
        name=f"generated-{skus}sku-{warehouses}wh-{orders_per_day}opd-{days}d-seed{seed}",
        description=(
            f"Generated UK retailer: {skus} SKUs, {n_wh} warehouses, {n_orders} orders over {days} day(s) "
            f"to {starts_at.isoformat()}, {per_kind} planted drift(s) of each kind (seed {seed})."
        ),
        starts_at=starts_at,
        currency="GBP",
        sage=SageSettings(),
        product_groups=groups,
        products=cat.products,
        warehouses=whs,
        opening_stock=opening,
        customers=customers,
        orders=orders,
        receipts=receipts,
        behaviour=behaviour,
        faults=Faults(),
        drift=drift,
        expected=expected,
    )


def _drift(
    kind: str, sku: Any, warehouse: Any, quantity: Decimal, detail: str, reference: str | None = None
) -> PlantedDrift:
    return PlantedDrift.model_construct(
        kind=kind,
        sku=sku,
        warehouse=warehouse,
        quantity=quantity,
        detail=detail,
        new_standard_cost=None,
        cause=DRIFT_CAUSE.get(kind),
        reference=reference,
        previous_standard_cost=None,
        effective=None,
    )


def _opening_stock(
    rng: np.random.Generator,
    cat: _Catalogue,
    groups: list[ProductGroup],
    whs: list[Warehouse],
    stocked: np.ndarray,
    confirmed: np.ndarray,
    unconfirmed: np.ndarray,
    wms_on_hand: np.ndarray,
    quarantine: np.ndarray,
    layer_n: np.ndarray,
    starts_at: datetime,
) -> list[OpeningStock]:
    fifo = np.array([groups[g].costing_method == "FIFO" for g in cat.group_of[: len(cat.stock_idx)]])
    pairs = np.argwhere(stocked)  # row-major: by SKU, then warehouse
    # Older layers cost a little less (prices rise); received 30, 60, 90 days before the start.
    layer_discount = rng.integers(0, 6, size=len(pairs))
    dec: dict[int, Decimal] = {}

    def d(n: int) -> Decimal:
        v = dec.get(n)
        if v is None:
            v = dec[n] = Decimal(n)
        return v

    layer_dates = [starts_at - timedelta(days=30 * i) for i in range(4)]
    out: list[OpeningStock] = []
    conf_l, unconf_l, hand_l, quar_l = (
        confirmed.tolist(),
        unconfirmed.tolist(),
        wms_on_hand.tolist(),
        quarantine.tolist(),
    )
    fifo_l, layer_l, discount_l, cost_l = (
        fifo.tolist(),
        layer_n.tolist(),
        layer_discount.tolist(),
        (cat.cost_pence.tolist()),
    )
    for row, (s, w) in enumerate(pairs.tolist()):
        conf = conf_l[s][w]
        layers: list[CostLayer] = []
        if fifo_l[s] and conf > 0:
            n = min(layer_l[s][w], conf)
            sizes = [conf // n] * n
            sizes[-1] += conf - sum(sizes)
            cost_p = cost_l[s]
            for i, q in enumerate(sizes):  # oldest first
                age = n - 1 - i
                unit = cost_p * (100 - age * discount_l[row]) // 100
                layers.append(
                    CostLayer.model_construct(
                        quantity=d(q), unit_cost=Decimal(unit).scaleb(-2), received=layer_dates[age + 1]
                    )
                )
        out.append(
            OpeningStock.model_construct(
                sku=cat.products[s].sku,
                warehouse=whs[w].sage_name,
                sage_confirmed=d(conf),
                sage_unconfirmed=d(unconf_l[s][w]),
                wms_on_hand=d(hand_l[s][w]),
                wms_quarantine=d(quar_l[s][w]),
                fifo_layers=layers,
            )
        )
    return out
