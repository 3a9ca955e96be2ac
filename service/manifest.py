"""The artifact manifest: the one contract between the offline stages and the service.

An artifact directory holds `model.onnx`, the tokenizer files and `manifest.json`. Export writes the
manifest; the service validates it at start-up and refuses to start, with one clear line, when a file
is missing, corrupt (sha256 mismatch) or does not fit the index it is asked to serve.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INDEX_FILE = "index.json"  # in an index directory, beside the Edge shard
SHARD_DIR = "shard"


class ArtifactError(RuntimeError):
    """An artifact directory is missing, corrupt or mismatched; the message is one line."""


class EncoderInfo(BaseModel):
    """The text encoder baked into the graph: queries and items are embedded by it."""

    name: str = Field(description="Human name, e.g. all-MiniLM-L6-v2")
    source: str = Field(description="Where the weights came from (path or model id)")
    dim: int = Field(gt=0)
    max_seq_len: int = Field(gt=0, description="Tokens kept per text; longer texts are truncated")
    pooling: Literal["mean"] = "mean"
    normalize: bool = True


class Parity(BaseModel):
    """How far ONNX Runtime's output is from the torch reference, measured at export."""

    reference: str = Field(description="What the ONNX output was compared with")
    n_inputs: int
    max_abs_error: float
    min_cosine: float = Field(description="Lowest cosine of any output row (query embedding or fan-out row)")


class FanoutInfo(BaseModel):
    """The set-diffusion sampler baked into a `fanout` graph after the encoder."""

    rows: int = Field(gt=0, description="L: fan-out vectors per query")
    steps: int = Field(gt=0, description="Sampler steps unrolled in the graph")
    sigmas: list[float] = Field(description="The fixed noise levels, sigma_max ... 0")
    guidance: float = Field(description="Classifier-free guidance weight (1 = none)")
    sampler: Literal["euler", "heun"] = "euler"
    dataset: str = Field(description="The catalog whose pairs trained the model")
    encoder_sha256: str = Field(description="sha256 of the encoder artifact's model.onnx: the index's space")


class Manifest(BaseModel):
    """Everything the service must know about an artifact directory, defined once."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["encoder", "fanout"]
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="Weights of model.onnx")
    encoder: EncoderInfo
    opset: int
    inputs: list[str]
    outputs: list[str]
    files: dict[str, str] = Field(description="File name -> sha256 of every file in the directory")
    parity: Parity
    fanout: FanoutInfo | None = Field(None, description="Present when kind == 'fanout'")
    config: dict = Field(default_factory=dict, description="The resolved config that produced it")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def encoder_sha256(self) -> str:
        """Identity of the embedding space: an index built with another encoder is a mismatch."""
        return self.fanout.encoder_sha256 if self.fanout else self.files[MODEL_FILE]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(directory: Path) -> dict[str, str]:
    """sha256 of every regular file in `directory` except the manifest itself."""
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }


def load_manifest(directory: Path, verify_files: bool = True) -> Manifest:
    """Read and validate `directory/manifest.json`; raise ArtifactError with one line on any fault."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"no artifact at {directory}: {MANIFEST_FILE} is missing (run `r4t export`)")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"corrupt manifest {path}: {where}: {first['msg']}") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise ArtifactError(
            f"manifest {path} has schema {manifest.schema_version}, this service reads {SCHEMA_VERSION}"
        )
    if verify_files:
        for name, expected in manifest.files.items():
            file = path.parent / name
            if not file.is_file():
                raise ArtifactError(f"artifact {directory} is missing {name}")
            if sha256_file(file) != expected:
                raise ArtifactError(f"artifact {directory}: {name} does not match its sha256 in the manifest")
    return manifest


def default_collection(dataset: str) -> str:
    """The Qdrant server collection of a dataset when none is named."""
    return f"r4t-{dataset}"


class IndexMeta(BaseModel):
    """`index.json` of an index directory: what the vectors are, written by `r4t index`, read by the service.

    The identity fields decide whether an index is up to date; build facts (timings, sizes, config) ride along.
    """

    model_config = ConfigDict(extra="allow")

    dataset: str
    items: int = Field(ge=0)
    catalog_sha256: str = Field(description="sha256 over item ids and texts")
    encoder: str = Field(description="Name of the encoder whose space the vectors are in")
    encoder_sha256: str
    dim: int = Field(gt=0)
    quantization: str | None = None
    space: str | None = Field(None, description="The embedding space the item vectors come from, if not the encoder")
    space_kind: str | None = None
    distance: Literal["cosine", "dot"] = "cosine"
    memory_sets: int | None = Field(None, description="Train sets the item memory (sparse vectors) spans; None = none")
    payload_index: dict[str, str] = Field(default_factory=dict, description="Indexed payload field -> kind: the "
                                          "fields a filter may use (R4T_STRICT_FILTERS)")
    hnsw_m: int = Field(16, gt=0, description="HNSW edges per node")
    hnsw_ef_construct: int = Field(128, gt=0, description="HNSW beam width while building the graph")
    qdrant_url: str | None = Field(None, description="Set when the vectors live on a Qdrant server")
    collection: str | None = None

    IDENTITY: ClassVar[tuple[str, ...]] = ("dataset", "items", "catalog_sha256", "encoder", "encoder_sha256", "dim", "quantization", "space",
                "space_kind", "distance", "memory_sets", "payload_index", "hnsw_m", "hnsw_ef_construct")

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in self.IDENTITY}

    @classmethod
    def read(cls, index_dir: Path) -> IndexMeta | None:
        """The directory's meta, None when there is none; ArtifactError with one line when it is corrupt."""
        path = Path(index_dir) / INDEX_FILE
        if not path.is_file():
            return None
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ArtifactError(f"corrupt {path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
