"""Embed a catalog with the exported encoder and build its Qdrant index (Edge shard or server).

The index directory holds the Edge shard and `index.json`, which names the encoder (sha256) and the
catalog fingerprint it was built from: re-running with the same encoder and catalog is a no-op, a
different one rebuilds into `.<name>.partial` beside it, which replaces the old one only when complete (and
where a killed build of the same catalog and encoder resumes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from service.atomic import replace_dir, write_json_atomic
from service.encoder import OnnxEncoder
from service.manifest import INDEX_FILE, SHARD_DIR, IndexMeta, default_collection
from service.store import EdgeStore, HnswSettings, ServerStore, Store
from training.data import Dataset

PROGRESS_FILE = "progress.json"  # in a partial build: how many items its shard holds, for which catalog
log = logging.getLogger(__name__)


@dataclass
class IndexConfig:
    batch_size: int = 256  # texts embedded per ONNX run
    upsert_every: int = 4096  # points per store upsert
    qdrant_url: str = ""  # "" = Qdrant Edge shard on disk; else a Qdrant server (or ":memory:")
    collection: str = ""  # server collection name; "" = r4t-<dataset>

    def __post_init__(self):
        if self.batch_size < 1 or self.upsert_every < 1:
            raise ValueError("batch_size and upsert_every must be >= 1")


def catalog_fingerprint(dataset: Dataset) -> str:
    """sha256 over item ids and texts: changes whenever what is indexed would change."""
    digest = hashlib.sha256()
    for item in dataset.items.values():
        digest.update(item.id.encode())
        digest.update(b"\x00")
        digest.update(item.text.encode())
        digest.update(b"\x01")
    return digest.hexdigest()


def index_meta(dataset: Dataset, encoder: OnnxEncoder, space=None) -> IndexMeta:
    distance = space.distance if space is not None else "cosine"
    hnsw = HnswSettings.for_distance(distance)  # recorded in the identity: a changed one rebuilds
    meta = IndexMeta(dataset=dataset.name, items=len(dataset.items), catalog_sha256=catalog_fingerprint(dataset),
                     encoder=encoder.manifest.encoder.name, encoder_sha256=encoder.manifest.encoder_sha256,
                     dim=encoder.dim, quantization="int8" if hnsw.int8 else None, distance=distance,
                     payload_index=dataset.payload_index, hnsw_m=hnsw.m, hnsw_ef_construct=hnsw.ef_construct)
    if space is not None:  # item vectors come from the space, not from embedding the item texts
        meta = meta.model_copy(update={"space": space.name, "space_kind": space.kind,
                                       "memory_sets": len(space.set_ids) if space.kind == "comember" else None})
    return meta


def _hnsw(meta: IndexMeta) -> HnswSettings:
    """The store settings an index's meta names."""
    return HnswSettings(m=meta.hnsw_m, ef_construct=meta.hnsw_ef_construct, int8=meta.quantization == "int8")


def embed_and_upsert(dataset: Dataset, encoder: OnnxEncoder, store: Store, cfg: IndexConfig, space=None,
                     start: int = 0, done: Callable[[int], None] | None = None) -> None:
    """Embed every item from `start` on in batches (progress bar), or take its vector from `space`, and upsert
    with payloads; `done(n)` after each upserted (flushed) chunk, n = items stored so far."""
    items = list(dataset.items.values())
    row = {i: j for j, i in enumerate(space.item_ids)} if space is not None else None
    held = space.members.tocsc() if store.memory else None  # (S, N): column j = the train sets holding item j
    bar = tqdm(total=len(items), initial=start, desc=f"index {dataset.name}", unit="item")
    for lo in range(start, len(items), cfg.upsert_every):
        chunk = items[lo : lo + cfg.upsert_every]
        if row is None:
            vectors = encoder.encode([it.text for it in chunk], batch_size=cfg.batch_size)  # (n, D)
        else:
            vectors = space.items[[row[it.id] for it in chunk]]  # (n, k)
        memory = None
        if held is not None:
            cols = held[:, [row[it.id] for it in chunk]]
            memory = [cols.indices[cols.indptr[j]:cols.indptr[j + 1]].tolist() for j in range(len(chunk))]
        store.upsert([it.id for it in chunk], vectors, [{"text": it.text, **it.payload} for it in chunk], memory=memory)
        bar.update(len(chunk))
        if done is not None:
            done(lo + len(chunk))
    bar.close()
    for field, kind in dataset.payload_index.items():  # after the points: one index build per field
        store.index_payload(field, kind)


def _edge_build(dataset: Dataset, encoder: OnnxEncoder, index_dir: Path, cfg: IndexConfig, space, fresh: IndexMeta,
                meta: dict) -> Path:
    """Build the Edge shard in `.<name>.partial` beside `index_dir`, recording after each chunk how many items it
    holds; a killed build of the same catalog and encoder resumes there. Returns the finished directory."""
    partial = index_dir.parent / f".{index_dir.name}.partial"
    progress = partial / PROGRESS_FILE
    state = json.loads(progress.read_text()) if progress.is_file() else {}
    if state.get("identity") == fresh.identity() and (partial / SHARD_DIR).is_dir():
        store, start = EdgeStore.open(partial / SHARD_DIR), state["items"]
        log.info("resuming the index build in %s at item %d", partial, start)
    else:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o755)
        store = EdgeStore.create(partial / SHARD_DIR, encoder.dim, _hnsw(fresh),
                                 distance=fresh.distance, memory=fresh.memory_sets is not None)
        start = 0
    try:
        embed_and_upsert(dataset, encoder, store, cfg, space, start,
                         done=lambda n: write_json_atomic(progress, {"identity": fresh.identity(), "items": n}))
        t_opt = time.perf_counter()
        store.optimize()  # builds the HNSW graph; searches before this are brute force
        meta["optimize_s"] = round(time.perf_counter() - t_opt, 2)
        meta["resumed_at"] = start
    finally:
        store.close()  # a killed build leaves the shard (and its progress) for the next run, never its lock
    progress.unlink()
    return partial


def build_index(dataset: Dataset, encoder: OnnxEncoder, index_dir: Path, cfg: IndexConfig, space=None) -> dict:
    """Build (or keep, or resume) the index of `dataset`; returns index.json's content plus timings.

    With a `space` (`training.space.Space`), items are stored as the space's vectors under its distance and
    `encoder` is the space's query encoder.
    """
    index_dir = Path(index_dir)
    fresh = index_meta(dataset, encoder, space)
    current = IndexMeta.read(index_dir)
    if current and current.identity() == fresh.identity() and not cfg.qdrant_url:
        log.info("index %s is up to date (%d items): nothing to do", index_dir, fresh.items)
        return current.model_dump()
    distance, meta = fresh.distance, fresh.model_dump()
    started = time.perf_counter()
    if cfg.qdrant_url:
        collection = cfg.collection or default_collection(dataset.name)
        store = ServerStore(cfg.qdrant_url, collection, dim=encoder.dim, create=True, distance=distance,
                            memory=fresh.memory_sets is not None, hnsw=_hnsw(fresh))
        embed_and_upsert(dataset, encoder, store, cfg, space)
        meta |= {"qdrant_url": cfg.qdrant_url, "collection": collection}
        store.close()
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = None
    else:
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = _edge_build(dataset, encoder, index_dir, cfg, space, fresh, meta)
    meta["build_s"] = round(time.perf_counter() - started, 2)
    meta["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    if tmp is not None:
        meta["disk_mb"] = round(sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20, 1)
    meta["config"] = asdict(cfg)
    if tmp is None:
        write_json_atomic(index_dir / INDEX_FILE, meta)
    else:
        write_json_atomic(tmp / INDEX_FILE, meta)
        replace_dir(tmp, index_dir)
    log.info("indexed %d %s items in %.1f s", meta["items"], dataset.name, meta["build_s"])
    return meta

