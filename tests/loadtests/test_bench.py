"""The latency benchmark against a real uvicorn process on loopback (a handful of requests)."""

from __future__ import annotations

import json

import pytest

from loadtests.bench import batch_sweep, closed_loop, locust_run, parse_server_timing, start_server, stop_server


def test_parse_server_timing():
    assert parse_server_timing("queue;dur=0.5, sample;dur=12.250") == {"queue": 0.5, "sample": 12.25}
    assert parse_server_timing("") == {}


@pytest.fixture
def server(encoder_dir, graph_dir, index_copy, tmp_path):
    env = {"R4T_ENCODER_DIR": str(encoder_dir), "R4T_INDEX_DIR": str(index_copy), "R4T_GRAPH_DIR": str(graph_dir),
           "R4T_DATASET": "polyvore", "R4T_ONNX_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc, base = start_server(env, tmp_path / "server.log", timeout_s=120)
    yield base
    stop_server(proc)


def test_closed_loop_and_batch_sweep_measure_every_request(server, polyvore):
    queries = [s.intent for s in polyvore.sets[:6]]
    run = closed_loop(server, {"strategy": "diffusion", "k": 10, "limit": 5}, queries, concurrency=2)
    assert run["requests"] == 6 and run["errors"] == 0 and len(run["latencies_ms"]) == 6
    assert run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
    assert set(run["stages_p50_ms"]) == {"queue", "sample", "resolve", "total"}
    rows = batch_sweep(server, {"strategy": "diffusion"}, queries, [1, 4], repeats=1)
    assert [r["batch"] for r in rows] == [1, 4] and all(r["median_ms"] > 0 for r in rows)
    json.dumps(run)  # the report is plain JSON


def test_open_loop_users_keep_pacing(server, tmp_path):
    """4 users at 8 requests/s for 3 s: each user sends again after its first answer (≈ 24, not 4)."""
    step = locust_run(server, "single", 8.0, 4, 3, "polyvore", tmp_path)
    assert step["failures"] == 0 and step["requests"] > 2 * 4
    assert step["requests"] <= 8 * 3 + 4  # paced: at most the rate's share plus the first burst
