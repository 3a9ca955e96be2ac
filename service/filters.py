"""Payload filters: Qdrant's JSON filter syntax, validated once and converted for Qdrant Edge.

Both store backends accept exactly the same filters: a filter Edge cannot run (geo, has_id) is
rejected for the server backend too, so switching backend never changes which requests are valid.
"""

from __future__ import annotations

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
