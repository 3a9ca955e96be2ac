"""Shared fixtures: real data slices from ../shared/data and a real exported encoder (once per run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub

# Fixtures that read ../shared/data, and fixtures that export with torch: a test using one (through any
# chain of fixtures) is marked needs_data / needs_torch at collection, so `-m "not needs_data"` selects
# what a clean clone without the data can run. `slow` is set by hand on the tests that take > ~10 s.
DATA_FIXTURES = {"data_dir"}
TORCH_FIXTURES = {"encoder_dir", "graph_dir", "policy_artifacts"}
SLOW_FIXTURES = {"policy_artifacts"}  # converts the shipped GGUF to an HF checkpoint: ~13 s


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & DATA_FIXTURES:
            item.add_marker(pytest.mark.needs_data)
        if fixtures & TORCH_FIXTURES or "torch" in vars(item.module):
            item.add_marker(pytest.mark.needs_torch)
        if fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir():
    from training.data import default_data_dir

    root = default_data_dir()
    if not (root / "polyvore").is_dir():
        pytest.skip(f"real data not found under {root} (set R4T_DATA_DIR)")
    return root


@pytest.fixture(scope="session")
def polyvore(data_dir):
    from training.data import load_dataset

    return load_dataset("polyvore", data_dir, limit=120)  # 120 outfits, ~700 items: seconds to index


@pytest.fixture(scope="session")
def mpd(data_dir):
    from training.data import load_dataset

    return load_dataset("mpd", data_dir, limit=30)  # 30 playlists, ~2.5k tracks


@pytest.fixture(scope="session")
def parity_texts(polyvore, mpd):
    items = [it.text for it in list(polyvore.items.values())[:150]] + [it.text for it in list(mpd.items.values())[:150]]
    return items + [s.intent for s in polyvore.sets[:50]] + [s.intent for s in mpd.sets[:30]] + ["", "x " * 400]


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory, parity_texts):
    """all-MiniLM-L6-v2 exported to ONNX through the real export path."""
    from export.encoder import EncoderExportConfig, export_encoder

    out = tmp_path_factory.mktemp("artifacts") / "encoder"
    export_encoder(out, EncoderExportConfig(), parity_texts)
    return out


@pytest.fixture(scope="session")
def encoder(encoder_dir):
    from service.encoder import OnnxEncoder

    return OnnxEncoder(encoder_dir)


@pytest.fixture(scope="session")
def policy_artifacts(tmp_path_factory):
    """An artifacts root holding the shipped SmolLM2 GGUF converted once to an HF checkpoint."""
    pytest.importorskip("trl")
    from training.fanout.policy import DEFAULT_POLICY, convert_gguf

    root = tmp_path_factory.mktemp("policy-artifacts")
    convert_gguf(root / "policy" / DEFAULT_POLICY)
    return root


@pytest.fixture(scope="session")
def resolver(polyvore, encoder, tmp_path_factory):
    """A Qdrant Edge index of the Polyvore slice behind the resolver (built once per run; the service
    tests build their own, since an open Edge shard is locked)."""
    from service.resolver import Resolver
    from service.store import EdgeStore
    from training.index import SHARD_DIR, IndexConfig, build_index

    index_dir = tmp_path_factory.mktemp("resolver-index") / "polyvore"
    build_index(polyvore, encoder, index_dir, IndexConfig())
    store = EdgeStore.open(index_dir / SHARD_DIR)
    yield Resolver(store)
    store.close()


# --- the service's artifacts: a real Edge index of the Polyvore slice and a small fan-out graph ---


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
def settings(encoder_dir, polyvore_index, graph_dir):
    from service.settings import Settings

    # The toy graph records no val check, so the measured default would be single; the service tests
    # exercise the diffusion path, so they name it (test_fanout covers the measured default itself).
    return Settings(encoder_dir=encoder_dir, index_dir=polyvore_index, graph_dir=graph_dir, dataset="polyvore",
                    default_strategy="diffusion")


@pytest.fixture
def index_copy(polyvore_index, tmp_path) -> Path:
    """A private copy of the index: an open Edge shard is locked, so a second server needs its own."""
    copy = tmp_path / "polyvore"
    shutil.copytree(polyvore_index, copy)
    return copy
