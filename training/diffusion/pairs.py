"""`r4t synth`: objective-consistent (query embedding, L×d target set) pairs from the tuned fan-out LM.

For each train intent the LM samples G fan-outs; each is scored with the training reward through the
serving retriever. A fan-out is kept when it is successful: its reward is above a floor (0 by default)
and at least the median of its query's G rewards (so every query contributes its better half, and a
query whose samples all failed contributes nothing; `quantile` raises the bar, e.g. 0.875 keeps the
best 4 of 32, an average of best-of-8 picks); for WSCR `min_recall` can also ask that it found
some of the reference set, so a weak policy's best-formatted misses are not taught as successes.
Targets (paper §3):
- WSCR: the sub-query embeddings (the model learns the search decomposition);
- OAR: the embeddings of each sub-query's top-1 retrieved item.
A fan-out with m < L rows is padded to L by resampling its own rows (seeded): never zeros, which the
model would learn as items. Queries are processed in shards of `shard_size`; each shard is written
atomically as one .npz, so a rerun skips finished shards and resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.atomic import write_json_atomic, write_npz_atomic
from training.data import Dataset
from training.fanout.infer import FanoutLM
from training.fanout.rewards import RewardModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    samples: int = 8  # G fan-outs per train intent (paper: 128)
    rows: int = 10  # L rows per target set
    max_queries: int = 0  # 0 = every train intent
    shard_size: int = 64  # intents per shard file
    seed: int = 0
    min_reward: float = 0.0  # kept fan-outs score above this (and at least their query's median)
    min_recall: float | None = None  # WSCR: kept fan-outs also recall more than this of the reference set
    quantile: float = 0.5  # kept fan-outs score at least this quantile of their query's rewards (0.5: median)


def pad_rows(rows: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """(m, d) -> (length, d): the first `length` rows, topped up by resampling the rows themselves."""
    if len(rows) == 0:
        raise ValueError("cannot pad an empty set")
    if len(rows) >= length:
        return rows[:length]
    extra = rng.choice(len(rows), size=length - len(rows), replace=True)
    return np.concatenate([rows, rows[extra]], axis=0)


def successful(totals: list[float], min_reward: float = 0.0, recalls: list[float] | None = None,
               min_recall: float | None = None, quantile: float = 0.5) -> list[bool]:
    """Kept fan-outs of one query: reward above `min_reward` and at least the `quantile` of the query's rewards
    (the median by default), and, when `min_recall` is set, recall of the reference set above it."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    bar = float(np.quantile(totals, quantile)) if totals else 0.0
    if min_recall is None:
        return [t > min_reward and t >= bar for t in totals]
    return [t > min_reward and t >= bar and r > min_recall for t, r in zip(totals, recalls)]


def synthesize(lm: FanoutLM, rewards: RewardModel, dataset: Dataset, out_dir: Path, cfg: SynthConfig) -> dict:
    """Write pairs-<shard>.npz (query (n, d), targets (n, L, d), reward (n,), set_index (n,)) + synth.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = dataset.split("train")
    sets = sets[: cfg.max_queries] if cfg.max_queries else sets
    task = rewards.cfg.task
    shards = range(0, len(sets), cfg.shard_size)
    started, stats = time.perf_counter(), {"fanouts": 0, "parsed": 0, "kept": 0, "queries_with_pairs": 0}
    for shard, lo in enumerate(tqdm(shards, desc=f"synth {dataset.name}", unit="shard")):
        path = out_dir / f"pairs-{shard:05d}.npz"
        if path.exists():
            continue
        chunk = sets[lo : lo + cfg.shard_size]
        rng = np.random.default_rng([cfg.seed, shard])
        groups = lm.sample([s.intent for s in chunk], cfg.samples, seed=cfg.seed * 100_003 + shard)
        flat = [(j, f) for j, g in enumerate(groups) for f in g]
        scored = rewards.score([chunk[j].intent for j, _ in flat], [f for _, f in flat],
                               [chunk[j].item_ids for j, _ in flat])
        query_vecs = rewards.encoder.encode([s.intent for s in chunk])
        kept = []  # (set index in chunk, fan-out, reward) of the successful fan-outs, in query order
        for j in range(len(chunk)):
            mine = [(f, r) for (jj, f), r in zip(flat, scored) if jj == j]
            keep = successful([r.total for _, r in mine], cfg.min_reward, [r.recall for _, r in mine], cfg.min_recall,
                              cfg.quantile)
            chosen = [(j, f, r) for (f, r), k in zip(mine, keep) if k and f.queries]
            stats["queries_with_pairs"] += bool(chosen)
            kept += chosen
        # One encode (and for OAR one search and one fetch) for every kept sub-query of the shard.
        rows = rewards.encoder.encode([q for _, f, _ in kept for q in f.queries]) if kept else None  # (sum m, d)
        if kept and task == "oar":
            hits = rewards.resolver.store.search_batch(rows, limit=1)
            rows = rewards.resolver.store.fetch_vectors([h[0].id for h in hits])
        bounds = np.cumsum([0, *(len(f.queries) for _, f, _ in kept)])
        q_out = [query_vecs[j] for j, _, _ in kept]
        t_out = [pad_rows(rows[a:b], cfg.rows, rng) for a, b in zip(bounds[:-1], bounds[1:])]
        r_out = [r.total for _, _, r in kept]
        i_out = [lo + j for j, _, _ in kept]
        stats["fanouts"] += len(flat)
        stats["parsed"] += sum(f.ok for _, f in flat)
        stats["kept"] += len(q_out)
        d = rewards.encoder.dim
        write_npz_atomic(path, query=np.asarray(q_out, np.float32).reshape(-1, d),
                  targets=np.asarray(t_out, np.float32).reshape(-1, cfg.rows, d),
                  reward=np.asarray(r_out, np.float32), set_index=np.asarray(i_out, np.int64))
    report = {"dataset": dataset.name, "task": task, "policy": lm.name, "queries": len(sets),
              "samples_per_query": cfg.samples, "shards": len(shards),
              "seconds_this_run": round(time.perf_counter() - started, 1), "this_run": stats,
              "pairs_total": sum(len(np.load(p)["reward"]) for p in sorted(out_dir.glob("pairs-*.npz"))),
              "config": asdict(cfg), "reward": asdict(rewards.cfg)}
    write_json_atomic(out_dir / "synth.json", report)
    log.info("synth %s: %d pairs in %s", dataset.name, report["pairs_total"], out_dir)
    return report


def reference_pairs(encoder, store, dataset: Dataset, out_dir: Path, rows: int = 10, seed: int = 0) -> dict:
    """Diagnostic pairs without the LM: each train set's intent -> the embeddings of L of its own items.

    Not the paper's pairs (no fan-out, no reward): they show what the denoiser learns when its targets
    are the reference sets themselves, which separates the model from the policy that feeds it. Items
    are drawn without replacement (sets with fewer than L padded by `pad_rows`); one pairs-00000.npz.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started, rng = time.perf_counter(), np.random.default_rng(seed)
    index, sets = zip(*[(i, s) for i, s in enumerate(dataset.split("train")) if s.item_ids])
    chosen = [list(rng.permutation(s.item_ids)[:rows]) for s in sets]
    vectors = store.fetch_vectors([i for c in chosen for i in c])
    bounds = np.cumsum([0, *map(len, chosen)])
    targets = [pad_rows(vectors[a:b], rows, rng) for a, b in zip(bounds[:-1], bounds[1:])]
    write_npz_atomic(out_dir / "pairs-00000.npz", query=encoder.encode([s.intent for s in sets]).astype(np.float32),
              targets=np.asarray(targets, np.float32), reward=np.ones(len(sets), np.float32),
              set_index=np.asarray(index, np.int64))
    report = {"dataset": dataset.name, "task": "reference", "policy": None, "queries": len(sets),
              "pairs_total": len(sets), "rows": rows, "seed": seed,
              "seconds_this_run": round(time.perf_counter() - started, 1)}
    write_json_atomic(out_dir / "synth.json", report)
    return report


def load_pairs(pairs_dir: Path, extra: tuple[str, ...] = ()) -> tuple[np.ndarray, ...]:
    """All shards -> (query (n, d), targets (n, L, d)) float32, then the `extra` arrays (e.g. "set_index")."""
    files = sorted(Path(pairs_dir).glob("pairs-*.npz"))
    if not files:
        raise FileNotFoundError(f"no pairs-*.npz under {pairs_dir}; run `r4t synth` first")
    loaded = [np.load(f) for f in files]
    return tuple(np.concatenate([x[k] for x in loaded]) for k in ("query", "targets", *extra))


def read_report(pairs_dir: Path) -> dict:
    return json.loads((Path(pairs_dir) / "synth.json").read_text())
