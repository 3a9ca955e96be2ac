"""`r4t bench store`: latency of one batched K-vector search and HNSW recall against exact search.

Query vectors are real intents (set titles) embedded by the exported encoder; every call searches
K of them at once, as the resolver does for one fan-out. Recall@limit compares the HNSW answer with
the store's exact (brute-force) answer for the same vectors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.atomic import write_json_atomic, write_text_atomic
from service.encoder import OnnxEncoder
from service.store import Store
from training.data import Dataset


@dataclass
class BenchStoreConfig:
    calls: int = 200  # timed batched calls per setting
    k: int = 10  # vectors per call (one fan-out)
    limits: tuple[int, ...] = (10, 50, 500)  # per-vector result limits to time
    hnsw_ef: tuple[int, ...] = (128,)  # search-time ef values to compare
    warmup: int = 10  # untimed calls first
    seed: int = 0

    def __post_init__(self):
        if self.calls < 1 or self.k < 1 or not self.limits:
            raise ValueError("calls and k must be >= 1 and limits non-empty")


def _timed(fn, *args, **kw):
    started = time.perf_counter()
    out = fn(*args, **kw)
    return out, 1e3 * (time.perf_counter() - started)


def bench_store(store: Store, dataset: Dataset, encoder: OnnxEncoder, cfg: BenchStoreConfig) -> dict:
    """Per (limit, ef): median / p95 latency of K-vector calls and mean recall@limit vs exact."""
    rng = np.random.default_rng(cfg.seed)
    titles = sorted({s.intent for s in dataset.sets})
    picks = rng.choice(len(titles), size=min(len(titles), cfg.calls * cfg.k), replace=False)
    queries = encoder.encode([titles[i] for i in picks])  # (calls*k, D)
    batches = [queries[i : i + cfg.k] for i in range(0, len(queries) - cfg.k + 1, cfg.k)]
    rows = []
    for limit in cfg.limits:
        exact = [store.search_batch(b, limit=limit, exact=True) for b in batches]
        for ef in cfg.hnsw_ef:
            for b in batches[: cfg.warmup]:
                store.search_batch(b, limit=limit, hnsw_ef=ef)
            times, recalls = [], []
            for b, truth in tqdm(list(zip(batches, exact)), desc=f"limit={limit} ef={ef}", leave=False):
                hits, ms = _timed(store.search_batch, b, limit=limit, hnsw_ef=ef)
                times.append(ms)
                recalls += [len({h.id for h in got} & {h.id for h in want}) / max(len(want), 1)
                            for got, want in zip(hits, truth)]
            exact_ms = [_timed(store.search_batch, b, limit=limit, exact=True)[1] for b in batches[:50]]
            rows.append({"limit": limit, "hnsw_ef": ef, "calls": len(batches),
                         "p50_ms": round(float(np.median(times)), 2),
                         "p95_ms": round(float(np.percentile(times, 95)), 2),
                         "exact_p50_ms": round(float(np.median(exact_ms)), 2),
                         "recall_vs_exact": round(float(np.mean(recalls)), 4)})
    return {"dataset": dataset.name, "items": store.count(), "k": cfg.k, "config": asdict(cfg), "rows": rows}


def write_report(result: dict, index_meta: dict, out_dir: Path, command: str) -> Path:
    lines = [f"# Qdrant Edge search: {result['dataset']}", "",
             f"- command: `{command}`", f"- catalog: {result['items']} items, encoder {index_meta.get('encoder')}",
             f"- one call = {result['k']} real query vectors (playlist/outfit titles) in one batched search",
             f"- index build: {index_meta.get('build_s')} s (HNSW optimize {index_meta.get('optimize_s')} s)", "",
             "| limit | hnsw_ef | calls | p50 ms | p95 ms | exact p50 ms | recall vs exact |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['limit']} | {r['hnsw_ef']} | {r['calls']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['exact_p50_ms']} | {r['recall_vs_exact']} |" for r in result["rows"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"search_{result['dataset']}.json", {**result, "index": index_meta})
    path = out_dir / f"search_{result['dataset']}.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
