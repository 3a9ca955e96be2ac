"""Shared helpers and options of the `r4t` commands."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer


DATASETS = ("polyvore", "mpd")
STRATEGIES = ("single", "mmr", "jitter", "neighbours", "categories", "zero-shot", "best-of-5", "folm", "diffusion",
              "graph")
DEFAULT_POLICY = "smollm2-135m-instruct"  # = training.fanout.policy.DEFAULT_POLICY, without importing torch


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time


def settings_for(dataset: str | None = None, artifacts: Path | None = None, encoder: str | None = None):
    from service.settings import Settings

    overrides = {"dataset": dataset, "artifacts_dir": artifacts, "encoder": encoder}
    return Settings(**{k: v for k, v in overrides.items() if v})


def denoiser_path(settings, model: str | None) -> Path:
    """The set denoiser a command uses: `--model`, else <artifacts>/diffusion/<dataset>-wscr/model.pt."""
    return Path(model or settings.layout.denoiser(f"{settings.dataset}-wscr"))


def start_dataset(dataset: str) -> None:
    """Logging and offline mode, then the dataset name checked: the first lines of a dataset command."""
    setup_logging()
    check_dataset(dataset)


def open_retriever(settings):
    """(encoder, resolver) of one embedding space: the exported encoder and its Edge index."""
    from service.encoder import OnnxEncoder
    from service.resolver import Resolver
    from service.store import EdgeStore
    from training.index import SHARD_DIR

    return OnnxEncoder(settings.encoder_path), Resolver(EdgeStore.open(settings.index_path / SHARD_DIR))


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def parity_texts(data_dir: Path | None, n: int = 256) -> list[str]:
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


def export_encoder_artifact(model: str, name: str, artifacts: Path | None, data_dir: Path | None,
                    training: dict | None = None) -> None:
    from export.encoder import EncoderExportConfig, export_encoder

    target = settings_for(artifacts=artifacts, encoder=name).encoder_path
    manifest = export_encoder(target, EncoderExportConfig(model=model, name=name), parity_texts(data_dir),
                              training)
    typer.echo(f"{target}: parity max|Δ|={manifest.parity.max_abs_error:.2e} on {manifest.parity.n_inputs} texts")




def reward_model(dataset: str, task: str, encoder: str | None, artifacts: Path | None, depth: int = 0):
    from training.evaluate import DEFAULT_N
    from training.fanout.rewards import RewardConfig, RewardModel

    settings = settings_for(dataset, artifacts, encoder)
    return RewardModel(*open_retriever(settings),
                       RewardConfig(task=task, depth=depth or DEFAULT_N[dataset][-1] // 10))
