"""Shared fixtures: real data slices from ../shared/data and a real exported encoder (once per run)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub


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
