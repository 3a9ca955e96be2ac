"""`r4t`: the one command line, each stage from files to files.

It lives in export/, the top of the import graph (export -> training -> service), so it may reach
every stage; each command imports its stage lazily, so `r4t serve` needs only the service's
dependencies and never loads torch.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="R4T fan-out retrieval: build, train, evaluate and serve.", no_args_is_help=True)
encoder_app = typer.Typer(help="The text encoder that defines the embedding space.", no_args_is_help=True)
app.add_typer(encoder_app, name="encoder")

DATASETS = ("polyvore", "mpd")


def _setup(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time


def _settings(dataset: str | None = None, artifacts: Path | None = None):
    from service.settings import Settings

    overrides = {k: v for k, v in {"dataset": dataset, "artifacts_dir": artifacts}.items() if v}
    return Settings(**overrides)


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


@encoder_app.command("export")
def encoder_export(
    model: str = typer.Option("", help="sentence-transformers path; default all-MiniLM-L6-v2 from its wheel"),
    name: str = typer.Option("all-MiniLM-L6-v2", help="Name recorded in the manifest"),
    out: Optional[Path] = typer.Option(None, help="Artifact dir; default <artifacts>/encoder"),
    artifacts: Optional[Path] = typer.Option(None, help="Artifacts root (R4T_ARTIFACTS_DIR)"),
    data_dir: Optional[Path] = typer.Option(None, help="Data root for the parity texts"),
) -> None:
    """Export the encoder to ONNX with its tokenizer; checks parity against sentence-transformers."""
    _setup()
    from export.encoder import EncoderExportConfig, export_encoder

    target = out or _settings(artifacts=artifacts).encoder_path
    manifest = export_encoder(target, EncoderExportConfig(model=model, name=name), _parity_texts(data_dir))
    typer.echo(f"{target}: parity max|Δ|={manifest.parity.max_abs_error:.2e} on {manifest.parity.n_inputs} texts")


@app.command()
def index(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    data_dir: Optional[Path] = typer.Option(None, help="Data root; default ../shared/data or ./data"),
    artifacts: Optional[Path] = typer.Option(None, help="Artifacts root (R4T_ARTIFACTS_DIR)"),
    limit: int = typer.Option(0, help="Read at most this many sets (0 = all), for quick runs"),
    qdrant_url: str = typer.Option("", help="Index into a Qdrant server instead of the Edge shard"),
) -> None:
    """Embed the catalog with the exported encoder and build its index (a no-op when up to date)."""
    _setup()
    _check_dataset(dataset)
    from service.encoder import OnnxEncoder
    from training.data import default_data_dir, load_dataset
    from training.index import IndexConfig, build_index

    settings = _settings(dataset, artifacts)
    if not (settings.encoder_path / "manifest.json").is_file():
        encoder_export(model="", name="all-MiniLM-L6-v2", out=settings.encoder_path, artifacts=None,
                       data_dir=data_dir)
    ds = load_dataset(dataset, data_dir or default_data_dir(), limit=limit or None)
    meta = build_index(ds, OnnxEncoder(settings.encoder_path), settings.index_path,
                       IndexConfig(qdrant_url=qdrant_url))
    typer.echo(f"{settings.index_path}: {meta['items']} items")


@app.command("eval")
def evaluate(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    strategies: str = typer.Option("single,mmr", help="Comma-separated: single, mmr"),
    splits: str = typer.Option("val,test", help="Comma-separated splits"),
    n: str = typer.Option("", help="Comma-separated Recall@N cut-offs; default per dataset"),
    max_queries: int = typer.Option(0, help="Score at most this many sets per split (0 = all)"),
    data_dir: Optional[Path] = typer.Option(None),
    artifacts: Optional[Path] = typer.Option(None),
    out: Path = typer.Option(Path("results"), help="Where the tables go"),
) -> None:
    """Score strategies on held-out sets; writes results/eval_<dataset>.{md,json}."""
    _setup()
    _check_dataset(dataset)
    from service.encoder import OnnxEncoder
    from service.resolver import Resolver
    from service.store import EdgeStore
    from training.data import default_data_dir, load_dataset
    from training.evaluate import EvalConfig, evaluate as run_eval, mmr_strategy, single_strategy

    settings = _settings(dataset, artifacts)
    cfg = EvalConfig(dataset=dataset, splits=tuple(splits.split(",")), max_queries=max_queries,
                     n_values=tuple(int(x) for x in n.split(",") if x))
    resolver = Resolver(EdgeStore.open(settings.index_path / "shard"))
    builders = {"single": lambda: single_strategy(resolver, cfg.k),
                "mmr": lambda: mmr_strategy(resolver, cfg.k, cfg.mmr_lambda, cfg.mmr_pool, cfg.mmr_max)}
    unknown = set(strategies.split(",")) - builders.keys()
    if unknown:
        raise typer.BadParameter(f"unknown strategies {sorted(unknown)}; choose from {sorted(builders)}")
    rows = run_eval([builders[s]() for s in strategies.split(",")],
                    load_dataset(dataset, data_dir or default_data_dir()),
                    OnnxEncoder(settings.encoder_path), resolver, cfg, out,
                    command="r4t " + shlex.join(sys.argv[1:]))
    typer.echo(f"{len(rows)} rows -> {out}/eval_{dataset}.md")


@app.command("bench-store")
def bench_store_cmd(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    calls: int = typer.Option(200, help="Timed batched calls per setting"),
    hnsw_ef: str = typer.Option("128", help="Comma-separated search-time ef values"),
    data_dir: Optional[Path] = typer.Option(None),
    artifacts: Optional[Path] = typer.Option(None),
    out: Path = typer.Option(Path("results"), help="Where the report goes"),
) -> None:
    """Time one batched 10-vector search on the Edge index; HNSW recall against exact search."""
    _setup()
    _check_dataset(dataset)
    from service.encoder import OnnxEncoder
    from service.store import EdgeStore
    from training.bench_store import BenchStoreConfig, bench_store, write_report
    from training.data import default_data_dir, load_dataset
    from training.index import SHARD_DIR, read_index_meta

    settings = _settings(dataset, artifacts)
    store = EdgeStore.open(settings.index_path / SHARD_DIR)
    cfg = BenchStoreConfig(calls=calls, hnsw_ef=tuple(int(x) for x in hnsw_ef.split(",")))
    result = bench_store(store, load_dataset(dataset, data_dir or default_data_dir()),
                         OnnxEncoder(settings.encoder_path), cfg)
    path = write_report(result, read_index_meta(settings.index_path) or {}, out,
                        "r4t " + shlex.join(sys.argv[1:]))
    typer.echo(path.read_text())


@app.command()
def serve(
    dataset: Optional[str] = typer.Option(None, help="Which index to serve (R4T_DATASET)"),
    host: Optional[str] = typer.Option(None, help="Bind address (R4T_HOST)"),
    port: Optional[int] = typer.Option(None, help="Port (R4T_PORT)"),
) -> None:
    """Start the HTTP service on the embedded Qdrant Edge index (or R4T_QDRANT_URL)."""
    _setup()
    import uvicorn

    if dataset:
        _check_dataset(dataset)
        os.environ["R4T_DATASET"] = dataset  # the app factory reads its Settings from the environment
    settings = _settings(dataset)
    uvicorn.run("service.app:create_app", factory=True, host=host or settings.host,
                port=port or settings.port, log_level="info")
