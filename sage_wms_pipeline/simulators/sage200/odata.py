"""OData query options the way the Sage 200 API takes them, compiled to SQLite.

A tokenizer and a recursive-descent parser turn `$filter` into a small AST; the compiler checks
each field against the resource's typed field list and emits parameterised SQL. Decimal columns
are stored as TEXT and compared through the `DECIMAL` collation, so comparisons stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Literal

FieldType = Literal["int", "dec", "str", "bool", "dt"]

DEFAULT_TOP = 500
MAX_TOP = 5000
COMPARISON_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
FLIPPED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
STRING_FUNCTIONS = ("contains", "startswith", "endswith")
KNOWN_OPTIONS = {"$top", "$skip", "$filter", "$orderby", "$select", "$expand"}
UNSUPPORTED_OPTIONS = {"$count", "$metadata"}  # real Sage has them; the simulator says so instead of ignoring


class ODataError(ValueError):
    """A query the API refuses with 400; the message names the problem."""


# --- tokenizer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: Literal["lparen", "rparen", "comma", "string", "number", "datetime", "name", "end"]
    text: str
    pos: int


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<string>'(?:[^']|'')*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_./]*)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if text[pos] == "'":
                raise ODataError(f"$filter: unterminated string starting at position {pos}")
            raise ODataError(f"$filter: unexpected character {text[pos]!r} at position {pos}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))  # type: ignore[arg-type]
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# --- AST -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRef:
    name: str


@dataclass(frozen=True)
class Literal_:
    kind: Literal["string", "number", "datetime", "bool", "null"]
    value: object


@dataclass(frozen=True)
class Compare:
    op: str
    left: FieldRef | Literal_
    right: FieldRef | Literal_


@dataclass(frozen=True)
class Call:
    func: str
    field: FieldRef
    arg: Literal_


@dataclass(frozen=True)
class BoolOp:
    op: Literal["and", "or"]
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Compare | Call | BoolOp | Not


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, what: str) -> Token:
        tok = self.take()
        if tok.kind != kind:
            found = tok.text or "end of expression"
            raise ODataError(f"$filter: expected {what} at position {tok.pos}, found {found!r}")
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text.lower() == word

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ODataError("$filter: empty expression")
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise ODataError(f"$filter: unexpected {tok.text!r} at position {tok.pos}")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.is_word("or"):
            self.take()
            node = BoolOp("or", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_unary()
        while self.is_word("and"):
            self.take()
            node = BoolOp("and", node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        if self.is_word("not"):
            self.take()
            return Not(self.parse_unary())
        return self.parse_primary()

    def parse_primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "lparen":
            self.take()
            node = self.parse_or()
            self.expect("rparen", "')'")
            return node
        if tok.kind == "name" and tok.text.lower() in STRING_FUNCTIONS:
            node = self.parse_call()
            # `contains(name,'x') eq true` is accepted as well as the bare call
            if self.peek().kind == "name" and self.peek().text.lower() in ("eq", "ne"):
                op = self.take().text.lower()
                value = self.parse_operand()
                if not (isinstance(value, Literal_) and value.kind == "bool"):
                    raise ODataError(f"$filter: {node.func}() can only be compared with true or false")
                return node if (value.value is True) == (op == "eq") else Not(node)
            return node
        left = self.parse_operand()
        op_tok = self.take()
        op = op_tok.text.lower()
        if op_tok.kind != "name" or op not in COMPARISON_OPS:
            found = op_tok.text or "end of expression"
            raise ODataError(
                f"$filter: expected a comparison operator (eq ne gt ge lt le) at position {op_tok.pos}, "
                f"found {found!r}"
            )
        right = self.parse_operand()
        return Compare(op, left, right)

    def parse_call(self) -> Call:
        func = self.take().text.lower()
        self.expect("lparen", f"'(' after {func}")
        name = self.expect("name", "a field name")
        self.expect("comma", "','")
        arg = self.parse_operand()
        if not (isinstance(arg, Literal_) and arg.kind == "string"):
            raise ODataError(f"$filter: the second argument of {func}() must be a quoted string")
        self.expect("rparen", "')'")
        return Call(func, FieldRef(name.text), arg)

    def parse_operand(self) -> FieldRef | Literal_:
        tok = self.take()
        if tok.kind == "string":
            return Literal_("string", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "number":
            return Literal_("number", Decimal(tok.text))
        if tok.kind == "datetime":
            return Literal_("datetime", tok.text)
        if tok.kind == "name":
            word = tok.text.lower()
            if word in ("true", "false"):
                return Literal_("bool", word == "true")
            if word == "null":
                return Literal_("null", None)
            if word in COMPARISON_OPS or word in ("and", "or", "not"):
                raise ODataError(
                    f"$filter: expected a field or value at position {tok.pos}, found {tok.text!r}"
                )
            return FieldRef(tok.text)
        found = tok.text or "end of expression"
        raise ODataError(f"$filter: expected a field or value at position {tok.pos}, found {found!r}")


def parse_filter(text: str) -> Node:
    return _Parser(text).parse()


# --- compiling to SQL ----------------------------------------------------------------------


def normalise_datetime(text: str) -> str:
    """Bring an OData date or UTC datetime literal to the stored form `YYYY-MM-DDTHH:MM:SS.fffZ`."""
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise ODataError(f"$filter: {text!r} is not a valid date") from exc
        return day.isoformat() + "T00:00:00.000Z"
    if not text.endswith("Z"):
        raise ODataError(f"$filter: datetime {text!r} must be in UTC and end in 'Z'")
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError as exc:
        raise ODataError(f"$filter: {text!r} is not a valid datetime") from exc
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _like_pattern(func: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if func == "contains":
        return f"%{escaped}%"
    if func == "startswith":
        return f"{escaped}%"
    return f"%{escaped}"


def _column(name: str, ftype: FieldType) -> str:
    col = f'"{name}"'
    return f"{col} COLLATE DECIMAL" if ftype == "dec" else col


def _literal_param(fname: str, ftype: FieldType, lit: Literal_, op: str) -> object:
    bad = ODataError(
        f"$filter: field '{fname}' is {_TYPE_NAMES[ftype]} and cannot be compared with "
        f"{lit.kind} {lit.value!r} using '{op}'"
    )
    if ftype == "int":
        if lit.kind == "number" and isinstance(lit.value, Decimal) and lit.value == lit.value.to_integral():
            return int(lit.value)
        if lit.kind == "string" and isinstance(lit.value, str) and lit.value.lstrip("-").isdigit():
            return int(lit.value)
        raise bad
    if ftype == "dec":
        if lit.kind == "number":
            return format(lit.value, "f")
        if lit.kind == "string":
            try:
                return format(Decimal(str(lit.value)), "f")
            except InvalidOperation:
                raise bad from None
        raise bad
    if ftype == "str":
        if lit.kind == "string":
            return lit.value
        if lit.kind == "number":
            # enum fields are filtered with quoted ints in Sage; a bare number against text is an error
            raise bad
        raise bad
    if ftype == "bool":
        if lit.kind == "bool":
            return 1 if lit.value else 0
        raise bad
    if ftype == "dt":
        if lit.kind in ("datetime", "string"):
            return normalise_datetime(str(lit.value))
        raise bad
    raise bad  # pragma: no cover


_TYPE_NAMES: dict[str, str] = {
    "int": "an integer",
    "dec": "a decimal",
    "str": "a string",
    "bool": "a boolean",
    "dt": "a datetime",
}


@dataclass
class Compiler:
    fields: Mapping[str, FieldType]
    resource: str
    params: list[object] = field(default_factory=list)

    def field_type(self, name: str) -> FieldType:
        try:
            return self.fields[name]
        except KeyError:
            raise ODataError(f"$filter: '{self.resource}' has no field named '{name}'") from None

    def compile(self, node: Node) -> str:
        if isinstance(node, BoolOp):
            return f"({self.compile(node.left)} {node.op.upper()} {self.compile(node.right)})"
        if isinstance(node, Not):
            return f"(NOT {self.compile(node.operand)})"
        if isinstance(node, Call):
            ftype = self.field_type(node.field.name)
            if ftype != "str":
                raise ODataError(
                    f"$filter: {node.func}() needs a string field; '{node.field.name}' is not one"
                )
            self.params.append(_like_pattern(node.func, str(node.arg.value)))
            return f"(\"{node.field.name}\" LIKE ? ESCAPE '\\')"
        return self.compile_compare(node)

    def compile_compare(self, node: Compare) -> str:
        op, left, right = node.op, node.left, node.right
        if isinstance(left, Literal_) and isinstance(right, FieldRef):
            op, left, right = FLIPPED[op], right, left
        if not isinstance(left, FieldRef):
            raise ODataError(f"$filter: a comparison needs a field on one side ('{op}')")
        if isinstance(right, FieldRef):
            raise ODataError(
                f"$filter: comparing two fields ('{left.name}' {op} '{right.name}') is not supported"
            )
        ftype = self.field_type(left.name)
        if right.kind == "null":
            if op not in ("eq", "ne"):
                raise ODataError(f"$filter: null can only be compared with eq or ne (field '{left.name}')")
            return f'("{left.name}" IS {"NOT " if op == "ne" else ""}NULL)'
        self.params.append(_literal_param(left.name, ftype, right, op))
        return f"({_column(left.name, ftype)} {COMPARISON_OPS[op]} ?)"


# --- the whole query -----------------------------------------------------------------------


@dataclass
class Query:
    where: str = ""
    params: list[object] = field(default_factory=list)
    order_by: str = ""
    top: int = DEFAULT_TOP
    skip: int = 0
    select: list[str] | None = None
    expand: list[str] = field(default_factory=list)


def _int_option(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ODataError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ODataError(f"{name} must not be negative, got {value}")
    return value


def build_query(
    params: Mapping[str, str],
    fields: Mapping[str, FieldType],
    resource: str,
    default_order: str = '"id"',
    expandable: tuple[str, ...] = (),
    extra_select: tuple[str, ...] = (),
) -> Query:
    """Turn the request's `$` query options into SQL pieces for `resource`, or raise ODataError."""
    for key in params:
        if key in UNSUPPORTED_OPTIONS:
            raise ODataError(f"The query option '{key}' is not supported by the simulator")
        if key.startswith("$") and key not in KNOWN_OPTIONS:
            raise ODataError(f"The query option '{key}' is not supported")
    query = Query()
    if "$top" in params:
        query.top = _int_option("$top", params["$top"])
        if query.top > MAX_TOP:
            raise ODataError(f"$top must be {MAX_TOP} or less, got {query.top}")
    if "$skip" in params:
        if "$orderby" not in params:
            raise ODataError("$skip can only be used together with $orderby")
        query.skip = _int_option("$skip", params["$skip"])
    if params.get("$filter", "").strip():
        compiler = Compiler(fields, resource)
        query.where = compiler.compile(parse_filter(params["$filter"]))
        query.params = compiler.params
    order_parts: list[str] = []
    if "$orderby" in params:
        for raw in params["$orderby"].split(","):
            bits = raw.split()
            if not bits or len(bits) > 2:
                raise ODataError(f"$orderby: cannot read {raw.strip()!r}; use 'field asc' or 'field desc'")
            name = bits[0]
            direction = bits[1].lower() if len(bits) == 2 else "asc"
            if direction not in ("asc", "desc"):
                raise ODataError(f"$orderby: direction must be asc or desc, got {bits[1]!r}")
            if name not in fields:
                raise ODataError(f"$orderby: '{resource}' has no field named '{name}'")
            order_parts.append(f"{_column(name, fields[name])} {direction.upper()}")
        if "id" in fields and not any(p.startswith('"id"') for p in order_parts):
            order_parts.append('"id" ASC')  # stable pages when the sort key repeats
    query.order_by = ", ".join(order_parts) if order_parts else default_order
    if "$expand" in params:
        for name in filter(None, (p.strip() for p in params["$expand"].split(","))):
            if name not in expandable:
                allowed = ", ".join(expandable) or "nothing"
                raise ODataError(f"$expand: '{resource}' cannot expand '{name}' (it can expand {allowed})")
            query.expand.append(name)
    if "$select" in params:
        wanted = [p.strip() for p in params["$select"].split(",") if p.strip()]
        for name in wanted:
            if name not in fields and name not in extra_select and name not in query.expand:
                raise ODataError(f"$select: '{resource}' has no field named '{name}'")
        query.select = wanted
    return query
