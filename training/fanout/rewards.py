"""Set-level rewards of a fan-out, scored through the frozen retriever that also serves (paper §2.4).

One `RewardModel.score` call embeds every sub-query of a batch through the exported ONNX encoder and
searches the index once (`Store.search_batch`). Per fan-out Q = (q_1..q_m) of broad query q:
- groundedness  1 - mean_i ||e(q_i) - e(c_i*)||, c_i* the top-1 item of q_i (Eq. 3)
- diversity     (Vendi of the top-1 items - 1) / (K - 1), in [0, 1]; dividing by K, not m, means a
                short list cannot look as diverse as a full one (Eq. 2)
- alignment     mean_i cos(e(q_i), e(q)) (Eq. 4)
- recall        |reference ∩ union of the top-`depth` items of every q_i| / |reference| (Eq. 5, WSCR)
- format        1 when the completion held no JSON list of strings
- shortfall     (K - m) / K, m the number of distinct sub-queries other than q itself
OAR total = w_g·groundedness + w_d·diversity + w_a·alignment - penalties; WSCR total = recall -
penalties. An echo list (K copies of q) parses to m = 0 and so scores -shortfall_penalty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

from service.encoder import OnnxEncoder
from service.resolver import Resolver
from training import metrics
from service.parse import Fanout

Task = Literal["oar", "wscr"]
TERMS = ("groundedness", "diversity", "alignment", "recall", "format", "shortfall")


@dataclass(frozen=True)
class RewardConfig:
    task: Task = "wscr"
    k: int = 10  # fan-out width K
    depth: int = 50  # items per sub-query in the WSCR union (K × depth = the eval's N)
    w_ground: float = 0.6
    w_div: float = 0.2
    w_align: float = 0.2
    format_penalty: float = 0.5  # subtracted when the completion is malformed
    shortfall_penalty: float = 0.5  # × (K - m) / K

    def __post_init__(self):
        if self.task not in ("oar", "wscr"):
            raise ValueError(f"task must be 'oar' or 'wscr', got {self.task!r}")
        if self.k < 2 or self.depth < 1:
            raise ValueError("k must be >= 2 and depth >= 1")

    def weights(self) -> dict[str, float]:
        """Weight of each term in the total; zero-weight terms are still logged."""
        task = ({"groundedness": self.w_ground, "diversity": self.w_div, "alignment": self.w_align, "recall": 0.0}
                if self.task == "oar" else {"groundedness": 0.0, "diversity": 0.0, "alignment": 0.0, "recall": 1.0})
        return {**task, "format": -self.format_penalty, "shortfall": -self.shortfall_penalty}


@dataclass(frozen=True)
class Reward:
    total: float
    groundedness: float
    diversity: float
    alignment: float
    recall: float
    format: float
    shortfall: float
    n_queries: int

    def as_dict(self) -> dict:
        return asdict(self)


class RewardModel:
    """Scores fan-outs; the encoder and resolver are the online ones, frozen."""

    def __init__(self, encoder: OnnxEncoder, resolver: Resolver, cfg: RewardConfig):
        self.encoder, self.resolver, self.cfg = encoder, resolver, cfg

    def score(self, queries: Sequence[str], fanouts: Sequence[Fanout],
              references: Sequence[Sequence[str]] | None = None) -> list[Reward]:
        """One reward per (broad query, fan-out[, reference item ids]); one encode and one search call."""
        if len(queries) != len(fanouts) or (references is not None and len(references) != len(queries)):
            raise ValueError("queries, fanouts and references must have one entry each")
        if self.cfg.task == "wscr" and references is None:
            raise ValueError("the WSCR reward needs the reference item ids")
        subs = [list(f.queries[: self.cfg.k]) for f in fanouts]
        flat = [s for group in subs for s in group]
        vectors = self.encoder.encode(list(queries) + flat)  # (B + total m, D)
        qv, sv = vectors[: len(queries)], vectors[len(queries):]
        hits = self.resolver.store.search_batch(sv, limit=self.cfg.depth) if flat else []
        top1 = [h[0].id for h in hits if h]
        item_vecs = dict(zip(top1, self.resolver.store.fetch_vectors(top1))) if top1 else {}
        out, lo = [], 0
        for i, group in enumerate(subs):
            m = len(group)
            block, block_hits = sv[lo : lo + m], hits[lo : lo + m]
            lo += m
            ref = references[i] if references is not None else ()
            out.append(self._one(qv[i], block, block_hits, item_vecs, ref, fanouts[i].ok))
        return out

    def _one(self, q: np.ndarray, vecs: np.ndarray, hits: list, item_vecs: dict, reference: Sequence[str],
             ok: bool) -> Reward:
        cfg, m = self.cfg, len(vecs)
        terms = dict.fromkeys(TERMS, 0.0)
        terms["format"] = 0.0 if ok else 1.0
        terms["shortfall"] = (cfg.k - m) / cfg.k
        if m:
            nearest = np.array([h[0].score if h else -1.0 for h in hits])
            terms["groundedness"] = metrics.groundedness(nearest)
            terms["alignment"] = metrics.alignment(vecs, q)
            reps = np.stack([item_vecs[h[0].id] for h in hits if h]) if any(hits) else np.empty((0, len(q)))
            if len(reps) > 1:
                terms["diversity"] = min(1.0, max(0.0, (metrics.vendi(reps) - 1.0) / (cfg.k - 1)))
            if reference:
                terms["recall"] = metrics.recall(reference, {h.id for hs in hits for h in hs})
        total = sum(w * terms[t] for t, w in cfg.weights().items())
        return Reward(total=float(total), n_queries=m, **{t: float(v) for t, v in terms.items()})
