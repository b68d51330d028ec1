"""The simulator's OData parser and SQL compiler on their own (the HTTP behaviour is in test_sage200_api)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

import pytest

from sage_wms_pipeline.simulators.sage200.odata import (
    BoolOp,
    Call,
    Compare,
    FieldRef,
    Literal_,
    Not,
    ODataError,
    build_query,
    normalise_datetime,
    parse_filter,
)
from sage_wms_pipeline.simulators.sage200.store import connect

FIELDS = {"id": "int", "code": "str", "cost": "dec", "active": "bool", "updated": "dt"}


def test_precedence_and_parentheses() -> None:
    tree = parse_filter("code eq 'a' or code eq 'b' and not (id gt 3)")
    assert tree == BoolOp(
        "or",
        Compare("eq", FieldRef("code"), Literal_("string", "a")),
        BoolOp(
            "and",
            Compare("eq", FieldRef("code"), Literal_("string", "b")),
            Not(Compare("gt", FieldRef("id"), Literal_("number", Decimal(3)))),
        ),
    )


def test_literals_functions_and_quotes() -> None:
    assert parse_filter("contains(code,'it''s')") == Call(
        "contains", FieldRef("code"), Literal_("string", "it's")
    )
    assert parse_filter("startswith(code,'x') eq false") == Not(
        Call("startswith", FieldRef("code"), Literal_("string", "x"))
    )
    assert parse_filter("5 lt cost") == Compare("lt", Literal_("number", Decimal(5)), FieldRef("cost"))
    assert parse_filter("updated gt 2026-11-25T09:30:00.5Z").right == Literal_(
        "datetime", "2026-11-25T09:30:00.5Z"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("code eq", "expected a field or value"),
        ("code 'a'", "comparison operator"),
        ("(code eq 'a'", "')'"),
        ("code eq 'a' extra", "unexpected 'extra'"),
        ("code eq 'a", "unterminated"),
        ("code eq #", "unexpected character"),
        ("contains(code, 5)", "quoted string"),
    ],
)
def test_syntax_errors_say_where(text: str, fragment: str) -> None:
    with pytest.raises(ODataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_filter(text)


def test_datetimes_must_be_utc() -> None:
    assert normalise_datetime("2026-11-25") == "2026-11-25T00:00:00.000Z"
    assert normalise_datetime("2026-11-25T09:30:00.4567Z") == "2026-11-25T09:30:00.456Z"
    with pytest.raises(ODataError, match="'Z'"):
        normalise_datetime("2026-11-25T09:30:00+01:00")


def test_compiled_sql_compares_decimals_exactly() -> None:
    conn: sqlite3.Connection = connect(":memory:")  # type: ignore[arg-type]
    conn.execute("CREATE TABLE t (id INTEGER, code TEXT, cost TEXT, active INTEGER, updated TEXT)")
    rows = [
        (1, "A", "9.5", 1, "2026-11-25T09:00:00.000Z"),
        (2, "B", "10.25", 0, "2026-11-25T10:00:00.000Z"),
        (3, "C", "10.250", 1, "2026-11-25T11:00:00.000Z"),
        (4, "D%", "100", 1, "2026-11-25T12:00:00.000Z"),
    ]
    conn.executemany("INSERT INTO t VALUES (?,?,?,?,?)", rows)

    def ids(expr: str, order: str | None = None) -> list[int]:
        params = {"$filter": expr} | ({"$orderby": order} if order else {})
        q = build_query(params, FIELDS, "t")
        sql = f"SELECT id FROM t WHERE {q.where} ORDER BY {q.order_by}"
        return [r[0] for r in conn.execute(sql, q.params)]

    # as text '9.5' > '10.25' and '100' < '9.5'; as decimals they are not
    assert ids("cost gt 9.6") == [2, 3, 4]
    assert ids("cost eq 10.25") == [2, 3]
    assert ids("cost ge 0", "cost desc") == [4, 2, 3, 1]
    assert ids("active eq true and updated lt 2026-11-25T11:00:00Z") == [1]
    assert ids("contains(code,'%')") == [4]
    assert ids("code eq null or id eq 2") == [2]
    for bad in ("code gt 1", "active eq 'yes'", "id eq 1.5", "cost eq true", "nope eq 1"):
        with pytest.raises(ODataError):
            build_query({"$filter": bad}, FIELDS, "t")


def test_query_options() -> None:
    q = build_query(
        {"$top": "10", "$skip": "20", "$orderby": "code desc, cost", "$select": "id,code"}, FIELDS, "t"
    )
    assert (q.top, q.skip, q.select) == (10, 20, ["id", "code"])
    assert q.order_by == '"code" DESC, "cost" COLLATE DECIMAL ASC, "id" ASC'
    assert build_query({}, FIELDS, "t").top == 500
    for bad, fragment in [
        ({"$top": "5001"}, "5000"),
        ({"$skip": "1"}, "$orderby"),
        ({"$top": "x"}, "whole"),
        ({"$count": "true"}, "not supported"),
        ({"$expand": "lines"}, "cannot expand"),
    ]:
        with pytest.raises(ODataError, match=fragment.replace("$", r"\$")):
            build_query(bad, FIELDS, "t")
