"""`r4t diffusion diagnose`: is the limit in the pairs or in the denoiser?

- `pairs_recall`: resolve kept target sets exactly as R4T-Diffusion's output is resolved (L rows, ceil(N/L)
  results each, fused) and score them against their own train sets, beside the plain intent on the same
  sets. This is the recall a perfect imitation of the pairs would reach on its own training data.
- `query_use`: a denoiser's x0 error on pairs with its query, with the null token, and with the queries
  shuffled across the batch, at fixed noise levels. A denoiser that ignores its query scores the same.
- `fanout_ceiling`: every recorded fan-out of the train sets, resolved as the eval resolves R4T-FOLM's, and the
  expected best of k of them chosen with the label. No rule for "successful" can keep pairs better than the
  best of the samples, so this bounds what more samples per query (the paper's 128) could give.
- `neighbour_transfer`: each held-out set gets the kept target sets of its nearest train intent, resolved the
  same way. A lookup that a denoiser could learn without generalising beyond its neighbours: if the pairs do not
  transfer to the next intent, they carry little that the intent alone predicts.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from training.data import Dataset
from training.evaluate import retrieve_blocks
from training.metrics import recall as set_recall


def pairs_recall(resolver, dataset: Dataset, query: np.ndarray, targets: np.ndarray, set_index: np.ndarray,
                 n: int, sample: int = 400, seed: int = 0) -> dict:
    """Recall@n of `sample` random pairs' target rows and of their plain intents, each on its own train set."""
    train = dataset.split("train")
    idx = np.random.default_rng(seed).choice(len(query), min(sample, len(query)), replace=False)
    refs = [train[set_index[i]].item_ids for i in idx]

    def mean_recall(blocks: list[np.ndarray]) -> float:
        found = retrieve_blocks(resolver, blocks, n)
        return float(np.mean([set_recall(ref, r.items) for r, ref in zip(found, refs)]))

    return {"n": n, "pairs": len(idx), "targets": round(mean_recall(list(targets[idx])), 4),
            "plain_intent": round(mean_recall([query[i][None] for i in idx]), 4)}


def query_use(model, query: np.ndarray, targets: np.ndarray, sigmas=(1.0, 5.0, 20.0, 80.0), sample: int = 1024,
              seed: int = 0) -> dict:
    """{sigma: {with_query, null, shuffled}} x0 MSE on `sample` pairs (in the model's own space, as in training)."""
    import torch

    idx = np.random.default_rng(seed).choice(len(query), min(sample, len(query)), replace=False)
    q = torch.from_numpy(query[idx]).float()
    x = model.to_x0(torch.from_numpy(targets[idx]).float(), q)
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


def expected_best_of(values: np.ndarray, k: int) -> float:
    """E[max] of k values drawn without replacement from `values` (exact: the j-th smallest is the max of a
    k-subset in C(j-1, k-1) of the C(m, k) subsets)."""
    v, m = np.sort(np.asarray(values, dtype=float)), len(values)
    if k >= m:
        return float(v[-1])
    weights = np.array([math.comb(j - 1, k - 1) for j in range(1, m + 1)], dtype=float) / math.comb(m, k)
    return float(weights @ v)


def fanout_ceiling(resolver, encoder, dataset: Dataset, lm, samples: int, n: int, max_sets: int = 0,
                   chunk: int = 64, seed: int = 0) -> dict:
    """Recall@n on the train sets of the plain intent and of each of `samples` recorded fan-outs per intent
    (`lm`: a `RecordedLM`), and the expected best of k parsed fan-outs, k = 1, 2, 4, ... up to `samples`."""
    sets = dataset.split("train")
    sets = sets[:max_sets] if max_sets else sets
    plain, per_set = [], []  # per_set: the recalls of one set's fan-outs that have sub-queries
    for lo in tqdm(range(0, len(sets), chunk), desc=f"fan-outs of {dataset.name} train", unit="chunk"):
        part = sets[lo : lo + chunk]
        intents = [s.intent for s in part]
        found = retrieve_blocks(resolver, [v[None] for v in encoder.encode(intents)], n)
        plain += [set_recall(s.item_ids, r.items) for s, r in zip(part, found)]
        groups = lm.sample(intents, samples, seed=seed)
        owned = [(j, f.queries) for j, g in enumerate(groups) for f in g if f.queries]
        mine: list[list[float]] = [[] for _ in part]
        if owned:
            vectors = encoder.encode([q for _, qs in owned for q in qs])
            bounds = np.cumsum([0, *(len(qs) for _, qs in owned)])
            blocks = [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            for (j, _), r in zip(owned, retrieve_blocks(resolver, blocks, n)):
                mine[j].append(set_recall(part[j].item_ids, r.items))
        per_set += mine
    plain_arr = np.array(plain)
    have = np.array([bool(r) for r in per_set])
    best = np.array([max(r) if r else 0.0 for r in per_set])
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= samples]
    return {"n": n, "sets": len(sets), "samples": samples, "sets_with_a_parsed_fanout": int(have.sum()),
            "parsed_fanouts": int(sum(map(len, per_set))),
            "plain_intent": round(float(plain_arr.mean()), 4),
            "plain_intent_on_sets_with_fanouts": round(float(plain_arr[have].mean()), 4),
            "mean_parsed_fanout": round(float(np.mean([x for r in per_set for x in r])), 4),
            "best_of_k_parsed": {k: round(float(np.mean([expected_best_of(r, k) for r in per_set if r])), 4)
                                 for k in ks},
            "share_best_beats_plain": round(float((best[have] > plain_arr[have]).mean()), 4)}


def neighbour_transfer(resolver, encoder, dataset: Dataset, query: np.ndarray, targets: np.ndarray, n: int,
                       split: str = "val", max_sets: int = 100, seed: int = 0) -> dict:
    """Recall@n on the first `max_sets` sets of `split` of the target sets kept for the nearest train intent
    (cosine of the intent embeddings; the mean over that intent's pairs), beside the plain intent.

    Three lookups: the targets as they are; moved by the intents' difference (rows - z_train + z_new,
    renormalised: what a `relative` denoiser carries over); and, as the control, a random train intent's
    targets moved the same way. Where the control matches the nearest intent's, the pairs carry nothing
    specific to their intent beyond staying near it.
    """
    sets = dataset.split(split)
    sets = sets[:max_sets] if max_sets else sets
    keys, owner = np.unique(query.round(6), axis=0, return_inverse=True)  # one row per train intent
    owner = owner.reshape(-1)
    vecs = encoder.encode([s.intent for s in sets])
    nearest = (vecs @ keys.T).argmax(axis=1)
    other = np.random.default_rng(seed).integers(0, len(keys), len(sets))

    def lookup(chosen: np.ndarray, moved: bool) -> float:
        picked = [(i, p) for i, key in enumerate(chosen) for p in np.flatnonzero(owner == key)]
        blocks = [targets[p] - query[p] + vecs[i] if moved else targets[p] for i, p in picked]
        blocks = [b / np.linalg.norm(b, axis=1, keepdims=True) for b in blocks]
        per_set: list[list[float]] = [[] for _ in sets]
        for (i, _), r in zip(picked, retrieve_blocks(resolver, blocks, n)):
            per_set[i].append(set_recall(sets[i].item_ids, r.items))
        return round(float(np.mean([np.mean(r) for r in per_set])), 4)

    plain = [set_recall(s.item_ids, r.items) for s, r in zip(sets, retrieve_blocks(resolver, [v[None] for v in vecs], n))]
    return {"n": n, "split": split, "sets": len(sets),
            "mean_cosine_to_nearest": round(float((vecs * keys[nearest]).sum(axis=1).mean()), 4),
            "neighbour_targets": lookup(nearest, moved=False),
            "neighbour_offsets": lookup(nearest, moved=True),
            "random_intent_offsets": lookup(other, moved=True),
            "plain_intent": round(float(np.mean(plain)), 4)}
