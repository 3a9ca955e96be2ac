"""POST /fanout and /fanout/batch on a real Edge index and a real (tiny) exported fan-out graph."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.manifest import ArtifactError
from tests.service.test_app import BAD_REQUESTS, LONG_QUERY, assert_problem


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def post(client, **body):
    response = client.post("/fanout", json={"query": "boho summer festival outfit", **body})
    assert response.status_code == 200, response.text
    return response


def ids(body: dict) -> list[str]:
    return [it["id"] for it in body["items"]]


def metric(client, name: str, **labels) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            sample, value = line.rsplit(" ", 1)
            got = ",".join(sorted(sample[sample.index("{") + 1 : -1].split(","))) if "{" in sample else ""
            if got == want:
                return float(value)
    return 0.0


# --- strategies, fusion, MMR, filter, seeds ----------------------------------------------------------


def test_diffusion_returns_fused_items_with_provenance_and_timings(client):
    response = post(client, k=6, limit=12, limit_per_fanout=5, seed=1, fill=False)
    body = response.json()
    assert body["strategy"] == "diffusion" and body["seed"] == 1
    assert len(body["items"]) == 12 and len(set(ids(body))) == 12
    found = [tuple(p) for it in body["items"] for p in it["found_by"]]
    assert {v for v, _ in found} <= set(range(6)) and all(0 <= r < 5 for _, r in found)
    assert len({v for v, _ in found}) > 1  # the fan-out spreads over several vectors
    assert set(body["timings"]) == {"queue", "sample", "resolve", "total"}
    assert response.headers["server-timing"].startswith("queue;dur=")
    assert "fanouts" not in body and "subqueries" not in body


def test_fill_returns_limit_items_when_the_fan_outs_hits_are_too_few(client):
    short = post(client, k=4, limit=30, limit_per_fanout=2, seed=3, fill=False).json()
    assert len(short["items"]) <= 4 * 2  # without fill: at most k x limit_per_fanout hits
    full = post(client, k=4, limit=30, limit_per_fanout=2, seed=3).json()
    assert len(full["items"]) == 30 and len(set(ids(full))) == 30
    assert ids(full)[: len(short["items"])] == ids(short)  # deeper union keeps the first items in place
    assert max(r for it in full["items"] for _, r in it["found_by"]) >= 2  # found below limit_per_fanout


def test_single_is_the_query_embedding_search(client):
    body = post(client, strategy="single", limit=7).json()
    search = client.post("/search", json={"query": "boho summer festival outfit", "limit": 7}).json()
    assert ids(body) == ids(search)
    assert all(it["found_by"] == [[0, rank]] for rank, it in enumerate(body["items"]))
    assert set(search["timings"]) == {"queue", "encode", "resolve", "total"}  # /search is micro-batched too
    assert set(body["timings"]) == {"queue", "encode", "resolve", "total"}


def test_explain_describes_the_returned_set_without_changing_it(client):
    plain = post(client, k=6, limit=15, seed=2).json()
    body = post(client, k=6, limit=15, seed=2, explain=True).json()
    assert "view" not in plain and ids(body) == ids(plain)
    view, n = body["view"], len(body["items"])
    assert view["distinct_items"] == n == 15
    assert view["group_key"] == "category"
    assert view["distinct_groups"] == len({it["payload"]["category"] for it in body["items"]}) > 1
    assert 1.0 < view["vendi"] <= n and 0.0 < view["mean_pairwise_distance"] < 2.0
    points = view["projection"]
    assert len(points["fanouts"]) == 6 and len(points["items"]) == n
    assert len({tuple(p) for p in points["items"]}) == n  # distinct items land on distinct points
    single = post(client, strategy="single", limit=5, explain=True).json()["view"]["projection"]
    assert len(single["fanouts"]) == 1 and len(single["items"]) == 5


def test_rrf_orders_by_fused_score_and_union_by_round_robin(client):
    union = post(client, seed=2, limit=20, limit_per_fanout=8).json()
    rrf = post(client, seed=2, limit=20, limit_per_fanout=8, fusion="rrf").json()
    scores = [it["score"] for it in rrf["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(min(r for _, r in it["found_by"]) == 0 for it in union["items"][:3])  # top-1s come first
    assert ids(union) != ids(rrf)


def test_mmr_reranks_the_candidates(client):
    plain = post(client, seed=4, limit=10, limit_per_fanout=20, k=4).json()
    diverse = post(client, seed=4, limit=10, limit_per_fanout=20, k=4, mmr={"lambda": 0.3, "candidates": 60}).json()
    assert len(diverse["items"]) == 10 and len(set(ids(diverse))) == 10
    assert ids(plain) != ids(diverse)


def test_filter_applies_to_every_fanout(client, catalog):
    category = Counter(it.payload["category"] for it in catalog.items.values()).most_common(1)[0][0]
    flt = {"must": [{"key": "category", "match": {"value": category}}]}
    body = post(client, limit=8, filter=flt).json()
    assert body["items"] and {it["payload"]["category"] for it in body["items"]} == {category}


def test_seed_reproduces_the_fanout_and_another_seed_changes_it(client, tiny_encoder):
    a, b = (post(client, seed=11, return_vectors=True).json() for _ in range(2))
    c = post(client, seed=12, return_vectors=True).json()
    va, vb, vc = (np.array(x["fanouts"]) for x in (a, b, c))
    assert va.shape == (10, tiny_encoder.dim) and np.allclose(np.linalg.norm(va, axis=1), 1, atol=1e-4)
    assert np.allclose(va, vb, atol=1e-5) and ids(a) == ids(b)
    assert not np.allclose(va, vc, atol=1e-3)


def test_batch_is_one_onnx_run_and_query_i_uses_seed_plus_i(client):
    queries = ["office chic", "beach wedding guest", "rainy day in the city"]
    runs, queries_run = (metric(client, f"r4t_batch_size_{s}", model="graph") for s in ("count", "sum"))
    response = client.post("/fanout/batch", json={"queries": queries, "seed": 20, "return_vectors": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["query"] for r in results] == queries and [r["seed"] for r in results] == [20, 21, 22]
    assert metric(client, "r4t_batch_size_count", model="graph") == runs + 1
    assert metric(client, "r4t_batch_size_sum", model="graph") == queries_run + 3
    alone = client.post("/fanout", json={"query": queries[1], "seed": 21, "return_vectors": True}).json()
    assert np.allclose(alone["fanouts"], results[1]["fanouts"], atol=1e-5)  # the batch does not change it
    assert ids(alone) == ids(results[1])


def test_a_batch_past_the_hit_budget_is_resolved_in_several_calls_with_the_same_answer(client, settings, index_copy):
    body = {"queries": ["office chic", "beach wedding guest", "rainy day in the city"], "seed": 5, "k": 10,
            "limit": 8, "limit_per_fanout": 10, "explain": True}
    whole = client.post("/fanout/batch", json=body).json()["results"]
    small = settings.model_copy(update={"max_hits_per_call": 100, "index_dir": index_copy})  # 1 query per call
    with TestClient(create_app(small)) as split_client:
        rt = split_client.app.state.runtime
        calls, resolve_many = [], rt.resolver.resolve_many
        rt.resolver.resolve_many = lambda blocks, *a, **kw: calls.append(len(blocks)) or resolve_many(blocks, *a, **kw)
        split = split_client.post("/fanout/batch", json=body).json()["results"]
    assert calls == [1, 1, 1]
    assert [ids(r) for r in split] == [ids(r) for r in whole]
    assert [r["view"] for r in split] == [r["view"] for r in whole]


def test_concurrent_requests_share_onnx_runs(client):
    rt = client.app.state.runtime
    runs = metric(client, "r4t_batch_size_count", model="graph")
    gate = threading.Event()
    rt.executor.submit(gate.wait)  # hold the one ONNX worker so that the requests queue up
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.post, "/fanout", json={"query": f"summer look {i}", "seed": i})
                   for i in range(8)]
        deadline = time.time() + 10
        while rt.graph_batcher.in_flight < 8 and time.time() < deadline:
            time.sleep(0.01)
        gate.set()
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 8
    assert metric(client, "r4t_batch_size_count", model="graph") - runs <= 2  # 8 requests, at most 2 runs


def test_full_queue_answers_429_with_retry_after(settings, index_copy):
    tight = settings.model_copy(update={"index_dir": index_copy, "max_queue": 2})
    with TestClient(create_app(tight)) as client:
        rt = client.app.state.runtime
        gate = threading.Event()
        rt.executor.submit(gate.wait)
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.post, "/fanout", json={"query": f"boots {i}"}) for i in range(6)]
            deadline = time.time() + 10
            # At most 2 are taken into the held run and 2 more queue: at least 2 of 6 are refused.
            while metric(client, "r4t_rejected_total", strategy="diffusion") < 2 and time.time() < deadline:
                time.sleep(0.01)
            gate.set()
            responses = [f.result() for f in futures]
        rejected = [r for r in responses if r.status_code == 429]
        assert len(rejected) >= 2 and all(r.status_code in (200, 429) for r in responses)
        assert rejected[0].headers["retry-after"] == "1"
        assert_problem(rejected[0], 429)


# --- ops ---------------------------------------------------------------------------------------------


def test_request_id_is_echoed_or_made(client):
    assert post(client, strategy="single").headers["x-request-id"]
    response = client.post("/fanout", json={"query": "boots", "strategy": "single"}, headers={"X-Request-ID": "abc"})
    assert response.headers["x-request-id"] == "abc"
    for bad in ("x" * 200, "a b", "<script>"):  # too long, or outside [A-Za-z0-9._:-]: replaced, not echoed
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32


def test_metrics_label_routes_by_template_not_raw_path(client):
    for i in range(3):
        assert client.get(f"/no-such-path-{i}").status_code == 404
    text = client.get("/metrics").text
    assert "no-such-path" not in text
    assert metric(client, "r4t_requests_total", route="unmatched", strategy="-", status="404") >= 3


def test_metrics_count_requests_by_strategy_and_status(client):
    before = metric(client, "r4t_requests_total", route="/fanout", strategy="single", status="200")
    post(client, strategy="single")
    assert metric(client, "r4t_requests_total", route="/fanout", strategy="single", status="200") == before + 1
    text = client.get("/metrics").text
    for name in ("r4t_stage_seconds_bucket", "r4t_queue_depth", 'r4t_provider{model="graph",provider='
                 '"CPUExecutionProvider"} 1.0'):
        assert name in text


def test_info_lists_strategies_and_the_graph(client):
    body = client.get("/info").json()
    assert body["strategies"] == ["single", "diffusion"] and body["llm"] is None
    assert set(client.get("/openapi.json").json()["components"]["schemas"]["Info"]["properties"]) >= set(body)
    assert body["graph"]["provider"] == "CPUExecutionProvider"
    assert body["graph"]["manifest"]["fanout"]["rows"] == 10


def test_openapi_documents_fanout_with_examples(client):
    spec = client.get("/openapi.json").json()
    assert {"/fanout", "/fanout/batch", "/metrics"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["FanoutRequest"]["examples"]
    for path in ("/search", "/fanout", "/fanout/batch"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "413", "422", "429", "503"} <= set(responses)
        problem = responses["413"]["content"]["application/problem+json"]["schema"]
        assert problem["$ref"].endswith("/Problem")


# --- errors ------------------------------------------------------------------------------------------

FANOUT_BAD = {
    "k 0": ({"k": 0}, 422, "k"),
    "k above the graph's rows": ({"k": 11}, 422, "k"),
    "k above max_k": ({"k": 33, "strategy": "single"}, 422, "k"),
    "limit_per_fanout 0": ({"limit_per_fanout": 0}, 422, "limit_per_fanout"),
    "limit_per_fanout above max_limit": ({"limit_per_fanout": 1001}, 422, "limit_per_fanout"),
    "unknown strategy": ({"strategy": "magic"}, 422, "strategy"),
    "llm not configured": ({"strategy": "llm"}, 422, "strategy"),
    "unknown fusion": ({"fusion": "max"}, 422, "fusion"),
    "mmr lambda above 1": ({"mmr": {"lambda": 2}}, 422, "mmr.lambda"),
    "mmr candidates above max_limit": ({"mmr": {"candidates": 5000}}, 422, "mmr.candidates"),
    "negative seed": ({"seed": -1}, 422, "seed"),
    "seed as a string": ({"seed": "abc"}, 422, "seed"),
    "return_vectors not a bool": ({"return_vectors": "maybe"}, 422, "return_vectors"),
}


@pytest.mark.parametrize("extra, status, field", FANOUT_BAD.values(), ids=FANOUT_BAD.keys())
def test_bad_fanout_option_is_a_problem_naming_the_field(client, extra, status, field):
    assert_problem(client.post("/fanout", json={"query": "boots", **extra}), status, field)


@pytest.mark.parametrize("payload, status, field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_query_limit_or_filter_is_a_problem(client, payload, status, field):
    assert_problem(client.post("/fanout", json=payload), status, field)


def test_invalid_utf8_is_a_problem(client):
    response = client.post("/fanout", content=b'{"query": "\xff\xfe boots"}',
                           headers={"content-type": "application/json"})
    assert_problem(response, 400)


BATCH_BAD = {
    "no queries": ({"queries": []}, 422, "queries"),
    "an empty query": ({"queries": ["boots", " "]}, 400, "queries.1"),
    "a long query": ({"queries": [LONG_QUERY]}, 422, "queries.0"),
    "not a list": ({"queries": "boots"}, 422, "queries"),
    "too many": ({"queries": ["boots"] * 1025}, 422, "queries"),
}


@pytest.mark.parametrize("payload, status, field", BATCH_BAD.values(), ids=BATCH_BAD.keys())
def test_bad_batch_is_a_problem_naming_the_field(client, payload, status, field):
    assert_problem(client.post("/fanout/batch", json=payload), status, field)


def test_closed_store_gives_503_on_fanout(settings, index_copy):
    with TestClient(create_app(settings.model_copy(update={"index_dir": index_copy}))) as client:
        client.app.state.runtime.store.close()
        assert_problem(client.post("/fanout", json={"query": "boots"}), 503)
        assert client.get("/readyz").status_code == 503


# --- start-up: the graph must fit --------------------------------------------------------------------


def test_missing_graph_refuses_to_start_with_one_line(settings, tmp_path):
    with pytest.raises(ArtifactError, match="r4t export") as err:
        with TestClient(create_app(settings.model_copy(update={"graph_dir": tmp_path / "none"}))):
            pass
    assert "\n" not in str(err.value)


def test_graph_of_another_catalog_refuses_to_start(settings, tiny_graph_dir, tmp_path):
    import json
    import shutil

    from service.manifest import MANIFEST_FILE

    other = tmp_path / "graph"
    shutil.copytree(tiny_graph_dir, other)
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest["fanout"]["dataset"] = "mpd"
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="trained on mpd"):
        with TestClient(create_app(settings.model_copy(update={"graph_dir": other}))):
            pass


def test_graph_none_serves_without_diffusion(settings, index_copy):
    plain = settings.model_copy(update={"index_dir": index_copy, "graph_dir": None, "graph": "none",
                                        "default_strategy": ""})
    with TestClient(create_app(plain)) as client:
        info = client.get("/info").json()
        assert info["strategies"] == ["single"] and info["default_strategy"]["name"] == "single"
        assert_problem(client.post("/fanout", json={"query": "boots", "strategy": "diffusion"}), 422, "strategy")
        assert client.post("/fanout", json={"query": "boots"}).json()["strategy"] == "single"


def test_default_strategy_is_the_measured_one(settings, tiny_graph_dir, tmp_path):
    """Unset strategy: diffusion only where the graph's manifest records a val check no worse than single."""
    from service.graph import FanoutGraph
    from service.atomic import write_json_atomic
    from service.manifest import load_manifest
    from service.runtime import default_strategy

    measured = settings.model_copy(update={"default_strategy": ""})
    name, why = default_strategy(measured, FanoutGraph(tiny_graph_dir))
    assert name == "single" and "no val check" in why
    copy = tmp_path / "graph"
    shutil.copytree(tiny_graph_dir, copy)
    manifest = load_manifest(copy)
    val = {"sets": 641, "n": 500, "recall_diffusion": 0.1682, "recall_single": 0.1665,
           "ci_vs_single": [0.0017, -0.0002, 0.0037], "non_inferior": True}
    for verdict, expected in ((True, "diffusion"), (False, "single")):
        manifest.config["provenance"] = {"val": {**val, "non_inferior": verdict}}
        write_json_atomic(copy / "manifest.json", manifest.model_dump())
        name, why = default_strategy(measured, FanoutGraph(copy))
        assert name == expected and "641 sets" in why
    # `r4t space export` checks every cut-off: one that fails keeps single, and /info's reason names both
    at = {"500": {**val, "non_inferior": True},
          "5000": {"recall_diffusion": 0.4613, "recall_single": 0.4673, "ci_vs_single": [-0.006, -0.0111, -0.0012],
                   "non_inferior": False}}
    manifest.config["provenance"] = {"val": {**val, "at": at, "non_inferior": False}}
    write_json_atomic(copy / "manifest.json", manifest.model_dump())
    name, why = default_strategy(measured, FanoutGraph(copy))
    assert name == "single" and "R@500 0.1682" in why and "R@5000 0.4613 vs 0.4673" in why and "-0.0111" in why
    assert default_strategy(settings, None) == ("diffusion", "R4T_DEFAULT_STRATEGY")
    # Without a non-inferior graph, the memory strategy's own recorded val check decides between it and single.
    mem = {"sets": 641, "at": {"500": {"recall_memory": 0.1981, "recall_single": 0.1911,
                                       "ci_vs_single": [0.007, 0.003, 0.011], "non_inferior": True}},
           "non_inferior": True}
    name, why = default_strategy(measured, FanoutGraph(copy), {"val": mem})
    assert name == "memory" and "memory vs single: R@500 0.1981 vs 0.1911" in why and "R@5000 0.4613" in why
    name, why = default_strategy(measured, None, {"val": {**mem, "non_inferior": False}})
    assert name == "single" and "no fan-out graph" in why and "memory vs single" in why
    assert default_strategy(measured, None, {"coef": 1.0}) == ("single", "no fan-out graph")
    # Both no worse than single: the higher val recall wins (diffusion 0.1682 at its one cut-off against 0.1981).
    manifest.config["provenance"] = {"val": val}
    write_json_atomic(copy / "manifest.json", manifest.model_dump())
    name, why = default_strategy(measured, FanoutGraph(copy), {"val": mem})
    assert name == "memory" and why.index("memory vs single") < why.index("diffusion vs single")
    better = {**mem, "at": {"500": {**mem["at"]["500"], "recall_memory": 0.1600}}}
    assert default_strategy(measured, FanoutGraph(copy), {"val": better}).name == "diffusion"


def test_default_strategy_without_its_part_refuses_to_start(settings, index_copy):
    bad = settings.model_copy(update={"index_dir": index_copy, "default_strategy": "llm"})
    with pytest.raises(ArtifactError, match="R4T_DEFAULT_STRATEGY=llm"):
        with TestClient(create_app(bad)):
            pass


# --- the micro-batcher on its own --------------------------------------------------------------------


def test_a_request_past_its_deadline_gets_504_and_its_queued_work_is_dropped(settings, index_copy):
    hasty = settings.model_copy(update={"index_dir": index_copy, "request_timeout_ms": 0.001})
    with TestClient(create_app(hasty)) as c:
        for path, body in (("/fanout", {"query": "office chic", "strategy": "diffusion"}),
                           ("/fanout", {"query": "office chic", "strategy": "single"}),
                           ("/fanout/batch", {"queries": ["office chic", "beach wedding"]}),
                           ("/search", {"query": "office chic"})):
            problem = assert_problem(c.post(path, json=body), 504)
            assert "R4T_REQUEST_TIMEOUT_MS" in problem["detail"]
        runtime = c.app.state.runtime
        # The batchers are FIFO: once a later job is answered, every cancelled one before it was taken.
        c.portal.call(runtime.encoder_batcher.submit, ["after the deadlines"])
        c.portal.call(runtime.graph_batcher.submit, [("after the deadlines", 0)])
        assert runtime.encoder_batcher.in_flight == 0 and runtime.graph_batcher.in_flight == 0
        assert c.get("/readyz").status_code == 200
    spec = TestClient(create_app(settings)).app.openapi()
    for path in ("/search", "/fanout", "/fanout/batch"):
        assert "504" in spec["paths"][path]["post"]["responses"]



def test_memory_strategy_is_off_without_a_co_membership_index(client):
    """The Polyvore text index holds no item memory: strategy=memory is a 422 naming the field, not a 500."""
    assert "memory" not in client.get("/info").json()["strategies"]
    assert_problem(client.post("/fanout", json={"query": "boots", "strategy": "memory"}), 422, "strategy")
