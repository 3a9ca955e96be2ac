"""`r4t diffusion diagnose` on real Polyvore: the pairs' own recall, and whether a denoiser uses its query."""

from __future__ import annotations

import numpy as np
import torch

from training.diffusion.diagnose import pairs_recall, query_use
from training.diffusion.model import DiffusionConfig, SetDenoiser
from training.diffusion.pairs import load_pairs, reference_pairs


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
