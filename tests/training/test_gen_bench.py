"""LLM generation timing from a bare config (random weights) and the Figure-5 table built from it."""

from __future__ import annotations

import json

from export.bench import write_figure5
from training.fanout.gen_bench import GenBenchConfig, bench_generate, load_for_timing

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 64}


def test_generation_is_timed_at_every_batch_with_forced_length(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_LLAMA))
    lm, weights = load_for_timing(str(config), "cpu", "float32")
    assert weights.startswith("random")
    rows = bench_generate(lm, GenBenchConfig(batches=(1, 3), prompt_tokens=5, new_tokens=4, repeats=2), "cpu")
    assert [r["batch"] for r in rows] == [1, 3]
    assert all(r["ms"] > 0 and abs(r["ms_per_query"] * r["batch"] - r["ms"]) < 0.01 for r in rows)

    graph = [{"batch": b, "ms_per_query": 0.5, "provider": "CPUExecutionProvider"} for b in (1, 3)]
    md, png = write_figure5(graph, {"models": {"tiny": {"rows": rows}}}, tmp_path, "fig")
    table = md.read_text().splitlines()
    assert table[0].startswith("| batch | fan-out graph ms/query | tiny ms/query | ratio |") and len(table) == 4
    assert f"| {rows[1]['ms_per_query'] / 0.5:.0f}× |" in table[3] and png.stat().st_size > 0
