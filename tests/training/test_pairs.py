"""Pair synthesis with the real policy LM and retriever, and diffusion training with checkpoints."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.diffusion.model import DiffusionConfig
from training.diffusion.pairs import SynthConfig, load_pairs, pad_rows, reference_pairs, successful, synthesize
from training.diffusion.train import TrainConfig, load_model, train
from training.fanout.infer import FanoutLM, SampleConfig
from training.fanout.policy import DEFAULT_POLICY
from training.fanout.rewards import RewardConfig, RewardModel


def test_padding_resamples_own_rows_never_zeros():
    rows = np.eye(3, 8, dtype=np.float32)
    padded = pad_rows(rows, 10, np.random.default_rng(0))
    assert padded.shape == (10, 8) and np.array_equal(padded[:3], rows)
    assert all(any(np.array_equal(r, x) for x in rows) for r in padded)  # every row is one of the originals
    assert pad_rows(np.ones((12, 8)), 10, np.random.default_rng(0)).shape == (10, 8)
    with pytest.raises(ValueError):
        pad_rows(np.empty((0, 8)), 10, np.random.default_rng(0))


def test_successful_keeps_the_better_half_above_zero():
    assert successful([0.0, 0.2, 0.4, 0.6]) == [False, False, True, True]
    assert successful([0.0, 0.0]) == [False, False]  # all failed: the query contributes nothing
    assert successful([0.3, 0.3, -1.0]) == [True, True, False]
    assert successful([-0.6, -0.4, -0.2], min_reward=-1.0) == [False, True, True]  # a looser floor, same median


def test_a_recall_floor_drops_well_formed_misses():
    totals, recalls = [-0.6, -0.4, -0.2, -0.3], [0.1, 0.05, 0.0, 0.02]
    assert successful(totals, -1.0) == [False, False, True, True]
    assert successful(totals, -1.0, recalls, min_recall=0.0) == [False, False, False, True]
    assert successful(totals, -1.0, recalls, min_recall=0.03) == [False, False, False, False]


def test_a_higher_quantile_keeps_only_the_best_tries():
    totals = [-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6]
    assert sum(successful(totals, -1.0)) == 4  # the median: the better half
    assert successful(totals, -1.0, quantile=0.875) == [False] * 7 + [True]  # bar 0.425: the best one
    assert sum(successful(totals, -1.0, quantile=0.75)) == 2
    assert successful([0.1, 0.1, 0.1], quantile=1.0) == [True, True, True]  # ties at the bar all stay
    with pytest.raises(ValueError):
        successful(totals, quantile=1.5)


def test_synthesis_writes_resumable_shards(polyvore, encoder, resolver, policy_artifacts, tmp_path):
    lm = FanoutLM(DEFAULT_POLICY, policy_artifacts, SampleConfig(dataset="polyvore", max_new_tokens=24))
    rewards = RewardModel(encoder, resolver, RewardConfig(task="wscr", depth=50))
    # no reward bar: every fan-out that parses into sub-queries becomes a pair, so the pair checks always run
    cfg = SynthConfig(samples=2, max_queries=2, shard_size=1, min_reward=-1.0, quantile=0.0)
    report = synthesize(lm, rewards, polyvore, tmp_path, cfg)
    assert report["queries"] == 2 and report["shards"] == 2 and report["this_run"]["fanouts"] == 4
    assert report["pairs_total"] > 0, report["this_run"]
    files = sorted(tmp_path.glob("pairs-*.npz"))
    assert [f.name for f in files] == ["pairs-00000.npz", "pairs-00001.npz"]
    query, targets = load_pairs(tmp_path)
    assert query.shape == (report["pairs_total"], 384) and targets.shape == (report["pairs_total"], 10, 384)
    assert np.allclose(np.linalg.norm(targets, axis=-1), 1.0, atol=1e-4)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = synthesize(lm, rewards, polyvore, tmp_path, cfg)  # every shard is there: nothing re-sampled
    assert again["this_run"]["fanouts"] == 0 and [f.stat().st_mtime_ns for f in files] == mtimes
    assert json.loads((tmp_path / "synth.json").read_text())["pairs_total"] == report["pairs_total"]


def test_reference_pairs_target_each_sets_own_items(polyvore, encoder, resolver, tmp_path):
    report = reference_pairs(encoder, resolver.store, polyvore, tmp_path, rows=10)
    train = polyvore.split("train")
    query, targets = load_pairs(tmp_path)
    assert report["pairs_total"] == len(train) == len(query) and targets.shape == (len(train), 10, 384)
    first = train[0]
    own = resolver.store.fetch_vectors(first.item_ids)
    assert all(np.isclose(own @ row, 1.0, atol=1e-4).any() for row in targets[0])  # every row is one of its items
    assert np.allclose(query[0], encoder.encode([first.intent])[0], atol=1e-5)


TINY = DiffusionConfig(dim=16, rows=4, width=32, depth=1, heads=2, cond_tokens=2)


def _toy_pairs(n=64, seed=0):
    g = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(g.normal(size=(n, 16))), unit(g.normal(size=(n, 4, 16)))


def test_training_checkpoints_resumes_and_writes_curves(tmp_path):
    query, targets = _toy_pairs()
    cfg = TrainConfig(steps=20, batch_size=16, warmup=5, ckpt_every=10, log_every=5)
    first = train(query, targets, TINY, cfg, tmp_path)
    assert first["steps"] == 20 and first["pairs_val"] >= 1 and first["parameters"] > 0
    report = train(query, targets, TINY, replace(cfg, steps=30), tmp_path)  # resumes at 20
    assert report["steps"] == 30
    with open(tmp_path / "loss.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [5, 10, 15, 20, 25, 30]
    assert (tmp_path / "loss.png").stat().st_size > 0
    model = load_model(tmp_path / "model.pt")
    out = model(torch.randn(2, 4, 16), torch.ones(2), torch.from_numpy(query[:2]))
    assert out.shape == (2, 4, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="another config"):
        train(query, targets, TINY, replace(cfg, lr=1.0), tmp_path)
    with pytest.raises(ValueError, match="expects"):
        train(query, targets[:, :3], TINY, cfg, tmp_path / "other")


def test_diffusion_strategy_runs_in_eval(polyvore, encoder, resolver, tmp_path):
    from training.diffusion.model import SetDenoiser
    from training.evaluate import EvalConfig, diffusion_strategy, evaluate

    torch.manual_seed(0)
    model = SetDenoiser(DiffusionConfig(dim=384, rows=4, width=32, depth=1, heads=2, cond_tokens=1)).eval()
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 40), max_queries=4, vendi_runs=3)
    strategy = diffusion_strategy("R4T-Diffusion", model, encoder, resolver, steps=2)
    (row,) = evaluate([strategy], polyvore, cfg, tmp_path)
    assert row.queries == 4 and 0.0 <= row.recall[10] <= row.recall[40] <= 1.0 and row.parse_rate is None
    qv = encoder.encode(["office chic"])
    first, again = strategy.run(["office chic"], qv, 40, 7)[0], strategy.run(["office chic"], qv, 40, 7)[0]
    assert first.items == again.items and 10 < len(first.items) <= 40 and first.vectors.shape == (4, 384)


def test_steps_sweep_writes_table_plot_and_latency(polyvore, encoder, resolver, tmp_path):
    from training.diffusion.model import SetDenoiser
    from training.diffusion.quality import steps_sweep, write_sweep
    from training.evaluate import EvalConfig

    torch.manual_seed(0)
    model = SetDenoiser(DiffusionConfig(dim=384, rows=4, width=32, depth=1, heads=2, cond_tokens=1)).eval()
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 40), max_queries=3, vendi_runs=2)
    rows = steps_sweep(model, encoder, resolver, polyvore, cfg, steps=(1, 2), batches=(1, 4))
    assert [r["steps"] for r in rows] == [1, 2] and all(r["ms_batch_1"] > 0 and r["ms_batch_4"] > 0 for r in rows)
    write_sweep(rows, {"dataset": "polyvore", "n_values": [10, 40]}, tmp_path, "steps")
    assert "| val | 2 |" in (tmp_path / "steps.md").read_text() and (tmp_path / "steps.png").stat().st_size > 0
