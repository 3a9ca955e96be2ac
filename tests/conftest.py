"""Shared fixtures: real data slices from ../shared/data and MiniLM exported through torch (once per run) for the
offline stages; a synthetic catalog and torch-free ONNX artifacts (tests/artifacts.py) for the service."""

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
TORCH_FIXTURES = {"encoder_dir", "policy_artifacts"}
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


# --- the service's artifacts: torch-free and data-free, so a clean clone runs every service test ---
# A synthetic catalog in the Polyvore file format (read by the real loader), a bag-of-words ONNX encoder and a
# fan-out graph over it (tests/artifacts.py), and a real Edge index of the catalog embedded by that encoder.


@pytest.fixture(scope="session")
def catalog_data_dir(tmp_path_factory) -> Path:
    """A data directory (like ../shared/data) whose `polyvore/` holds 150 themed outfits, ~900 items, in the
    Maryland Polyvore format."""
    from tests.artifacts import write_polyvore_catalog

    root = tmp_path_factory.mktemp("catalog-data")
    write_polyvore_catalog(root / "polyvore")
    return root


@pytest.fixture(scope="session")
def catalog(catalog_data_dir):
    from training.data import load_dataset

    return load_dataset("polyvore", catalog_data_dir)


@pytest.fixture(scope="session")
def tiny_encoder_dir(catalog, tmp_path_factory) -> Path:
    from tests.artifacts import build_tiny_encoder

    texts = [it.text for it in catalog.items.values()] + [s.intent for s in catalog.sets] + ["", "x " * 400]
    return build_tiny_encoder(tmp_path_factory.mktemp("artifacts") / "tiny-encoder", texts)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    from service.encoder import OnnxEncoder

    return OnnxEncoder(tiny_encoder_dir)


@pytest.fixture(scope="session")
def tiny_graph_dir(tiny_encoder_dir, tmp_path_factory) -> Path:
    from tests.artifacts import build_tiny_graph

    return build_tiny_graph(tmp_path_factory.mktemp("graphs") / "tiny-fanout", tiny_encoder_dir, "polyvore")


@pytest.fixture(scope="session")
def catalog_index(catalog, tiny_encoder, tmp_path_factory) -> Path:
    """The catalog embedded by the tiny encoder into an Edge shard, with its payload indexes."""
    from training.index import IndexConfig, build_index

    index_dir = tmp_path_factory.mktemp("service-index") / "polyvore"
    build_index(catalog, tiny_encoder, index_dir, IndexConfig())
    return index_dir


@pytest.fixture(scope="session")
def settings(tiny_encoder_dir, catalog_index, tiny_graph_dir):
    from service.settings import Settings

    # The fixture graph records no val check, so the measured default would be single; the service tests
    # exercise the diffusion path, so they name it (test_fanout covers the measured default itself).
    return Settings(encoder_dir=tiny_encoder_dir, index_dir=catalog_index, graph_dir=tiny_graph_dir,
                    dataset="polyvore", default_strategy="diffusion")


@pytest.fixture
def index_copy(catalog_index, tmp_path) -> Path:
    """A private copy of the index: an open Edge shard is locked, so a second server needs its own."""
    copy = tmp_path / "polyvore"
    shutil.copytree(catalog_index, copy)
    return copy
