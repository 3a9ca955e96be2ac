"""Tests for service/store.py: both backends on the same real vectors must agree."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from service.store import (
    EdgeStore,
    HnswSettings,
    InvalidFilter,
    ServerStore,
    Store,
    StoreUnavailable,
    open_store,
    parse_filter,
    point_id,
)

# qdrant-client checks the server version in a background thread; its warning lands in any test.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

N, D = 3_000, 384  # the brief's size: small enough for CI, big enough for a real HNSW graph
ARTISTS = ["Drake", "Adele", "Muse", "Björk", "Burial"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_catalog(n: int = N, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((n, D)))  # (N, D)
    ids = [f"spotify:track:{i:05d}" if i % 2 else f"{i}_{i % 7}" for i in range(n)]
    payloads = [
        {
            "text": f"song {i} by {ARTISTS[i % 5]}",
            "artist": ARTISTS[i % 5],
            "year": 1980 + i % 40,
            "released": f"{1980 + i % 40}-06-01T00:00:00Z",
        }
        for i in range(n)
    ]
    return ids, vectors, payloads


def queries(vectors: np.ndarray, seed: int = 1) -> np.ndarray:
    """Catalog vectors plus noise, so each query has a clear true neighbourhood."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), 20, replace=False)
    return unit(vectors[picks] + 0.05 * rng.standard_normal((20, D)))  # (20, D)


@pytest.fixture(scope="module")
def catalog():
    return make_catalog()


@pytest.fixture(scope="module")
def edge(catalog, tmp_path_factory):
    # full_scan_threshold=10 KB: forces graph search even for filtered queries on a 3k set.
    store = EdgeStore.create(tmp_path_factory.mktemp("edge") / "shard", D, HnswSettings(full_scan_threshold=10))
    # Two indexed fields, the rest not: filters run on both of Edge's filtered-search paths.
    store.index_payload("artist", "keyword")
    store.index_payload("year", "integer")
    store.upsert(*catalog)
    store.optimize()
    yield store
    store.close()


@pytest.fixture(scope="module")
def server(catalog):
    store = ServerStore(":memory:", "catalog", dim=D, create=True)
    store.upsert(*catalog)
    yield store
    store.close()


@pytest.fixture(params=["edge", "server"])
def store(request) -> Store:
    return request.getfixturevalue(request.param)


def ids_of(results) -> list[list[str]]:
    return [[h.id for h in hits] for hits in results]


def test_point_id_is_a_stable_uuid():
    assert point_id("spotify:track:abc") == point_id("spotify:track:abc")
    assert point_id("123_4") != point_id("123_5")
    assert uuid.UUID(point_id("123_4")).version == 5


def test_both_backends_satisfy_the_protocol(edge, server):
    assert isinstance(edge, Store) and isinstance(server, Store)
    assert edge.dim == server.dim == D


def test_upsert_count_fetch_round_trip(store, catalog):
    ids, vectors, _ = catalog
    assert store.count() == N
    picks = [17, 0, 2_999, 17]
    got = store.fetch_vectors([ids[i] for i in picks])
    assert got.shape == (4, D) and got.dtype == np.float32
    np.testing.assert_allclose(got, vectors[picks], atol=1e-6)


def test_fetch_missing_id_names_it(store, catalog):
    with pytest.raises(KeyError, match="no-such-item"):
        store.fetch_vectors([catalog[0][0], "no-such-item"])


def test_hits_carry_item_id_payload_and_vector(store, catalog):
    ids, vectors, payloads = catalog
    [hits] = store.search_batch(vectors[42:43], limit=3, with_vectors=True)
    top = hits[0]
    assert top.id == ids[42] and top.score == pytest.approx(1.0, abs=1e-5)
    assert top.payload == {**payloads[42], "id": ids[42]}
    assert top.vector.shape == (D,) and top.vector.dtype == np.float32
    np.testing.assert_allclose(top.vector, vectors[42], atol=1e-6)
    assert all(h.vector is None for h in store.search_batch(vectors[42:43], limit=3)[0])


def test_edge_exact_equals_server(edge, server, catalog):
    q = queries(catalog[1])
    a = edge.search_batch(q, limit=10, exact=True)
    b = server.search_batch(q, limit=10, exact=True)
    assert ids_of(a) == ids_of(b)
    np.testing.assert_allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-5)


def test_edge_hnsw_is_built_and_finds_the_same_neighbours(edge, server, catalog):
    assert edge.indexed_vectors_count == N
    q = queries(catalog[1])
    hnsw = ids_of(edge.search_batch(q, limit=10))
    truth = ids_of(server.search_batch(q, limit=10))
    assert [r[0] for r in hnsw] == [r[0] for r in truth]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw, truth)])
    assert recall >= 0.95


def test_edge_walks_an_int8_copy_and_rescores_in_float(edge, server, catalog):
    config = json.loads((edge.path / "edge_config.json").read_text())
    assert config["quantization_config"]["scalar"]["type"] == "int8"
    q = queries(catalog[1])
    truth = [{h.id: h.score for h in r} for r in server.search_batch(q, limit=50, exact=True)]
    hits = edge.search_batch(q, limit=10)
    # rescored hits carry the float cosine, not the int8 estimate
    np.testing.assert_allclose([h.score for r in hits for h in r],
                               [t[h.id] for r, t in zip(hits, truth) for h in r], atol=1e-5)


def test_a_store_built_without_int8_has_no_quantized_copy(tmp_path, catalog):
    store = EdgeStore.create(tmp_path / "shard", D, HnswSettings(int8=False))
    assert "quantization_config" not in json.loads((tmp_path / "shard" / "edge_config.json").read_text())
    store.close()


def test_empty_batch_and_bad_shapes(store):
    assert store.search_batch(np.zeros((0, D), np.float32), limit=5) == []
    with pytest.raises(ValueError, match="384"):
        store.search_batch(np.zeros((2, D + 1), np.float32), limit=5)
    with pytest.raises(ValueError, match="limit"):
        store.search_batch(np.zeros((1, D), np.float32), limit=0)


FILTERS = {
    "match_value": ({"must": [{"key": "artist", "match": {"value": "Drake"}}]}, lambda p: p["artist"] == "Drake"),
    "match_any": (
        {"must": [{"key": "artist", "match": {"any": ["Muse", "Björk"]}}]},
        lambda p: p["artist"] in ("Muse", "Björk"),
    ),
    "match_except": (
        {"must": [{"key": "artist", "match": {"except": ["Drake", "Adele", "Muse"]}}]},
        lambda p: p["artist"] in ("Björk", "Burial"),
    ),
    "range": ({"must": [{"key": "year", "range": {"gte": 1990, "lt": 1995}}]}, lambda p: 1990 <= p["year"] < 1995),
    "must_not": (
        {"must_not": [{"key": "artist", "match": {"value": "Drake"}}, {"key": "year", "range": {"gt": 2000}}]},
        lambda p: p["artist"] != "Drake" and p["year"] <= 2000,
    ),
    "should": (
        {"should": [{"key": "year", "range": {"lte": 1981}}, {"key": "artist", "match": {"value": "Adele"}}]},
        lambda p: p["year"] <= 1981 or p["artist"] == "Adele",
    ),
    "datetime_range": (
        {"must": [{"key": "released", "range": {"gte": "2010-01-01T00:00:00Z"}}]},
        lambda p: p["year"] >= 2010,
    ),
    "text": ({"must": [{"key": "text", "match": {"text": "by burial"}}]}, lambda p: p["artist"] == "Burial"),
    "single_condition_not_list": (
        {"must": {"key": "artist", "match": {"value": "Muse"}}},
        lambda p: p["artist"] == "Muse",
    ),
}


@pytest.mark.parametrize("name", FILTERS)
def test_filters_agree_across_backends(name, edge, server, catalog):
    flt, keep = FILTERS[name]
    q = queries(catalog[1])[:5]
    exact = edge.search_batch(q, limit=20, filter=flt, exact=True)
    assert ids_of(exact) == ids_of(server.search_batch(q, limit=20, filter=flt))
    assert all(len(r) == 20 and all(keep(h.payload) for h in r) for r in exact)
    assert all(keep(h.payload) for r in edge.search_batch(q, limit=20, filter=flt) for h in r)


@pytest.mark.parametrize(
    "bad",
    [
        {"must": [{"key": "artist", "matc": {"value": "Drake"}}]},  # typo in a field name
        {"must": [{"key": "artist"}]},  # condition without an operator
        {"must": "artist"},
        {"bogus": []},
        {"must": [{"key": "year", "range": {"gte": "soon"}}]},
        {"must": [{"key": "loc", "geo_radius": {"center": {"lon": 0, "lat": 0}, "radius": 1.0}}]},
        ["not", "a", "dict"],
    ],
)
def test_invalid_filter_is_typed(bad, edge, server):
    with pytest.raises(InvalidFilter):
        parse_filter(bad)
    for store in (edge, server):
        with pytest.raises(InvalidFilter):
            store.search_batch(np.ones((1, D), np.float32), limit=3, filter=bad)


def test_invalid_filter_message_points_at_the_problem():
    with pytest.raises(InvalidFilter, match=r"must\.0\.FieldCondition\.matc"):
        parse_filter({"must": [{"key": "artist", "matc": {"value": "Drake"}}]})


def small_edge(path, n: int = 200) -> EdgeStore:
    store = EdgeStore.create(path, D)
    store.upsert(*make_catalog(n, seed=3))
    store.optimize()
    return store


def test_closed_stores_are_unavailable(tmp_path):
    server = ServerStore(":memory:", "c", dim=D, create=True)
    server.upsert(*make_catalog(50))
    for store in (small_edge(tmp_path / "s"), server):
        assert store.ping()
        store.close()
        store.close()  # idempotent
        assert store.ping() is False
        with pytest.raises(StoreUnavailable):
            store.search_batch(np.ones((1, D), np.float32), limit=3)
        with pytest.raises(StoreUnavailable):
            store.count()


def test_payload_index_kind_is_checked(edge, server):
    for store in (edge, server):
        with pytest.raises(ValueError, match="keyword"):
            store.index_payload("artist", "tag")
    server.index_payload("artist", "keyword")  # local mode: accepted, nothing to build
    assert edge.payload_index() == {"artist": "keyword", "year": "integer"}  # what the fixture indexed
    assert server.payload_index() == {"artist": "keyword"}  # local mode reports what was declared


def test_bad_upsert_input_is_a_value_error_not_unavailable(tmp_path):
    ids, vectors, payloads = make_catalog(3)
    server = ServerStore(":memory:", "c", dim=D, create=True)
    for store in (EdgeStore.create(tmp_path / "s", D), server):
        with pytest.raises(ValueError, match="ids"):
            store.upsert(ids[:2], vectors, payloads)
        with pytest.raises(ValueError, match="384"):
            store.upsert(ids, vectors[:, :10], payloads)
        with pytest.raises((TypeError, ValueError)):
            store.upsert(ids[:1], vectors[:1], [{"text": object()}])
        assert store.count() == 0
        store.close()


def test_unreachable_server_is_unavailable():
    with pytest.raises(StoreUnavailable):
        ServerStore("http://127.0.0.1:9", "catalog")  # discard port: connection refused at once


def test_missing_collection_refuses_to_open():
    with pytest.raises(FileNotFoundError, match="no collection"):
        ServerStore(":memory:", "absent")


def test_reopened_edge_shard_gives_the_same_results(tmp_path):
    store = small_edge(tmp_path / "s")
    q = queries(make_catalog(200, seed=3)[1])
    before = store.search_batch(q, limit=10)
    store.close()
    reopened = open_store(tmp_path / "s")
    assert isinstance(reopened, EdgeStore) and reopened.dim == D and reopened.count() == 200
    after = reopened.search_batch(q, limit=10)
    assert ids_of(after) == ids_of(before)
    np.testing.assert_allclose([h.score for r in after for h in r], [h.score for r in before for h in r])
    reopened.close()


def test_open_missing_or_empty_dir_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Edge shard"):
        EdgeStore.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Edge shard"):
        EdgeStore.open(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_create_over_an_existing_shard_refuses(tmp_path):
    small_edge(tmp_path / "s").close()
    with pytest.raises(FileExistsError):
        EdgeStore.create(tmp_path / "s", D)


def test_upsert_overwrites_by_item_id(tmp_path):
    store = small_edge(tmp_path / "s", n=20)
    ids, vectors, payloads = make_catalog(20, seed=3)
    store.upsert(ids[:1], vectors[1:2], [{"text": "replaced"}])
    assert store.count() == 20
    np.testing.assert_allclose(store.fetch_vectors(ids[:1]), vectors[1:2], atol=1e-6)
    [hits] = store.search_batch(vectors[1:2], limit=2)
    assert {h.payload["text"] for h in hits} == {"replaced", payloads[1]["text"]}
    store.close()


@pytest.mark.parametrize("name", FILTERS)
def test_the_request_schema_admits_every_filter_both_backends_run(name):
    """The API's typed filter is no stricter than the stores: each filter above passes it unchanged."""
    from service.filters import PayloadFilter

    flt = FILTERS[name][0]
    assert PayloadFilter.model_validate(flt).to_qdrant() == parse_filter(flt)


@pytest.mark.parametrize("bad", [
    {"must": [{"key": "artist", "matc": {"value": "Drake"}}]},
    {"must": [{"key": "artist"}]},
    {"must": [{"key": "year", "range": {"gte": "soon"}}]},
    {"must": [{"key": "loc", "geo_radius": {"center": {"lon": 0, "lat": 0}, "radius": 1.0}}]},
    {"must": [{"key": "a b", "match": {"value": "x"}}]},
    {"must": [{"key": "n", "match": {"value": 2**63}}]},
])
def test_the_request_schema_refuses_what_a_backend_refuses(bad):
    from pydantic import ValidationError

    from service.filters import PayloadFilter

    with pytest.raises(ValidationError):
        PayloadFilter.model_validate(bad)


def memory_catalog(n: int = 2_000, d: int = 16, sets: int = 300, seed: int = 3):
    """Dot-product items, each held by a few of `sets` train sets (a fifth by none: cold items)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d)).astype(np.float32)  # (n, d) unnormalised, as a co-membership space
    held = rng.random((sets, n)) < 0.01  # (S, n)
    held[:, : n // 5] = False
    ids = [f"t{i}" for i in range(n)]
    return ids, vectors, [{"text": i} for i in ids], [np.flatnonzero(held[:, i]).tolist() for i in range(n)], held


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_memory_search_is_exact_dense_plus_weighted_memory(backend, tmp_path):
    """q·v + coef·Σ_j w_j [item ∈ set_j] over the whole catalog, in one query, on both backends; the filter
    applies to both halves; a depth that cannot hold every memory item still returns the dense top."""
    from service.store import MemoryQuery

    ids, vectors, payloads, rows, held = memory_catalog()
    d = vectors.shape[1]
    store = (EdgeStore.create(tmp_path / "s", d, HnswSettings(int8=False), distance="dot", memory=True)
             if backend == "edge" else ServerStore(":memory:", "m", dim=d, create=True, distance="dot", memory=True))
    store.upsert(ids, vectors, [{**p, "odd": i % 2} for i, p in enumerate(payloads)], memory=rows)
    if backend == "edge":
        store.optimize()
        store.close()
        store = EdgeStore.open(tmp_path / "s")  # the memory is found again on open
    assert store.memory
    rng = np.random.default_rng(4)
    qs = rng.standard_normal((5, d)).astype(np.float32)
    memories = [MemoryQuery(rng.choice(300, 20, replace=False), rng.random(20).astype(np.float32), 3.0)
                for _ in qs]
    got = store.search_memory_batch(qs, memories, limit=30, memory_depth=2_000, exact=True)
    got_odd = store.search_memory_batch(qs, memories, limit=30, memory_depth=2_000, exact=True,
                                        filter={"must": [{"key": "odd", "match": {"value": 1}}]})
    for q, m, hits, odd in zip(qs, memories, got, got_odd):
        score = vectors @ q + m.coef * (held[m.sets].T.astype(np.float32) @ m.weights)
        assert [h.id for h in hits] == [ids[i] for i in np.argsort(-score)[:30]]
        assert np.allclose([h.score for h in hits], np.sort(score)[::-1][:30], atol=1e-4)
        score[::2] = -np.inf
        assert [h.id for h in odd] == [ids[i] for i in np.argsort(-score)[:30]]
    shallow = store.search_memory_batch(qs[:1], memories[:1], limit=30, memory_depth=1, exact=True)[0]
    assert len(shallow) == 30
    store.close()


def test_memory_search_needs_an_index_with_memory(server):
    from service.store import MemoryQuery

    with pytest.raises(ValueError, match="no item memory"):
        server.search_memory_batch(np.zeros((1, D), np.float32), [MemoryQuery(np.array([0]), np.array([1.0]), 1.0)],
                                   limit=5, memory_depth=10)
    with pytest.raises(ValueError, match="no item memory"):
        server.upsert(["x"], np.zeros((1, D), np.float32), [{}], memory=[[0]])
