"""`r4t serve`: the HTTP service."""

from __future__ import annotations

import os
from typing import Optional

import typer

from export.cli.common import setup_logging, settings_for, check_dataset, ENCODER_OPT


def serve(
    dataset: Optional[str] = typer.Option(None, help="Which index to serve (R4T_DATASET)"),
    encoder: Optional[str] = ENCODER_OPT,
    host: Optional[str] = typer.Option(None, help="Bind address (R4T_HOST)"),
    port: Optional[int] = typer.Option(None, help="Port (R4T_PORT)"),
    graph: Optional[str] = typer.Option(None, help="Fan-out graph under <artifacts>/graphs (R4T_GRAPH); "
                                                   "'none' serves without the diffusion strategy"),
) -> None:
    """Start the HTTP service (JSON logs) on the embedded Qdrant Edge index (or R4T_QDRANT_URL)."""
    setup_logging()
    import uvicorn

    if dataset:
        check_dataset(dataset)
    # The app factory reads its Settings from the environment.
    os.environ.update({k: v for k, v in {"R4T_DATASET": dataset, "R4T_ENCODER": encoder, "R4T_GRAPH": graph}.items()
                       if v})
    settings = settings_for(dataset, encoder=encoder)
    from service.logs import log_config

    uvicorn.run("service.app:create_app", factory=True, host=host or settings.host,
                port=port or settings.port, log_config=log_config())
