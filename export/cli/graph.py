"""`r4t export`: the fan-out graph (encoder + sampler) as one ONNX artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from export.cli.common import settings_for, denoiser_path, start_dataset, ENCODER_OPT, ARTIFACTS_OPT, DATA_OPT


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
    start_dataset(dataset)
    from export.fanout import FanoutExportConfig, export_fanout
    from training.data import default_data_dir, load_dataset
    from training.diffusion.train import load_model

    settings = settings_for(dataset, artifacts, encoder)
    path = denoiser_path(settings, model)
    queries = [s.intent for s in load_dataset(dataset, data_dir or default_data_dir()).split("val")[:64]]
    cfg = FanoutExportConfig(steps=steps, guidance=guidance, method=method, precision=precision)
    suffix = "" if precision == "fp32" else f"-{precision}"
    out = settings.layout.graph(name or f"{dataset}-s{steps}{suffix}")
    manifest = export_fanout(out, settings.encoder_path, load_model(path), cfg, queries, dataset)
    size = (out / "model.onnx").stat().st_size / 2**20
    typer.echo(f"{out} ({precision}, {size:.1f} MiB): parity max|Δ|={manifest.parity.max_abs_error:.2e}, "
               f"min cos {manifest.parity.min_cosine:.6f}")
