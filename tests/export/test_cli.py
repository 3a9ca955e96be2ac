"""The `r4t` command line: every stage is listed, and bad arguments fail with a clear message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from export.cli import app

runner = CliRunner()


def flat(output: str) -> str:
    """The output with the error box's borders and line wraps taken out."""
    return " ".join(output.replace("│", " ").split())


def test_every_stage_is_a_command():
    out = runner.invoke(app, ["--help"]).output
    for command in ("encoder", "index", "eval", "frontier", "fanout", "diffusion", "export", "bench", "serve"):
        assert command in out
    assert {"train", "latency"} <= set(runner.invoke(app, ["fanout", "--help"]).output.split())
    assert {"synth", "train", "steps", "diagnose"} <= set(runner.invoke(app, ["diffusion", "--help"]).output.split())


@pytest.mark.parametrize("args", [["index", "--dataset", "imagenet"], ["fanout", "train", "--dataset", "x"],
                                  ["diffusion", "synth", "--dataset", "x"]])
def test_unknown_dataset_is_refused(args):
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "unknown dataset" in result.output


def test_unknown_strategy_is_refused(data_dir):
    result = runner.invoke(app, ["eval", "--dataset", "polyvore", "--strategies", "single,oracle",
                                 "--data-dir", str(data_dir)])
    assert result.exit_code != 0 and "oracle" in result.output


def test_unknown_training_noise_is_refused(tmp_path):
    result = runner.invoke(app, ["diffusion", "train", "--dataset", "polyvore", "--noise", "cosine",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code != 0 and "--noise must be one of tangent, lognormal, loguniform" in flat(result.output)


def test_reference_pairs_refuse_the_lm_options(tmp_path):
    result = runner.invoke(app, ["diffusion", "synth", "--dataset", "polyvore", "--reference", "--fanouts", "x.jsonl",
                                 "--samples", "16", "--artifacts", str(tmp_path)])
    assert result.exit_code != 0 and "no LM and no reward; drop --fanouts, --samples" in flat(result.output)


@pytest.mark.parametrize("args, message", [([], "give --pairs, --fanouts or both"),
                                           (["--fanouts", "x.jsonl", "--model", "m.pt"], "are tested on pairs"),
                                           (["--fanouts", "x.jsonl", "--transfer"], "are tested on pairs")])
def test_diagnose_needs_something_to_diagnose(tmp_path, args, message):
    result = runner.invoke(app, ["diffusion", "diagnose", "--dataset", "polyvore", "--artifacts", str(tmp_path), *args])
    assert result.exit_code != 0 and message in flat(result.output)


def test_frontier_refuses_missing_tables_and_references(tmp_path):
    result = runner.invoke(app, ["frontier", str(tmp_path / "eval_polyvore_x.json"), "--out", str(tmp_path / "f")])
    assert result.exit_code != 0 and "no such eval table" in flat(result.output)
    table = tmp_path / "eval_polyvore_x.json"
    table.write_text('{"rows": [{"strategy": "no fan-out", "split": "val", "recall": {"100": 0.1}, "vendi_runs": 0}]}')
    result = runner.invoke(app, ["frontier", str(table), "--out", str(tmp_path / "f")])
    assert result.exit_code != 0 and "need exactly one 'R4T-FOLM' row" in flat(result.output)
