"""`r4t diffusion diagnose` on real Polyvore: the pairs' own recall, whether a denoiser uses its query, and the
best the recorded fan-outs could give."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from training.diffusion.diagnose import (expected_best_of, fanout_ceiling, neighbour_transfer, pairs_recall,
                                         query_use)
from training.diffusion.model import DiffusionConfig, SetDenoiser
from training.diffusion.pairs import load_pairs, reference_pairs
from training.fanout.infer import RecordedLM


def test_reference_targets_find_their_own_sets_better_than_the_intent(polyvore, encoder, resolver, tmp_path):
    reference_pairs(encoder, resolver.store, polyvore, tmp_path, rows=10)
    query, targets, set_index = load_pairs(tmp_path, ("set_index",))
    report = pairs_recall(resolver, polyvore, query, targets, set_index, n=100, sample=40)
    assert report["pairs"] == 40 and report["n"] == 100
    assert report["targets"] > 0.9  # every row is one of its set's items: each finds itself
    assert report["plain_intent"] < report["targets"]
    scrambled = pairs_recall(resolver, polyvore, query, targets, np.roll(set_index, 1), n=100, sample=40)
    assert scrambled["targets"] < 0.2  # scored against another set's items, the same rows miss


def test_query_use_tells_a_conditioned_denoiser_from_one_that_ignores_its_query():
    cfg = DiffusionConfig(dim=16, rows=4, width=32, depth=1, heads=2, cond_tokens=2)
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1).numpy()
    targets = torch.nn.functional.normalize(torch.randn(64, 4, 16, generator=g), dim=-1).numpy()
    blind = SetDenoiser(cfg).eval()  # its output layer starts at zero: the query cannot matter
    for levels in query_use(blind, query, targets, sigmas=(1.0, 80.0)).values():
        assert levels["with_query"] == levels["null"] == levels["shuffled"]
    torch.manual_seed(0)
    seeing = SetDenoiser(cfg)
    for p in seeing.parameters():
        torch.nn.init.normal_(p, std=0.05)
    levels = query_use(seeing.eval(), query, targets, sigmas=(80.0,))["80.0"]
    assert levels["with_query"] != levels["null"] and levels["with_query"] != levels["shuffled"]


def test_expected_best_of_equals_the_mean_over_all_subsets():
    values = np.array([0.3, 0.0, 0.7, 0.1, 0.7])
    for k in range(1, 7):
        subsets = list(itertools.combinations(values, min(k, len(values))))
        assert expected_best_of(values, k) == pytest.approx(np.mean([max(c) for c in subsets]))


def test_fanout_ceiling_scores_each_recorded_fanout_on_its_own_set(polyvore, encoder, resolver, tmp_path):
    sets = polyvore.split("train")[:12]
    own = lambda s: json.dumps([polyvore.items[i].text for i in s.item_ids])  # noqa: E731 the set's own items
    texts = {s.intent: [f"<queries>{own(s)}</queries>", "no list here",
                        '<queries>["garden hose", "car battery"]</queries>'] for s in sets}
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([json.dumps({"meta": {"dataset": "polyvore"}})] +
                              [json.dumps({"query": q, "seed": 0, "texts": t}) for q, t in texts.items()]))
    report = fanout_ceiling(resolver, encoder, polyvore, RecordedLM(path), samples=3, n=100, max_sets=12, chunk=5)
    assert report["sets"] == 12 and report["sets_with_a_parsed_fanout"] == 12
    assert report["parsed_fanouts"] == 24  # "no list here" gives no sub-queries
    best = report["best_of_k_parsed"]
    assert best[1] < best[2] and best[2] > 0.8  # the items' own texts find their items; the hardware does not
    assert report["share_best_beats_plain"] > 0.5
    assert 0 <= report["plain_intent"] < best[2]


def test_neighbour_transfer_hands_each_set_the_pairs_of_its_nearest_intent(polyvore, encoder, resolver):
    sets = [s for s in polyvore.split("val") if len(s.item_ids) >= 2][:8]
    query = encoder.encode([s.intent for s in sets])
    own = np.stack([resolver.store.fetch_vectors(list(s.item_ids[:2])) for s in sets])  # 2 rows of its own items
    own_report = neighbour_transfer(resolver, encoder, polyvore, query, own, n=100, split="val", max_sets=len(sets))
    assert own_report["sets"] == len(sets)
    assert own_report["mean_cosine_to_nearest"] > 0.99  # each set's nearest intent is its own
    assert own_report["neighbour_targets"] > 0.3  # its own items find themselves
    assert own_report["neighbour_offsets"] == pytest.approx(own_report["neighbour_targets"], abs=0.02)  # moved by 0
    assert own_report["random_intent_offsets"] < own_report["neighbour_offsets"]  # another set's items, moved
    shifted = neighbour_transfer(resolver, encoder, polyvore, query, np.roll(own, 1, axis=0), n=100, split="val",
                                 max_sets=len(sets))
    assert shifted["neighbour_targets"] < own_report["neighbour_targets"]  # another set's items mostly miss
    assert shifted["plain_intent"] == own_report["plain_intent"]
