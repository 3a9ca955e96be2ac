"""Resolver: K fan-out vectors -> one batched store search -> deduplicated, fused items with provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from service.store import Hit, MemoryQuery, Store

Fusion = Literal["union", "rrf"]


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """How the store searches, the same for every vector of a call: a payload filter, the item vectors returned
    with the hits (MMR, explain), exact search instead of HNSW, and HNSW's ef (None = the store's default)."""

    filter: dict | None = None
    with_vectors: bool = False
    exact: bool = False
    hnsw_ef: int | None = None


EXACT = SearchOptions(exact=True)  # what the reports score on


@dataclass(frozen=True, slots=True)
class Provenance:
    """Which fan-out vector found an item, at what 0-based rank in its list, with what score."""

    vector: int
    rank: int
    score: float


@dataclass(frozen=True, slots=True)
class FusedItem:
    """One catalog item after fusion; `found_by` is ordered by fan-out vector index."""

    id: str
    text: str
    payload: dict
    score: float
    found_by: tuple[Provenance, ...]
    vector: np.ndarray | None = None


def _group(results: list[list[Hit]]) -> tuple[dict[str, Hit], dict[str, list[Provenance]]]:
    """First hit and provenance per item id, ids in rank-major round-robin order of first sight."""
    first: dict[str, Hit] = {}
    found: dict[str, list[Provenance]] = {}
    depth = max((len(hits) for hits in results), default=0)
    for rank in range(depth):
        for k, hits in enumerate(results):
            if rank >= len(hits):
                continue
            hit = hits[rank]
            first.setdefault(hit.id, hit)
            finders = found.setdefault(hit.id, [])
            if all(p.vector != k for p in finders):  # a list repeating an id counts once
                finders.append(Provenance(k, rank, hit.score))
    return first, found


def fuse(
    results: list[list[Hit]],
    method: Fusion = "union",
    limit: int | None = None,
    rrf_k: int = 60,
) -> list[FusedItem]:
    """Merge K ranked hit lists into one deduplicated list.

    union: rank-major round robin (every vector's rank-0 hit, then rank-1, ...), so the first
        distinct items are the vectors' top-1s; score = max score over the finders.
    rrf: reciprocal rank fusion (Cormack et al. 2009), score = sum over finders of
        1 / (rrf_k + rank + 1); sorted by score desc, then best rank, then id.

    >>> a, b = Hit("a", 0.9, {"text": "A"}), Hit("b", 0.8, {"text": "B"})
    >>> [f.id for f in fuse([[a, b], [b]])]
    ['a', 'b']
    """
    if method not in ("union", "rrf"):
        raise ValueError(f"fusion must be 'union' or 'rrf', got {method!r}")
    first, found = _group(results)
    if method == "union":
        scores = {i: max(p.score for p in ps) for i, ps in found.items()}
        order = list(found)
    else:
        scores = {i: sum(1.0 / (rrf_k + p.rank + 1) for p in ps) for i, ps in found.items()}
        best_rank = {i: min(p.rank for p in ps) for i, ps in found.items()}
        order = sorted(found, key=lambda i: (-scores[i], best_rank[i], i))
    items = [
        FusedItem(
            id=i,
            text=str(first[i].payload.get("text", "")),
            payload=first[i].payload,
            score=scores[i],
            found_by=tuple(sorted(found[i], key=lambda p: p.vector)),
            vector=first[i].vector,
        )
        for i in order
    ]
    return items if limit is None else items[:limit]


def mmr(query: np.ndarray, candidates: list[Hit], n: int, lam: float = 0.5) -> list[Hit]:
    """Greedy maximal marginal relevance (Carbonell & Goldstein 1998) over hits with vectors.

    Picks argmax lam * sim(q, c) - (1 - lam) * max_{s in selected} sim(c, s), cosine similarity;
    lam = 1 is plain top-n by similarity to the query, smaller lam trades relevance for diversity.
    """
    if not candidates or n <= 0:
        return []
    if any(c.vector is None for c in candidates):
        raise ValueError("mmr needs candidate vectors: search with with_vectors=True")
    cand = np.stack([c.vector for c in candidates]).astype(np.float32)  # (M, D)
    cand /= np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)  # (D,)
    relevance = cand @ q  # (M,)
    pairwise = cand @ cand.T  # (M, M)
    redundancy = np.zeros(len(candidates), dtype=np.float32)  # max sim to the selected set, 0 when empty
    taken = np.zeros(len(candidates), dtype=bool)
    picked: list[int] = []
    for _ in range(min(n, len(candidates))):
        gain = np.where(taken, -np.inf, lam * relevance - (1.0 - lam) * redundancy)
        best = int(np.argmax(gain))  # first index on ties keeps the input order
        picked.append(best)
        taken[best] = True
        redundancy = np.maximum(redundancy, pairwise[best])
    return [candidates[i] for i in picked]


def _as_block(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(K, D) float32 from (K, D), a single (D,) vector, or an empty block."""
    block = np.asarray(vectors, dtype=np.float32)
    if block.size == 0:
        return np.empty((0, dim), dtype=np.float32)
    return block[None] if block.ndim == 1 else block


def _with_payload(item: FusedItem, payload: dict) -> FusedItem:
    """A fused item found by point id, named by its catalog item id and payload."""
    return replace(item, id=str(payload.get("id", item.id)), text=str(payload.get("text", "")), payload=payload)


class Resolver:
    """Turns fan-out vectors into catalog items through one `Store.search_batch` call per request."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def resolve(
        self,
        vectors: np.ndarray,
        limit_per_vector: int,
        fusion: Fusion = "union",
        limit: int | None = None,
        search: SearchOptions = SearchOptions(),
        *,
        fill: bool = False,
    ) -> list[FusedItem]:
        """(K, D) fan-out vectors -> fused items (at most `limit`)."""
        return self.resolve_many([vectors], limit_per_vector, fusion, limit, search, fill=fill)[0]

    def resolve_many(
        self,
        batches: Sequence[np.ndarray],
        limit_per_vector: int,
        fusion: Fusion = "union",
        limit: int | None = None,
        search: SearchOptions = SearchOptions(),
        *,
        fill: bool = False,
    ) -> list[list[FusedItem]]:
        """Many queries' (K_i, D) blocks in ONE store call (without `fill`), fused per query; the filter applies to all.

        fill: fan-outs that overlap can fuse to fewer than `limit` distinct items. Those queries alone are
        searched again, each vector twice as deep, until they reach `limit` items or their vectors have
        been searched `limit` deep (one more store call per doubling; with union fusion the items already
        found keep their places).
        """
        if fusion not in ("union", "rrf"):  # checked before the search, not after it
            raise ValueError(f"fusion must be 'union' or 'rrf', got {fusion!r}")
        blocks = [_as_block(b, self.store.dim) for b in batches]
        if sum(len(b) for b in blocks) == 0:
            return [[] for _ in blocks]
        results = self._search(blocks, limit_per_vector, search)
        depth = limit_per_vector
        while fill and limit is not None and depth < limit:
            short = [i for i, hits in enumerate(results) if hits and len({h.id for hs in hits for h in hs}) < limit]
            if not short:
                break
            depth = min(2 * depth, limit)
            for i, hits in zip(short, self._search([blocks[i] for i in short], depth, search)):
                results[i] = hits
        return self._named([fuse(hits, fusion, limit) for hits in results])

    def resolve_memory_many(
        self,
        vectors: np.ndarray,
        memories: Sequence[MemoryQuery],
        limit: int,
        memory_depth: int,
        search: SearchOptions = SearchOptions(),
    ) -> list[list[FusedItem]]:
        """(B, D) query vectors and their item-memory queries -> each query's `limit` items in ONE store call,
        ranked by q·v + coef·memory (`Store.search_memory_batch`)."""
        results = self.store.search_memory_batch(np.asarray(vectors, np.float32), memories, limit, memory_depth,
                                                 filter=search.filter, with_vectors=search.with_vectors,
                                                 exact=search.exact, hnsw_ef=search.hnsw_ef, with_payload=False)
        return self._named([fuse([hits], "union", limit) for hits in results])

    def _named(self, fused: list[list[FusedItem]]) -> list[list[FusedItem]]:
        """Fused items found by point id, named by their payloads: one payload read for every returned item."""
        payloads = self.store.payloads(list({item.id: None for items in fused for item in items}))
        return [[_with_payload(item, payloads[item.id]) for item in items if item.id in payloads] for items in fused]

    def _search(self, blocks: list[np.ndarray], depth: int, search: SearchOptions) -> list[list[list[Hit]]]:
        """One store call for every block's vectors -> each block's K ranked hit lists."""
        # Hits carry point ids only: payloads are read once, for the fused items that are returned
        # (the K x limit_per_vector hits' payloads cost more than the search itself).
        results = self.store.search_batch(
            np.concatenate(blocks, axis=0), depth, filter=search.filter, with_vectors=search.with_vectors,
            exact=search.exact, hnsw_ef=search.hnsw_ef, with_payload=False,
        )
        bounds = np.cumsum([0, *(len(b) for b in blocks)])
        return [results[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
