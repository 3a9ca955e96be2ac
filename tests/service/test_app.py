"""The service end to end on a real Edge index of the Polyvore slice: routes, errors, readiness, start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.manifest import ArtifactError
from service.store import EdgeStore
from tests.service.serving import ROOT, uvicorn_server

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as client:  # the lifespan loads encoder and index
        yield client


@pytest.fixture(scope="module")
def probe_item(catalog, tiny_encoder):
    """An item whose text no other item shares (the encoder is uncased, so compare lowercased)."""
    counts = Counter(it.text.lower() for it in catalog.items.values())
    return next(
        it for it in catalog.items.values()
        if counts[it.text.lower()] == 1 and len(it.text.split()) >= 4 and len(tiny_encoder.tokenizer.encode(it.text).ids) <= 32
    )


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert any(f == field or f.startswith(f"{field}.") for f in fields), body
    return body


# --- ops routes ---------------------------------------------------------------------------------


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_start_up_objects_are_frozen_out_of_the_collector(settings, index_copy):
    """The lifespan freezes what it loaded (no long GC passes over it): counted from an unfrozen process."""
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))):
        assert gc.get_freeze_count() > 0


def test_readyz_reports_every_check_true(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["checks"] == {"artifact": True, "warm_up": True, "store": True}


def test_info_shows_provider_items_and_manifest(client, catalog, tiny_encoder):
    body = client.get("/info").json()
    assert body["provider"] == "CPUExecutionProvider"
    assert body["items"] == len(catalog.items)
    assert body["manifest"]["encoder"]["name"] == tiny_encoder.manifest.encoder.name
    assert body["index"]["encoder_sha256"] == tiny_encoder.manifest.encoder_sha256
    assert body["dataset"] == "polyvore"


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_info_names_artifacts_without_local_paths(client):
    body = client.get("/info").json()
    assert body["graph"]["name"] and "source" not in body["manifest"]["encoder"]
    leaks = [s for s in _strings(body) if s.startswith("/") or "artifacts/" in s or Path(s).is_absolute()]
    assert leaks == []


# --- search -------------------------------------------------------------------------------------


def test_search_returns_limit_items_sorted_with_timings(client):
    response = client.post("/search", json={"query": "black leather ankle boots", "limit": 7})
    assert response.status_code == 200
    body = response.json()
    assert len(body["items"]) == 7
    for item in body["items"]:
        assert set(item) == {"id", "text", "payload", "score"} and item["text"] and item["id"]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body["timings"]) >= {"encode", "resolve", "total"}
    assert all(v >= 0 for v in body["timings"].values())


def test_search_for_an_item_text_finds_that_item_first(client, probe_item):
    body = client.post("/search", json={"query": probe_item.text, "limit": 5}).json()
    top = body["items"][0]
    assert top["id"] == probe_item.id and top["text"] == probe_item.text
    assert top["score"] == pytest.approx(1.0, abs=1e-3)  # same text, same vector


def test_payload_filter_keeps_only_that_category(client, catalog):
    category, count = Counter(it.payload["category"] for it in catalog.items.values()).most_common(1)[0]
    limit = min(count, 15)
    flt = {"must": [{"key": "category", "match": {"value": category}}]}
    body = client.post("/search", json={"query": "summer outfit", "limit": limit, "filter": flt}).json()
    assert len(body["items"]) == limit
    assert {item["payload"]["category"] for item in body["items"]} == {category}


# --- errors: 4xx problem+json naming the field, never 500 -----------------------------------------

JEANS = {"key": "category", "match": {"value": "Jeans"}}
LONG_QUERY = " ".join(["outfit", "boots", "velvet", "summer", "denim"] * 40)  # 1,199 characters
BAD_REQUESTS = {
    "empty query": ({"query": ""}, 400, "query"),
    "whitespace query": ({"query": "   "}, 400, "query"),
    "query over the length limit": ({"query": LONG_QUERY}, 422, "query"),
    "limit 0": ({"query": "boots", "limit": 0}, 422, "limit"),
    "limit above max_limit": ({"query": "boots", "limit": 1001}, 422, "limit"),
    "limit as a string": ({"query": "boots", "limit": "ten"}, 422, "limit"),
    "unknown field": ({"query": "boots", "fanout": 8}, 422, "fanout"),
    "missing query": ({"limit": 3}, 422, "query"),
    "malformed filter": ({"query": "boots", "filter": {"must": [{"key": "x", "matc": {}}]}}, 422, "filter"),
    "filter not an object": ({"query": "boots", "filter": [{"key": "x"}]}, 422, "filter"),
    "filter of a wrong value type": (
        {"query": "boots", "filter": {"must": [{"key": "category", "match": {"value": {"a": 1}}}]}}, 422, "filter"
    ),
    # Valid for qdrant-client's models, but not for Edge's Rust types: once each a 500.
    "filter int beyond i64": (
        {"query": "boots", "filter": {"must": [{"key": "category_id", "match": {"value": 10**30}}]}}, 422, "filter"
    ),
    "filter with an empty key": (
        {"query": "boots", "filter": {"must": [{"key": "", "match": {"value": "Jeans"}}]}}, 422, "filter"
    ),
    "filter negative min_count": (
        {"query": "boots", "filter": {"min_should": {"conditions": [JEANS], "min_count": -1}}}, 422, "filter"
    ),
}


@pytest.mark.parametrize("payload, status, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_a_problem_naming_the_field(client, payload, status, field):
    assert_problem(client.post("/search", json=payload), status, field)


RAW_BODIES = {
    "not JSON": (b"query=boots", 422, "body"),
    # Valid JSON escapes that are not valid Unicode: the tokenizer and Edge each raised TypeError.
    "lone surrogate in query": (b'{"query": "\\ud800 boots"}', 422, "query"),
    "lone surrogate in filter": (
        b'{"query": "boots", "filter": {"must": [{"key": "category", "match": {"text": "\\udfff"}}]}}',
        422, "filter",
    ),
}


@pytest.mark.parametrize("raw, status, field", RAW_BODIES.values(), ids=RAW_BODIES.keys())
def test_raw_body_is_a_problem_naming_the_field(client, raw, status, field):
    response = client.post("/search", content=raw, headers={"content-type": "application/json"})
    assert_problem(response, status, field)


def test_invalid_utf8_body_is_a_4xx_problem(client):
    raw = b'{"query": "\xff\xfe"}'
    response = client.post("/search", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text  # FastAPI's own 400 "error parsing the body"
    assert_problem(response, response.status_code)


def test_unknown_route_is_a_problem(client):
    assert_problem(client.get("/nope"), 404)


def test_wrong_method_is_a_405_problem_naming_the_allowed_ones(client):
    response = client.get("/fanout")
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"
    assert client.request("TRACE", "/info").headers["allow"] == "GET"


def test_unexpected_error_is_a_500_problem(client, monkeypatch):
    def broken(rt, req):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr("service.pipeline.search", broken)
    raw = TestClient(client.app, raise_server_exceptions=False)  # not entered: the lifespan already ran
    assert_problem(raw.post("/search", json={"query": "boots"}), 500)


# --- readiness flip and start-up refusal ----------------------------------------------------------


def test_closed_store_flips_readiness_and_search_to_503(settings, index_copy):
    with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))) as client:
        assert client.get("/readyz").status_code == 200
        client.app.state.runtime.store.close()
        body = assert_problem(client.get("/readyz"), 503)
        assert body["checks"]["store"] is False
        assert_problem(client.post("/search", json={"query": "boots"}), 503)
        assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_missing_index_refuses_to_start_with_one_line(settings, tmp_path):
    app = create_app(settings.model_copy(update={"index_dir": tmp_path / "nowhere"}))
    with pytest.raises(ArtifactError) as err:
        with TestClient(app):
            pass
    message = str(err.value)
    assert "\n" not in message and "r4t index" in message


def test_index_of_another_encoder_refuses_to_start(settings, index_copy):
    meta_path = index_copy / "index.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"encoder_sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="encoder") as err:
        with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))):
            pass
    assert "\n" not in str(err.value) and "r4t index" in str(err.value)
    EdgeStore.open(index_copy / "shard").close()  # the refused start let go of the shard's lock


def test_corrupt_index_meta_refuses_to_start_with_one_line(settings, index_copy):
    meta_path = index_copy / "index.json"
    meta = json.loads(meta_path.read_text())
    del meta["encoder_sha256"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="corrupt .*index.json: encoder_sha256") as err:
        with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))):
            pass
    assert "\n" not in str(err.value)


def test_graph_whose_io_names_differ_from_its_manifest_is_refused(tiny_encoder_dir, tmp_path):
    import shutil

    from service.encoder import OnnxEncoder
    from service.atomic import write_json_atomic
    from service.manifest import MANIFEST_FILE, load_manifest

    shutil.copytree(tiny_encoder_dir, tmp_path / "enc")
    manifest = load_manifest(tmp_path / "enc")
    manifest.outputs = ["sentence_embedding"]  # the manifest is not among its own hashed files
    write_json_atomic(tmp_path / "enc" / MANIFEST_FILE, manifest.model_dump())
    with pytest.raises(ArtifactError, match="gives \\['embedding'\\].*declares") as err:
        OnnxEncoder(tmp_path / "enc")
    assert "\n" not in str(err.value)


def test_index_in_use_by_another_server_refuses_to_start(client, settings):
    # `client` holds the shard open; Edge locks its WAL, so a second server cannot load it.
    with pytest.raises(ArtifactError, match="another server") as err:
        with TestClient(create_app(settings)):
            pass
    assert "\n" not in str(err.value)


# --- a real uvicorn process, and a torch-free import ---------------------------------------------


def test_real_uvicorn_process_serves_search_and_fanout(tiny_encoder_dir, tiny_graph_dir, index_copy, tmp_path):
    env = {"R4T_ENCODER_DIR": str(tiny_encoder_dir), "R4T_INDEX_DIR": str(index_copy), "R4T_DATASET": "polyvore",
           "R4T_GRAPH_DIR": str(tiny_graph_dir)}
    with uvicorn_server(env, tmp_path / "uvicorn.log") as base:
        response = httpx.post(f"{base}/search", json={"query": "red summer dress", "limit": 3}, timeout=30)
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 3
        info = httpx.get(f"{base}/info", timeout=30).json()
        assert info["default_strategy"]["name"] == "single"  # the toy graph records no val check
        body = {"query": "red summer dress", "limit": 5, "seed": 3, "strategy": "diffusion"}
        first, second = (httpx.post(f"{base}/fanout", json=body, timeout=30) for _ in range(2))
        assert first.status_code == 200, first.text
        assert [it["id"] for it in first.json()["items"]] == [it["id"] for it in second.json()["items"]]
        assert len(first.json()["items"]) == 5 and "sample;dur=" in first.headers["server-timing"]


def test_importing_the_app_leaves_torch_out():
    heavy = ("torch", "sentence_transformers", "transformers")
    code = f"import sys, service.app; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_body_over_the_limit_gets_413_declared_or_streamed(settings, index_copy):
    small = settings.model_copy(update={"max_body_bytes": 256, "index_dir": index_copy})
    with TestClient(create_app(small)) as client:
        big = {"query": "boots " * 100, "strategy": "single"}
        body = assert_problem(client.post("/search", json=big), 413)
        assert "256 bytes" in body["detail"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b'{"query": "'
            for _ in range(10):
                yield b"boots " * 10
            yield b'"}'

        assert_problem(client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413)
        assert client.post("/search", json={"query": "boots"}).status_code == 200  # under the limit: served


def test_a_batch_limit_above_the_queue_is_refused(settings):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_batch_queries"):
        settings.model_validate(settings.model_dump() | {"max_batch_queries": 1024, "max_queue": 512})


def test_an_int8_inner_product_index_is_named_at_start_up(settings, index_copy, caplog):
    """An index that scores by inner product over an int8 copy (built before dot spaces dropped it) starts with a
    warning naming the rebuild, and one of unit vectors with int8 (the text spaces) without it."""
    import logging

    from service.manifest import INDEX_FILE

    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))):
            pass
    assert not [r for r in caplog.records if "inner product" in r.getMessage()]
    meta = json.loads((index_copy / INDEX_FILE).read_text())
    (index_copy / INDEX_FILE).write_text(json.dumps(meta | {"distance": "dot", "quantization": "int8"}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))):
            pass
    assert any("inner product" in r.getMessage() and "r4t space build" in r.getMessage() for r in caplog.records)
