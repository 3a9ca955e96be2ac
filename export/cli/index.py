"""`r4t index`: embed the catalog and build its index."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from export.cli.common import settings_for, start_dataset, export_encoder_artifact, ENCODER_OPT, ARTIFACTS_OPT, DATA_OPT


def index(
    dataset: str = typer.Option("polyvore", help="polyvore | mpd"),
    encoder: Optional[str] = ENCODER_OPT,
    limit: int = typer.Option(0, help="Read at most this many sets (0 = all), for quick runs"),
    qdrant_url: str = typer.Option("", help="Index into a Qdrant server instead of the Edge shard"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Embed the catalog with an exported encoder and build its index (a no-op when up to date)."""
    start_dataset(dataset)
    from service.encoder import OnnxEncoder
    from service.settings import BASE_ENCODER
    from training.data import default_data_dir, load_dataset
    from training.index import IndexConfig, build_index

    settings = settings_for(dataset, artifacts, encoder)
    if not (settings.encoder_path / "manifest.json").is_file():
        if settings.encoder != BASE_ENCODER:
            raise typer.BadParameter(f"no encoder artifact at {settings.encoder_path}; run `r4t encoder tune`")
        export_encoder_artifact("", BASE_ENCODER, artifacts, data_dir)
    ds = load_dataset(dataset, data_dir or default_data_dir(), limit=limit or None)
    meta = build_index(ds, OnnxEncoder(settings.encoder_path), settings.index_path,
                       IndexConfig(qdrant_url=qdrant_url))
    typer.echo(f"{settings.index_path}: {meta['items']} items")
