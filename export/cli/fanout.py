"""`r4t fanout ...`: step (i), the fan-out LM, its GRPO training and its benchmarks."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from export.cli.common import (
    settings_for, start_dataset, reward_model, DEFAULT_POLICY, ENCODER_OPT, ARTIFACTS_OPT, DATA_OPT,
)


fanout_app = typer.Typer(help="Step (i): the fan-out LM and its GRPO training.", no_args_is_help=True)


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
    start_dataset(dataset)
    from training.data import default_data_dir, load_dataset
    from training.fanout.grpo import RLConfig, train_grpo

    settings = settings_for(dataset, artifacts, encoder)
    rewards = reward_model(dataset, task, encoder, artifacts, depth)
    cfg = RLConfig(policy=policy, steps=steps, prompts_per_step=prompts_per_step, group=group,
                   micro_batch=micro_batch, lr=lr, beta=beta, temperature=temperature, lora=lora, bf16=bf16,
                   save_steps=save_steps, val_queries=val_queries, device=device)
    out = settings.layout.fanout(name or f"{dataset}-{task}")
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
    start_dataset(dataset)
    from training.data import default_data_dir, load_dataset
    from training.fanout.infer import FanoutLM, SampleConfig, latency_report

    settings = settings_for(dataset, artifacts)
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
    start_dataset(dataset)
    from training.data import default_data_dir, load_dataset
    from training.fanout.infer import FanoutLM, SampleConfig, record_fanouts

    ds = load_dataset(dataset, data_dir or default_data_dir())
    queries = [s.intent for split in splits.split(",") for s in ds.split(split)[: max_queries or None]]
    lm = FanoutLM(policy, settings_for(dataset, artifacts).artifacts_dir,
                  SampleConfig(dataset=dataset, temperature=temperature, dtype=dtype, device=device,
                               batch_size=batch_size or (320 if device == "cuda" else 32)))
    lines = record_fanouts(lm, queries, n, range(runs), out, chunk=chunk)
    typer.echo(f"{out}: {lines} (query, seed) records of {n} fan-outs")
