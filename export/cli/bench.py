"""`r4t bench graph | store | llm`: model-only, store-only and LLM-generation benchmarks (the HTTP ones reach
the service over HTTP only: `python -m loadtests.bench`)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from export.cli.common import settings_for, start_dataset, ENCODER_OPT, ARTIFACTS_OPT, DATA_OPT


def graph(
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
    start_dataset(dataset)
    from export.bench import GraphBenchConfig, bench_graphs, machine, write_report
    from training.data import default_data_dir, load_dataset

    settings = settings_for(dataset, artifacts)
    cfg = GraphBenchConfig(batches=tuple(int(b) for b in batches.split(",")), device=device, threads=threads,
                           io_binding=io_binding, max_seconds=max_seconds)
    queries = [s.intent for s in load_dataset(dataset, data_dir or default_data_dir()).split("val")]
    paths = [Path(graph) if "/" in graph else settings.layout.graph(graph) for graph in graphs.split(",")]
    rows = bench_graphs(paths, queries, cfg)
    header = {"dataset": dataset, "machine": machine(), "command": "r4t " + shlex.join(sys.argv[1:])}
    files = write_report(rows, header, out, name or f"graph_latency_{dataset}_{device}")
    typer.echo(files[1].read_text())


def store(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    calls: int = typer.Option(200, help="Timed batched calls per setting"),
    hnsw_ef: str = typer.Option("128", help="Comma-separated search-time ef values"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
    out: Path = typer.Option(Path("results"), help="Where the report goes"),
) -> None:
    """Time one batched 10-vector search on the Edge index; HNSW recall against exact search."""
    start_dataset(dataset)
    from service.encoder import OnnxEncoder
    from service.manifest import SHARD_DIR, IndexMeta
    from service.store import EdgeStore
    from training.bench_store import BenchStoreConfig, bench_store, write_report
    from training.data import default_data_dir, load_dataset

    settings = settings_for(dataset, artifacts, encoder)
    store = EdgeStore.open(settings.index_path / SHARD_DIR)
    cfg = BenchStoreConfig(calls=calls, hnsw_ef=tuple(int(x) for x in hnsw_ef.split(",")))
    result = bench_store(store, load_dataset(dataset, data_dir or default_data_dir()),
                         OnnxEncoder(settings.encoder_path), cfg)
    meta = IndexMeta.read(settings.index_path)
    path = write_report(result, meta.model_dump() if meta else {}, out,
                        "r4t " + shlex.join(sys.argv[1:]))
    typer.echo(path.read_text())


def llm(
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
