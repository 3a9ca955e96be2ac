"""`r4t eval`, `r4t frontier`: the evaluation tables and the recall-diversity frontier."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from export.cli.common import (
    settings_for, denoiser_path, start_dataset, open_retriever, STRATEGIES, DEFAULT_POLICY, ARTIFACTS_OPT, DATA_OPT,
)


def evaluate(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoders: str = typer.Option("all-MiniLM-L6-v2", help="Comma-separated encoder names, side by side"),
    strategies: str = typer.Option("single,mmr", help="Comma-separated: " + ", ".join(STRATEGIES)),
    splits: str = typer.Option("val,test", help="Comma-separated splits"),
    n: str = typer.Option("", help="Comma-separated Recall@N cut-offs; default per dataset"),
    max_queries: int = typer.Option(0, help="Score at most this many sets per split (0 = all)"),
    tag: str = typer.Option("", help="Suffix of the report name: eval_<dataset>_<tag>"),
    policy: str = typer.Option("", help="Zero-shot / Best-of-5 policy LM; default the shipped SmolLM2"),
    folm: str = typer.Option("", help="RL-tuned policy; default <artifacts>/fanout/<dataset>-wscr/model"),
    policy_fanouts: Optional[Path] = typer.Option(None, help="Zero-shot, Best-of-5: replay `r4t fanout record`"),
    folm_fanouts: Optional[Path] = typer.Option(None, help="R4T-FOLM: replay `r4t fanout record` output"),
    vendi_runs: int = typer.Option(5, help="Runs per query for the run-to-run Vendi of stochastic strategies"),
    diffusion_model: str = typer.Option("", help="Set denoiser; default <artifacts>/diffusion/<dataset>-wscr/model.pt"),
    steps: int = typer.Option(4, help="Sampler steps of the diffusion strategy"),
    guidance: float = typer.Option(1.0, help="Classifier-free guidance weight of the diffusion strategy"),
    jitter: str = typer.Option("1.0", help="`jitter` control: comma-separated noise scales around the query "
                                            "(one row each)"),
    graphs: str = typer.Option("", help="`graph` strategy: comma-separated exported graphs under "
                                        "<artifacts>/graphs (or paths), run by ONNX Runtime with the "
                                        "diffusion strategy's noise"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the tables go"),
) -> None:
    """Score strategies on held-out sets; writes results/eval_<dataset>[_<tag>].{md,json}."""
    start_dataset(dataset)
    from training import evaluate as ev
    from training.data import default_data_dir, load_dataset

    names = strategies.split(",")
    unknown = set(names) - set(STRATEGIES)
    if unknown:
        raise typer.BadParameter(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    cfg = ev.EvalConfig(dataset=dataset, splits=tuple(splits.split(",")), max_queries=max_queries,
                        n_values=tuple(int(x) for x in n.split(",") if x), vendi_runs=vendi_runs,
                        strategies=tuple(names))
    ds = load_dataset(dataset, data_dir or default_data_dir())
    settings = settings_for(dataset, artifacts)
    folm = folm or str(settings.layout.fanout_model(f"{dataset}-wscr"))
    diffusion_model = str(denoiser_path(settings, diffusion_model))

    def load_denoiser(path: str):
        from training.diffusion.train import load_model

        return load_model(Path(path))

    rows = []
    for name in encoders.split(","):
        settings = settings_for(dataset, artifacts, name)
        enc, res = open_retriever(settings)

        def lm_strategy(label: str, model: str, best_of: int = 1, recorded: Path | None = None):
            from training.fanout.infer import FanoutLM, RecordedLM, SampleConfig
            from training.fanout.rewards import RewardConfig, RewardModel

            lm = (RecordedLM(recorded) if recorded else
                  FanoutLM(model, settings.artifacts_dir, SampleConfig(dataset=dataset, temperature=0.8)))
            chooser = RewardModel(enc, res, RewardConfig(task="oar"))
            return ev.fanout_lm_strategy(label, lm, enc, res, best_of, chooser)

        def category_rows():
            try:
                return ev.category_strategy(enc, res, ds, cfg.k)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None

        builders = {"single": lambda: ev.single_strategy(enc, res, cfg.k),
                    "mmr": lambda: ev.mmr_strategy(enc, res, cfg.k, cfg.mmr_lambda, cfg.mmr_pool, cfg.mmr_max),
                    "neighbours": lambda: ev.neighbour_sets_strategy(enc, res, ds, cfg.k),
                    "categories": category_rows,
                    "zero-shot": lambda: lm_strategy("zero-shot", policy or DEFAULT_POLICY, 1, policy_fanouts),
                    "best-of-5": lambda: lm_strategy("Best-of-5", policy or DEFAULT_POLICY, 5, policy_fanouts),
                    "folm": lambda: lm_strategy("R4T-FOLM", folm, 1, folm_fanouts),
                    "diffusion": lambda: ev.diffusion_strategy(f"R4T-Diffusion ({steps} steps)",
                                                               load_denoiser(diffusion_model), enc, res, steps,
                                                               guidance)}
        def graph_rows() -> list:
            from service.graph import FanoutGraph

            if not graphs:
                raise typer.BadParameter("the graph strategy needs --graphs")
            found = [FanoutGraph(Path(g) if "/" in g else settings.layout.graph(g))
                     for g in graphs.split(",")]
            return [ev.graph_strategy(f"ONNX {g.directory.name} ({g.manifest.precision}, {g.info.steps} steps)",
                                      g, enc, res) for g in found]

        several = {"graph": graph_rows,  # strategies that give one row per listed graph or scale
                   "jitter": lambda: [ev.jitter_strategy(enc, res, cfg.k, float(x)) for x in jitter.split(",")]}
        rows += [row for s in names for row in (several[s]() if s in several else [builders[s]()])]
    ev.evaluate(rows, ds, cfg, out, command="r4t " + shlex.join(sys.argv[1:]), tag=tag)
    typer.echo(f"{len(rows)} strategies -> {out}/eval_{dataset}{'_' + tag if tag else ''}.md")


def frontier(
    tables: list[Path] = typer.Argument(..., help="`r4t eval` JSON tables of one encoder and index build; "
                                                  "exactly one no fan-out and one R4T-FOLM row per split"),
    out: Path = typer.Option(..., help="Output stem: writes <out>.md, <out>.json and <out>.png"),
    title: str = typer.Option("", help="Plot title; default the output's name"),
) -> None:
    """Every strategy's Recall@N against its run-to-run Vendi, with the target corner (issue 4)."""
    from training.frontier import write_frontier

    missing = [str(t) for t in tables if not t.is_file()]
    if missing:
        raise typer.BadParameter(f"no such eval table: {', '.join(missing)}")
    try:
        points = write_frontier(tables, out, title or out.name, "r4t " + shlex.join(sys.argv[1:]))
    except (ValueError, KeyError) as e:
        raise typer.BadParameter(str(e)) from None
    met = sorted({f"{p.source} ({p.split})" for p in points if p.meets_target})
    typer.echo(f"{len(points)} rows -> {out}.md; target met by: {', '.join(met) or 'none'}")
