"""The latency benchmark against a real uvicorn process on loopback (a handful of requests)."""

from __future__ import annotations

import json

import pytest

from loadtests.bench import batch_sweep, closed_loop, locust_run, parse_server_timing, start_server, stop_server


def test_parse_server_timing():
    assert parse_server_timing("queue;dur=0.5, sample;dur=12.250") == {"queue": 0.5, "sample": 12.25}
    assert parse_server_timing("") == {}


@pytest.fixture
def server(tiny_encoder_dir, tiny_graph_dir, index_copy, catalog_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("R4T_DATA_DIR", str(catalog_data_dir))  # locust reads its intents from the catalog
    env = {"R4T_ENCODER_DIR": str(tiny_encoder_dir), "R4T_INDEX_DIR": str(index_copy), "R4T_GRAPH_DIR": str(tiny_graph_dir),
           "R4T_DATASET": "polyvore", "R4T_ONNX_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc, base = start_server(env, tmp_path / "server.log", timeout_s=120)
    yield base
    stop_server(proc)


def test_closed_loop_and_batch_sweep_measure_every_request(server, catalog):
    queries = [s.intent for s in catalog.sets[:6]]
    run = closed_loop(server, {"strategy": "diffusion", "k": 10, "limit": 5}, queries, concurrency=2)
    assert run["requests"] == 6 and run["errors"] == 0 and len(run["latencies_ms"]) == 6
    assert set(run["stages_p50_ms"]) == {"queue", "sample", "resolve", "total"}
    rows = batch_sweep(server, {"strategy": "diffusion"}, queries, [1, 4], repeats=1)
    assert [r["batch"] for r in rows] == [1, 4] and all(r["median_ms"] > 0 for r in rows)
    json.dumps(run)  # the report is plain JSON


def test_open_loop_follows_the_arrival_rate(server, tmp_path):
    """One dispatcher at 8 requests/s for 4 s: Poisson arrivals (mean 32), every one answered, none dropped."""
    step = locust_run(server, "single", 8.0, 4, "polyvore", tmp_path)
    assert step["failures"] == 0 and step["dropped"] == 0
    assert 12 <= step["requests"] <= 60
    assert step["users"] == 1 and step["client_cpu_s"] > 0 and step["stages_p50_ms"]["total"] > 0


@pytest.mark.slow
def test_a_slow_arrival_rate_leaves_the_dispatcher_idle(server, tmp_path):
    """1 request/s for 5 s: between arrivals the dispatcher sleeps (a busy loop would burn ~5 CPU s)."""
    step = locust_run(server, "single", 1.0, 5, "polyvore", tmp_path)
    assert step["failures"] == 0 and step["client_cpu_s"] < 1.5


def test_closed_loop_users_send_back_to_back(server, tmp_path):
    step = locust_run(server, "single", 0.0, 3, "polyvore", tmp_path, users=2)
    assert step["failures"] == 0 and step["users"] == 2 and step["requests"] > 10


def test_server_env_names_the_settings_passed_on_but_no_secret(monkeypatch):
    from loadtests.bench import server_env, settings_line

    monkeypatch.setenv("R4T_ONNX_THREADS", "1")
    monkeypatch.setenv("R4T_QDRANT_API_KEY", "secret")
    env = server_env()
    assert env["R4T_ONNX_THREADS"] == "1" and "R4T_QDRANT_API_KEY" not in env
    assert "`R4T_ONNX_THREADS=1`" in settings_line({"server_env": env})
    assert "not known" in settings_line({"server_env": None})


@pytest.mark.slow
def test_load_report_saturation_and_sustained_run(server, tmp_path):
    from loadtests.bench import load

    out = tmp_path / "load"
    # no step counts as saturated by its latency (a busy machine would stop the sweep early): both steps run
    load(dataset="polyvore", strategies="single", fractions="0.25,0.5", seconds=2, min_requests=1, max_seconds=3,
         saturated_p50_factor=1e9, warmup_s=1.0, sustain_strategy="single", sustain_p99_ms=60_000.0,
         sustain_seconds=3, url=server,
         out=out)
    report = json.loads(out.with_suffix(".json").read_text())
    assert [s["strategy"] for s in report["steps"]] == ["single", "single"]
    assert report["saturation"]["single"]["qps"] == max(s["rps"] for s in report["steps"])
    assert report["sustained"]["seconds"] == 3 and report["sustained"]["target_rps"] == report["steps"][1]["target_rps"]
    assert "Sustained: single" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 0
    assert report["server_env"] is None  # a service it did not start: its settings are not known here
