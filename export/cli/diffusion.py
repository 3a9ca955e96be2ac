"""`r4t diffusion ...`: steps (ii)-(iii), pair synthesis and the set-diffusion retriever."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from export.cli.common import (
    settings_for, denoiser_path, start_dataset, open_retriever, reward_model, ENCODER_OPT, ARTIFACTS_OPT, DATA_OPT,
)


diffusion_app = typer.Typer(help="Steps (ii)-(iii): pair synthesis and the set-diffusion retriever.",
                            no_args_is_help=True)


@diffusion_app.command("synth")
def diffusion_synth(
    ctx: typer.Context,
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    task: str = typer.Option("wscr", help="wscr: targets are sub-query embeddings | oar: retrieved items"),
    encoder: Optional[str] = ENCODER_OPT,
    policy: str = typer.Option("", help="Fan-out LM; default <artifacts>/fanout/<dataset>-<task>/model"),
    samples: int = typer.Option(8, help="Fan-outs sampled per train intent (G)"),
    max_queries: int = typer.Option(0, help="Train intents to use (0 = all)"),
    temperature: float = typer.Option(0.9, help="Sampling temperature (paper: 0.9)"),
    min_reward: float = typer.Option(0.0, help="Keep fan-outs scoring above this (and >= their query's median); "
                                               "a negative floor keeps a zero-shot policy's best tries"),
    min_recall: Optional[float] = typer.Option(None, help="WSCR: keep only fan-outs recalling more than this of the "
                                                          "reference set (0: found at least one item)"),
    quantile: float = typer.Option(0.5, min=0.0, max=1.0, help="Keep fan-outs scoring at least this quantile of "
                                                               "their query's rewards (0.5: the median)"),
    name: str = typer.Option("", help="Pairs directory under <artifacts>/pairs; default <dataset>-<task>"),
    fanouts: Optional[Path] = typer.Option(None, help="Score these `r4t fanout record --splits train` samples "
                                                      "instead of sampling here"),
    reference: bool = typer.Option(False, help="Diagnostic pairs: each train intent -> L of its own items' "
                                               "embeddings (no LM, no reward)"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Sample, score and keep fan-outs as (query, L×d target set) pairs (sharded, resumable)."""
    start_dataset(dataset)
    from training.data import default_data_dir, load_dataset
    from training.diffusion.pairs import SynthConfig, synthesize
    from training.fanout.infer import FanoutLM, RecordedLM, SampleConfig

    settings = settings_for(dataset, artifacts, encoder)
    if reference:
        from training.diffusion.pairs import reference_pairs

        lm_options = ("policy", "fanouts", "min_recall", "quantile", "samples", "max_queries", "min_reward")
        if used := ["--" + o.replace("_", "-") for o in lm_options  # given, not left at their defaults
                    if ctx.get_parameter_source(o).name != "DEFAULT"]:
            raise typer.BadParameter(f"--reference pairs use no LM and no reward; drop {', '.join(used)}")

        encoder_, resolver = open_retriever(settings)
        out = settings.layout.pairs(name or f"{dataset}-reference")
        report = reference_pairs(encoder_, resolver.store, load_dataset(dataset, data_dir or default_data_dir()), out)
        typer.echo(f"{out}: {report['pairs_total']} reference pairs")
        return
    policy = policy or str(settings.layout.fanout_model(f"{dataset}-{task}"))
    lm = (RecordedLM(fanouts, seed=0) if fanouts else
          FanoutLM(policy, settings.artifacts_dir, SampleConfig(task=task, dataset=dataset, temperature=temperature)))
    out = settings.layout.pairs(name or f"{dataset}-{task}")
    report = synthesize(lm, reward_model(dataset, task, encoder, artifacts),
                        load_dataset(dataset, data_dir or default_data_dir()), out,
                        SynthConfig(samples=samples, max_queries=max_queries, min_reward=min_reward,
                                   min_recall=min_recall, quantile=quantile))
    typer.echo(f"{out}: {report['pairs_total']} pairs from {report['queries']} intents")


@diffusion_app.command("train")
def diffusion_train(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    task: str = typer.Option("wscr", help="Which pairs: <artifacts>/pairs/<dataset>-<task>"),
    steps: int = typer.Option(20_000, help="Optimizer steps"),
    batch_size: int = typer.Option(256, help="Pairs per step"),
    width: int = typer.Option(256, help="Transformer width (the paper's 53.9M model: 768)"),
    depth: int = typer.Option(4, help="Transformer blocks (paper-sized: 8)"),
    heads: int = typer.Option(4, help="Attention heads"),
    lr: float = typer.Option(3e-4, help="AdamW learning rate"),
    noise: str = typer.Option("tangent", help="Training noise levels: tangent (paper) | lognormal (EDM) | loguniform"),
    relative: bool = typer.Option(False, help="Generate each row as an offset from the query embedding, so what a "
                                              "pair teaches moves with the intent"),
    name: str = typer.Option("", help="Pairs under <artifacts>/pairs and model under <artifacts>/diffusion; "
                                      "default <dataset>-<task>"),
    model_name: str = typer.Option("", help="Model under <artifacts>/diffusion; default the pairs' name"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
) -> None:
    """Train the set denoiser on synthesized pairs (EMA, checkpoints, resume); loss curve beside it."""
    start_dataset(dataset)
    from training.diffusion.model import NOISES, DiffusionConfig
    from training.diffusion.pairs import load_pairs
    from training.diffusion.train import TrainConfig, train

    if noise not in NOISES:
        raise typer.BadParameter(f"--noise must be one of {', '.join(NOISES)}, got {noise!r}")
    settings = settings_for(dataset, artifacts)
    name = name or f"{dataset}-{task}"
    query, targets = load_pairs(settings.layout.pairs(name))
    model_cfg = DiffusionConfig(dim=query.shape[1], rows=targets.shape[1], width=width, depth=depth, heads=heads,
                                noise=noise, relative=relative)
    model_name = model_name or name
    report = train(query, targets, model_cfg, TrainConfig(steps=steps, batch_size=batch_size, lr=lr),
                   settings.layout.diffusion(model_name))
    typer.echo(f"{model_name}: {report['steps']} steps, {report['parameters']:,} parameters, final {report['final']}")


@diffusion_app.command("steps")
def diffusion_steps(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    model: str = typer.Option("", help="Set denoiser; default <artifacts>/diffusion/<dataset>-wscr/model.pt"),
    steps: str = typer.Option("1,2,4,8,16,32", help="Comma-separated sampler step counts"),
    guidance: float = typer.Option(1.0, help="Classifier-free guidance weight"),
    max_queries: int = typer.Option(0, help="Score at most this many sets per split (0 = all)"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the table and plot go"),
) -> None:
    """Recall@N and model-only latency (batch 1 and 64) against sampler steps; table, JSON and PNG."""
    start_dataset(dataset)
    from training.data import default_data_dir, load_dataset
    from training.diffusion.quality import steps_sweep, write_sweep
    from training.diffusion.train import load_model
    from training.evaluate import EvalConfig

    settings = settings_for(dataset, artifacts, encoder)
    path = denoiser_path(settings, model)
    cfg = EvalConfig(dataset=dataset, max_queries=max_queries)
    rows = steps_sweep(load_model(path), *open_retriever(settings),
                       load_dataset(dataset, data_dir or default_data_dir()), cfg,
                       tuple(int(x) for x in steps.split(",")), guidance)
    header = {"dataset": dataset, "encoder": settings.encoder, "model": str(path), "n_values": list(cfg.ns),
              "guidance": guidance, "command": "r4t " + shlex.join(sys.argv[1:])}
    write_sweep(rows, header, out, f"diffusion_steps_{dataset}")
    typer.echo(f"{out}/diffusion_steps_{dataset}.md")


@diffusion_app.command("diagnose")
def diffusion_diagnose(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    pairs: str = typer.Option("", help="Pairs directory under <artifacts>/pairs: their own recall"),
    model: str = typer.Option("", help="Also test whether this denoiser uses its query (needs --pairs)"),
    fanouts: Optional[Path] = typer.Option(None, help="A train recording (`r4t fanout record`): the recall of "
                                                      "the best of k of its fan-outs per set"),
    samples: int = typer.Option(8, help="Fan-outs per set read from --fanouts"),
    max_sets: int = typer.Option(0, help="--fanouts: only the first N train sets (0: all)"),
    n: int = typer.Option(100, help="Recall@N cut-off"),
    sample: int = typer.Option(400, help="Random pairs resolved"),
    transfer: bool = typer.Option(False, help="--pairs: also score each val and test set with the pairs of its "
                                              "nearest train intent (first 100 sets, as the eval)"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where diagnose_<dataset>_<pairs|recording>[_<model dir>].json "
                                                   "goes"),
) -> None:
    """Is the limit in the pairs or the denoiser? The pairs' own recall on their train sets (vs the plain intent),
    a denoiser's use of its query, and the best the recorded fan-outs could give."""
    start_dataset(dataset)
    if not pairs and not fanouts:
        raise typer.BadParameter("give --pairs, --fanouts or both")
    if (model or transfer) and not pairs:
        raise typer.BadParameter("--model and --transfer are tested on pairs: give --pairs too")
    from service.atomic import write_json_atomic
    from training.data import default_data_dir, load_dataset
    from training.diffusion.diagnose import fanout_ceiling, neighbour_transfer, pairs_recall, query_use
    from training.diffusion.pairs import load_pairs

    settings = settings_for(dataset, artifacts, encoder)
    enc, resolver = open_retriever(settings)
    data = load_dataset(dataset, data_dir or default_data_dir())
    report = {"dataset": dataset, "encoder": settings.encoder, "command": "r4t " + shlex.join(sys.argv[1:])}
    if pairs:
        query, targets, set_index = load_pairs(settings.layout.pairs(pairs), ("set_index",))
        report.update(pairs=pairs, pairs_recall=pairs_recall(resolver, data, query, targets, set_index, n, sample))
    if transfer:
        report["neighbour_transfer"] = {split: neighbour_transfer(resolver, enc, data, query, targets, n, split)
                                        for split in ("val", "test")}
    if model:
        from training.diffusion.train import load_model

        report["model"], report["query_use"] = model, query_use(load_model(Path(model)), query, targets)
    if fanouts:
        from training.fanout.infer import RecordedLM

        report["fanouts"] = str(fanouts)
        report["fanout_ceiling"] = fanout_ceiling(resolver, enc, data, RecordedLM(fanouts), samples, n, max_sets)
    out.mkdir(parents=True, exist_ok=True)
    name = pairs or Path(fanouts).stem
    write_json_atomic(out / f"diagnose_{dataset}_{name}{'_' + Path(model).parent.name if model else ''}.json", report)
    typer.echo(json.dumps(report, indent=1))


@diffusion_app.command("distil")
def diffusion_distil(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    model: str = typer.Option("", help="Teacher denoiser; default <artifacts>/diffusion/<dataset>-wscr/model.pt"),
    name: str = typer.Option("", help="Pairs under <artifacts>/pairs; default <dataset>-wscr"),
    start_steps: int = typer.Option(32, help="The teacher's Karras steps"),
    final_steps: int = typer.Option(1, help="Halve until this many steps"),
    round_steps: int = typer.Option(500, help="Optimizer steps per halving"),
    batch_size: int = typer.Option(128, help="Pairs per step"),
    lr: float = typer.Option(1e-4, help="Adam learning rate"),
    guidance: float = typer.Option(1.0, help="The teacher's CFG weight; students learn it and sample with 1"),
    students: Optional[Path] = typer.Option(None, help="Where students go; default distil/ beside the teacher "
                                            "(distil-w<guidance>/ for guidance other than 1)"),
    max_queries: int = typer.Option(100, help="Score at most this many sets per split (0 = all)"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the table and plot go"),
) -> None:
    """Progressive distillation to few-step students (student-s<N>.pt), each scored against the
    undistilled sampler (at the same guidance) at the same step count; table, JSON and PNG."""
    start_dataset(dataset)
    from training.data import default_data_dir, load_dataset
    from training.diffusion.distil import DistilConfig, distil, write_report
    from training.diffusion.pairs import load_pairs
    from training.diffusion.train import load_model
    from training.evaluate import EvalConfig, diffusion_strategy, score_split

    settings = settings_for(dataset, artifacts, encoder)
    path = denoiser_path(settings, model)
    query, targets = load_pairs(settings.layout.pairs(name or f"{dataset}-wscr"))
    cfg = DistilConfig(start_steps=start_steps, final_steps=final_steps, round_steps=round_steps,
                       batch_size=batch_size, lr=lr, guidance=guidance)
    students = students or path.parent / ("distil" if guidance == 1.0 else f"distil-w{guidance:g}")
    encoder_, resolver = open_retriever(settings)
    data = load_dataset(dataset, data_dir or default_data_dir())
    eval_cfg = EvalConfig(dataset=dataset, max_queries=max_queries)
    teacher = load_model(path)

    def score(steps: int, denoiser, w: float = 1.0) -> dict:
        strategy = diffusion_strategy(f"{steps} steps", denoiser, encoder_, resolver, steps, w)
        rows = {split: score_split(strategy, data, split, eval_cfg) for split in eval_cfg.splits}
        return {"eval": {split: {"recall": {str(n): v for n, v in r.recall.items()}, "vendi": r.vendi_runs}
                         for split, r in rows.items()}}

    rows = [{"steps": n, "sampler": "Karras (undistilled)", **score(n, teacher, guidance)}
            for n in [start_steps, *cfg.rounds()]]
    rows += [{**r, "sampler": "distilled student"}
             for r in distil(teacher, query, targets, cfg, students, on_student=score)]
    header = {"dataset": dataset, "encoder": settings.encoder, "teacher": str(path), "n_values": list(eval_cfg.ns),
              "max_queries": max_queries, "config": asdict(cfg), "command": "r4t " + shlex.join(sys.argv[1:])}
    write_report(rows, header, out, f"diffusion_distil_{dataset}")
    typer.echo(f"{out}/diffusion_distil_{dataset}.md; students in {students}")
