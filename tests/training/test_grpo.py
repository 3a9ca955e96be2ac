"""The policy LM end to end on the real SmolLM2 GGUF: conversion, sampling, a GRPO smoke run, eval rows."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from training.evaluate import EvalConfig, evaluate, fanout_lm_strategy
from training.fanout.grpo import RLConfig, train_grpo
from training.fanout.infer import FanoutLM, RecordedLM, SampleConfig, latency_report, record_fanouts
from service.parse import parse_fanout
from training.fanout.policy import DEFAULT_POLICY, convert_gguf
from training.fanout.rewards import RewardConfig, RewardModel

pytest.importorskip("trl")


SMALL = SampleConfig(dataset="polyvore", max_new_tokens=24, temperature=0.8)


@pytest.mark.slow
def test_converted_checkpoint_reloads_and_samples(policy_artifacts):
    converted = policy_artifacts / "policy" / DEFAULT_POLICY
    assert (converted / "config.json").is_file() and convert_gguf(converted) == converted  # a no-op now
    lm = FanoutLM(DEFAULT_POLICY, policy_artifacts, SMALL)
    groups = lm.sample(["office chic", "late summer picnic"], n=3, seed=1)
    assert [len(g) for g in groups] == [3, 3]
    assert all(len(f.queries) <= 10 and all(f.queries) for g in groups for f in g)
    assert lm.sample(["office chic"], n=2, seed=1) == lm.sample(["office chic"], n=2, seed=1)  # seeded
    report = latency_report(lm, ["office chic", "date night"])
    assert report["queries"] == 2 and report["median_ms"] > 0 and 0.0 <= report["parse_rate"] <= 1.0


@pytest.mark.slow
def test_grpo_smoke_run_checkpoints_resumes_and_writes_curves(polyvore, encoder, resolver, policy_artifacts, tmp_path):
    rewards = RewardModel(encoder, resolver, RewardConfig(task="wscr", depth=20))
    cfg = RLConfig(steps=1, prompts_per_step=2, group=2, micro_batch=2, max_new_tokens=24, save_steps=1,
                   val_queries=2, val_samples=2)
    out = tmp_path / "run"
    first = train_grpo(cfg, rewards, polyvore, policy_artifacts, out)
    assert first["steps"] == 1 and first["completions_per_step"] == 4 and not first["resumed"]

    report = train_grpo(replace(cfg, steps=2), rewards, polyvore, policy_artifacts, out)  # resumes at step 1
    assert report["resumed"] and report["steps"] == 2
    assert report["heldout_before"] == first["heldout_before"]  # measured once per run directory
    for side in ("heldout_before", "heldout_after"):
        assert 0.0 <= report[side]["parse_rate"] <= 1.0 and report[side]["queries"] == 2
        assert -1.0 <= report[side]["total"] <= 1.0
    with open(out / "reward_curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2] and all(r["rewards/recall/mean"] != "" for r in rows)
    assert (out / "reward_curves.png").stat().st_size > 0
    FanoutLM(str(out / "model"), policy_artifacts, SMALL)  # the tuned policy loads like any HF checkpoint

    assert train_grpo(replace(cfg, steps=2), rewards, polyvore, policy_artifacts, out) == report  # done: no-op
    with pytest.raises(ValueError, match="another config"):
        train_grpo(replace(cfg, lr=1e-3), rewards, polyvore, policy_artifacts, out)


@pytest.mark.slow
def test_lm_strategies_in_eval_report_parse_rate(polyvore, encoder, resolver, policy_artifacts, tmp_path):
    lm = FanoutLM(DEFAULT_POLICY, policy_artifacts, SMALL)
    chooser = RewardModel(encoder, resolver, RewardConfig(task="oar"))
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 50), max_queries=2, vendi_runs=2)
    zero, best = evaluate([fanout_lm_strategy("zero-shot", lm, encoder, resolver),
                           fanout_lm_strategy("Best-of-2", lm, encoder, resolver, 2, chooser)],
                          polyvore, cfg, tmp_path)
    for row in (zero, best):
        assert row.queries == 2 and 0.0 <= row.parse_rate <= 1.0
        assert 0.0 <= row.recall[10] <= row.recall[50] <= 1.0
    assert "| zero-shot |" in (tmp_path / "eval_polyvore.md").read_text()
    with pytest.raises(ValueError, match="label-free"):
        fanout_lm_strategy("bad", lm, encoder, resolver, 5, RewardModel(encoder, resolver, RewardConfig()))


@pytest.mark.slow
def test_recorded_fanouts_replay_what_the_lm_wrote_and_score_like_it(polyvore, encoder, resolver, policy_artifacts,
                                                                       tmp_path):
    lm = FanoutLM(DEFAULT_POLICY, policy_artifacts, SMALL)
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 50), max_queries=2, vendi_runs=2)
    queries = [s.intent for s in polyvore.split("val")[:2]]
    path = tmp_path / "fanouts.jsonl"
    assert record_fanouts(lm, queries + queries[:1], 2, range(cfg.vendi_runs), path, progress=False) == 4
    replay = RecordedLM(path)
    assert replay.name == f"{DEFAULT_POLICY} (recorded in fanouts.jsonl)"
    assert replay.meta["n"] == 2 and replay.meta["seeds"] == [0, 1]
    # Exactly the completions the LM samples for that (query, seed), parsed the same way.
    assert replay.sample(queries, 2, seed=1) == lm.sample(queries, 2, seed=1)
    [row] = evaluate([fanout_lm_strategy("replayed", replay, encoder, resolver)], polyvore, cfg, tmp_path)
    assert row.queries == 2 and 0.0 <= row.recall[10] <= row.recall[50] <= 1.0
    with pytest.raises(KeyError, match="seed 7"):
        replay.sample(queries, 1, seed=7)
    with pytest.raises(KeyError, match="3 needed"):
        replay.sample(queries, 3, seed=0)


@pytest.mark.slow
def test_a_stopped_recording_resumes_from_its_last_chunk(polyvore, policy_artifacts, tmp_path):
    lm = FanoutLM(DEFAULT_POLICY, policy_artifacts, SMALL)
    queries = [s.intent for s in polyvore.split("val")[:3]]
    calls = []

    class StopsAfterOne:  # the real LM, stopped (like a timed-out device call) after its first chunk
        name, cfg = lm.name, lm.cfg

        def generate(self, qs, n, seed, progress):
            if calls:
                raise KeyboardInterrupt
            calls.append(qs)
            return lm.generate(qs, n, seed, progress)

    path = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        record_fanouts(StopsAfterOne(), queries, 2, [0], path, progress=False, chunk=2)
    assert not path.exists() and [p.name for p in sorted((tmp_path / "train.jsonl.parts").glob("seed*"))] == [
        "seed0-00000.jsonl"]
    resumed = []
    lm_generate = lm.generate
    lm.generate = lambda qs, *a: resumed.append(qs) or lm_generate(qs, *a)
    assert record_fanouts(lm, queries, 2, [0], path, progress=False, chunk=2) == 3
    assert resumed == [queries[2:]] and not (tmp_path / "train.jsonl.parts").exists()
    replay = RecordedLM(path)
    assert [len(replay.texts[(q, 0)]) for q in queries] == [2, 2, 2]
    assert replay.sample(queries[:2], 2, seed=0) == [[parse_fanout(t, q, 10, lm.echo) for t in g]
                                                     for q, g in zip(queries[:2], lm_generate(queries[:2], 2, 0))]
    (tmp_path / "other.jsonl.parts").mkdir()
    (tmp_path / "other.jsonl.parts" / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="another recording"):
        record_fanouts(lm, queries, 2, [0], tmp_path / "other.jsonl", progress=False)


def test_recorded_lm_can_pin_one_seed(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"meta": {"policy": "p", "n": 2, "seeds": [0]}}\n'
                    '{"query": "office chic", "seed": 0, "texts": ["[\\"blazer\\", \\"loafers\\"]", "oops"]}\n')
    pinned = RecordedLM(path, seed=0)
    [[good, bad]] = pinned.sample(["office chic"], 2, seed=12345)  # a shard's seed: served from seed 0
    assert good.queries == ("blazer", "loafers") and not bad.ok and "recorded in train.jsonl" in pinned.name
    with pytest.raises(KeyError):
        RecordedLM(path).sample(["office chic"], 1, seed=12345)
