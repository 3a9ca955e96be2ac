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
