"""The OpenAPI document tells the truth: it states the limits the routes enforce, request fields refuse what
their schema refuses, and schemathesis (`--checks all`) finds nothing against a real uvicorn process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.schemas import FanoutResponse
from tests.service.serving import ROOT, uvicorn_server
from tests.service.test_app import assert_problem


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def doc(client) -> dict:
    return client.get("/openapi.json").json()["components"]["schemas"]


def test_the_document_states_the_servers_strategies_and_limits(client, doc, settings):
    info = client.get("/info").json()
    for name in ("FanoutRequest", "BatchRequest"):
        props = doc[name]["properties"]
        assert props["strategy"]["anyOf"][0]["enum"] == info["strategies"] == ["single", "diffusion"]
        assert props["k"]["anyOf"][0]["maximum"] == 10  # the toy graph's rows, under R4T_MAX_K (32)
        assert props["limit"]["maximum"] == props["limit_per_fanout"]["maximum"] == settings.max_limit
    assert doc["SearchRequest"]["properties"]["query"]["maxLength"] == settings.max_query_chars
    assert doc["BatchRequest"]["properties"]["queries"]["maxItems"] == settings.max_batch_queries
    assert doc["MMRParams"]["properties"]["candidates"]["anyOf"][0]["maximum"] == settings.max_limit


def test_the_stated_limits_are_the_enforced_ones(client, settings):
    at_most = {"query": "boho festival", "k": 10, "limit": settings.max_limit, "strategy": "diffusion"}
    assert client.post("/fanout", json=at_most).status_code == 200
    assert_problem(client.post("/fanout", json=at_most | {"k": 11}), 422, "k")
    assert_problem(client.post("/fanout", json=at_most | {"limit": settings.max_limit + 1}), 422, "limit")
    assert_problem(client.post("/fanout", json=at_most | {"strategy": "llm"}), 422, "strategy")
    longest = "x " * (settings.max_query_chars // 2)  # 256 tokens: more than the encoder reads, which cuts them
    assert client.post("/search", json={"query": longest}).status_code == 200
    assert_problem(client.post("/search", json={"query": longest + "xy"}), 422, "query")


@pytest.mark.parametrize("blank", [" ", "\u3000", "\x1c", "\ufeff", "\t\u2028"])
def test_a_query_of_only_blank_characters_is_a_400(client, blank):
    assert_problem(client.post("/search", json={"query": blank}), 400, "query")


LAX = {
    "a boolean seed": ({"seed": False}, "seed"),
    "an integer for a boolean": ({"explain": 0}, "explain"),
    "a string for an integer": ({"limit": "10"}, "limit"),
    "a fractional k": ({"k": 2.5}, "k"),
    "a number for a date-time": ({"filter": {"must": [{"key": "t", "range": {"gt": "2000-01-01T00:00:00Z",
                                                                               "lte": 0}}]}}, "filter"),
    "a key that is no JSON path": ({"filter": {"must": [{"key": "a b", "match": {"value": "x"}}]}}, "filter"),
    "a condition that tests nothing": ({"filter": {"must": [{"key": "a", "match": None}]}}, "filter"),
    "a geo condition": ({"filter": {"must": [{"key": "a", "geo_radius": {"center": {"lon": 0, "lat": 0},
                                                                          "radius": 1}}]}}, "filter"),
}


@pytest.mark.parametrize("extra, field", LAX.values(), ids=LAX.keys())
def test_what_the_schema_refuses_is_refused(client, extra, field):
    body = assert_problem(client.post("/fanout", json={"query": "boho festival"} | extra), 422)
    assert body["errors"][0]["field"].startswith(field), body


def test_an_empty_result_explained_still_matches_the_response_schema(client):
    """Found by schemathesis: with no items there is no group key, and the view dropped two required fields."""
    nothing = {"must": [{"key": "category", "match": {"value": "no such category"}}]}
    response = client.post("/fanout", json={"query": "boho festival", "explain": True, "filter": nothing})
    assert response.status_code == 200, response.text
    view = FanoutResponse.model_validate(response.json()).view
    assert view.distinct_items == 0 and view.group_key is None


def test_an_integral_number_is_an_integer(client):
    assert client.post("/fanout", json={"query": "boho festival", "k": 3.0, "limit": 5.0}).status_code == 200


@pytest.mark.slow
def test_schemathesis_checks_all_find_nothing(tiny_encoder_dir, tiny_graph_dir, index_copy, tmp_path):
    """A small run for CI; `python -m loadtests.contract` runs the full one (results/contract_*.md)."""
    env = {"R4T_ENCODER_DIR": str(tiny_encoder_dir), "R4T_INDEX_DIR": str(index_copy), "R4T_DATASET": "polyvore",
           "R4T_GRAPH_DIR": str(tiny_graph_dir), "R4T_MAX_LIMIT": "50", "R4T_MAX_BATCH_QUERIES": "8"}
    st = Path(sys.executable).with_name("st")
    with uvicorn_server(env, tmp_path / "uvicorn.log") as base:
        run = subprocess.run([str(st), "run", f"{base}/openapi.json", "--checks", "all", "--phases",
                              "examples,fuzzing", "--max-examples", "15", "--seed", "1", "--no-color",
                              "--output-sanitize", "false"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout, run.stdout[-3000:]
