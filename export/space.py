"""Export a space's query head (text encoder -> nearest train titles -> mean set vector) as an encoder artifact.

The artifact is an ordinary `kind="encoder"` directory (model.onnx, tokenizer.json, manifest.json), so the
service, the index and every eval strategy use it as they use a text encoder: its `embedding` output is the
unit query vector in the space. The train titles' embeddings and set vectors are constants of the graph.
Parity is checked against `training.space.query_vectors` on real titles before the directory moves in.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from export.encoder import OPSET, MeanPooledEncoder
from service.atomic import replace_dir, write_json_atomic
from service.encoder import MEMORY_OUTPUTS, OnnxEncoder
from service.manifest import MODEL_FILE, EncoderInfo, Manifest, Parity, hash_files, load_manifest
from training.space import MEMORY_WEIGHT, Space, memory_scales, nearest_sets, neighbour_weights, query_vectors, tiebreak

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


class SpaceHead(torch.nn.Module):
    """(input_ids, attention_mask) -> (B, k) unit query vectors: mean of the n nearest train sets' vectors
    (weighted by softmax(similarity / temperature) when the space has one), blended with the text embedding
    by the space's `text_weight` (text kind)."""

    def __init__(self, encoder: MeanPooledEncoder, space: Space, memory: bool = False):
        super().__init__()
        self.memory = memory  # also output the neighbour sets and their weights (the item memory's query)
        self.encoder, self.n, self.w = encoder, space.neighbours, float(space.text_weight)
        self.t = float(space.temperature)
        self.extra = int(space.neighbours < len(space.set_ids))  # the (n+1)-th title, where weights reach 0
        self.register_buffer("titles", torch.from_numpy(space.titles))  # (S, D)
        self.register_buffer("sets", torch.from_numpy(space.sets))  # (S, k)
        self.register_buffer("tiebreak", torch.from_numpy(tiebreak(len(space.set_ids))))  # (S,)

    def forward(self, input_ids, attention_mask):
        z = self.encoder(input_ids, attention_mask)  # (B, D)
        sims, nearest = torch.topk(z @ self.titles.T + self.tiebreak, self.n + self.extra, dim=1)  # (B, n [+ 1])
        n = self.n
        if self.t:  # training.space.neighbour_weights
            e = torch.exp((sims - sims[:, :1]) / self.t)
            w = e[:, :n] - e[:, n:] if self.extra else e
            total = w.sum(1, keepdim=True)
            weights = torch.where(total > 0, w / total.clamp_min(1e-30), torch.full_like(w, 1.0 / n))
        else:
            weights = torch.full_like(sims[:, :n], 1.0 / n)
        q = torch.nn.functional.normalize((self.sets[nearest[:, :n]] * weights[..., None]).sum(1), dim=-1)  # (B, k)
        if self.w:
            q = self.w * torch.nn.functional.normalize(z, dim=-1) + (1.0 - self.w) * q
        q = torch.nn.functional.normalize(q, dim=-1)
        return (q, nearest[:, :n], weights) if self.memory else q


def load_head(space: Space, text_encoder_dir: Path) -> tuple[SpaceHead, SentenceTransformer]:
    """The torch head of `space` over the text encoder it was built with."""
    text = load_manifest(Path(text_encoder_dir))
    if text.encoder_sha256 != space.meta["text_encoder_sha256"]:
        raise ValueError(f"space {space.name} was built with text encoder {space.meta['text_encoder']}, "
                         f"not the one at {text_encoder_dir}")
    st = SentenceTransformer(text.encoder.source, device="cpu", local_files_only=True).eval()
    return SpaceHead(MeanPooledEncoder(st[0].auto_model).eval(), space).eval(), st


def export_space_encoder(out_dir: Path, space: Space, text_encoder_dir: Path, parity_texts: list[str],
                         memory_weight: float = MEMORY_WEIGHT) -> Manifest:
    """Export the head, check it against numpy on `parity_texts`, then move the directory into `out_dir`.

    A comember space's head also outputs its neighbour sets and weights (`MEMORY_OUTPUTS`), and the manifest
    records the constant that weighs the item memory against the dense score (`memory_scales`)."""
    text_encoder_dir = Path(text_encoder_dir)
    text = load_manifest(text_encoder_dir)
    head, st = load_head(space, text_encoder_dir)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)
    try:
        head.memory = memory = space.kind == "comember"  # the item memory needs train-set co-membership
        outputs = ["embedding", *(MEMORY_OUTPUTS if memory else ())]
        example = st.tokenizer(["a b c", "a longer example sentence"], padding=True, return_tensors="pt")
        with torch.no_grad():
            torch.onnx.export(head, (example["input_ids"], example["attention_mask"]), str(tmp / MODEL_FILE),
                              input_names=["input_ids", "attention_mask"], output_names=outputs,
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "attention_mask": {0: "batch", 1: "seq"},
                                            **{o: {0: "batch"} for o in outputs}},
                              opset_version=OPSET, dynamo=False)
        shutil.copy(text_encoder_dir / "tokenizer.json", tmp / "tokenizer.json")
        info = EncoderInfo(name=space.name, source=text.encoder.source, dim=space.dim,
                           max_seq_len=text.encoder.max_seq_len)
        space_info = {"name": space.name, "kind": space.kind, "distance": space.distance, "dataset": space.dataset,
                      "neighbours": space.neighbours, "text_weight": space.text_weight,
                      "temperature": space.temperature, **space.meta}
        if memory:
            space_info["memory"] = memory_scales(space) | {"weight": memory_weight}
            space_info["memory"]["coef"] = memory_weight * space_info["memory"]["dense_scale"] / \
                space_info["memory"]["memory_scale"]
        manifest = Manifest(kind="encoder", encoder=info, opset=OPSET, inputs=["input_ids", "attention_mask"],
                            outputs=outputs, files=hash_files(tmp), config={"space": space_info},
                            parity=Parity(reference="pending", n_inputs=0, max_abs_error=float("nan"),
                                          min_cosine=float("nan")))
        write_json_atomic(tmp / "manifest.json", manifest.model_dump())
        exported = OnnxEncoder(tmp)
        ours = exported.encode(parity_texts)
        title_emb = OnnxEncoder(text_encoder_dir).encode(parity_texts)
        reference = query_vectors(space, title_emb)
        if memory:  # the memory query must be the one numpy computes: same sets, same weights
            _, sets, weights = exported.encode_memory(parity_texts)
            near, sims = nearest_sets(space, title_emb, n=min(space.neighbours + 1, len(space.set_ids)),
                                      with_sims=True)
            ref_w = neighbour_weights(sims, space.temperature, space.neighbours)
            mem_ours, mem_ref = (np.stack([np.bincount(s, w, len(space.set_ids)) for s, w in zip(a, b)])
                                 for a, b in ((sets, weights), (near[:, :space.neighbours], ref_w)))
            if not np.abs(mem_ours - mem_ref).max() <= PARITY_TOLERANCE:
                raise RuntimeError(f"space encoder memory parity {np.abs(mem_ours - mem_ref).max():.2e}")
        manifest.parity = Parity(reference=f"training.space.query_vectors on {len(parity_texts)} texts",
                                 n_inputs=len(parity_texts),
                                 max_abs_error=float(np.abs(ours - reference).max()),
                                 min_cosine=float((ours * reference).sum(1).min()))
        if not manifest.parity.max_abs_error <= PARITY_TOLERANCE:
            raise RuntimeError(f"space encoder parity {manifest.parity.max_abs_error:.2e} > {PARITY_TOLERANCE:.0e}")
        write_json_atomic(tmp / "manifest.json", manifest.model_dump())
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("space encoder %s exported to %s", space.name, out_dir)
    return manifest
