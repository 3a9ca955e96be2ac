"""Metrics on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def test_vendi_identical_is_one_orthogonal_is_n():
    assert metrics.vendi(np.tile([[1.0, 2.0, 3.0]], (6, 1))) == pytest.approx(1.0)
    assert metrics.vendi(np.eye(5)) == pytest.approx(5.0)
    assert metrics.vendi_normalised(np.eye(5)) == pytest.approx(1.0)
    assert metrics.vendi_normalised(np.ones((4, 3))) == pytest.approx(0.0)


def test_vendi_two_clusters():
    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)  # two orthogonal groups of three
    assert metrics.vendi(x) == pytest.approx(2.0)


def test_recall_and_hit():
    assert metrics.recall(["a", "b", "c", "d"], ["a", "x", "c"]) == 0.5
    assert metrics.hit(["a"], ["b"]) == 0.0 and metrics.hit(["a"], ["b", "a"]) == 1.0
    assert metrics.recall([], ["a"]) == 0.0


def test_groundedness_and_alignment():
    assert metrics.groundedness(np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert metrics.groundedness(np.array([0.0])) == pytest.approx(1.0 - np.sqrt(2.0))
    q = np.array([1.0, 0.0])
    v = np.array([[1.0, 0.0], [0.0, 3.0]])  # cos 1 and 0
    assert metrics.alignment(v, q) == pytest.approx(0.5)
