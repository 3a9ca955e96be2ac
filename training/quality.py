"""`r4t space quality`: every strategy on every held-out set, one JSON per dataset (results/quality_<dataset>.json).

Rows (strategy names are the JSON's keys): `single_base` (no fan-out, base MiniLM text space), `single` (no
fan-out in the space), `popular` (the most frequent train items, the same list for every query),
`neighbours` (the union of the nearest-title train sets), `jitter@s` (the space's query plus isotropic
noise, several scales: the control at matched Vendi), `teacher` (the neighbourhood teacher's rows resolved
directly) and `diffusion` (the exported graph). Every row is scored by `training.evaluate.score_split` on the
same sets; `ci_vs_single` is the paired bootstrap 95% interval of its per-query recall minus `single`'s.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from service.atomic import write_json_atomic, write_text_atomic
from service.encoder import OnnxEncoder
from service.resolver import Resolver, SearchOptions
from service.store import MemoryQuery
from training.data import Dataset
from training.evaluate import (
    EvalConfig,
    Retrieval,
    Row,
    Strategy,
    retrieve_blocks,
    score_split,
)
from training.exact import rank_major_union
from training.frontier import paired_difference
from training.space import Space, TeacherConfig, nearest_sets, neighbour_targets, neighbour_weights

log = logging.getLogger(__name__)

DISTINCT_KEY = {"mpd": "artist", "polyvore": "category"}  # "more distinct artists" (MPD), categories (Polyvore)


def popular_strategy(dataset: Dataset, encoder: OnnxEncoder, resolver: Resolver) -> Strategy:
    """The same list for every query: train items by the number of train sets that hold them."""
    counts = Counter(i for s in dataset.split("train") for i in s.item_ids)
    ranked = [i for i, _ in counts.most_common()]

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        return [Retrieval(vectors=v[None], nearest=np.array([1.0]), items=ranked[:n], representatives=ranked[:10])
                for v in qv]

    return Strategy("popular", run, encoder, resolver)


def teacher_strategy(space: Space, text: OnnxEncoder, encoder: OnnxEncoder, resolver: Resolver,
                     cfg: TeacherConfig) -> Strategy:
    """The neighbourhood teacher for a held-out intent (train sets only), resolved as the graph's rows are."""

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        near = nearest_sets(space, text.encode(queries), n=cfg.neighbours)  # (B, n)
        rows = [neighbour_targets(space, q, nb, cfg, seed) for q, nb in zip(qv, near)]
        return retrieve_blocks(resolver, rows, n)

    return Strategy("teacher", run, encoder, resolver, stochastic=cfg.samples > 1)


def memory_strategy(space: Space, text: OnnxEncoder, encoder: OnnxEncoder, resolver: Resolver,
                    weight: float) -> Strategy:
    """`single` plus the nearest train sets' item memory, scored exactly over the whole catalog (no fan-out):
    score_i = z(q·v_i) + weight · z(Σ_j w_j [i ∈ set_j]), with the query head's own neighbour sets j and weights
    w_j, z = divided by the standard deviation over the catalog. A better estimate of each item's chance of
    being in the set than the factor score alone: the low-rank factors smooth away the sets' exact members."""
    n_near = space.neighbours

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        near, sims = nearest_sets(space, text.encode(queries), n=n_near + 1, with_sims=True)
        weights = neighbour_weights(sims, space.temperature, n_near)
        out = []
        for q, idx, w in zip(qv, near[:, :n_near], weights):
            dense = space.items @ q
            memory = space.item_memory(idx, w)
            score = dense / max(dense.std(), 1e-12) + weight * memory / max(memory.std(), 1e-12)
            top = np.argpartition(-score, n)[:n]
            top = top[np.argsort(-score[top], kind="stable")]
            items = [space.item_ids[i] for i in top]
            out.append(Retrieval(vectors=q[None], nearest=np.array([float(dense[top[0]])]), items=items,
                                 representatives=items[:10]))
        return out

    return Strategy(f"memory@{weight:g}", run, encoder, resolver)


def served_memory_strategy(encoder: OnnxEncoder, resolver: Resolver, memory_depth: int, exact: bool = True
                           ) -> Strategy:
    """`memory@w` as the service runs it: the exported head's sets and weights, the manifest's constant, one
    Qdrant formula query per set against the index's sparse item memory (`Resolver.resolve_memory_many`)."""
    coef = encoder.memory["coef"]

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        emb, sets, weights = encoder.encode_memory(queries)
        fused = resolver.resolve_memory_many(emb, [MemoryQuery(s, w, coef) for s, w in zip(sets, weights)], n,
                                             memory_depth, SearchOptions(exact=exact))
        return [Retrieval(vectors=v[None], nearest=np.array([f[0].score if f else -1.0]),
                          items=[it.id for it in f], representatives=[it.id for it in f[:10]])
                for v, f in zip(emb, fused)]

    return Strategy("memory", run, encoder, resolver)


def exact_fanout_strategy(name: str, space: Space, encoder: OnnxEncoder, resolver: Resolver, rows_of,
                           stochastic: bool = True, memory: bool = True, fusion: str = "quota",
                           tau: float = 2.0) -> Strategy:
    """A fan-out scored exactly in numpy (not served): each of the K rows `rows_of(queries, qv, seed)` gives is
    scored q_k·v, plus coef·Σ_j w_j [v ∈ set_j] (the served memory formula with the query's own neighbour sets)
    when `memory`. `fusion`: "quota" fuses the K lists rank-major to N distinct items, as `retrieve_blocks` fuses
    a fan-out; "lse" ranks every item once by the soft maximum over rows, t·log Σ_k exp(q_k·v / t) with
    t = tau × the standard deviation of q·v over the catalog (large tau: the mean row's score; small: the max),
    the marginal of a mixture of K modes. With the graph's rows it is the diffusion; with jittered rows, its
    control."""
    if fusion not in ("quota", "lse"):
        raise ValueError(f"fusion must be 'quota' or 'lse', got {fusion!r}")
    coef = encoder.memory["coef"] if memory else 0.0

    def run(queries: list[str], qv: np.ndarray, n: int, seed: int) -> list[Retrieval]:
        _, sets, weights = encoder.encode_memory(queries) if memory else (None, [None] * len(queries), None)
        out = []
        for i, (block, s) in enumerate(zip(rows_of(queries, qv, seed), sets)):
            scores = space.items @ block.T  # (N, K)
            if memory:
                scores += coef * space.item_memory(s, weights[i])[:, None]
            first = np.argmax(scores, axis=0)  # each row's best item
            if fusion == "quota":
                top = np.argpartition(-scores, n, axis=0)[:n]  # (n, K)
                top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 0), 0, kind="stable"), 0)
                ranked, first = rank_major_union(top.T, n), top[0]  # ties: the one the union put first
            else:
                t = tau * max(float((space.items @ qv[i]).std()), 1e-12)
                fused = t * logsumexp(scores / t, axis=1)
                ranked = np.argpartition(-fused, n)[:n]
                ranked = ranked[np.argsort(-fused[ranked], kind="stable")]
            items = [space.item_ids[j] for j in ranked]
            out.append(Retrieval(vectors=block, nearest=scores[first, np.arange(len(block))], items=items,
                                 representatives=list(dict.fromkeys(space.item_ids[j] for j in first))))
        return out

    return Strategy(name, run, encoder, resolver, stochastic=stochastic)


@dataclass(frozen=True)
class QualityConfig:
    splits: tuple[str, ...] = ("val", "test")
    jitter: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)  # scales of the control; pick the one at the graph's Vendi
    vendi_runs: int = 5
    max_queries: int = 0  # 0 = every set (what the report must use); > 0 for a quick look only
    seed: int = 0


def row_json(row: Row, single: Row | None, memory: Row | None = None) -> dict:
    """A row's numbers; `ci_vs_single` (and `ci_vs_memory` for a fan-out around the memory) are paired intervals."""
    out = {"recall": {str(n): round(v, 6) for n, v in row.recall.items()},
           "hit": {str(n): round(v, 6) for n, v in row.hit.items()}, "vendi": round(row.vendi_runs, 6),
           "groundedness": round(row.groundedness, 6), "diversity": round(row.diversity, 6),
           "alignment": round(row.alignment, 6), "distinct": round(row.distinct, 3), "seconds": row.seconds}
    for key, base in (("ci_vs_single", single), ("ci_vs_memory", memory)):
        if base is not None:
            out[key] = {str(n): [round(x, 6) for x in paired_difference(row.recall_per_query[n],
                                                                         base.recall_per_query[n])]
                        for n in row.recall}
    return out


def matched_jitter(rows: dict[str, Row], name: str = "diffusion", suffix: str = "") -> dict | None:
    """The jitter control (rows `jitter@<scale><suffix>`) whose run-to-run Vendi is closest to `name`'s, and the
    paired interval of name - it."""
    jitters = [j for j in rows if re.fullmatch(r"jitter@[0-9.e-]+" + re.escape(suffix), j)]
    if name not in rows or not jitters:
        return None
    row = rows[name]
    j = min(jitters, key=lambda j: abs(rows[j].vendi_runs - row.vendi_runs))
    return {"strategy": name, "jitter": j, "vendi": [round(row.vendi_runs, 6), round(rows[j].vendi_runs, 6)],
            "ci": {str(n): [round(x, 6) for x in paired_difference(row.recall_per_query[n], rows[j].recall_per_query[n])]
                   for n in row.recall}}


def measure(strategies: dict[str, Strategy], dataset: Dataset, space: Space, cfg: QualityConfig, out: Path,
            command: str, extra: dict | None = None) -> dict:
    """Score every strategy on every split; write `out` (.json and .md)."""
    ecfg = EvalConfig(dataset=dataset.name, splits=cfg.splits, vendi_runs=cfg.vendi_runs, max_queries=cfg.max_queries,
                      seed=cfg.seed, distinct_key=DISTINCT_KEY.get(dataset.name, ""))
    report = {"dataset": dataset.name, "space": space.name, "space_kind": space.kind, "distance": space.distance,
              "k": ecfg.k, "n_values": list(ecfg.ns), "vendi_runs": cfg.vendi_runs,
              "distinct": f"distinct {ecfg.distinct_key} values among the first {ecfg.ns[0]} items",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": command,
              "config": asdict(cfg), **(extra or {}), "splits": {}}
    for split in cfg.splits:
        rows = {name: score_split(s, dataset, split, ecfg) for name, s in strategies.items()}
        single = rows.get("single")
        report["splits"][split] = {"queries": next(iter(rows.values())).queries, "strategies": {
            name: row_json(r, single if name != "single" else None,
                           rows.get("memory") if name.endswith("+memory") else None) for name, r in rows.items()}}
        report["splits"][split]["matched_jitter"] = matched_jitter(rows)
        if "diffusion+memory" in rows:
            report["splits"][split]["matched_jitter_memory"] = matched_jitter(rows, "diffusion+memory", "+memory")
        more = [m for name in rows if name.startswith("diffusion") and name not in ("diffusion", "diffusion+memory")
                if (m := matched_jitter(rows, name, name[len("diffusion"):]))]
        if more:
            report["splits"][split]["matched_jitter_more"] = more
        log.info("%s %s: %s", dataset.name, split, {n: r.recall for n, r in rows.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), report)
    write_text_atomic(out.with_suffix(".md"), render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    ns = [str(n) for n in report["n_values"]]
    lines = [f"# Quality: {report['dataset']} in the `{report['space']}` space ({report['space_kind']}, "
             f"{report['distance']})", "", f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- K = {report['k']}; Vendi over {report['vendi_runs']} runs; {report['distinct']}",
             "- Δ vs single: mean per-query recall difference against `single` on the same sets, paired bootstrap 95%"]
    for split, block in report["splits"].items():
        lines += ["", f"## {split} ({block['queries']} sets, all of them)", "",
                  "| strategy | " + " | ".join(f"R@{n}" for n in ns) + " | " + " | ".join(f"Δ@{n} vs single" for n in ns)
                  + " | " + " | ".join(f"Hit@{n}" for n in ns) + " | Vendi | distinct |",
                  "|---|" + "---:|" * (3 * len(ns) + 2)]
        for name, r in block["strategies"].items():
            ci = r.get("ci_vs_single")
            deltas = [f"{ci[n][0]:+.4f} [{ci[n][1]:+.4f}, {ci[n][2]:+.4f}]" if ci else "—" for n in ns]
            lines.append(f"| {name} | " + " | ".join(f"{r['recall'][n]:.4f}" for n in ns) + " | " + " | ".join(deltas)
                         + " | " + " | ".join(f"{r['hit'][n]:.4f}" for n in ns)
                         + f" | {r['vendi']:.4f} | {r['distinct']:.1f} |")
        for name, r in block["strategies"].items():
            if ci := r.get("ci_vs_memory"):
                lines += ["", f"`{name}` − `memory` (its own query with the memory, no fan-out): "
                          + "; ".join(f"Δ@{n} {c[0]:+.4f} [{c[1]:+.4f}, {c[2]:+.4f}]" for n, c in ci.items())]
        for m in filter(None, (block.get("matched_jitter"), block.get("matched_jitter_memory"),
                               *block.get("matched_jitter_more", []))):
            lines += ["", f"`{m['strategy']}` − `{m['jitter']}` (the jitter at the nearest Vendi, {m['vendi'][0]:.4f} vs "
                      f"{m['vendi'][1]:.4f}): " + "; ".join(f"Δ@{n} {c[0]:+.4f} [{c[1]:+.4f}, {c[2]:+.4f}]"
                                                            for n, c in m["ci"].items())]
    return "\n".join(lines) + "\n"
