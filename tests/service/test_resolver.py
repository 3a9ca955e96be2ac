"""Tests for service/resolver.py: fusion order, RRF arithmetic, provenance, MMR, batching."""

from __future__ import annotations

import numpy as np
import pytest

from service.resolver import EXACT, FusedItem, Provenance, Resolver, SearchOptions, fuse, mmr
from service.store import EdgeStore, Hit, ServerStore, point_id

D = 384


def hit(item_id: str, score: float, vector=None) -> Hit:
    return Hit(item_id, score, {"id": item_id, "text": f"text of {item_id}"}, vector)


# Three fan-out vectors; "b" and "c" are found twice, "a" only by vector 0.
RESULTS = [
    [hit("a", 0.9), hit("b", 0.8), hit("c", 0.7)],
    [hit("b", 0.95), hit("d", 0.6)],
    [hit("e", 0.5), hit("c", 0.85)],
]


def test_union_is_rank_major_round_robin_and_dedupes():
    fused = fuse(RESULTS)
    # rank 0: a, b, e; rank 1: b (dup), d, c; rank 2: c (dup)
    assert [f.id for f in fused] == ["a", "b", "e", "d", "c"]
    assert [f.score for f in fused] == [0.9, 0.95, 0.5, 0.6, 0.85]  # max over finders


def test_union_first_k_items_are_the_top1s():
    fused = fuse(RESULTS)
    assert [f.id for f in fused[:3]] == [r[0].id for r in RESULTS]


def test_provenance_records_every_finder():
    by_id = {f.id: f for f in fuse(RESULTS)}
    assert by_id["b"].found_by == (Provenance(0, 1, 0.8), Provenance(1, 0, 0.95))
    assert by_id["c"].found_by == (Provenance(0, 2, 0.7), Provenance(2, 1, 0.85))
    assert by_id["a"].found_by == (Provenance(0, 0, 0.9),)
    assert by_id["a"].text == "text of a" and by_id["a"].payload["id"] == "a"


def test_rrf_scores_by_hand():
    fused = fuse(RESULTS, method="rrf", rrf_k=60)
    scores = {f.id: f.score for f in fused}
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 62)
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["e"] == pytest.approx(1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)
    # a and e tie on score and best rank: the id breaks the tie.
    assert [f.id for f in fused] == ["b", "c", "a", "e", "d"]


def test_limit_and_unknown_method():
    assert [f.id for f in fuse(RESULTS, limit=2)] == ["a", "b"]
    assert fuse([]) == [] and fuse([[], []]) == []
    with pytest.raises(ValueError, match="fusion"):
        fuse(RESULTS, method="max")


def test_a_list_repeating_an_id_counts_once():
    [item] = fuse([[hit("a", 0.9), hit("a", 0.8)]], method="rrf")
    assert item.found_by == (Provenance(0, 0, 0.9),)


def test_fused_item_keeps_the_vector():
    v = np.ones(D, np.float32)
    [item] = fuse([[hit("a", 1.0, v)]])
    assert isinstance(item, FusedItem) and item.vector is v


def test_mmr_with_lambda_one_is_plain_top_n():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    q = rng.standard_normal(8).astype(np.float32)
    cands = [hit(str(i), 0.0, v) for i, v in enumerate(vectors)]
    sims = vectors @ q / np.linalg.norm(vectors, axis=1)
    expected = [str(i) for i in np.argsort(-sims)[:5]]
    assert [h.id for h in mmr(q, cands, n=5, lam=1.0)] == expected


def test_mmr_picks_a_diverse_item_in_2d():
    q = np.array([1.0, 0.0], np.float32)
    near = hit("near", 0.0, np.array([1.0, 0.05], np.float32))
    near_twin = hit("twin", 0.0, np.array([1.0, 0.06], np.float32))
    other = hit("other", 0.0, np.array([0.7, -0.7], np.float32))
    cands = [near, near_twin, other]
    assert [h.id for h in mmr(q, cands, n=2, lam=1.0)] == ["near", "twin"]
    assert [h.id for h in mmr(q, cands, n=2, lam=0.5)] == ["near", "other"]
    assert [h.id for h in mmr(q, cands, n=10)] == ["near", "other", "twin"]


def test_mmr_needs_vectors():
    with pytest.raises(ValueError, match="with_vectors"):
        mmr(np.ones(2), [hit("a", 1.0)], n=1)
    assert mmr(np.ones(2), [], n=3) == []


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1_000, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, D)
    ids = [f"spotify:track:{i}" for i in range(1_000)]
    return ids, vectors, [{"text": f"song {i}", "decade": 1960 + 10 * (i % 6)} for i in range(1_000)]


@pytest.fixture(scope="module", params=["edge", "server"])
def store(request, catalog, tmp_path_factory):
    if request.param == "edge":
        s = EdgeStore.create(tmp_path_factory.mktemp("edge") / "shard", D)
    else:
        s = ServerStore(":memory:", "catalog", dim=D, create=True)
    s.upsert(*catalog)
    if request.param == "edge":
        s.optimize()
    yield s
    s.close()


class CountingStore:
    """Wraps a store and counts search_batch calls, to check batching."""

    def __init__(self, inner):
        self.inner, self.dim, self.calls = inner, inner.dim, 0

    def search_batch(self, vectors, limit, **kw):
        self.calls += 1
        return self.inner.search_batch(vectors, limit, **kw)

    def payloads(self, point_ids):
        return self.inner.payloads(point_ids)


def test_resolve_top1s_are_the_fan_out_targets(store, catalog):
    ids, vectors, _ = catalog
    picks = [3, 500, 999]
    items = Resolver(store).resolve(vectors[picks], limit_per_vector=5, search=EXACT)
    assert [f.id for f in items[:3]] == [ids[i] for i in picks]
    assert [f.found_by[0].vector for f in items[:3]] == [0, 1, 2]
    assert len({f.id for f in items}) == len(items) <= 15


def test_resolver_reads_payloads_only_for_the_items_it_returns(store, catalog):
    ids, vectors, _ = catalog
    bare = store.search_batch(vectors[:2], limit=4, exact=True, with_payload=False)
    assert all(h.payload == {} and h.id == point_id(ids[i]) for i, hits in enumerate(bare) for h in hits[:1])
    full = store.search_batch(vectors[:2], limit=4, exact=True)
    assert store.payloads([h.id for h in bare[1]]) == {h.id: f.payload for h, f in zip(bare[1], full[1])}
    read = []
    counting = CountingStore(store)
    counting.payloads = lambda pids: read.append(list(pids)) or store.payloads(pids)
    items = Resolver(counting).resolve(vectors[:2], limit_per_vector=4, limit=3, search=EXACT)
    assert len(read) == 1 and len(read[0]) == 3  # not the 8 hits'
    expected = fuse(full, limit=3)
    assert [(f.id, f.text, f.payload, f.score, f.found_by) for f in items] == [
        (f.id, f.text, f.payload, f.score, f.found_by) for f in expected
    ]


def test_a_filter_that_excludes_everything_resolves_to_nothing(store, catalog):
    _, vectors, _ = catalog
    nothing = {"must": [{"key": "decade", "match": {"value": 1}}]}
    assert Resolver(store).resolve(vectors[:3], limit_per_vector=5, search=SearchOptions(nothing, exact=True)) == []


def test_resolve_many_equals_per_query_resolve_in_one_call(store, catalog):
    _, vectors, _ = catalog
    rng = np.random.default_rng(1)
    blocks = [vectors[rng.choice(1_000, k, replace=False)] for k in (3, 1, 5)]
    blocks.append(np.zeros((0, D), np.float32))  # a query with no fan-out vectors
    counting = CountingStore(store)
    flt = {"must_not": [{"key": "decade", "match": {"value": 1990}}]}
    many = Resolver(counting).resolve_many(blocks, 10, fusion="rrf", limit=12, search=SearchOptions(flt, exact=True))
    assert counting.calls == 1
    single = [Resolver(store).resolve(b, 10, fusion="rrf", limit=12, search=SearchOptions(flt, exact=True))
              for b in blocks]
    assert [[(f.id, f.score, f.found_by) for f in r] for r in many] == [
        [(f.id, f.score, f.found_by) for f in r] for r in single
    ]
    assert many[-1] == [] and all(f.payload["decade"] != 1990 for r in many for f in r)


def test_fill_searches_overlapping_fan_outs_deeper_until_limit_items(store, catalog):
    _, vectors, _ = catalog
    same = np.repeat(vectors[:1], 4, axis=0)  # four copies of one vector: 3 deep each fuses to 3 items
    spread = vectors[[1, 200, 400, 600]]  # four far-apart vectors: 3 deep each already gives 12 items
    counting = CountingStore(store)
    plain = Resolver(counting).resolve_many([same, spread], 3, limit=10, search=EXACT)
    assert [len(r) for r in plain] == [3, 10] and counting.calls == 1
    filled = Resolver(counting).resolve_many([same, spread], 3, limit=10, search=EXACT, fill=True)
    assert [len(r) for r in filled] == [10, 10]
    assert counting.calls == 1 + 3  # then depths 6 and 10, for the short query alone
    assert [f.id for f in filled[0][:3]] == [f.id for f in plain[0]]  # union keeps the items already found
    assert [f.id for f in filled[1]] == [f.id for f in plain[1]]  # the full query was not searched again
    exact = Resolver(store).resolve(vectors[:1], 10, limit=10, search=EXACT)
    assert [f.id for f in filled[0]] == [f.id for f in exact]


def test_fill_stops_at_limit_deep_when_a_filter_leaves_fewer_items(store, catalog):
    _, vectors, _ = catalog
    only_1990 = {"must": [{"key": "decade", "match": {"value": 1990}}]}
    n_1990 = len(Resolver(store).resolve(vectors[:1], 1_000, search=SearchOptions(only_1990, exact=True)))
    items = Resolver(store).resolve(np.repeat(vectors[:1], 3, axis=0), 2, limit=n_1990 + 5,
                                    search=SearchOptions(only_1990, exact=True), fill=True)
    assert len(items) == n_1990


def test_resolve_with_vectors_feeds_mmr(store, catalog):
    _, vectors, _ = catalog
    items = Resolver(store).resolve(vectors[:2], limit_per_vector=10, search=SearchOptions(with_vectors=True))
    assert all(f.vector is not None and f.vector.shape == (D,) for f in items)
    hits = [Hit(f.id, f.score, f.payload, f.vector) for f in items]
    assert len(mmr(vectors[0], hits, n=5)) == 5


def test_resolve_rejects_unknown_fusion_before_searching(store):
    counting = CountingStore(store)
    with pytest.raises(ValueError, match="fusion"):
        Resolver(counting).resolve(np.ones((1, D), np.float32), 5, fusion="max")
    assert counting.calls == 0
