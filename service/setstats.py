"""What a returned set looks like: its diversity (Vendi, mean pairwise cosine distance) and a 2-D map of it.

numpy only, so the service computes them without torch; `training.metrics` scores rewards and the
evaluation tables with the same `vendi`, so "diversity" means one thing everywhere.
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def vendi(x: np.ndarray) -> float:
    """Vendi score with a cosine kernel (Friedman & Dieng 2022): exp(entropy of eig(K/n)).

    (n, D) -> value in [1, n]: 1 for n identical rows, n for n orthogonal rows.
    """
    x = unit(x)
    eig = np.linalg.eigvalsh(x @ x.T / len(x))  # (n,)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def mean_pairwise_distance(x: np.ndarray) -> float:
    """1 − mean cosine over the n(n−1)/2 distinct pairs of rows; 0 for fewer than two rows."""
    n = len(x)
    if n < 2:
        return 0.0
    x = unit(x)
    gram = x @ x.T
    return float(1.0 - (gram.sum() - np.trace(gram)) / (n * (n - 1)))


def project_2d(x: np.ndarray) -> np.ndarray:
    """(n, D) -> (n, 2): the rows' cosine directions on their first two principal axes (PCA by SVD)."""
    x = unit(x)
    if len(x) == 0:
        return np.zeros((0, 2))
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((2, x.shape[1]))
    axes[: min(2, len(vt))] = vt[:2]
    return centred @ axes.T
