"""The evaluation harness on a real index slice: tables are written and metrics are sane."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.evaluate import (EvalConfig, category_strategy, evaluate, jitter_strategy, mmr_strategy,
                               neighbour_sets_strategy, single_strategy)


def test_eval_writes_tables_with_sane_metrics(polyvore, encoder, resolver, tmp_path):
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 50), mmr_pool=2, mmr_max=50)
    strategies = [single_strategy(encoder, resolver, cfg.k), mmr_strategy(encoder, resolver, cfg.k, 0.5, 2, 50),
                  neighbour_sets_strategy(encoder, resolver, polyvore, cfg.k)]
    single, mmr, neighbours = evaluate(strategies, polyvore, cfg, tmp_path)
    assert single.queries == len(polyvore.split("val")) > 0
    # On a ~700-item slice the outfit title alone finds some of its own items.
    assert 0.0 < single.recall[10] <= single.recall[50] <= 1.0
    assert single.hit[50] >= single.recall[50]
    per_query = single.recall_per_query[50]  # kept for paired comparisons across rows
    assert len(per_query) == single.queries and np.mean(per_query) == pytest.approx(single.recall[50], abs=1e-5)
    assert single.alignment == pytest.approx(1.0)  # the only vector is the query itself
    assert single.vendi_runs == pytest.approx(0.0, abs=1e-9)  # deterministic: five identical runs
    assert mmr.diversity > single.diversity  # MMR trades relevance for diverse top items
    # Items belong to one outfit each here, so train outfits never hold a val outfit's items.
    assert neighbours.recall[50] == 0.0 and neighbours.queries == single.queries
    table = json.loads((tmp_path / "eval_polyvore.json").read_text())
    assert [r["strategy"] for r in table["rows"]] == ["no fan-out", "MMR (λ=0.5)", "neighbour sets"]
    assert {r["encoder"] for r in table["rows"]} == {"all-MiniLM-L6-v2"}
    assert "Recall@10" in (tmp_path / "eval_polyvore.md").read_text()


def test_jittered_intent_spreads_with_its_scale(polyvore, encoder, resolver, tmp_path):
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 50), vendi_runs=3)
    rows = evaluate([single_strategy(encoder, resolver, cfg.k)] +
                    [jitter_strategy(encoder, resolver, cfg.k, s) for s in (0.0, 0.5, 2.0)], polyvore, cfg, tmp_path)
    single, still, near, far = rows
    assert still.recall == pytest.approx(single.recall)  # no noise: ten copies of the query find what it finds
    assert still.alignment == pytest.approx(1.0, abs=1e-5) and still.vendi_runs == pytest.approx(0.0, abs=1e-6)
    assert 1.0 > near.alignment > far.alignment  # more noise, rows further from the query
    assert far.vendi_runs > near.vendi_runs > 0.0  # and runs that differ more
    assert far.strategy == "jittered intent (s=2)"


def test_category_fanout_spreads_the_intent_over_the_nearest_categories(polyvore, mpd, encoder, resolver, tmp_path):
    cfg = EvalConfig(dataset="polyvore", splits=("val",), n_values=(10, 50), vendi_runs=2)
    strategy = category_strategy(encoder, resolver, polyvore, cfg.k)
    intent = polyvore.split("val")[0].intent
    (one,) = strategy.run([intent], encoder.encode([intent]), 50, 0)
    assert one.vectors.shape == (cfg.k, encoder.dim) and len(one.items) == 50
    # Each row is "<intent> <category>": near the intent, and the rows differ from each other.
    cos = one.vectors @ encoder.encode([intent])[0]
    assert (cos > 0.3).all() and (cos < 1.0 - 1e-4).all()
    assert len({tuple(np.round(v, 4)) for v in one.vectors}) == cfg.k
    (row,) = evaluate([strategy], polyvore, cfg, tmp_path)
    assert row.strategy == "category fan-out" and row.vendi_runs == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < row.recall[50] <= 1.0 and row.diversity > 0.0
    with pytest.raises(ValueError, match="categories"):  # playlists' tracks carry no category
        category_strategy(encoder, resolver, mpd, cfg.k)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mmr_lambda"):
        EvalConfig(mmr_lambda=2.0)
    with pytest.raises(ValueError, match="N must be"):
        EvalConfig(n_values=(5,))
