"""Embed texts with the exported ONNX encoder: the one embedding space shared by queries and items.

Torch-free: the tokenizer is the `tokenizers` fast tokenizer saved beside the graph, the graph runs in
ONNX Runtime. The indexer and the service both embed through this class, so an item and a query
that say the same thing land on the same vector.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from service.manifest import MODEL_FILE, ArtifactError, Manifest, load_manifest

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
# A co-membership space's head also gives the query's nearest train sets and their weights: the item memory's query.
MEMORY_OUTPUTS = ("memory_sets", "memory_weights")


def make_session(model: Path, device: str = "cpu", threads: int = 0, spin: bool = True,
                 manifest: Manifest | None = None) -> ort.InferenceSession:
    """Open an ONNX Runtime session, CUDA first when asked; the provider actually used is logged.

    With a `manifest`, the graph's input and output names must be the ones it declares.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads  # 0 = one per physical core
    if not spin:  # idle pool threads sleep instead of busy-waiting for the next run
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    # onnxruntime-gpu lists CUDA as available even where it cannot start; only this is the truth.
    log.info("onnx session %s on %s", model.name, session.get_providers()[0])
    if manifest is not None:
        found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if found != (manifest.inputs, manifest.outputs):
            raise ArtifactError(f"{model} takes {found[0]} and gives {found[1]}, but its manifest declares "
                                f"{manifest.inputs} and {manifest.outputs}")
    return session


def load_tokenizer(directory: Path, max_len: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tokenizer


class OnnxEncoder:
    """Texts -> (N, D) float32 L2-normalised vectors through `model.onnx` of an encoder artifact."""

    def __init__(self, directory: Path, device: str = "cpu", threads: int = 0, spin: bool = True):
        self.directory = Path(directory)
        self.manifest: Manifest = load_manifest(self.directory)
        if self.manifest.kind != "encoder":
            raise ArtifactError(f"{directory} holds a {self.manifest.kind} graph, not an encoder")
        self.dim = self.manifest.encoder.dim
        self.max_len = self.manifest.encoder.max_seq_len
        self.tokenizer = load_tokenizer(self.directory, self.max_len)
        self.session = make_session(self.directory / MODEL_FILE, device, threads, spin, self.manifest)
        # The item memory's constants (manifest config.space.memory) when the head gives its query, else None.
        self.memory: dict | None = (self.manifest.config.get("space", {}).get("memory")
                                    if set(MEMORY_OUTPUTS) <= set(self.manifest.outputs) else None)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded (B, T) int64 `input_ids` and `attention_mask`."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def encode_memory(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, D) embeddings, (B, n) nearest train sets and (B, n) their weights, in one run."""
        if self.memory is None:
            raise ArtifactError(f"{self.directory} gives no item-memory query (not a co-membership space head)")
        ids, mask = self.tokenize(texts)
        emb, sets, weights = self.session.run(["embedding", *MEMORY_OUTPUTS],
                                              {"input_ids": ids, "attention_mask": mask})
        return emb, sets, weights

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """(N, D) embeddings; texts are batched by length so padding stays short."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = self.tokenize([texts[i] for i in idx])
            (emb,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
            out[idx] = emb
        return out
