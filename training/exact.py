"""An exact, in-memory copy of an index for the quality reports: the same vectors, payloads and distance as the
served store, scored by brute force in numpy (float32 matmul + argpartition).

Why: the report's 10-row strategies search every row up to N = 5000 deep on every held-out set, several runs
each; through the HNSW index that costs ~1 s per query on 2 cores, through one matmul per chunk ~10 ms. An
exact search is also the ground truth the served (int8 + HNSW) index approximates, so a row that wins here
is not an artefact of the ANN; `r4t space export` checks the served graph on the served index itself.
Filters are not supported (no report uses them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.store import Hit, Store, point_id

_ROWS = 256  # query rows per matmul: bounds the (rows, N) score block to ~200 MB on MPD


def rank_major_union(ranked: np.ndarray, n: int) -> np.ndarray:
    """(K, depth) row-wise ranked item indices -> the first n distinct of every row's rank 0, then every row's
    rank 1, ... (the resolver's "union" fusion, in numpy)."""
    flat = ranked.T.ravel()
    _, first = np.unique(flat, return_index=True)
    return flat[np.sort(first)[:n]]


class ExactStore:
    """Implements the `Store` protocol's read side over (N, D) float32 vectors (no item memory)."""

    memory = False

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict], distance: str):
        if distance not in ("cosine", "dot"):
            raise ValueError(f"distance must be 'cosine' or 'dot', got {distance!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if distance == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.ids, self.vectors, self.distance, self.dim = list(ids), vectors, distance, vectors.shape[1]
        self.pids = [point_id(i) for i in self.ids]
        self._payloads = {pid: {**p, "id": i} for pid, i, p in zip(self.pids, self.ids, payloads)}
        self._row = {i: r for r, i in enumerate(self.ids)}

    @classmethod
    def copy_of(cls, store: Store, ids: Sequence[str], distance: str, chunk: int = 10_000) -> ExactStore:
        """Every listed item's vector and payload, read from `store` in chunks."""
        ids = list(ids)
        vectors = np.concatenate([store.fetch_vectors(ids[lo:lo + chunk]) for lo in range(0, len(ids), chunk)])
        payloads: dict[str, dict] = {}
        for lo in range(0, len(ids), chunk):
            payloads |= store.payloads([point_id(i) for i in ids[lo:lo + chunk]])
        return cls(ids, vectors, [payloads[point_id(i)] for i in ids], distance)

    def top(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) queries -> (n, k) row indices and scores, best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"vectors must be (n, {self.dim}), got {queries.shape}")
        if self.distance == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        k = min(k, len(self.ids))
        rows, vals = [], []
        for lo in range(0, len(queries), _ROWS):
            scores = queries[lo:lo + _ROWS] @ self.vectors.T  # (rows, N)
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
                np.tile(np.arange(scores.shape[1]), (len(scores), 1))
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            rows.append(np.take_along_axis(top, order, axis=1))
            vals.append(np.take_along_axis(top_scores, order, axis=1))
        return np.concatenate(rows), np.concatenate(vals)

    def union_many(self, blocks: Sequence[np.ndarray], n: int) -> list[tuple[list[str], np.ndarray, list[str]]]:
        """What `Resolver.resolve_many(blocks, ceil(n / K), "union", n, fill=True)` returns, in numpy.

        Rank-major union of every row searched n deep, cut at n distinct items: the doubling `fill` reaches the
        same list (each doubling keeps the earlier ranks' order), without K x n Hit objects per query.
        Returns, per block: the fused item ids, each row's top-1 score, each row's top-1 item id.
        """
        flat = np.concatenate([np.asarray(b, dtype=np.float32) for b in blocks])
        rows, vals = self.top(flat, n)
        out, lo = [], 0
        for block in blocks:
            r, v = rows[lo:lo + len(block)], vals[lo:lo + len(block)]
            lo += len(block)
            fused = rank_major_union(r, n)
            out.append(([self.ids[i] for i in fused], v[:, 0].copy(), [self.ids[i] for i in r[:, 0]]))
        return out

    def search_batch(self, vectors: np.ndarray, limit: int, filter: dict | None = None, with_vectors: bool = False,
                     exact: bool = True, hnsw_ef: int | None = None, with_payload: bool = True) -> list[list[Hit]]:
        if filter:
            raise ValueError("ExactStore does not support filters")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"vectors must be (n, {self.dim}), got {queries.shape}")
        rows, vals = self.top(queries, limit)
        return [[self._hit(int(r), float(v), with_payload, with_vectors) for r, v in zip(rs, vs)]
                for rs, vs in zip(rows, vals)]

    def _hit(self, row: int, score: float, with_payload: bool, with_vectors: bool) -> Hit:
        pid = self.pids[row]
        payload = self._payloads[pid] if with_payload else {}
        return Hit(self.ids[row] if with_payload else pid, score, payload,
                   self.vectors[row] if with_vectors else None)

    def payloads(self, point_ids: Sequence[str]) -> dict[str, dict]:
        return {pid: self._payloads[pid] for pid in point_ids if pid in self._payloads}

    def payload_index(self) -> dict[str, str]:
        return {}  # filters are not supported

    def fetch_vectors(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the store, e.g. {missing[:3]}")
        return self.vectors[[self._row[i] for i in ids]].reshape(len(ids), self.dim)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict], memory=None) -> None:
        raise NotImplementedError("ExactStore is a read-only copy")

    def count(self) -> int:
        return len(self.ids)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
