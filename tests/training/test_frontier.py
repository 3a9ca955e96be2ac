"""The recall-vs-Vendi frontier: ratios to the references, the target flag, the files it writes."""

from __future__ import annotations

import json

import pytest

from training.frontier import paired_difference, write_frontier


def _table(path, rows):
    path.write_text(json.dumps({"rows": [
        {"strategy": s, "split": "val", "recall": {"100": r100, "500": r500}, "vendi_runs": v}
        for s, r100, r500, v in rows]}))
    return path


def test_frontier_flags_only_rows_past_both_references(tmp_path):
    base = _table(tmp_path / "eval_polyvore_base.json", [("no fan-out", 0.10, 0.20, 0.0),
                                                           ("R4T-FOLM", 0.09, 0.16, 0.25)])
    model = _table(tmp_path / "eval_polyvore_model-s2.json", [
        ("R4T-Diffusion (2 steps)", 0.11, 0.21, 0.30),  # past both in every cell
        ("R4T-Diffusion (4 steps)", 0.11, 0.19, 0.30),  # R@500 under no fan-out
        ("jittered intent (s=1)", 0.12, 0.22, 0.20),  # Vendi under R4T-FOLM
    ])
    points = write_frontier([base, model], tmp_path / "frontier", "test", "r4t frontier …")
    met = {p.strategy: p.meets_target for p in points}
    assert met == {"no fan-out": False, "R4T-FOLM": False, "R4T-Diffusion (2 steps)": True,
                   "R4T-Diffusion (4 steps)": False, "jittered intent (s=1)": False}
    two = next(p for p in points if p.strategy.endswith("(2 steps)"))
    assert two.source == "model-s2" and two.family == "R4T-Diffusion"
    assert two.recall_vs_single == pytest.approx(1.05) and two.vendi_vs_folm == pytest.approx(1.2)
    for suffix in (".md", ".json", ".png"):
        assert (tmp_path / f"frontier{suffix}").stat().st_size > 0
    assert "| model-s2 | R4T-Diffusion (2 steps) |" in (tmp_path / "frontier.md").read_text()
    assert not list(tmp_path.glob("*.tmp*"))


def test_frontier_needs_one_reference_of_each_kind(tmp_path):
    only_single = _table(tmp_path / "eval_polyvore_base.json", [("no fan-out", 0.1, 0.2, 0.0)])
    with pytest.raises(ValueError, match="R4T-FOLM"):
        write_frontier([only_single], tmp_path / "frontier", "test", "")


def test_paired_difference_brackets_the_mean_and_needs_the_same_queries():
    better = [0.2, 0.3, 0.1, 0.4] * 25
    mean, lo, hi = paired_difference(better, [x - 0.05 for x in better])
    assert mean == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)  # no spread
    mean, lo, hi = paired_difference([0.0, 1.0] * 50, [1.0, 0.0] * 50)
    assert mean == pytest.approx(0.0) and lo < 0.0 < hi  # as often better as worse: level
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_difference([0.1, 0.2], [0.1])


def test_pooled_intervals_pair_each_query_with_no_fan_out_on_its_split(tmp_path):
    def row(strategy, split, per_query, vendi):
        return {"strategy": strategy, "split": split, "vendi_runs": vendi,
                "recall": {"100": sum(per_query) / len(per_query)}, "recall_per_query": {"100": per_query}}

    single = {"val": [0.1, 0.2] * 20, "test": [0.3, 0.0] * 20}
    rows = [row("no fan-out", s, q, 0.0) for s, q in single.items()]
    rows += [row("R4T-FOLM", s, q, 0.2) for s, q in single.items()]
    rows += [row("R4T-Diffusion (2 steps)", s, [x + 0.1 for x in q], 0.3) for s, q in single.items()]
    table = tmp_path / "eval_polyvore_all.json"
    table.write_text(json.dumps({"rows": rows}))
    points = write_frontier([table], tmp_path / "frontier", "test", "")
    model = [p for p in points if p.family == "R4T-Diffusion"]
    assert all(p.vs_single["100"] == pytest.approx([0.1, 0.1, 0.1]) and p.meets_target for p in model)
    text = (tmp_path / "frontier.md").read_text()
    assert "| all | R4T-Diffusion (2 steps) | 80 | **+0.1000 [+0.1000, +0.1000]** |" in text


def test_ratios_to_a_zero_reference_are_left_out(tmp_path):
    table = _table(tmp_path / "eval_polyvore_base.json", [("no fan-out", 0.1, 0.2, 0.0), ("R4T-FOLM", 0.1, 0.2, 0.0),
                                                            ("jittered intent (s=1)", 0.1, 0.2, 0.1)])
    jitter = write_frontier([table], tmp_path / "frontier", "test", "")[-1]
    assert jitter.vendi_vs_folm is None and jitter.recall_vs_single == pytest.approx(1.0)
    assert "| base | jittered intent (s=1) | 0.1000 | 0.2000 | 0.100 | 1.00 | 1.00 | — | no |" in \
        (tmp_path / "frontier.md").read_text()
