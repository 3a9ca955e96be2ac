"""The quality reports' exact in-memory index returns what the served Qdrant Edge index returns by exact search,
and its numpy union fusion is the resolver's union + fill, list for list."""

from __future__ import annotations

import numpy as np
import pytest

from service.resolver import EXACT, Resolver
from service.store import EdgeStore, point_id
from training.evaluate import retrieve_blocks
from training.exact import ExactStore

D, N = 16, 2_000


@pytest.fixture(scope="module", params=["cosine", "dot"])
def stores(request, tmp_path_factory):
    rng = np.random.default_rng(0)
    vectors = (rng.normal(size=(N, D)) * rng.uniform(0.5, 2.0, size=(N, 1))).astype(np.float32)
    ids = [f"item-{i}" for i in range(N)]
    payloads = [{"text": f"text {i}", "group": i % 7} for i in range(N)]
    edge = EdgeStore.create(tmp_path_factory.mktemp("edge") / "shard", D, distance=request.param)
    edge.upsert(ids, vectors, payloads)
    edge.optimize()
    yield edge, ExactStore.copy_of(edge, ids, request.param, chunk=700)
    edge.close()


def test_copy_holds_every_vector_and_payload(stores):
    edge, exact = stores
    assert exact.count() == edge.count() == N
    np.testing.assert_allclose(exact.fetch_vectors(["item-3", "item-1999"]), edge.fetch_vectors(["item-3", "item-1999"]),
                               rtol=1e-6)
    assert exact.payloads([point_id("item-42")]) == {point_id("item-42"): {"text": "text 42", "group": 0, "id": "item-42"}}


def test_search_matches_edge_exact_search(stores):
    edge, exact = stores
    queries = np.random.default_rng(1).normal(size=(20, D)).astype(np.float32)
    for a, b in zip(edge.search_batch(queries, 50, exact=True), exact.search_batch(queries, 50)):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4, atol=1e-4)


def test_numpy_union_is_the_resolvers_union_with_fill(stores):
    edge, exact = stores
    rng = np.random.default_rng(2)
    centre = rng.normal(size=(1, D))
    # Rows close to one another overlap heavily, so `fill` must search deeper than ceil(n / K).
    blocks = [(centre + s * rng.normal(size=(k, D))).astype(np.float32) for s, k in ((0.05, 10), (1.0, 10), (0.3, 4))]
    n = 300
    fast = retrieve_blocks(Resolver(exact), blocks, n)
    for name, store in (("edge exact", edge), ("exact via resolver", exact)):
        per_vector = max(-(-n // len(b)) for b in blocks)
        slow = Resolver(store).resolve_many(blocks, per_vector, "union", n, EXACT, fill=True)
        for f, s in zip(fast, slow):
            assert f.items == [it.id for it in s], name
            reps = list(dict.fromkeys(next(it.id for it in s for p in it.found_by if p.vector == v and p.rank == 0)
                                      for v in range(len(f.vectors))))
            assert f.representatives == reps, name
    assert all(len(f.items) == n for f in fast)


def test_exact_refuses_filters_and_writes(stores):
    _, exact = stores
    with pytest.raises(ValueError, match="filters"):
        exact.search_batch(np.zeros((1, D), np.float32), 5, filter={"must": []})
    with pytest.raises(NotImplementedError):
        exact.upsert(["x"], np.zeros((1, D), np.float32), [{}])
