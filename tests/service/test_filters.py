"""Payload filters: Qdrant's JSON syntax validated once, converted for Edge, and (R4T_STRICT_FILTERS) allowed only
on what a payload index serves, with the OpenAPI document stating exactly the keys and tests the check allows."""

from __future__ import annotations

import itertools

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.filters import (
    SERVED_BY,
    InvalidFilter,
    check_indexed,
    filter_tests,
    state_filterable,
    validate_filter,
)
from service.schemas import SearchRequest
from tests.service.test_app import assert_problem

INDEXED = {"artist": "keyword", "year": "integer", "price": "float", "when": "datetime", "title": "text",
           "live": "bool"}
TESTS = {  # one field condition per SERVED_BY test (the key is filled in)
    "value:string": {"match": {"value": "x"}}, "value:integer": {"match": {"value": 3}},
    "value:bool": {"match": {"value": True}}, "any:string": {"match": {"any": ["a", "b"]}},
    "any:integer": {"match": {"any": [1, 2]}}, "any:empty": {"match": {"any": []}},
    "except:string": {"match": {"except": ["a"]}}, "except:integer": {"match": {"except": [1]}},
    "except:empty": {"match": {"except": []}}, "text": {"match": {"text": "a"}},
    "text_any": {"match": {"text_any": "a b"}}, "phrase": {"match": {"phrase": "a b"}},
    "prefix": {"match": {"prefix": "a"}}, "substring": {"match": {"substring": "a"}},
    "range": {"range": {"gt": 1}}, "datetime_range": {"range": {"gt": "2020-01-01T00:00:00Z"}},
    "values_count": {"values_count": {"gte": 1}}, "is_empty": {"is_empty": True}, "is_null": {"is_null": False},
}


def test_every_test_is_named_and_every_key_read_as_a_full_path():
    assert set(TESTS) == set(SERVED_BY)
    for test, condition in TESTS.items():
        assert filter_tests(validate_filter({"must": [{"key": "k", **condition}]})) == [("k", test)]
    nested = {"should": [{"nested": {"key": "tracks", "filter": {"must_not": [{"key": "bpm", "range": {"gt": 1}}]}}}],
              "min_should": {"min_count": 1, "conditions": [{"is_empty": {"key": "a"}},
                                                            {"must": [{"is_null": {"key": "b"}}]}]}}
    assert sorted(filter_tests(validate_filter(nested))) == [("a", "is_empty"), ("b", "is_null"),
                                                             ("tracks[].bpm", "range")]


@pytest.mark.parametrize("key, test", list(itertools.product(INDEXED, TESTS)))
def test_a_test_runs_only_where_an_index_serves_it(key, test):
    flt = {"must": [{"key": key, **TESTS[test]}]}
    if INDEXED[key] in SERVED_BY[test]:
        check_indexed(flt, INDEXED)
    else:
        with pytest.raises(InvalidFilter, match=repr(key)):
            check_indexed(flt, INDEXED)


def test_an_unindexed_key_is_refused_naming_the_filterable_ones():
    with pytest.raises(InvalidFilter, match=r"'genre' has no payload index.*artist \(keyword\)"):
        check_indexed({"must_not": [{"key": "genre", "match": {"value": "rock"}}]}, INDEXED)
    with pytest.raises(InvalidFilter, match="filterable keys: none"):
        check_indexed({"must": [{"is_empty": {"key": "artist"}}]}, {})
    check_indexed(None, {})
    check_indexed({"must": []}, {})


def _validator(indexed: dict[str, str]) -> jsonschema.Draft202012Validator:
    """The request filter's schema as a server with these payload indexes states it."""
    app = FastAPI()

    @app.post("/search")
    def search(req: SearchRequest) -> None: ...

    schemas = app.openapi()["components"]["schemas"]
    state_filterable(schemas, indexed)
    return jsonschema.Draft202012Validator({"$ref": "#/components/schemas/PayloadFilter",
                                            "components": {"schemas": schemas}})


@pytest.mark.parametrize("indexed", [INDEXED, {"artist": "keyword"}, {}], ids=["six kinds", "one key", "none"])
def test_the_document_allows_exactly_what_the_check_allows(indexed):
    """Every (key, test) pair, indexed or not, plus the nested and bare-key forms: the stated schema accepts a
    filter if and only if `check_indexed` does (what schemathesis's positive and negative checks rely on)."""
    validator = _validator(indexed)
    cases = [{"must": [{"key": key, **condition}]} for key, condition in
             itertools.product([*INDEXED, "genre"], TESTS.values())]
    cases += [{"must": [{"is_empty": {"key": k}}]} for k in (*INDEXED, "genre")]
    cases += [{"should": {"nested": {"key": "artist", "filter": {"must": [{"key": "artist", "is_null": True}]}}}}]
    for flt in cases:
        try:
            check_indexed(flt, indexed)
            allowed = True
        except InvalidFilter:
            allowed = False
        assert validator.is_valid(flt) == allowed, (flt, indexed)


def _fields_of(doc: dict) -> set[str]:
    return {v["properties"]["key"]["enum"][0] for v in doc["FieldCondition"]["anyOf"]}


def test_the_server_states_and_enforces_its_index_keys(settings, catalog):
    with TestClient(create_app(settings)) as client:
        doc = client.get("/openapi.json").json()["components"]["schemas"]
        assert _fields_of(doc) == set(catalog.payload_index)  # the index build made each loader field filterable
        assert client.get("/info").json()["filterable"] == catalog.payload_index
        body = assert_problem(client.post("/search", json={"query": "boots", "filter": {
            "must": [{"key": "colour", "match": {"value": "red"}}]}}), 422)
        assert "'colour' has no payload index" in body["detail"] and "category (keyword)" in body["detail"]
        body = assert_problem(client.post("/fanout", json={"query": "boots", "strategy": "single", "filter": {
            "must": [{"key": "category", "range": {"gt": 1}}]}}), 422)
        assert "range on 'category' needs a float or integer payload index" in body["detail"]
        ok = client.post("/fanout", json={"query": "boots", "strategy": "single", "limit": 5,
                                          "filter": {"must": [{"key": "price", "range": {"gte": 0}}]}})
        assert ok.status_code == 200 and all(it["payload"]["price"] >= 0 for it in ok.json()["items"])


def test_strict_filters_off_runs_any_key(settings):
    with TestClient(create_app(settings.model_copy(update={"strict_filters": False}))) as client:
        response = client.post("/search", json={"query": "boots", "filter": {
            "must": [{"key": "colour", "match": {"value": "red"}}]}})
        assert response.status_code == 200 and response.json()["items"] == []
        doc = client.get("/openapi.json").json()["components"]["schemas"]
        assert "pattern" in doc["FieldCondition"]["properties"]["key"]
        assert client.get("/info").json()["filterable"] is None
