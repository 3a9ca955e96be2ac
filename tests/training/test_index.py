"""Indexing a real catalog slice: both backends agree on real MiniLM vectors; re-runs are no-ops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.manifest import IndexMeta
from service.store import EdgeStore, ServerStore
from training.index import INDEX_FILE, SHARD_DIR, IndexConfig, build_index

pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")


@pytest.fixture(scope="module")
def built(polyvore, encoder, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("index") / "polyvore"
    return index_dir, build_index(polyvore, encoder, index_dir, IndexConfig())


def test_index_holds_every_item_with_text_payload(built, polyvore, encoder):
    index_dir, meta = built
    assert meta["items"] == len(polyvore.items)
    assert meta["encoder_sha256"] == encoder.manifest.encoder_sha256
    assert meta["quantization"] == "int8" and meta["distance"] == "cosine"  # unit vectors keep their int8 copy
    assert (meta["hnsw_m"], meta["hnsw_ef_construct"]) == (16, 128)
    store = EdgeStore.open(index_dir / SHARD_DIR)
    assert store.count() == len(polyvore.items)
    item = next(iter(polyvore.items.values()))
    [[top]] = store.search_batch(encoder.encode([item.text]), limit=1)
    assert top.id == item.id and top.payload["text"] == item.text
    assert top.payload["category"] == item.payload["category"]
    # every field the loader declares filterable has its payload index, recorded in index.json
    assert store.payload_index() == polyvore.payload_index == meta["payload_index"]
    assert set(polyvore.payload_index) <= set(item.payload)
    store.close()


def test_rerun_is_a_noop_and_a_changed_catalog_rebuilds(built, polyvore, encoder, data_dir):
    from training.data import load_dataset

    index_dir, meta = built
    again = build_index(polyvore, encoder, index_dir, IndexConfig())
    assert again["build_s"] == meta["build_s"]  # read back from index.json, nothing rebuilt
    smaller = load_dataset("polyvore", data_dir, limit=20)
    rebuilt = build_index(smaller, encoder, index_dir, IndexConfig())
    assert rebuilt["items"] == len(smaller.items)
    assert json.loads((index_dir / INDEX_FILE).read_text())["catalog_sha256"] == rebuilt["catalog_sha256"]
    assert not list(index_dir.parent.glob(".polyvore.*"))  # no temp directory left behind
    build_index(polyvore, encoder, index_dir, IndexConfig())  # restore for the other tests


def test_edge_and_server_backends_agree_on_real_vectors(polyvore, encoder, tmp_path):
    items = list(polyvore.items.values())
    vectors = encoder.encode([it.text for it in items])  # (N, 384) real MiniLM embeddings
    payloads = [{"text": it.text, **it.payload} for it in items]
    edge = EdgeStore.create(tmp_path / "shard", encoder.dim)
    server = ServerStore(":memory:", "catalog", dim=encoder.dim, create=True)
    for store in (edge, server):
        store.upsert([it.id for it in items], vectors, payloads)
    edge.optimize()
    queries = encoder.encode([s.intent for s in polyvore.sets[:25]])  # real intents (outfit titles)
    exact = server.search_batch(queries, limit=10)
    for hits_edge, hits_server in zip(edge.search_batch(queries, limit=10), exact):
        scores = np.array([h.score for h in hits_server])
        assert np.allclose([h.score for h in hits_edge], scores, atol=1e-5)
        for rank, (a, b) in enumerate(zip(hits_edge, hits_server)):
            # Items with identical texts tie exactly; backends may order a tie differently.
            tied = np.isclose(scores, scores[rank], atol=1e-6).sum() > 1
            assert a.id == b.id or tied
    assert np.allclose(edge.fetch_vectors([items[3].id]), vectors[3:4], atol=1e-6)


def test_a_killed_build_resumes_where_it_stopped_and_ends_as_a_fresh_one(polyvore, encoder, built, tmp_path):
    class Killed(BaseException):  # what a SIGINT looks like to the build: not an Exception
        pass

    class KilledAfter:
        """The encoder, killed in its `calls`-th encode; counts the texts it embedded."""

        def __init__(self, calls: int | None):
            self.calls, self.texts = calls, 0

        def __getattr__(self, name):
            return getattr(encoder, name)

        def encode(self, texts, batch_size=128):
            if self.calls is not None:
                self.calls -= 1
                if self.calls == 0:
                    raise Killed
            self.texts += len(texts)
            return encoder.encode(texts, batch_size=batch_size)

    index_dir, cfg = tmp_path / "polyvore", IndexConfig(upsert_every=200)
    with pytest.raises(Killed):
        build_index(polyvore, KilledAfter(3), index_dir, cfg)  # two chunks (400 items) stored, then killed
    assert not index_dir.exists() and (tmp_path / ".polyvore.partial" / "progress.json").is_file()
    resumed = KilledAfter(None)
    meta = build_index(polyvore, resumed, index_dir, cfg)
    assert meta["resumed_at"] == 400 and resumed.texts == len(polyvore.items) - 400  # nothing embedded twice
    assert not (tmp_path / ".polyvore.partial").exists() and IndexMeta.read(index_dir).items == len(polyvore.items)
    store, fresh = EdgeStore.open(index_dir / SHARD_DIR), EdgeStore.open(built[0] / SHARD_DIR)
    try:
        assert store.count() == fresh.count() == len(polyvore.items)
        q = encoder.encode(["red summer dress", "black leather boots"])
        got, want = (s.search_batch(q, limit=10, exact=True) for s in (store, fresh))
        assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]
    finally:
        store.close()
        fresh.close()
