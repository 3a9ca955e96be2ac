"""Encoder tuning: pairs come from train sets only, and a few real steps move the weights."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import split_of
from training.tune_encoder import TuneConfig, training_pairs, tune_encoder


def test_no_val_or_test_set_contributes_a_training_pair(mpd):
    pairs = training_pairs(mpd, TuneConfig())
    assert pairs and {split_of(set_id) for _, _, set_id in pairs} == {"train"}
    held_out = {s.intent for s in mpd.split("val") + mpd.split("test")} - {s.intent for s in mpd.split("train")}
    assert not held_out & {anchor for anchor, _, _ in pairs}  # no held-out-only title is ever an anchor
    train_texts = {mpd.items[i].text for s in mpd.split("train") for i in s.item_ids}
    assert {p for _, p, _ in pairs} <= train_texts


def test_pairs_are_seeded_and_sized(polyvore):
    cfg = TuneConfig(intent_pairs=2, item_pairs=1)
    assert training_pairs(polyvore, cfg) == training_pairs(polyvore, cfg)
    assert len(training_pairs(polyvore, cfg)) <= 3 * len(polyvore.split("train"))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        TuneConfig(batch_size=1)


@pytest.mark.slow
def test_a_few_steps_change_the_encoder(polyvore, tmp_path):
    from export.encoder import default_encoder_path
    from sentence_transformers import SentenceTransformer

    # Tiny run: 4 steps of 16 pairs, evaluator on 20 queries over a 500-item corpus.
    cfg = TuneConfig(intent_pairs=2, item_pairs=1, batch_size=16, max_steps=4, eval_steps=2,
                     eval_queries=20, eval_corpus=500)
    report = tune_encoder(default_encoder_path(), polyvore, tmp_path, cfg)
    assert report["steps"] == 4 and report["pairs"] > 0
    assert "val_cosine_recall@100" in report["val_after"]
    losses = [h["loss"] for h in report["log_history"] if "loss" in h]
    assert losses and all(np.isfinite(losses))
    base = SentenceTransformer(default_encoder_path(), device="cpu")
    tuned = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    text = ["black leather ankle boots"]
    assert not np.allclose(base.encode(text), tuned.encode(text), atol=1e-4)
