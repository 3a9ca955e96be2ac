"""The query-to-fanout ONNX graph: parity with torch, dynamic axes, reproducible noise, the manifest."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.bench import GraphBenchConfig, bench_graphs, machine, write_report
from export.fanout import COSINE_FLOOR, PARITY_TOLERANCE, FanoutExportConfig, export_fanout
from service.encoder import load_tokenizer
from service.graph import FanoutGraph
from service.manifest import load_manifest
from training.diffusion.model import DiffusionConfig, SetDenoiser

# A tiny denoiser (width 32, one block): the graph's shape is what is under test, not its quality.
TINY = DiffusionConfig(dim=384, rows=5, width=32, depth=1, heads=2, cond_tokens=2)


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    model = SetDenoiser(TINY)
    for p in model.parameters():  # the zero-initialised output head would make the graph trivial
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def artifact(encoder_dir, denoiser, polyvore, tmp_path_factory):
    out = tmp_path_factory.mktemp("fanout") / "polyvore"
    queries = [s.intent for s in polyvore.sets[:20]] + ["", "boho summer festival outfit"]
    manifest = export_fanout(out, encoder_dir, denoiser, FanoutExportConfig(steps=2, guidance=2.0), queries,
                             "polyvore")
    return out, manifest


def _run(directory, texts, noise):
    tok = load_tokenizer(directory, 256)
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": mask, "noise": noise})


def test_parity_and_manifest(artifact, encoder_dir):
    out, manifest = artifact
    assert manifest.parity.max_abs_error <= PARITY_TOLERANCE and manifest.parity.n_inputs == 22
    loaded = load_manifest(out)  # sha256 of every file verified
    assert loaded.kind == "fanout" and loaded.inputs == ["input_ids", "attention_mask", "noise"]
    assert loaded.fanout.rows == 5 and loaded.fanout.steps == 2 and len(loaded.fanout.sigmas) == 3
    assert loaded.encoder_sha256 == load_manifest(encoder_dir).encoder_sha256  # same space as the index


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_unit_rows_and_seeded_noise(artifact, batch):
    out, _ = artifact
    texts = ["office chic", "late night drive", "winter wedding guest"][:batch]
    noise = np.random.default_rng(7).standard_normal((batch, 5, 384)).astype(np.float32)
    z, fanout = _run(out, texts, noise)
    assert z.shape == (batch, 384) and fanout.shape == (batch, 5, 384)
    assert np.allclose(np.linalg.norm(fanout, axis=-1), 1.0, atol=1e-5)
    assert np.array_equal(_run(out, texts, noise)[1], fanout)  # the caller's noise decides the output
    other = _run(out, texts, noise + 1.0)[1]
    assert not np.allclose(other, fanout)


def test_dim_mismatch_is_refused(encoder_dir, tmp_path):
    small = SetDenoiser(DiffusionConfig(dim=16, rows=2, width=16, depth=1, heads=2, cond_tokens=1))
    with pytest.raises(ValueError, match="dim"):
        export_fanout(tmp_path / "x", encoder_dir, small, FanoutExportConfig(), ["q"], "polyvore")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_precision_variants_keep_direction_and_serve(precision, artifact, encoder_dir, denoiser, polyvore,
                                                     tmp_path):
    fp32_dir, _ = artifact
    queries = [s.intent for s in polyvore.sets[:12]]
    out = tmp_path / precision
    cfg = FanoutExportConfig(steps=2, guidance=2.0, precision=precision)
    manifest = export_fanout(out, encoder_dir, denoiser, cfg, queries, "polyvore")
    loaded = load_manifest(out)
    assert loaded.precision == precision and manifest.parity.n_inputs == 12
    assert COSINE_FLOOR <= loaded.parity.min_cosine <= 1.0 + 1e-5
    assert (out / "model.onnx").stat().st_size < 0.8 * (fp32_dir / "model.onnx").stat().st_size
    # The service opens a variant like any other graph: float32 in, float32 unit rows out.
    [output] = FanoutGraph(out).run([("festival outfit", 3)])
    assert output.fanout.dtype == np.float32 and np.allclose(np.linalg.norm(output.fanout, axis=-1), 1, atol=1e-3)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        FanoutExportConfig(precision="int4")


def test_bench_graph_times_every_batch_and_writes_report(artifact, polyvore, tmp_path):
    out, _ = artifact
    cfg = GraphBenchConfig(batches=(1, 3), min_runs=2, max_seconds=0.0, warmup=1)
    rows = bench_graphs([out, out], [s.intent for s in polyvore.sets[:5]], cfg)  # two graphs, timed in turns
    assert [r["batch"] for r in rows] == [1, 1, 3, 3]
    assert all(r["provider"] == "CPUExecutionProvider" and r["runs"] >= 2 and r["p50_ms"] > 0 for r in rows)
    files = write_report(rows, {"dataset": "polyvore", "machine": machine(), "command": "test"}, tmp_path, "g")
    assert [f.name for f in files] == ["g.json", "g.md", "g.png"] and all(f.stat().st_size > 0 for f in files)
    assert "| polyvore | fp32 | 2 | CPU | 3 |" in files[1].read_text()


def test_graph_strategy_scores_what_the_torch_sampler_scores(artifact, denoiser, encoder, resolver, polyvore):
    """`r4t eval --strategies diffusion,graph`: same seed, same noise, so only the export's numerics differ."""
    from training.evaluate import diffusion_strategy, graph_strategy

    out, _ = artifact
    queries = [s.intent for s in polyvore.sets[:6]]
    qv = encoder.encode(queries)
    torch_rows = diffusion_strategy("torch", denoiser, encoder, resolver, steps=2, guidance=2.0).run(queries, qv, 20, 3)
    graph = graph_strategy("onnx", FanoutGraph(out), encoder, resolver, batch=4).run(queries, qv, 20, 3)
    cos = [np.sum(a.vectors * b.vectors, axis=-1).min() for a, b in zip(torch_rows, graph)]
    assert min(cos) > 0.999
    assert sum(a.items == b.items for a, b in zip(torch_rows, graph)) >= 5  # a near-tie may swap one ranking
    other = graph_strategy("onnx", FanoutGraph(out), encoder, resolver).run(queries, qv, 20, 4)
    assert any(a.items != b.items for a, b in zip(graph, other))  # the seed is the only randomness


def test_a_distilled_student_exports_its_own_schedule(encoder_dir, denoiser, polyvore, tmp_path):
    import copy

    student = copy.deepcopy(denoiser)
    student.sigmas = [80.0, 0.5, 0.0]  # what `r4t diffusion distil` stores beside the weights
    queries = [s.intent for s in polyvore.sets[:4]]
    manifest = export_fanout(tmp_path / "s2", encoder_dir, student, FanoutExportConfig(steps=2), queries, "polyvore")
    assert load_manifest(tmp_path / "s2").fanout.sigmas == [80.0, 0.5, 0.0] and manifest.parity.max_abs_error < 1e-3
    with pytest.raises(ValueError, match="distilled for 2"):
        export_fanout(tmp_path / "s4", encoder_dir, student, FanoutExportConfig(steps=4), queries, "polyvore")
    assert not (tmp_path / "s4").exists()
