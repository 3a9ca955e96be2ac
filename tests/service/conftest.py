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
def settings(encoder_dir, polyvore_index) -> Settings:
    return Settings(encoder_dir=encoder_dir, index_dir=polyvore_index, dataset="polyvore")


@pytest.fixture
def index_copy(polyvore_index, tmp_path) -> Path:
    """A private copy of the index: an open Edge shard is locked, so a second server needs its own."""
    copy = tmp_path / "polyvore"
    shutil.copytree(polyvore_index, copy)
    return copy
