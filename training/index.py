"""Embed a catalog with the exported encoder and build its Qdrant index (Edge shard or server).

The index directory holds the Edge shard and `index.json`, which names the encoder (sha256) and the
catalog fingerprint it was built from: re-running with the same encoder and catalog is a no-op, a
different one rebuilds into a temp directory that replaces the old one only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from service.atomic import replace_dir, write_json_atomic
from service.encoder import OnnxEncoder
from service.manifest import INDEX_FILE, SHARD_DIR, IndexMeta, default_collection
from service.store import EdgeStore, HnswSettings, ServerStore, Store
from training.data import Dataset

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
    meta = IndexMeta(dataset=dataset.name, items=len(dataset.items), catalog_sha256=catalog_fingerprint(dataset),
                     encoder=encoder.manifest.encoder.name, encoder_sha256=encoder.manifest.encoder_sha256,
                     dim=encoder.dim, quantization="int8" if HnswSettings.int8 else None)  # pre-int8 indexes rebuild
    if space is not None:  # item vectors come from the space, not from embedding the item texts
        meta = meta.model_copy(update={"space": space.name, "space_kind": space.kind, "distance": space.distance})
    return meta


def embed_and_upsert(dataset: Dataset, encoder: OnnxEncoder, store: Store, cfg: IndexConfig, space=None) -> None:
    """Embed every item in batches (progress bar), or take its vector from `space`, and upsert with payloads."""
    items = list(dataset.items.values())
    row = {i: j for j, i in enumerate(space.item_ids)} if space is not None else None
    bar = tqdm(total=len(items), desc=f"index {dataset.name}", unit="item")
    for start in range(0, len(items), cfg.upsert_every):
        chunk = items[start : start + cfg.upsert_every]
        if row is None:
            vectors = encoder.encode([it.text for it in chunk], batch_size=cfg.batch_size)  # (n, D)
        else:
            vectors = space.items[[row[it.id] for it in chunk]]  # (n, k)
        store.upsert([it.id for it in chunk], vectors, [{"text": it.text, **it.payload} for it in chunk])
        bar.update(len(chunk))
    bar.close()


def build_index(dataset: Dataset, encoder: OnnxEncoder, index_dir: Path, cfg: IndexConfig, space=None) -> dict:
    """Build (or keep) the index of `dataset`; returns index.json's content plus timings.

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
        store = ServerStore(cfg.qdrant_url, collection, dim=encoder.dim, create=True, distance=distance)
        embed_and_upsert(dataset, encoder, store, cfg, space)
        meta |= {"qdrant_url": cfg.qdrant_url, "collection": collection}
        store.close()
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = None
    else:
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=index_dir.parent, prefix=f".{index_dir.name}."))
        tmp.chmod(0o755)
        try:
            store = EdgeStore.create(tmp / SHARD_DIR, encoder.dim, distance=distance)
            embed_and_upsert(dataset, encoder, store, cfg, space)
            t_opt = time.perf_counter()
            store.optimize()  # builds the HNSW graph; searches before this are brute force
            meta["optimize_s"] = round(time.perf_counter() - t_opt, 2)
            store.close()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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

