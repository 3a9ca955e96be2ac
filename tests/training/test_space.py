"""The co-membership space on a real MPD slice: train-only fitting, cold items, the exported head, the teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.space import (
    Space,
    SpaceConfig,
    TeacherConfig,
    build_space,
    nearest_sets,
    neighbour_targets,
    neighbour_weights,
    query_vectors,
    teacher_pairs,
)


@pytest.fixture(scope="module")
def mpd_slice(data_dir):
    from training.data import load_dataset

    return load_dataset("mpd", data_dir, limit=200)  # ~160 train playlists, the rest val/test


@pytest.fixture(scope="module")
def space(mpd_slice, encoder) -> Space:
    return build_space(mpd_slice, encoder, SpaceConfig(factors=8, neighbours=5, tower_sample=2000), "space-test")


def test_only_train_sets_contribute(space, mpd_slice):
    train = mpd_slice.split("train")
    held = mpd_slice.split("val") + mpd_slice.split("test")
    assert held, "the slice must hold val/test playlists for this test to mean anything"
    assert space.set_ids == [s.id for s in train]
    assert not set(space.set_ids) & {s.id for s in held}
    assert space.sets.shape == (len(train), 8) and space.titles.shape[0] == len(train)
    in_train = {i for s in train for i in s.item_ids}
    warm = {space.item_ids[j] for j in np.flatnonzero(space.warm)}
    assert warm == in_train
    only_held = {i for s in held for i in s.item_ids} - in_train
    assert only_held and not warm & only_held  # items seen only in val/test sets are cold


def test_cold_items_get_content_vectors(space):
    cold = space.items[~space.warm]
    assert len(cold) and np.isfinite(cold).all()
    assert (np.linalg.norm(cold, axis=1) > 0).all()
    assert len(np.unique(cold.round(5), axis=0)) > 0.9 * len(cold)  # from each item's own text, not one constant


def test_save_load_roundtrip(space, tmp_path):
    space.save(tmp_path / "s")
    back = Space.load(tmp_path / "s")
    assert back.kind == "comember" and back.distance == "dot" and back.item_ids == space.item_ids
    np.testing.assert_array_equal(back.items, space.items)
    assert (back.members != space.members).nnz == 0
    assert not list(tmp_path.glob(".s*"))  # the temp directory was moved in, not left behind
    with pytest.raises(FileNotFoundError, match="r4t space build"):
        Space.load(tmp_path / "missing")


def test_nearest_sets_excludes_own_set(space):
    near = nearest_sets(space, space.titles[:10])
    assert (near[:, 0] == np.arange(10)).all()  # a train title is nearest to itself ...
    near = nearest_sets(space, space.titles[:10], exclude=space.set_ids[:10])
    assert not (near == np.arange(10)[:, None]).any()  # ... unless its own set is left out


def test_teacher_pairs_never_see_the_own_set(space):
    cfg = TeacherConfig(k=4, neighbours=6)
    q, targets, ids = teacher_pairs(space, cfg)
    assert ids == space.set_ids and targets.shape == (len(ids), 4, space.dim)
    np.testing.assert_allclose(np.linalg.norm(targets, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(q, query_vectors(space, space.titles, exclude=space.set_ids), atol=1e-6)
    # intent 0's targets are those of its neighbours with its own set left out (and that set is not among them)
    near = nearest_sets(space, space.titles[:1], exclude=space.set_ids[:1], n=cfg.neighbours)[0]
    again = neighbour_targets(space, q[0], near, cfg)
    np.testing.assert_allclose(again, targets[0], atol=1e-6)
    assert 0 not in near


def test_blend_zero_is_the_query(space):
    q = query_vectors(space, space.titles[:1])[0]
    rows = neighbour_targets(space, q, nearest_sets(space, space.titles[:1])[0], TeacherConfig(k=3, blend=0.0))
    np.testing.assert_allclose(rows, np.repeat(q[None], 3, 0), atol=1e-6)


def test_neighbour_weights_go_from_the_mean_to_the_nearest_title():
    sims = np.array([[0.9, 0.8, 0.2, 0.1]], np.float32)
    np.testing.assert_allclose(neighbour_weights(sims, 0.0, 3), [[1 / 3] * 3], atol=1e-6)
    w = neighbour_weights(sims, 0.1, 3)
    assert w.shape == (1, 3) and w[0, 0] > w[0, 1] > w[0, 2] > 0 and abs(w.sum() - 1) < 1e-6
    np.testing.assert_allclose(neighbour_weights(sims, 1e-3, 3), [[1, 0, 0]], atol=1e-6)
    # a tie at the cut: the n-th title weighs 0, so which of the tied titles is kept does not matter
    assert neighbour_weights(np.array([[0.9, 0.5, 0.5]], np.float32), 0.1, 2)[0, 1] == 0
    np.testing.assert_allclose(neighbour_weights(np.full((1, 3), 0.5, np.float32), 0.1, 2), [[0.5, 0.5]])


def test_query_head_weights_its_neighbours(space):
    """The head is the weighted mean of the nearest train sets' vectors (the fixture's temperature)."""
    assert space.temperature > 0
    n = space.neighbours
    near, sims = nearest_sets(space, space.titles[:3], n=n + 1, with_sims=True)
    e = np.exp((sims - sims[:, :1]) / space.temperature)
    w = e[:, :n] - e[:, n:]
    expected = (space.sets[near[:, :n]] * (w / w.sum(1, keepdims=True))[..., None]).sum(1)
    np.testing.assert_allclose(query_vectors(space, space.titles[:3]),
                               expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


def test_config_is_validated():
    with pytest.raises(ValueError):
        SpaceConfig(kind="svd")
    with pytest.raises(ValueError):
        TeacherConfig(blend=1.5)
    with pytest.raises(ValueError):
        SpaceConfig(temperature=-0.1)
    with pytest.raises(ValueError):
        SpaceConfig(gamma=0.0)


def test_text_space_for_polyvore(polyvore, encoder):
    space = build_space(polyvore, encoder, SpaceConfig(neighbours=3), "space-pv")
    assert space.kind == "text" and space.distance == "cosine" and space.dim == 384
    first = polyvore.split("train")[0]
    members = [space.item_ids.index(i) for i in first.item_ids]
    np.testing.assert_allclose(space.sets[0], space.items[members].mean(0), atol=1e-5)


@pytest.fixture(scope="module")
def space_artifacts(space, mpd_slice, encoder_dir, tmp_path_factory):
    """The space's exported head and its index (with the item memory): (encoder dir, index dir, manifest, meta)."""
    from export.space import export_space_encoder
    from service.encoder import OnnxEncoder
    from training.index import IndexConfig, build_index

    root = tmp_path_factory.mktemp("space")
    manifest = export_space_encoder(root / "enc", space, encoder_dir, space_texts(mpd_slice))
    meta = build_index(mpd_slice, OnnxEncoder(root / "enc"), root / "index", IndexConfig(), space=space)
    return root / "enc", root / "index", manifest, meta


def space_texts(mpd_slice) -> list[str]:
    return [s.intent for s in mpd_slice.split("val")] + ["late night drive", ""]


def test_space_encoder_matches_numpy_and_serves_a_dot_index(space, mpd_slice, encoder_dir, space_artifacts):
    """The ONNX head equals `query_vectors`; the index built from the space scores by inner product."""
    from service.encoder import OnnxEncoder
    from service.resolver import EXACT, Resolver
    from service.store import EdgeStore, MemoryQuery
    from training.index import SHARD_DIR

    enc_dir, index_dir, manifest, meta = space_artifacts
    texts = space_texts(mpd_slice)
    assert manifest.parity.max_abs_error <= 1e-4 and manifest.encoder.dim == space.dim
    assert manifest.config["space"]["distance"] == "dot"
    enc = OnnxEncoder(enc_dir)
    np.testing.assert_allclose(enc.encode(texts), query_vectors(space, OnnxEncoder(encoder_dir).encode(texts)),
                               atol=1e-4)

    assert meta["distance"] == "dot" and meta["items"] == len(space.item_ids) and meta["space"] == "space-test"
    # no int8 copy: its clipped coordinates lose the factor norms that an inner product ranks by
    assert meta["quantization"] is None and (meta["hnsw_m"], meta["hnsw_ef_construct"]) == (32, 256)
    edge_config = json.loads((index_dir / SHARD_DIR / "edge_config.json").read_text())
    assert "quantization_config" not in edge_config and edge_config["hnsw_config"]["m"] == 32  # the denser graph
    store = EdgeStore.open(index_dir / SHARD_DIR)
    try:
        q = enc.encode(["late night drive"])
        ids = [h.id for h in Resolver(store).resolve(q, 10, search=EXACT)]
        scores = space.items @ q[0]  # inner product, so norms (popularity) count: not the cosine order
        assert ids == [space.item_ids[j] for j in np.argsort(-scores, kind="stable")[:10]]

        # The item memory: the head's sets and weights, the index's sparse vectors, one formula query.
        assert meta["memory_sets"] == len(space.set_ids) and store.memory
        constants = enc.memory
        assert constants["coef"] == pytest.approx(
            constants["weight"] * constants["dense_scale"] / constants["memory_scale"])
        emb, sets, weights = enc.encode_memory(texts[:4])
        np.testing.assert_allclose(emb, enc.encode(texts[:4]), atol=1e-5)
        memories = [MemoryQuery(s, w, constants["coef"]) for s, w in zip(sets, weights)]
        hits = store.search_memory_batch(emb, memories, limit=20, memory_depth=len(space.item_ids), exact=True)
        for e, m, got in zip(emb, memories, hits):
            score = space.items @ e + m.coef * np.asarray(space.members[m.sets].T @ m.weights).ravel()
            np.testing.assert_allclose([h.score for h in got], np.sort(score)[::-1][:20], rtol=1e-4, atol=1e-5)
    finally:
        store.close()


def test_service_runs_the_memory_strategy(space, space_artifacts):
    """/fanout strategy=memory returns the items the memory query ranks first (the head's sets, the manifest's
    constant); /info lists it; the served store is the one the test reads."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    enc_dir, index_dir, _, _ = space_artifacts
    settings = Settings(encoder_dir=enc_dir, index_dir=index_dir, graph="none", dataset="mpd")
    with TestClient(create_app(settings)) as client:
        assert client.get("/info").json()["strategies"] == ["single", "memory"]
        rt = client.app.state.runtime
        body = client.post("/fanout", json={"query": "late night drive", "strategy": "memory", "limit": 15,
                                            "explain": True}).json()
        single = client.post("/fanout", json={"query": "late night drive", "strategy": "single", "limit": 15}).json()
        emb, sets, weights = rt.encoder.encode_memory(["late night drive"])
        score = space.items @ emb[0] + rt.encoder.memory["coef"] * np.asarray(space.members[sets[0]].T @ weights[0]).ravel()
        row = {item: j for j, item in enumerate(space.item_ids)}
        got = [row[it["id"]] for it in body["items"]]  # the top 15 by that score (tied items in either order)
        assert body["strategy"] == "memory" and len(set(got)) == 15
        np.testing.assert_allclose(score[got], np.sort(score)[::-1][:15], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([it["score"] for it in body["items"]], score[got], rtol=1e-4, atol=1e-5)
        assert [it["id"] for it in body["items"]] != [it["id"] for it in single["items"]]
        assert body["view"]["distinct_items"] == 15


def test_text_weight_is_chosen_on_val_and_blends_the_text(polyvore, encoder):
    """The text space's query head blends the intent's own embedding; the weight is the best of the grid on val."""
    from training.space import TEXT_WEIGHTS

    space = build_space(polyvore, encoder, SpaceConfig(neighbours=3), "space-pv")
    scores = space.meta["text_weight_val"]["recall"]
    assert set(scores) == {str(w) for w in TEXT_WEIGHTS} and space.meta["text_weight_val"]["sets"] == len(polyvore.split("val"))
    assert scores[str(space.text_weight)] == max(scores.values())
    emb = encoder.encode(["boho summer festival outfit"])
    space.text_weight = 1.0
    np.testing.assert_allclose(query_vectors(space, emb), emb / np.linalg.norm(emb), atol=1e-6)
    space.text_weight = 0.0
    plain = query_vectors(space, emb)
    np.testing.assert_allclose(plain[0], space.sets[nearest_sets(space, emb)[0]].mean(0) /
                               np.linalg.norm(space.sets[nearest_sets(space, emb)[0]].mean(0)), atol=1e-6)
    with pytest.raises(ValueError, match="text space"):
        SpaceConfig(kind="comember", text_weight=0.5)


def test_text_weighted_head_exports_with_parity(polyvore, encoder, encoder_dir, tmp_path):
    """The ONNX head computes the blend as numpy does (text space, weight 0.5)."""
    from export.space import export_space_encoder
    from service.encoder import OnnxEncoder

    space = build_space(polyvore, encoder, SpaceConfig(neighbours=3, text_weight=0.5), "space-pv")
    texts = [s.intent for s in polyvore.split("val")][:16] + ["boho summer festival outfit"]
    manifest = export_space_encoder(tmp_path / "enc", space, encoder_dir, texts)
    assert manifest.config["space"]["text_weight"] == 0.5 and manifest.parity.max_abs_error <= 1e-4
    np.testing.assert_allclose(OnnxEncoder(tmp_path / "enc").encode(texts), query_vectors(space, encoder.encode(texts)),
                               atol=1e-4)


def test_memory_fanout_scores_each_row_by_the_served_memory_formula(space, mpd_slice, space_artifacts):
    """K copies of the query give the served memory's own top N; K jittered rows each put their top item first."""
    from service.encoder import OnnxEncoder
    from training.evaluate import jitter_rows
    from training.quality import exact_fanout_strategy

    enc = OnnxEncoder(space_artifacts[0])
    queries = space_texts(mpd_slice)[:3]
    qv = enc.encode(queries)
    _, sets, weights = enc.encode_memory(queries)
    scores = [space.items @ q + enc.memory["coef"] * np.asarray(space.members[s].T @ w).ravel()
              for q, s, w in zip(qv, sets, weights)]
    row = {item: i for i, item in enumerate(space.item_ids)}
    copies = exact_fanout_strategy("copies", space, enc, None, lambda q, v, seed: np.repeat(v[:, None], 4, 1),
                                    stochastic=False).run(queries, qv, 30, 0)
    for score, got in zip(scores, copies):  # tied items in either order
        assert len(set(got.items)) == 30
        np.testing.assert_allclose(score[[row[i] for i in got.items]], np.sort(score)[::-1][:30], rtol=1e-5)
    jittered = exact_fanout_strategy("jitter", space, enc, None, jitter_rows(4, 1.0)).run(queries, qv, 30, 1)
    for s, w, got in zip(sets, weights, jittered):
        memory = enc.memory["coef"] * np.asarray(space.members[s].T @ w).ravel()
        per_row = [space.items @ r + memory for r in got.vectors]  # each row's top item leads (ties: either)
        assert set(got.representatives) <= set(got.items[:4]) and len(set(got.items)) == 30
        for score in per_row:
            assert max(score[row[i]] for i in got.representatives) == pytest.approx(score.max(), rel=1e-5)


def test_lse_fusion_is_the_soft_maximum_over_rows(space, mpd_slice, space_artifacts):
    """Copies of the query: lse ranks as the query itself (with or without the memory); two distinct rows: the
    ranking is by t·log(exp(a/t) + exp(b/t)), t = tau × std(q·v)."""
    from scipy.special import logsumexp

    from service.encoder import OnnxEncoder
    from training.quality import exact_fanout_strategy

    enc = OnnxEncoder(space_artifacts[0])
    queries = space_texts(mpd_slice)[:2]
    qv = enc.encode(queries)
    row = {item: i for i, item in enumerate(space.item_ids)}
    for memory in (False, True):
        copies = exact_fanout_strategy("c", space, enc, None, lambda q, v, seed: np.repeat(v[:, None], 3, 1),
                                        memory=memory, fusion="lse").run(queries, qv, 20, 0)
        quota = exact_fanout_strategy("q", space, enc, None, lambda q, v, seed: np.repeat(v[:, None], 3, 1),
                                       memory=memory).run(queries, qv, 20, 0)
        for a, b in zip(copies, quota):
            assert a.items == b.items
    rng = np.random.default_rng(0)
    two = np.stack([qv, qv + 0.5 * rng.standard_normal(qv.shape).astype(np.float32)], axis=1)  # (B, 2, D)
    for tau in (0.05, 20.0):
        got = exact_fanout_strategy("two", space, enc, None, lambda q, v, seed: two, memory=False, fusion="lse",
                                     tau=tau).run(queries, qv, 20, 0)
        for i, g in enumerate(got):
            s = space.items @ two[i].T
            t = tau * (space.items @ qv[i]).std()
            fused = t * logsumexp(s / t, axis=1)
            np.testing.assert_allclose(fused[[row[x] for x in g.items]], np.sort(fused)[::-1][:20], rtol=1e-5)
            # the limits it interpolates between: within t·log 2 of the max row; within (a-b)²/8t of mean + t·log 2
            gap = fused - s.max(1) if tau < 1 else fused - s.mean(1) - t * np.log(2)
            assert np.all(gap <= (t * np.log(2) if tau < 1 else (s[:, 0] - s[:, 1]) ** 2 / (8 * t)) + 1e-4)
    with pytest.raises(ValueError, match="fusion"):
        exact_fanout_strategy("x", space, enc, None, lambda q, v, seed: two, fusion="rrf")


def test_memory_strategy_adds_the_neighbour_sets_members_to_the_factor_score(space, mpd_slice, encoder):
    from training.quality import memory_strategy

    queries = [s.intent for s in mpd_slice.split("val")[:3]]
    qv = query_vectors(space, encoder.encode(queries))
    plain = memory_strategy(space, encoder, encoder, None, 0.0).run(queries, qv, 50, 0)
    row = {item: i for i, item in enumerate(space.item_ids)}
    for q, got in zip(qv, plain):  # weight 0: the factor score's own ranking (tied items in either order)
        dense = space.items @ q
        np.testing.assert_allclose(dense[[row[i] for i in got.items]], np.sort(dense)[::-1][:50], rtol=1e-6)
    near, sims = nearest_sets(space, encoder.encode(queries), n=space.neighbours + 1, with_sims=True)
    weights = neighbour_weights(sims, space.temperature, space.neighbours)
    heavy = memory_strategy(space, encoder, encoder, None, 1e6).run(queries, qv, 50, 0)
    for got, idx, w in zip(heavy, near, weights):  # the memory dominates: the best-weighted set's members first
        best = space.members[idx[np.argmax(w)]].indices
        assert got.items[0] in {space.item_ids[i] for i in best}


def test_teacher_pairs_resume_after_a_kill_with_none_missing_or_twice(space, tmp_path):
    from training.space import SYNTH_FILE, write_teacher_pairs

    cfg, meta = TeacherConfig(k=3, samples=2, neighbours=5), {"task": "teacher"}
    whole = tmp_path / "whole"
    total = write_teacher_pairs(space, cfg, whole, meta, shard=40)
    shards = sorted(whole.glob("pairs-*.npz"))
    assert len(shards) == -(-len(space.set_ids) // 40) > 2 and total == 2 * len(space.set_ids)
    killed = tmp_path / "killed"  # killed after its first shard: only that one (atomic) file is there
    write_teacher_pairs(space, cfg, killed, meta, shard=40)
    for path in sorted(killed.glob("pairs-*.npz"))[1:] + [killed / SYNTH_FILE]:
        path.unlink()
    assert write_teacher_pairs(space, cfg, killed, meta, shard=40) == total
    set_index = np.concatenate([np.load(p)["set_index"] for p in sorted(killed.glob("pairs-*.npz"))])
    assert np.array_equal(np.sort(set_index), np.repeat(np.arange(len(space.set_ids)), 2))
    for a, b in zip(shards, sorted(killed.glob("pairs-*.npz"))):
        x, y = np.load(a), np.load(b)
        assert all(np.array_equal(x[key], y[key]) for key in ("query", "targets", "set_index"))
