"""`r4t diffusion diagnose`: is the limit in the pairs or in the denoiser?

- `pairs_recall`: resolve kept target sets exactly as R4T-Diffusion's output is resolved (L rows, ceil(N/L)
  results each, fused) and score them against their own train sets, beside the plain intent on the same
  sets. This is the recall a perfect imitation of the pairs would reach on its own training data.
- `query_use`: a denoiser's x0 error on pairs with its query, with the null token, and with the queries
  shuffled across the batch, at fixed noise levels. A denoiser that ignores its query scores the same.
"""

from __future__ import annotations

import math

import numpy as np

from training.data import Dataset
from training.evaluate import retrieve_blocks


def pairs_recall(resolver, dataset: Dataset, query: np.ndarray, targets: np.ndarray, set_index: np.ndarray,
                 n: int, sample: int = 400, seed: int = 0) -> dict:
    """Recall@n of `sample` random pairs' target rows and of their plain intents, each on its own train set."""
    train = dataset.split("train")
    idx = np.random.default_rng(seed).choice(len(query), min(sample, len(query)), replace=False)
    refs = [train[set_index[i]].item_ids for i in idx]

    def recall(blocks: list[np.ndarray]) -> float:
        found = retrieve_blocks(resolver, blocks, n)
        return float(np.mean([len(set(r.items) & set(ref)) / len(ref) for r, ref in zip(found, refs)]))

    return {"n": n, "pairs": len(idx), "targets": round(recall(list(targets[idx])), 4),
            "plain_intent": round(recall([query[i][None] for i in idx]), 4)}


def query_use(model, query: np.ndarray, targets: np.ndarray, sigmas=(1.0, 5.0, 20.0, 80.0), sample: int = 1024,
              seed: int = 0) -> dict:
    """{sigma: {with_query, null, shuffled}} x0 MSE on `sample` pairs (rows scaled by sqrt(d), as in training)."""
    import torch

    idx = np.random.default_rng(seed).choice(len(query), min(sample, len(query)), replace=False)
    x = torch.from_numpy(targets[idx]).float() * math.sqrt(targets.shape[-1])
    q = torch.from_numpy(query[idx]).float()
    b = len(x)
    on, off = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    shuffled = q[torch.randperm(b, generator=torch.Generator().manual_seed(seed + 1))]
    out = {}
    with torch.no_grad():
        for sigma in sigmas:
            noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
            s = torch.full((b,), float(sigma))
            out[str(sigma)] = {name: round(float(((model(noisy, s, qv, keep) - x) ** 2).mean()), 4)
                               for name, qv, keep in [("with_query", q, on), ("null", q, off),
                                                      ("shuffled", shuffled, on)]}
    return out
