"""`r4t export`: the whole query path as one ONNX graph, with parity and a manifest.

Inputs `input_ids`, `attention_mask` (B, T) and `noise` (B, L, d) — the caller owns randomness, so a
seed makes results reproducible. Inside: the encoder → mean pool → L2 norm → z_q, then the sampler
unrolled over its fixed sigmas with CFG → L2-normalised rows. Outputs `query_embedding` (B, d) and
`fanout` (B, L, d). The directory is written to a temp dir, reloaded in ONNX Runtime, compared with
torch on real queries and fixed noise, and only then moved into place.

Precision variants are derived from the fp32 export: `fp16` (weights and activations in half
precision, float32 inputs and outputs; for the CUDA provider) and `int8` (dynamically quantised
MatMul weights; for the CPU provider). Their parity is recorded, not held to the fp32 tolerance: the
recall budget through `r4t eval` decides whether a variant is good enough.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer

from export.encoder import OPSET, MeanPooledEncoder
from service.atomic import replace_dir, write_json_atomic
from service.manifest import MODEL_FILE, FanoutInfo, Manifest, Parity, hash_files, load_manifest
from training.diffusion.model import SetDenoiser
from training.diffusion.sampler import model_sigmas, sample

log = logging.getLogger(__name__)

INPUTS, OUTPUTS = ["input_ids", "attention_mask", "noise"], ["query_embedding", "fanout"]
PARITY_TOLERANCE = 1e-4  # fp32: max abs difference per coordinate vs torch
PRECISIONS = ("fp32", "fp16", "int8")
COSINE_FLOOR = 0.9  # fp16 / int8: a variant whose rows point elsewhere is broken, not merely lossy


@dataclass(frozen=True)
class FanoutExportConfig:
    steps: int = 4  # sampler steps unrolled into the graph
    guidance: float = 1.0  # CFG weight (1 = no guidance, one model call per step)
    method: str = "euler"  # euler | heun
    precision: str = "fp32"  # fp32 | fp16 | int8
    opset: int = OPSET

    def __post_init__(self):
        if self.steps < 1 or self.method not in ("euler", "heun"):
            raise ValueError("steps must be >= 1 and method 'euler' or 'heun'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")


class QueryToFanout(torch.nn.Module):
    """(input_ids, attention_mask, noise) -> (query_embedding (B, d), fanout (B, L, d))."""

    def __init__(self, encoder: MeanPooledEncoder, denoiser: SetDenoiser, sigmas: list[float], cfg: FanoutExportConfig):
        super().__init__()
        self.encoder, self.denoiser, self.sigmas, self.cfg = encoder, denoiser, sigmas, cfg

    def forward(self, input_ids, attention_mask, noise):
        z = self.encoder(input_ids, attention_mask)  # (B, d)
        return z, sample(self.denoiser, z, noise, self.sigmas, self.cfg.guidance, self.cfg.method)


def export_fanout(out_dir: Path, encoder_dir: Path, denoiser: SetDenoiser, cfg: FanoutExportConfig,
                  queries: list[str], dataset: str, seed: int = 0, head: torch.nn.Module | None = None,
                  provenance: dict | None = None) -> Manifest:
    """Build, export, check parity on `queries`, then move the artifact directory into `out_dir`.

    `head` replaces the text encoder for a space encoder (`export.space.SpaceHead`: text -> query vector in
    the space); `provenance` (space, teacher, pairs, measured recall) is recorded in the manifest.
    """
    enc_manifest = load_manifest(Path(encoder_dir))
    st = SentenceTransformer(enc_manifest.encoder.source, device="cpu", local_files_only=True).eval()
    d = denoiser.cfg
    if d.dim != enc_manifest.encoder.dim:
        raise ValueError(f"denoiser dim {d.dim} != encoder dim {enc_manifest.encoder.dim}")
    sigmas = model_sigmas(denoiser, cfg.steps)
    encoder = head if head is not None else MeanPooledEncoder(st[0].auto_model).eval()
    graph = QueryToFanout(encoder, denoiser.eval(), sigmas, cfg).eval()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)
    try:
        # 1. Trace with a batch of 2 and distinct lengths: a batch of 1 freezes the batch axis.
        example = st.tokenizer(["a b c", "a longer example sentence"], padding=True, return_tensors="pt")
        noise = torch.randn(2, d.rows, d.dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            torch.onnx.export(
                graph, (example["input_ids"], example["attention_mask"], noise), str(tmp / MODEL_FILE),
                input_names=INPUTS, output_names=OUTPUTS, opset_version=cfg.opset, dynamo=False,
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                              "noise": {0: "batch"}, "query_embedding": {0: "batch"}, "fanout": {0: "batch"}},
            )
        convert_precision(tmp / MODEL_FILE, cfg.precision)
        shutil.copy(Path(encoder_dir) / "tokenizer.json", tmp / "tokenizer.json")
        # 2. Reload in ONNX Runtime; compare with torch on real queries and fixed noise.
        parity = measure_parity(graph, tmp / MODEL_FILE, st, queries, seed)
        if cfg.precision == "fp32" and not parity.max_abs_error <= PARITY_TOLERANCE:
            raise RuntimeError(f"fan-out graph parity {parity.max_abs_error:.2e} > {PARITY_TOLERANCE:.0e}")
        if not parity.min_cosine >= COSINE_FLOOR:
            raise RuntimeError(f"{cfg.precision} graph: min cosine to torch {parity.min_cosine:.3f} < {COSINE_FLOOR}")
        manifest = Manifest(
            kind="fanout", precision=cfg.precision, encoder=enc_manifest.encoder, opset=cfg.opset, inputs=INPUTS,
            outputs=OUTPUTS,
            files=hash_files(tmp), parity=parity,
            fanout=FanoutInfo(rows=d.rows, steps=cfg.steps, sigmas=sigmas, guidance=cfg.guidance, sampler=cfg.method,
                              dataset=dataset, encoder_sha256=enc_manifest.encoder_sha256),
            config={"export": asdict(cfg), "denoiser": d.as_dict(), "provenance": provenance or {}},
        )
        write_json_atomic(tmp / "manifest.json", manifest.model_dump())
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fan-out graph exported to %s (parity %.2e)", out_dir, parity.max_abs_error)
    return manifest


def convert_precision(model: Path, precision: str) -> None:
    """Rewrite the fp32 `model` in place as the `precision` variant."""
    import onnx

    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(model)
        _untranspose_gemm_weights(graph)
        staged = model.with_name("int8.onnx")
        # The encoder's MatMuls hold nearly all of the bytes and time; the denoiser stays fp32. Shape
        # inference cannot type every traced output; they are all float32.
        encoder = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.name.startswith("/encoder/")]
        quantize_dynamic(graph, staged, weight_type=QuantType.QInt8, nodes_to_quantize=encoder,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        staged.replace(model)
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(model), keep_io_types=True), model)


def _untranspose_gemm_weights(model) -> None:
    """Store each transB Gemm weight pre-transposed (transB=0), once per initializer.

    The unrolled sampler reuses one denoiser weight in every step's Gemm; ORT's quantiser rewrites
    Gemm as MatMul by transposing the initializer in place per node, so a shared weight would be
    transposed once per step. After this pass it has nothing to transpose.
    """
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    for node in model.graph.node:
        trans = next((a for a in node.attribute if a.name == "transB"), None)
        if node.op_type != "Gemm" or trans is None or trans.i != 1 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name not in done:
            weight = inits[name]
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), name))
            done.add(name)
        trans.i = 0
    onnx.checker.check_model(model)


def measure_parity(graph: QueryToFanout, model: Path, st: SentenceTransformer, queries: list[str], seed: int) -> Parity:
    """Max abs error and min cosine of ONNX Runtime's fan-out rows against torch, same tokens and noise."""
    tokens = st.tokenizer(queries, padding=True, truncation=True, return_tensors="pt")
    d = graph.denoiser.cfg
    noise = torch.randn(len(queries), d.rows, d.dim, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        z_ref, f_ref = (t.numpy() for t in graph(tokens["input_ids"], tokens["attention_mask"], noise))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    z, f = session.run(OUTPUTS, {"input_ids": tokens["input_ids"].numpy(),
                                 "attention_mask": tokens["attention_mask"].numpy(), "noise": noise.numpy()})
    return Parity(reference=f"torch on {len(queries)} queries, fixed noise", n_inputs=len(queries),
                  max_abs_error=float(max(np.abs(z - z_ref).max(), np.abs(f - f_ref).max())),
                  min_cosine=float(min((f * f_ref).sum(-1).min(), (z * z_ref).sum(-1).min())))
