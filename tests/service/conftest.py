"""Service fixtures: a real Edge index of the Polyvore slice, and Settings that serve it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.settings import Settings


@pytest.fixture(scope="session")
def polyvore_index(polyvore, encoder, tmp_path_factory) -> Path:
    """The `polyvore` slice embedded by the real encoder into an Edge shard (~700 items)."""
    from training.index import IndexConfig, build_index

    index_dir = tmp_path_factory.mktemp("service-index") / "polyvore"
    build_index(polyvore, encoder, index_dir, IndexConfig())
    return index_dir


@pytest.fixture(scope="session")
def graph_dir(encoder_dir, polyvore, tmp_path_factory) -> Path:
    """A small real fan-out graph: a randomly initialised tiny denoiser (10 rows) exported with the
    encoder through `r4t export`'s code path; its quality is not under test, its plumbing is."""
    import torch

    from export.fanout import FanoutExportConfig, export_fanout
    from training.diffusion.model import DiffusionConfig, SetDenoiser

    torch.manual_seed(0)
    denoiser = SetDenoiser(DiffusionConfig(rows=10, width=32, depth=1, heads=2, cond_tokens=2))
    for p in denoiser.parameters():  # the zero-initialised output head would make every row the same
        torch.nn.init.normal_(p, std=0.05)
    out = tmp_path_factory.mktemp("graphs") / "polyvore-s2"
    export_fanout(out, encoder_dir, denoiser.eval(), FanoutExportConfig(steps=2, guidance=2.0),
                  [s.intent for s in polyvore.sets[:8]], "polyvore")
    return out


@pytest.fixture(scope="session")
def settings(encoder_dir, polyvore_index, graph_dir) -> Settings:
    return Settings(encoder_dir=encoder_dir, index_dir=polyvore_index, graph_dir=graph_dir, dataset="polyvore")


@pytest.fixture
def index_copy(polyvore_index, tmp_path) -> Path:
    """A private copy of the index: an open Edge shard is locked, so a second server needs its own."""
    copy = tmp_path / "polyvore"
    shutil.copytree(polyvore_index, copy)
    return copy
