"""Payload filters: Qdrant's JSON filter syntax, validated once and converted for Qdrant Edge.

Both store backends accept exactly the same filters: a filter Edge cannot run (geo, has_id) is
rejected for the server backend too, so switching backend never changes which requests are valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Union

import pydantic
import qdrant_edge as qe
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from qdrant_client import models

from service.jsontypes import DateTime, integer, number


class InvalidFilter(ValueError):
    """A payload filter is not valid Qdrant filter JSON, or uses a condition Edge cannot run."""


# --- The request schema: the part of Qdrant's filter JSON that both backends run, bounds included -------------
# What these models accept is what the stores run (the OpenAPI document shows them): Qdrant's own
# `models.Filter` also admits geo and has_id conditions, ints beyond i64 and negative counts, which Edge refuses.

# A payload key as a JSON path Edge parses: dotted ASCII names, each optionally indexed (`a.b[].c`, `tags[0]`).
Key = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]+(\[[0-9]{0,9}\])*(\.[A-Za-z0-9_-]+(\[[0-9]{0,9}\])*)*$",
                                 description="Payload key, e.g. 'artist' or 'category'")]
I64 = integer()  # Edge holds i64; the JSON-safe range is inside it
Count = integer(0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MatchValue(_Strict):
    value: StrictBool | I64 | StrictStr


class MatchAny(_Strict):
    any: list[StrictStr] | list[I64]


class MatchExcept(_Strict):
    except_: list[StrictStr] | list[I64] = Field(alias="except")


class MatchText(_Strict):
    text: StrictStr


class MatchTextAny(_Strict):
    text_any: StrictStr


class MatchPhrase(_Strict):
    phrase: StrictStr


class MatchPrefix(_Strict):
    prefix: StrictStr


class MatchSubstring(_Strict):
    substring: StrictStr


Match = Union[MatchValue, MatchAny, MatchExcept, MatchText, MatchTextAny, MatchPhrase, MatchPrefix, MatchSubstring]


class Range(_Strict):
    gt: number() | None = None
    gte: number() | None = None
    lt: number() | None = None
    lte: number() | None = None


class DatetimeRange(_Strict):
    gt: DateTime | None = None
    gte: DateTime | None = None
    lt: DateTime | None = None
    lte: DateTime | None = None


class ValuesCount(_Strict):
    gt: Count | None = None
    gte: Count | None = None
    lt: Count | None = None
    lte: Count | None = None


TESTS = ("match", "range", "values_count", "is_empty", "is_null")


class FieldCondition(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [  # at least one test, not null
        {"required": [k], "properties": {k: {"not": {"type": "null"}}}} for k in TESTS]})

    key: Key
    match: Match | None = None
    range: Range | DatetimeRange | None = None
    values_count: ValuesCount | None = None
    is_empty: StrictBool | None = None
    is_null: StrictBool | None = None

    @pydantic.model_validator(mode="after")
    def one_test(self) -> FieldCondition:
        if all(getattr(self, k) is None for k in TESTS):
            raise ValueError("a field condition needs one of match, range, values_count, is_empty, is_null")
        return self


class PayloadKey(_Strict):
    key: Key


class IsEmptyCondition(_Strict):
    is_empty: PayloadKey


class IsNullCondition(_Strict):
    is_null: PayloadKey


class Nested(_Strict):
    key: Key
    filter: PayloadFilter


class NestedCondition(_Strict):
    nested: Nested


Condition = Union[FieldCondition, IsEmptyCondition, IsNullCondition, NestedCondition, "PayloadFilter"]


class MinShould(_Strict):
    conditions: list[Condition]
    min_count: Count


class PayloadFilter(_Strict):
    """A Qdrant payload filter (its JSON syntax), limited to the conditions both store backends run."""

    must: list[Condition] | Condition | None = None
    should: list[Condition] | Condition | None = None
    must_not: list[Condition] | Condition | None = None
    min_should: MinShould | None = None

    def to_qdrant(self) -> models.Filter:
        return models.Filter.model_validate(self.model_dump(mode="json", by_alias=True, exclude_none=True))


Nested.model_rebuild()
MinShould.model_rebuild()
PayloadFilter.model_rebuild()


def validate_filter(raw: dict | PayloadFilter | models.Filter | None) -> models.Filter | None:
    if raw is None or isinstance(raw, models.Filter):
        return raw
    if isinstance(raw, PayloadFilter):
        return raw.to_qdrant()
    if not isinstance(raw, dict):
        raise InvalidFilter(f"filter must be a JSON object, got {type(raw).__name__}")
    try:
        return models.Filter.model_validate(raw)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        # Union members show up as "list[union[...]]" steps in the location; they only add noise.
        loc = ".".join(str(p) for p in first["loc"] if "[" not in str(p))
        raise InvalidFilter(
            f"invalid filter at {loc or '<root>'}: {first['msg']} ({e.error_count()} problems)"
        ) from None


def parse_filter(raw: dict | PayloadFilter | models.Filter | None) -> models.Filter | None:
    """Validate Qdrant filter JSON; `InvalidFilter` names the first problem, or what Edge cannot run."""
    parsed = validate_filter(raw)
    if parsed is not None:
        to_edge_filter(parsed)  # one filter language on both backends
    return parsed


# Which payload index kinds serve each test (Qdrant strict mode's rule): a test no index serves scans every
# point's payload. Measured on the MPD shard, keyword index on `artist`, memory strategy: match value 6 ms, prefix
# 13 ms, substring 12 ms per query; range 205 ms, text 407 ms, values_count 74-264 ms (unindexed key: 200-740 ms).
ANY_KIND = frozenset({"keyword", "integer", "float", "bool", "datetime", "text", "uuid"})
SERVED_BY: dict[str, frozenset[str]] = {
    "value:string": frozenset({"keyword", "uuid"}), "value:integer": frozenset({"integer"}),
    "value:bool": frozenset({"bool"}), "any:string": frozenset({"keyword", "uuid"}),
    "any:integer": frozenset({"integer"}), "except:string": frozenset({"keyword", "uuid"}),
    "except:integer": frozenset({"integer"}), "any:empty": frozenset({"keyword", "uuid", "integer"}),
    "except:empty": frozenset({"keyword", "uuid", "integer"}), "text": frozenset({"text"}), "text_any": frozenset({"text"}),
    "phrase": frozenset({"text"}), "prefix": frozenset({"keyword"}), "substring": frozenset({"keyword"}),
    "range": frozenset({"integer", "float"}), "datetime_range": frozenset({"datetime"}),
    "values_count": frozenset(), "is_empty": ANY_KIND, "is_null": ANY_KIND,
}


def _json_kind(values: Any) -> str:
    if isinstance(values, list) and not values:
        return "empty"  # [] is a list of strings and of integers alike
    first = values[0] if isinstance(values, list) else values
    return "bool" if isinstance(first, bool) else "integer" if isinstance(first, int) else "string"


def condition_tests(c: models.FieldCondition) -> list[str]:
    """The SERVED_BY names of a field condition's tests."""
    tests = []
    if c.match is not None:
        if isinstance(c.match, models.MatchValue):
            tests.append(f"value:{_json_kind(c.match.value)}")
        elif isinstance(c.match, (models.MatchAny, models.MatchExcept)):
            op = "any" if isinstance(c.match, models.MatchAny) else "except"
            tests.append(f"{op}:{_json_kind(getattr(c.match, 'any' if op == 'any' else 'except_'))}")
        else:
            tests.append(_EDGE_MATCH[type(c.match)][1].rstrip("_"))
    if c.range is not None:
        tests.append("range" if isinstance(c.range, models.Range) else "datetime_range")
    tests += [t for t in ("values_count", "is_empty", "is_null") if getattr(c, t) is not None]
    return tests


def filter_tests(f: models.Filter, prefix: str = "") -> list[tuple[str, str]]:
    """Every (payload key, test) a filter runs, keys as full paths (a nested condition's under `<key>[].`)."""
    out: list[tuple[str, str]] = []
    conditions = [*_as_list(f.must), *_as_list(f.should), *_as_list(f.must_not),
                  *(f.min_should.conditions if f.min_should is not None else [])]
    for c in conditions:
        if isinstance(c, models.Filter):
            out += filter_tests(c, prefix)
        elif isinstance(c, models.NestedCondition):
            out += filter_tests(c.nested.filter, f"{prefix}{c.nested.key}[].")
        elif isinstance(c, models.IsEmptyCondition):
            out.append((prefix + c.is_empty.key, "is_empty"))
        elif isinstance(c, models.IsNullCondition):
            out.append((prefix + c.is_null.key, "is_null"))
        elif isinstance(c, models.FieldCondition):
            out += [(prefix + c.key, t) for t in condition_tests(c)]
    return out


def check_indexed(raw: dict | PayloadFilter | models.Filter | None, indexed: Mapping[str, str]) -> None:
    """InvalidFilter unless a payload index serves every test the filter runs (Qdrant's strict mode,
    `unindexed_filtering_retrieve: false`), so that no filter scans every point's payload."""
    parsed = validate_filter(raw)
    if parsed is None:
        return
    for key, test in filter_tests(parsed):
        if key not in indexed:
            allowed = ", ".join(f"{k} ({v})" for k, v in sorted(indexed.items())) or "none"
            raise InvalidFilter(f"payload key {key!r} has no payload index on this server; filterable keys: "
                                f"{allowed}")
        if not SERVED_BY[test]:
            raise InvalidFilter(f"{test} on {key!r}: no payload index serves it (it scans every payload)")
        if indexed[key] not in SERVED_BY[test]:
            raise InvalidFilter(f"{test.split(':')[0]} on {key!r} needs a {' or '.join(sorted(SERVED_BY[test]))} "
                                f"payload index; {key!r} has a {indexed[key]} index")


def state_filterable(schemas: dict, indexed: Mapping[str, str]) -> None:
    """Write R4T_STRICT_FILTERS into the OpenAPI components: a field condition names an indexed key and only
    the tests its index serves (SERVED_BY); nested conditions go when no indexed key is a nested path (with one,
    the key pattern stays and the server checks). The check in `check_indexed` enforces the same."""
    if any("[]." in k for k in indexed):
        return
    drop = {"#/components/schemas/NestedCondition"} | (
        {f"#/components/schemas/{n}" for n in ("FieldCondition", "IsEmptyCondition", "IsNullCondition")}
        if not indexed else set())
    _drop_refs(schemas, drop)
    if not indexed:
        return
    schemas["PayloadKey"]["properties"]["key"] = {"type": "string", "enum": sorted(indexed)}
    match = _match_schemas(schemas)
    variants = []
    for key, kind in sorted(indexed.items()):
        tests: dict[str, dict] = {}
        served = [m for t, m in match.items() if kind in SERVED_BY[t]]
        if served:
            tests["match"] = {"anyOf": served}
        if kind in SERVED_BY["range"] | SERVED_BY["datetime_range"]:
            tests["range"] = {"$ref": f"#/components/schemas/{'Range' if kind != 'datetime' else 'DatetimeRange'}"}
        tests |= {"is_empty": {"type": "boolean"}, "is_null": {"type": "boolean"}}
        variants.append({
            "type": "object", "additionalProperties": False, "required": ["key"],
            "properties": {"key": {"type": "string", "enum": [key]},
                           **{t: {"anyOf": [v, {"type": "null"}]} for t, v in tests.items()}},
            "anyOf": [{"required": [t], "properties": {t: {"not": {"type": "null"}}}} for t in tests],
        })
    schemas["FieldCondition"] = {"title": "FieldCondition", "anyOf": variants,
                                 "description": "A test on an indexed payload key (R4T_STRICT_FILTERS)"}


def _match_schemas(schemas: dict) -> dict[str, dict]:
    """SERVED_BY's match tests -> the JSON schema of each (from the request models' own components)."""
    def typed(name: str, field: str, want: str) -> dict:
        options = schemas[name]["properties"][field]["anyOf"]
        part = next(o for o in options if o.get("type") == want or o.get("items", {}).get("type") == want)
        return {**schemas[name], "properties": {field: part}}

    return {"value:string": typed("MatchValue", "value", "string"), "value:integer": typed("MatchValue", "value", "integer"),
            "value:bool": typed("MatchValue", "value", "boolean"), "any:string": typed("MatchAny", "any", "string"),
            "any:integer": typed("MatchAny", "any", "integer"), "except:string": typed("MatchExcept", "except", "string"),
            "except:integer": typed("MatchExcept", "except", "integer"),
            **{t: {"$ref": f"#/components/schemas/{n}"} for t, n in (
                ("text", "MatchText"), ("text_any", "MatchTextAny"), ("phrase", "MatchPhrase"),
                ("prefix", "MatchPrefix"), ("substring", "MatchSubstring"))}}


def _drop_refs(node: Any, refs: set[str]) -> None:
    """Remove `{"$ref": r}` (r in refs) from every anyOf list under `node`."""
    if isinstance(node, dict):
        if isinstance(node.get("anyOf"), list):
            node["anyOf"] = [o for o in node["anyOf"] if not (isinstance(o, dict) and o.get("$ref") in refs)]
        for v in node.values():
            _drop_refs(v, refs)
    elif isinstance(node, list):
        for v in node:
            _drop_refs(v, refs)


def _as_list(conditions: Any) -> list:
    if conditions is None:
        return []
    return conditions if isinstance(conditions, list) else [conditions]


def to_edge_filter(f: models.Filter) -> qe.Filter:
    """Convert a validated qdrant-client Filter into the qdrant_edge equivalent.

    qdrant-client's models are looser than Edge's Rust types (an int beyond i64, a negative
    min_count, an empty key), so Edge's own TypeError/ValueError/OverflowError become InvalidFilter.
    """
    try:
        return _edge_filter(f)
    except InvalidFilter:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]  # Rust errors span lines
        raise InvalidFilter(f"filter cannot run on Qdrant Edge: {reason}") from None


def _edge_filter(f: models.Filter) -> qe.Filter:
    min_should = None
    if f.min_should is not None:
        conditions = [_edge_condition(c) for c in f.min_should.conditions]
        min_should = qe.MinShould(conditions=conditions, min_count=f.min_should.min_count)
    return qe.Filter(
        must=[_edge_condition(c) for c in _as_list(f.must)] or None,
        should=[_edge_condition(c) for c in _as_list(f.should)] or None,
        must_not=[_edge_condition(c) for c in _as_list(f.must_not)] or None,
        min_should=min_should,
    )


_EDGE_MATCH = {  # qdrant-client match model -> (qdrant_edge class, field holding the operand)
    models.MatchValue: (qe.MatchValue, "value"),
    models.MatchAny: (qe.MatchAny, "any"),
    models.MatchExcept: (qe.MatchExcept, "except_"),
    models.MatchText: (qe.MatchText, "text"),
    models.MatchTextAny: (qe.MatchTextAny, "text_any"),
    models.MatchPhrase: (qe.MatchPhrase, "phrase"),
    models.MatchPrefix: (qe.MatchPrefix, "prefix"),
    models.MatchSubstring: (qe.MatchSubstring, "substring"),
}


def _edge_range(r: models.Range | models.DatetimeRange) -> Any:
    bounds = {k: getattr(r, k) for k in ("gt", "gte", "lt", "lte")}
    if isinstance(r, models.Range):
        return qe.RangeFloat(**bounds)
    return qe.RangeDateTime(**{k: v.isoformat() if v is not None else None for k, v in bounds.items()})


def _edge_condition(c: Any) -> Any:
    if isinstance(c, models.Filter):
        return _edge_filter(c)
    if isinstance(c, models.IsEmptyCondition):
        return qe.IsEmptyCondition(c.is_empty.key)
    if isinstance(c, models.IsNullCondition):
        return qe.IsNullCondition(c.is_null.key)
    if isinstance(c, models.NestedCondition):
        return qe.NestedCondition(c.nested.key, _edge_filter(c.nested.filter))
    if not isinstance(c, models.FieldCondition):
        raise InvalidFilter(f"{type(c).__name__} is not supported; filter on payload keys instead")
    if c.geo_bounding_box or c.geo_radius or c.geo_polygon:
        raise InvalidFilter(f"geo conditions are not supported (key {c.key!r})")
    kw: dict[str, Any] = {}
    if c.match is not None:
        edge_cls, field = _EDGE_MATCH[type(c.match)]
        kw["match"] = edge_cls(getattr(c.match, field))
    if c.range is not None:
        kw["range"] = _edge_range(c.range)
    if c.values_count is not None:
        vc = c.values_count
        kw["values_count"] = qe.ValuesCount(lt=vc.lt, gt=vc.gt, lte=vc.lte, gte=vc.gte)
    kw.update({k: v for k in ("is_empty", "is_null") if (v := getattr(c, k)) is not None})
    if not kw:
        raise InvalidFilter(f"condition on key {c.key!r} needs one of match, range, values_count")
    return qe.FieldCondition(key=c.key, **kw)
