"""service/setstats.py: the diversity numbers and the 2-D map the playground shows."""

from __future__ import annotations

import numpy as np
import pytest

from service.setstats import mean_pairwise_distance, project_2d, vendi


def test_vendi_counts_effective_distinct_rows():
    assert vendi(np.tile([[1.0, 2.0, 3.0]], (6, 1))) == pytest.approx(1.0)
    assert vendi(np.eye(5)) == pytest.approx(5.0)
    assert vendi(np.repeat(np.eye(2), 3, axis=0)) == pytest.approx(2.0)  # two groups of three copies


def test_mean_pairwise_distance_spans_identical_to_orthogonal_to_opposite():
    assert mean_pairwise_distance(np.ones((4, 3))) == pytest.approx(0.0)
    assert mean_pairwise_distance(np.eye(4)) == pytest.approx(1.0)
    assert mean_pairwise_distance(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(2.0)
    assert mean_pairwise_distance(np.eye(3)[:1]) == 0.0
    # scale-free: cosine directions only (the co-membership space's norms carry popularity, not topic)
    assert mean_pairwise_distance(np.eye(3) * [[1.0], [5.0], [0.2]]) == pytest.approx(1.0)


def test_projection_keeps_the_distances_of_directions_that_span_a_plane():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 2)))[0].T  # (2, 16) orthonormal
    angles = rng.uniform(0, 2 * np.pi, size=12)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1) @ basis * rng.uniform(0.5, 3.0, size=(12, 1))
    xy = project_2d(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    d_in = np.linalg.norm(unit[:, None] - unit[None], axis=-1)
    d_out = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    assert xy.shape == (12, 2)
    assert np.allclose(d_in, d_out, atol=1e-9)


def test_projection_of_one_point_or_none():
    assert project_2d(np.ones((1, 5))).tolist() == [[0.0, 0.0]]
    assert project_2d(np.zeros((0, 5))).shape == (0, 2)
