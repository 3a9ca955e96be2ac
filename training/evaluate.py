"""`r4t eval`: score fan-out strategies on held-out sets with the paper's metrics, write tables.

A strategy maps a batch of intents to retrievals through the one resolver. Every strategy is scored
on the same queries with the same catalog index, so rows are comparable:
- Recall@N / Hit@N: the reference set against the first N distinct items the strategy returns
  (N = K × per-vector limit for fan-outs).
- Vendi (runs): Vendi over R independent runs per query, each run represented by the mean of its
  vectors (paper §6.2), normalised as (VS - 1) / (R - 1); deterministic strategies score 0.
- groundedness, diversity, alignment: the open-ended proxies of paper Eq. 2-4 over the search
  vectors; diversity is the normalised Vendi of the representative items (each vector's top-1; for
  a single vector its top-K distinct items).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from service.atomic import write_json_atomic, write_text_atomic
from service.encoder import OnnxEncoder
from service.resolver import Resolver, mmr
from training import metrics
from training.data import Dataset
from training.exact import ExactStore

log = logging.getLogger(__name__)

# N per catalog: Polyvore's local catalog is 8.9k items, so 5K (the paper's N) would return half of it.
DEFAULT_N = {"polyvore": (100, 500), "mpd": (500, 5000)}


@dataclass
class Retrieval:
    vectors: np.ndarray  # (K, D) the unit vectors that searched the index
    nearest: np.ndarray  # (K,) top-1 cosine of each vector
    items: list[str]  # ordered distinct item ids, at most N
    representatives: list[str]  # items whose embeddings measure diversity


@dataclass
class Strategy:
    """A table row: how to retrieve, in which embedding space (encoder + its index)."""

    name: str
    run: Callable[[list[str], np.ndarray, int, int], list[Retrieval]]  # (queries, (B, D), N, seed)
    encoder: OnnxEncoder
    resolver: Resolver
    stochastic: bool = False
    stats: dict = field(default_factory=dict)  # LM strategies count fan-outs and parsed ones here


@dataclass
class EvalConfig:
    dataset: str = "polyvore"  # polyvore | mpd
    splits: tuple[str, ...] = ("val", "test")  # held-out splits to score
    k: int = 10  # fan-out width K (paper: 10)
    n_values: tuple[int, ...] = ()  # Recall@N cut-offs; () = DEFAULT_N of the dataset
    strategies: tuple[str, ...] = ("single", "mmr")  # rows of the table
    mmr_lambda: float = 0.5  # relevance weight of MMR
    mmr_pool: int = 4  # MMR picks from the top mmr_pool × N_mmr candidates
    mmr_max: int = 500  # MMR orders at most this many items; the rest follow by relevance
    vendi_runs: int = 5  # runs per query for the run-to-run Vendi (paper: 5)
    max_queries: int = 0  # 0 = every set of the split
    batch: int = 64  # queries per resolver call
    seed: int = 0
    distinct_key: str = ""  # payload key whose distinct values among the first N_min items are counted ("" = off)

    def __post_init__(self):
        if self.k < 1 or self.vendi_runs < 1 or self.batch < 1:
            raise ValueError("k, vendi_runs and batch must be >= 1")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError("mmr_lambda must lie in [0, 1]; 0.5 balances relevance and novelty")
        if any(n < self.k for n in self.n_values):
            raise ValueError(f"every N must be >= k={self.k}")

    @property
    def ns(self) -> tuple[int, ...]:
        return tuple(sorted(self.n_values or DEFAULT_N[self.dataset]))


def single_strategy(encoder: OnnxEncoder, resolver: Resolver, k: int) -> Strategy:
    """No fan-out: the query alone retrieves N items (paper's No Fan-out baseline)."""

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        fused = resolver.resolve_many([v[None] for v in qv], limit_per_vector=n)
        return [
            Retrieval(vectors=v[None], nearest=np.array([f[0].score if f else -1.0]),
                      items=[it.id for it in f], representatives=[it.id for it in f[:k]])
            for v, f in zip(qv, fused)
        ]

    return Strategy("no fan-out", run, encoder, resolver)


def mmr_strategy(encoder: OnnxEncoder, resolver: Resolver, k: int, lam: float, pool: int,
                 max_mmr: int) -> Strategy:
    """MMR over the query's candidates: diversity without a fan-out model."""

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        m = min(n, max_mmr)
        depth = max(n, pool * m)
        out = []
        for v, hits in zip(qv, resolver.store.search_batch(qv, limit=depth)):
            head = hits[: pool * m]
            vecs = resolver.store.fetch_vectors([h.id for h in head])  # (pool*m, D)
            chosen = [h.id for h in mmr(v, [replace(h, vector=x) for h, x in zip(head, vecs)], m, lam)]
            taken = set(chosen)
            rest = [h.id for h in hits if h.id not in taken]
            out.append(Retrieval(vectors=v[None], nearest=np.array([hits[0].score if hits else -1.0]),
                                 items=(chosen + rest)[:n], representatives=chosen[:k]))
        return out

    return Strategy(f"MMR (λ={lam})", run, encoder, resolver)


def jitter_strategy(encoder: OnnxEncoder, resolver: Resolver, k: int, scale: float) -> Strategy:
    """A control without a fan-out model: k rows of the query plus isotropic noise (std scale/sqrt(d) a coordinate),
    renormalised and resolved as R4T-Diffusion's rows are. It prices the spread itself: what any set of rows
    scattered around the intent at that distance gets, in recall and in run-to-run Vendi."""

    rows = jitter_rows(k, scale)

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        return retrieve_blocks(resolver, list(rows(queries, qv, seed)), n)

    return Strategy(f"jittered intent (s={scale:g})", run, encoder, resolver, stochastic=True)


def jitter_rows(k: int, scale: float):
    """(queries, (B, D) query vectors, seed) -> (B, k, D) rows: each query plus isotropic noise, renormalised."""

    def rows(queries: list[str], qv: np.ndarray, seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal((len(qv), k, qv.shape[1])) / np.sqrt(qv.shape[1])
        out = qv[:, None, :] + scale * noise
        return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)

    return rows


def neighbour_sets_strategy(encoder: OnnxEncoder, resolver: Resolver, dataset: Dataset, k: int) -> Strategy:
    """Union of the items of the train sets whose intents are nearest to the query, truncated to N.

    A strong peer that needs no item embeddings: it answers with what people actually put together.
    """
    train = dataset.split("train")
    intents = encoder.encode([s.intent for s in train])  # (S, D)

    def union_of_nearest(order: np.ndarray, n: int) -> list[str]:
        items: dict[str, None] = {}
        for j in order:
            items.update(dict.fromkeys(train[j].item_ids))
            if len(items) >= n:
                break
        return list(items)[:n]

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        nearest = [hits[0].score if hits else -1.0 for hits in resolver.store.search_batch(qv, limit=1)]
        orders = np.argsort(-(qv @ intents.T), axis=1)  # (B, S) nearest train intents first
        return [Retrieval(vectors=v[None], nearest=np.array([c]), items=(items := union_of_nearest(o, n)),
                          representatives=items[:k]) for v, c, o in zip(qv, nearest, orders)]

    return Strategy("neighbour sets", run, encoder, resolver)


def category_strategy(encoder: OnnxEncoder, resolver: Resolver, dataset: Dataset, k: int) -> Strategy:
    """A fan-out without a model: "<intent> <category>" for the k catalog categories nearest the intent.

    An outfit spans categories (a top, shoes, a bag), so this is the obvious hand-written fan-out; it prices
    what spreading over categories is worth against the intent alone. Needs a `category` in item payloads.
    """
    counts = Counter(c for s in dataset.split("train") for i in s.item_ids
                     if (c := dataset.items[i].payload.get("category")))
    if len(counts) < k:
        raise ValueError(f"{dataset.name} has {len(counts)} item categories in train; the category fan-out needs {k}")
    names = sorted(counts, key=lambda c: (-counts[c], c))
    category_vectors = encoder.encode(names)  # (C, D)

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        nearest = np.argsort(-(qv @ category_vectors.T), axis=1, kind="stable")[:, :k]  # (B, k)
        rows = encoder.encode([f"{q} {names[j]}" for q, row in zip(queries, nearest) for j in row])  # (B*k, D)
        return retrieve_blocks(resolver, list(rows.reshape(len(queries), k, -1)), n)

    return Strategy("category fan-out", run, encoder, resolver)


def fanout_lm_strategy(name: str, lm, encoder: OnnxEncoder, resolver: Resolver, best_of: int = 1,
                       rewards=None) -> Strategy:
    """An LM writes sub-queries; each is embedded and searched; the union of their results is fused.

    best_of > 1 samples that many fan-outs and keeps the one the label-free OAR composite (`rewards`,
    task "oar") ranks first: selecting by the WSCR reward would read the held-out reference set.
    A malformed fan-out (no sub-queries) falls back to the broad query alone; the parse rate is
    reported beside the table. Each sub-query gets ceil(N / m) results so m < K still fills N.
    """
    if best_of > 1 and (rewards is None or rewards.cfg.task != "oar"):
        raise ValueError("Best-of-N needs a label-free (task='oar') reward model to choose with")

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        groups = lm.sample(queries, best_of, seed=seed)
        chosen = []
        for q, group in zip(queries, groups):
            strategy.stats["fanouts"] = strategy.stats.get("fanouts", 0) + len(group)
            strategy.stats["parsed"] = strategy.stats.get("parsed", 0) + sum(f.ok for f in group)
            if best_of > 1:
                scores = [r.total for r in rewards.score([q] * len(group), group)]
                group = [group[int(np.argmax(scores))]]
            chosen.append(list(group[0].queries) or [q])
        vectors = encoder.encode([s for subs in chosen for s in subs])
        bounds = np.cumsum([0, *map(len, chosen)])
        return retrieve_blocks(resolver, [vectors[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])], n)

    strategy = Strategy(name, run, encoder, resolver, stochastic=True)
    return strategy


def seeded_noise(batch: int, rows: int, dim: int, seed: int):
    """The (B, L, d) starting noise of one eval run: the torch sampler and the exported graph share it."""
    import torch

    return torch.randn(batch, rows, dim, generator=torch.Generator().manual_seed(seed))


def diffusion_strategy(name: str, model, encoder: OnnxEncoder, resolver: Resolver, steps: int,
                       guidance: float = 1.0, method: str = "euler") -> Strategy:
    """R4T-Diffusion: the set denoiser samples L fan-out vectors from the query embedding in one pass."""
    import torch

    from training.diffusion.sampler import model_sigmas, sample

    cfg = model.cfg
    sigmas = model_sigmas(model, steps)

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        noise = seeded_noise(len(qv), cfg.rows, cfg.dim, seed)
        with torch.no_grad():
            fanout = sample(model, torch.from_numpy(qv), noise, sigmas, guidance, method).numpy()
        return retrieve_blocks(resolver, list(fanout), n)

    return Strategy(name, run, encoder, resolver, stochastic=True)


def graph_strategy(name: str, graph, encoder: OnnxEncoder, resolver: Resolver, batch: int = 64) -> Strategy:
    """R4T-Diffusion through an exported graph (`service.graph.FanoutGraph`, ONNX Runtime), fed the same
    seeded noise as `diffusion_strategy`, so the two rows differ only by the export's numerics."""

    rows = graph_rows(graph, batch)

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        return retrieve_blocks(resolver, list(rows(queries, qv, seed)), n)

    return Strategy(name, run, encoder, resolver, stochastic=True)


def graph_rows(graph, batch: int = 64):
    """(queries, query vectors, seed) -> (B, L, D) fan-out rows of an exported graph, from the run's seeded noise."""

    def rows(queries: list[str], qv: np.ndarray, seed: int) -> np.ndarray:
        noise = seeded_noise(len(queries), graph.rows, graph.dim, seed)
        return np.concatenate([graph.run_noise(queries[i : i + batch], noise[i : i + batch].numpy())[1]
                               for i in range(0, len(queries), batch)])

    return rows


def retrieve_blocks(resolver: Resolver, blocks: list[np.ndarray], n: int) -> list[Retrieval]:
    """Each query's (m, D) fan-out vectors -> one Retrieval, through ONE `resolve_many` call.

    Each vector gets ceil(N / m) results, and vectors whose results overlap are searched deeper until
    their union holds N distinct items (`fill`), so every strategy is scored on N items. The union is
    fused rank-major, so every vector's top-1 item (its representative) is among the first m fused items.
    """
    if isinstance(resolver.store, ExactStore):  # the same lists, fused in numpy (training/exact.py)
        return [Retrieval(vectors=b, nearest=top1, items=items, representatives=list(dict.fromkeys(reps)))
                for b, (items, top1, reps) in zip(blocks, resolver.store.union_many(blocks, n))]
    per_vector = max(-(-n // max(len(b), 1)) for b in blocks)
    out = []
    for block, fused in zip(blocks, resolver.resolve_many(blocks, per_vector, "union", n, fill=True)):
        top1 = {p.vector: (it.id, p.score) for it in fused for p in it.found_by if p.rank == 0}
        out.append(Retrieval(vectors=block, nearest=np.array([top1.get(v, ("", -1.0))[1] for v in range(len(block))]),
                             items=[it.id for it in fused],
                             representatives=list(dict.fromkeys(top1[v][0] for v in sorted(top1)))))
    return out


@dataclass
class Row:
    strategy: str
    encoder: str
    split: str
    queries: int
    recall: dict[int, float] = field(default_factory=dict)
    hit: dict[int, float] = field(default_factory=dict)
    vendi_runs: float = 0.0
    groundedness: float = 0.0
    diversity: float = 0.0
    alignment: float = 0.0
    seconds: float = 0.0
    parse_rate: float | None = None  # share of LM fan-outs that parsed; None for strategies without an LM
    distinct: float = 0.0  # mean distinct `distinct_key` values among the first N_min items (0 when off)
    # Each query's Recall@N in split order, so rows scored on the same sets compare query by query (`r4t frontier`).
    recall_per_query: dict[int, list[float]] = field(default_factory=dict)


def score_split(strategy: Strategy, dataset: Dataset, split: str, cfg: EvalConfig) -> Row:
    """Run one strategy over one split and average the per-query metrics."""
    sets = dataset.split(split)
    if cfg.max_queries:
        sets = sets[: cfg.max_queries]
    qv = strategy.encoder.encode([s.intent for s in sets])  # (B, D)
    n_max, runs = cfg.ns[-1], cfg.vendi_runs if strategy.stochastic else 1
    per_query: list[dict] = []
    strategy.stats.clear()
    started = time.perf_counter()
    for lo in tqdm(range(0, len(sets), cfg.batch), desc=f"{strategy.name} {split}", leave=False):
        chunk, cq = sets[lo : lo + cfg.batch], qv[lo : lo + cfg.batch]
        results = [strategy.run([s.intent for s in chunk], cq, n_max, cfg.seed + r) for r in range(runs)]
        for i, s in enumerate(chunk):
            per_query.append(query_metrics(s.item_ids, cq[i], [res[i] for res in results], strategy.resolver, cfg))
            if cfg.distinct_key:
                per_query[-1]["distinct"] = len({dataset.items[j].payload.get(cfg.distinct_key)
                                                 for j in results[0][i].items[: cfg.ns[0]]})
    seconds = time.perf_counter() - started
    mean = {key: float(np.mean([q[key] for q in per_query])) for key in per_query[0]}
    return Row(strategy.name, strategy.encoder.manifest.encoder.name, split, len(sets),
               recall={n: mean[f"recall@{n}"] for n in cfg.ns}, hit={n: mean[f"hit@{n}"] for n in cfg.ns},
               vendi_runs=mean["vendi_runs"], groundedness=mean["groundedness"],
               diversity=mean["diversity"], alignment=mean["alignment"], seconds=round(seconds, 1),
               distinct=mean.get("distinct", 0.0),
               parse_rate=(round(strategy.stats["parsed"] / strategy.stats["fanouts"], 4)
                           if strategy.stats.get("fanouts") else None),
               recall_per_query={n: [round(q[f"recall@{n}"], 6) for q in per_query] for n in cfg.ns})


def query_metrics(reference, query: np.ndarray, runs: list[Retrieval], resolver: Resolver,
                  cfg: EvalConfig) -> dict:
    first = runs[0]
    out = {}
    for n in cfg.ns:
        out[f"recall@{n}"] = metrics.recall(reference, first.items[:n])
        out[f"hit@{n}"] = metrics.hit(reference, first.items[:n])
    # Paper §6.2: each run is represented by the mean of its vectors; deterministic runs repeat.
    means = np.stack([r.vectors.mean(0) for r in runs] * (cfg.vendi_runs // len(runs)))
    out["vendi_runs"] = metrics.vendi_normalised(means)
    out["groundedness"] = metrics.groundedness(first.nearest)
    out["alignment"] = metrics.alignment(first.vectors, query)
    reps = first.representatives
    out["diversity"] = metrics.vendi_normalised(resolver.store.fetch_vectors(reps)) if len(reps) > 1 else 0.0
    return out


def render_markdown(rows: list[Row], header: dict) -> str:
    ns = header["n_values"]
    cols = [f"Recall@{n}" for n in ns] + [f"Hit@{n}" for n in ns] + ["Vendi", "ground.", "divers.", "align."]
    lines = [f"# Evaluation: {header['dataset']}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "dataset"]
    for split in dict.fromkeys(r.split for r in rows):
        lines += ["", f"## {split}", "", "| strategy | encoder | queries | " + " | ".join(cols) + " | parsed | s |",
                  "|---|---|---:|" + "---:|" * (len(cols) + 2)]
        for r in (r for r in rows if r.split == split):
            vals = [r.recall[n] for n in ns] + [r.hit[n] for n in ns]
            vals += [r.vendi_runs, r.groundedness, r.diversity, r.alignment]
            lines.append(f"| {r.strategy} | {r.encoder} | {r.queries} | " + " | ".join(f"{v:.4f}" for v in vals)
                         + f" | {'—' if r.parse_rate is None else f'{r.parse_rate:.2f}'} | {r.seconds} |")
    return "\n".join(lines) + "\n"


def evaluate(strategies: list[Strategy], dataset: Dataset, cfg: EvalConfig, out_dir: Path,
             command: str = "", tag: str = "") -> list[Row]:
    """Score every strategy on every split; write eval_<dataset>[_<tag>].{json,md} under `out_dir`."""
    rows = [score_split(s, dataset, split, cfg) for split in cfg.splits for s in strategies]
    header = {
        "dataset": dataset.name, "catalog_items": strategies[0].resolver.store.count(),
        "k": cfg.k, "n_values": list(cfg.ns), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": command or "r4t eval",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"eval_{dataset.name}" + (f"_{tag}" if tag else "")
    write_json_atomic(out_dir / f"{stem}.json",
                      {"header": header, "config": asdict(cfg), "rows": [asdict(r) for r in rows]})
    write_text_atomic(out_dir / f"{stem}.md", render_markdown(rows, header))
    return rows
