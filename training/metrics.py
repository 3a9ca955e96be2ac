"""Set-level metrics of the paper (shared/paper.md §2.4, §6): recall, hit, Vendi, groundedness, alignment.

All embeddings are unit vectors in the encoder's space. The same functions score RL rewards and the
evaluation tables, so "diversity" means one thing everywhere.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from service.setstats import vendi  # noqa: F401  (one Vendi for rewards, tables and the service)


def recall(reference: Iterable[str], retrieved: Iterable[str]) -> float:
    """|reference ∩ retrieved| / |reference| (paper Eq. 5). Example: recall({a,b}, [a,c]) = 0.5."""
    ref = set(reference)
    return len(ref & set(retrieved)) / len(ref) if ref else 0.0


def hit(reference: Iterable[str], retrieved: Iterable[str]) -> float:
    """1.0 when at least one reference item was retrieved."""
    return float(bool(set(reference) & set(retrieved)))


def vendi_normalised(x: np.ndarray) -> float:
    """(Vendi - 1) / (n - 1): 0 when all rows coincide, 1 when all are orthogonal."""
    n = len(x)
    # Clamp: eigen-solver round-off can put identical rows a hair below 1.
    return max(0.0, (vendi(x) - 1.0) / (n - 1)) if n > 1 else 0.0


def groundedness(nearest_cosine: np.ndarray) -> float:
    """1 - mean L2 distance from each vector to its nearest catalog item (paper Eq. 3).

    Takes the top-1 cosine of each unit vector; for unit vectors ||v - c|| = sqrt(2 - 2 cos).
    Range [-1, 1]; 1 when every vector sits on an item.
    """
    cos = np.clip(np.asarray(nearest_cosine, dtype=np.float64), -1.0, 1.0)
    return float(1.0 - np.sqrt(2.0 - 2.0 * cos).mean())


def alignment(vectors: np.ndarray, query: np.ndarray) -> float:
    """Mean cosine of the fan-out vectors to the query embedding (paper Eq. 4)."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    return float((v @ q).mean())
