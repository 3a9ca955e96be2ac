"""The artifact contract, read without torch or ONNX: a manifest and an index.json either validate or fail with
one ArtifactError line naming what is wrong."""

from __future__ import annotations

import json

import pytest

from service.atomic import write_json_atomic
from service.manifest import (
    INDEX_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ArtifactError,
    EncoderInfo,
    IndexMeta,
    Manifest,
    Parity,
    hash_files,
    load_manifest,
)


@pytest.fixture
def artifact(tmp_path):
    (tmp_path / MODEL_FILE).write_bytes(b"not really onnx")
    (tmp_path / "tokenizer.json").write_text("{}")
    manifest = Manifest(kind="encoder", encoder=EncoderInfo(name="e", source="test", dim=4, max_seq_len=8), opset=17,
                        inputs=["input_ids"], outputs=["embedding"], files=hash_files(tmp_path),
                        parity=Parity(reference="none", n_inputs=0, max_abs_error=0.0, min_cosine=1.0))
    write_json_atomic(tmp_path / MANIFEST_FILE, manifest.model_dump())
    return tmp_path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_a_valid_artifact_loads_with_every_file_hashed(artifact):
    manifest = load_manifest(artifact)
    assert set(manifest.files) == {MODEL_FILE, "tokenizer.json"}
    assert manifest.encoder_sha256 == manifest.files[MODEL_FILE]


def test_a_missing_manifest_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(ArtifactError) as exc:
        load_manifest(tmp_path)
    assert "manifest.json is missing" in _one_line(exc) and "r4t export" in str(exc.value)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(kind="tokenizer"), "corrupt manifest"),
    (lambda d: d.pop("encoder"), "encoder"),
    (lambda d: d.update(schema_version=99), "has schema 99"),
], ids=["unknown kind", "missing field", "other schema"])
def test_a_bad_manifest_is_one_line(artifact, change, expected):
    doc = json.loads((artifact / MANIFEST_FILE).read_text())
    change(doc)
    (artifact / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError) as exc:
        load_manifest(artifact)
    assert expected in _one_line(exc)


def test_a_missing_or_changed_file_is_refused_unless_not_verified(artifact):
    (artifact / "tokenizer.json").write_text('{"changed": 1}')
    with pytest.raises(ArtifactError) as exc:
        load_manifest(artifact)
    assert "tokenizer.json does not match its sha256" in _one_line(exc)
    assert load_manifest(artifact, verify_files=False).kind == "encoder"
    (artifact / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError, match="is missing model.onnx"):
        load_manifest(artifact)


def test_index_meta_reads_none_a_valid_or_a_corrupt_file(tmp_path):
    assert IndexMeta.read(tmp_path) is None
    meta = IndexMeta(dataset="mpd", items=3, catalog_sha256="c", encoder="e", encoder_sha256="s", dim=4,
                     payload_index={"artist": "keyword"})
    write_json_atomic(tmp_path / INDEX_FILE, meta.model_dump() | {"build_s": 1.5})  # build facts ride along
    read = IndexMeta.read(tmp_path)
    assert read.identity() == meta.identity() and read.model_extra == {"build_s": 1.5}
    # what the index makes filterable is part of what it is: an index without the payload indexes rebuilds
    assert read.identity() != meta.model_copy(update={"payload_index": {}}).identity()
    (tmp_path / INDEX_FILE).write_text(json.dumps({"dataset": "mpd", "items": -1}))
    with pytest.raises(ArtifactError) as exc:
        IndexMeta.read(tmp_path)
    assert "corrupt" in _one_line(exc) and "items" in str(exc.value)
