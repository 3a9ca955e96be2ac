"""The exported encoder equals sentence-transformers on real item texts and keeps dynamic axes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.encoder import OnnxEncoder
from service.manifest import ArtifactError, load_manifest


@pytest.mark.slow
def test_parity_with_sentence_transformers_on_real_texts(encoder_dir, parity_texts):
    from export.encoder import default_encoder_path
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(default_encoder_path(), device="cpu", local_files_only=True)
    reference = st.encode(parity_texts, normalize_embeddings=True, convert_to_numpy=True)
    ours = OnnxEncoder(encoder_dir).encode(parity_texts)
    assert ours.shape == (len(parity_texts), 384)
    assert np.abs(reference - ours).max() <= 1e-4


def test_manifest_records_parity_and_hashes(encoder_dir, parity_texts):
    manifest = load_manifest(encoder_dir)
    assert manifest.kind == "encoder" and manifest.encoder.dim == 384
    assert manifest.encoder.max_seq_len == 256
    assert manifest.parity.n_inputs == len(parity_texts)
    assert manifest.parity.max_abs_error <= 1e-4 and manifest.parity.min_cosine > 0.9999
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}


def test_dynamic_batch_and_length(encoder):
    one = encoder.encode(["red dress"])
    many = encoder.encode(["red dress", "a much longer description of a pair of black leather boots", "x"])
    assert np.allclose(one[0], many[0], atol=1e-5)  # padding to a longer batch changes nothing
    assert np.allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)


def test_sessions_without_spinning_give_the_same_vectors(encoder_dir, encoder):
    texts = ["late night drive", "boho summer festival outfit"]
    quiet = OnnxEncoder(encoder_dir, threads=2, spin=False)  # R4T_ONNX_SPIN=0
    assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert np.allclose(quiet.encode(texts), encoder.encode(texts), atol=1e-6)


def test_corrupt_artifact_is_refused(encoder_dir, tmp_path):
    import shutil

    broken = tmp_path / "enc"
    shutil.copytree(encoder_dir, broken)
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match="sha256"):
        load_manifest(broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["encoder"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        load_manifest(broken)
    with pytest.raises(ArtifactError, match="missing"):
        load_manifest(tmp_path / "nowhere")
