"""The fan-out graph: query text -> (query embedding, L fan-out vectors) in one ONNX Runtime run.

Torch-free. The caller owns randomness: each query's noise comes from its own seed, so a request
with a seed gets the same fan-out whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.encoder import load_tokenizer, make_session
from service.manifest import MODEL_FILE, ArtifactError, FanoutInfo, Manifest, load_manifest


@dataclass(frozen=True, slots=True)
class GraphOutput:
    query_embedding: np.ndarray  # (d,)
    fanout: np.ndarray  # (L, d), unit rows


class FanoutGraph:
    """Runs `model.onnx` of a `fanout` artifact on batches of (text, seed)."""

    def __init__(self, directory: Path, device: str = "cpu", threads: int = 0, spin: bool = True):
        self.directory = Path(directory)
        self.manifest: Manifest = load_manifest(self.directory)
        if self.manifest.kind != "fanout" or self.manifest.fanout is None:
            raise ArtifactError(f"{directory} holds a {self.manifest.kind} graph, not a fan-out graph")
        self.info: FanoutInfo = self.manifest.fanout
        self.dim, self.rows = self.manifest.encoder.dim, self.info.rows
        self.tokenizer = load_tokenizer(self.directory, self.manifest.encoder.max_seq_len)
        self.session = make_session(self.directory / MODEL_FILE, device, threads, spin, self.manifest)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def noise(self, seed: int) -> np.ndarray:
        """(L, d) standard normal noise of one query, from its seed alone."""
        return np.random.default_rng(seed).standard_normal((self.rows, self.dim), dtype=np.float32)

    def run(self, batch: list[tuple[str, int]]) -> list[GraphOutput]:
        """One session run for a batch of (text, seed)."""
        noise = np.stack([self.noise(seed) for _, seed in batch])
        z, fanout = self.run_noise([text for text, _ in batch], noise)
        return [GraphOutput(z[i], fanout[i]) for i in range(len(batch))]

    def run_noise(self, texts: list[str], noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One session run with the caller's (B, L, d) noise -> (query embeddings (B, d), fan-outs (B, L, d))."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        z, fanout = self.session.run(["query_embedding", "fanout"], {"input_ids": ids, "attention_mask": mask,
                                                                     "noise": np.asarray(noise, np.float32)})
        return z, fanout
