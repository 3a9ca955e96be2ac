"""`r4t frontier`: every scored strategy on one recall-vs-Vendi plane, against issue 4's target corner.

Reads `r4t eval` JSON tables (one encoder, one index build) and places each row at (run-to-run Vendi,
Recall@N). The target: every Recall@N at least 0.9 x R4T-FOLM's and above no fan-out's, and Vendi at
least R4T-FOLM's, per split. The jittered intent (rows = intent + noise) traces what spread alone
buys, so a learned model earns its place only where it lies above that curve.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.atomic import write_json_atomic, write_text_atomic

REFERENCES = ("no fan-out", "R4T-FOLM")
FAMILIES = (("no fan-out", "no fan-out"), ("R4T-FOLM", "R4T-FOLM"), ("jittered", "jittered intent"),
            ("R4T-Diffusion", "R4T-Diffusion"), ("ONNX", "R4T-Diffusion"), ("category", "category fan-out"),
            ("MMR", "MMR"), ("zero-shot", "zero-shot"), ("Best-of-5", "Best-of-5"))


@dataclass
class Point:
    source: str  # the eval table's tag, e.g. "distil3-r-rel-w0-student-s2"
    strategy: str
    family: str
    split: str
    recall: dict[str, float]  # "100" -> Recall@100
    vendi: float  # run-to-run Vendi, normalised
    recall_vs_single: float | None = None  # the least of Recall@N / no fan-out's over N
    recall_vs_folm: float | None = None  # the least of Recall@N / R4T-FOLM's over N
    vendi_vs_folm: float | None = None
    meets_target: bool = False
    # N -> [mean Recall@N minus no fan-out's, 95% bootstrap interval low, high], paired over the same queries
    vs_single: dict[str, list[float]] = field(default_factory=dict)
    per_query: dict[str, list[float]] = field(default_factory=dict, repr=False)


def family(strategy: str) -> str:
    return next((name for prefix, name in FAMILIES if strategy.startswith(prefix)), strategy)


def load_points(tables: list[Path]) -> list[Point]:
    """Every row of the tables; the source is the tag in `eval_<dataset>_<tag>.json`."""
    points = []
    for path in tables:
        table = json.loads(path.read_text())
        source = path.stem.split("_", 2)[2] if path.stem.count("_") >= 2 else path.stem
        points += [Point(source, r["strategy"], family(r["strategy"]), r["split"], r["recall"], r["vendi_runs"],
                         per_query=r.get("recall_per_query", {})) for r in table["rows"]]
    return points


def score(points: list[Point]) -> list[Point]:
    """Fill the ratios and the target flag; each split needs exactly one no fan-out and one R4T-FOLM row."""
    for split in sorted({p.split for p in points}):
        refs = {}
        for name in REFERENCES:
            found = [p for p in points if p.split == split and p.family == name]
            if len(found) != 1:
                raise ValueError(f"{split}: need exactly one {name!r} row among the tables, found {len(found)}")
            refs[name] = found[0]
        single, folm = refs["no fan-out"], refs["R4T-FOLM"]
        for p in (p for p in points if p.split == split):
            ns = sorted(p.recall, key=int)
            p.recall_vs_single = least_ratio([p.recall[n] for n in ns], [single.recall[n] for n in ns])
            p.recall_vs_folm = least_ratio([p.recall[n] for n in ns], [folm.recall[n] for n in ns])
            p.vendi_vs_folm = least_ratio([p.vendi], [folm.vendi])
            p.meets_target = (all(p.recall[n] > single.recall[n] and p.recall[n] >= 0.9 * folm.recall[n] for n in ns)
                              and p.vendi >= folm.vendi)
            p.vs_single = {n: paired_difference(p.per_query[n], single.per_query[n]) for n in ns
                           if n in p.per_query and n in single.per_query}
    return points


def least_ratio(values: list[float], references: list[float]) -> float | None:
    """min(value / reference); None where a reference is 0 (a deterministic R4T-FOLM has Vendi 0)."""
    return None if 0 in references else min(v / r for v, r in zip(values, references))


def paired_difference(a: list[float], b: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """[mean(a - b), 2.5% and 97.5% quantiles of it over queries resampled with replacement].

    a and b are per-query recalls of two strategies on the same queries in the same order.
    """
    if len(a) != len(b):
        raise ValueError(f"per-query recalls of {len(a)} and {len(b)} queries cannot be paired")
    d = np.asarray(a) - np.asarray(b)  # (Q,)
    boot = d[np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))].mean(1)  # (resamples,)
    return [float(d.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]


def render_markdown(points: list[Point], command: str) -> str:
    ns = sorted(points[0].recall, key=int)
    head = ["source", "strategy", *(f"R@{n}" for n in ns), "Vendi", "R / no fan-out", "R / FOLM", "Vendi / FOLM",
            "target", *(f"R@{n} − no fan-out [95% CI]" for n in ns)]
    lines = [f"# Recall against Vendi, every strategy\n\n- command: `{command}`\n- ratios: the least over N; "
             "target: every R@N > no fan-out and ≥ 0.9 × R4T-FOLM, Vendi ≥ R4T-FOLM; the last columns pair "
             "each query's recall with no fan-out's on the same query (bold: the 95% interval excludes 0)\n"]
    for split in sorted({p.split for p in points}, key=lambda s: (s != "val", s)):
        lines += [f"\n## {split}\n", "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        for p in sorted((p for p in points if p.split == split), key=lambda p: (p.family, p.vendi)):
            lines.append(f"| {p.source} | {p.strategy} | " + " | ".join(f"{p.recall[n]:.4f}" for n in ns) +
                         f" | {p.vendi:.3f} | " + " | ".join("—" if r is None else f"{r:.2f}" for r in (
                             p.recall_vs_single, p.recall_vs_folm, p.vendi_vs_folm)) +
                         f" | {'**yes**' if p.meets_target else 'no'} | " +
                         " | ".join(interval(p.vs_single.get(n)) for n in ns) + " |")
    pooled = {ref: pooled_differences(points, ref) for ref in REFERENCES}
    if pooled["no fan-out"]:
        lines += ["\n## every split pooled: each query paired with the references' on the same query\n",
                  "| source | strategy | queries | " + " | ".join(f"R@{n} − {ref} [95% CI]" for ref in REFERENCES
                                                               for n in ns) + " |",
                  "|---|---|---:|" + "---:|" * len(ns) * len(REFERENCES)]
        lines += [f"| {src} | {strategy} | {q} | " + " | ".join(
                      interval(pooled[ref].get((src, strategy), (0, {}))[1].get(n)) for ref in REFERENCES for n in ns)
                  + " |" for (src, strategy), (q, _) in pooled["no fan-out"].items()]
    return "\n".join(lines) + "\n"


def pooled_differences(points: list[Point], reference: str = "no fan-out"
                       ) -> dict[tuple[str, str], tuple[int, dict[str, list[float]]]]:
    """(source, strategy) -> (queries, N -> paired difference to `reference`) over every split's queries together."""
    singles = {p.split: p for p in points if p.family == reference}
    out = {}
    for key in dict.fromkeys((p.source, p.strategy) for p in points if p.family not in REFERENCES):
        rows = [p for p in points if (p.source, p.strategy) == key]
        ns = [n for n in sorted(rows[0].recall, key=int)
              if all(n in p.per_query and n in singles[p.split].per_query for p in rows)]
        if ns:
            out[key] = (sum(len(p.per_query[ns[0]]) for p in rows),
                        {n: paired_difference([x for p in rows for x in p.per_query[n]],
                                              [x for p in rows for x in singles[p.split].per_query[n]]) for n in ns})
    return out


def interval(d: list[float] | None) -> str:
    """"+0.0031 [−0.0102, +0.0167]", in bold where the interval excludes 0; "—" without per-query recalls."""
    if not d:
        return "—"
    text = f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]".replace("-", "−")
    return f"**{text}**" if d[1] > 0 or d[2] < 0 else text


def plot(points: list[Point], path: Path, title: str) -> None:
    """One panel per (split, N): Recall@N against Vendi, the target corner shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({p.split for p in points}, key=lambda s: (s != "val", s))
    ns = sorted(points[0].recall, key=int)
    fig, axes = plt.subplots(len(ns), len(splits), figsize=(5.5 * len(splits), 4.2 * len(ns)), squeeze=False)
    markers = {"R4T-Diffusion": "o", "jittered intent": "x", "R4T-FOLM": "*", "no fan-out": "s"}
    for col, split in enumerate(splits):
        here = [p for p in points if p.split == split]
        single = next(p for p in here if p.family == "no fan-out")
        folm = next(p for p in here if p.family == "R4T-FOLM")
        for row, n in enumerate(ns):
            ax = axes[row][col]
            floor = max(single.recall[n], 0.9 * folm.recall[n])
            top, right = max(p.recall[n] for p in here) * 1.15, max(p.vendi for p in here) * 1.1 + 0.02
            ax.fill_between([folm.vendi, right], floor, top, color="tab:green", alpha=0.12, label="target")
            for fam in sorted({p.family for p in here}):
                group = sorted((p for p in here if p.family == fam), key=lambda p: p.vendi)
                style = "-" if fam == "jittered intent" else ""
                ax.plot([p.vendi for p in group], [p.recall[n] for p in group], style + markers.get(fam, "^"),
                        label=fam, ms=9 if fam == "R4T-FOLM" else 6)
            for p in (p for p in here if p.family == "R4T-Diffusion"):
                ax.annotate(p.source, (p.vendi, p.recall[n]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.axhline(single.recall[n], color="grey", lw=0.8, ls="--")
            ax.set(xlim=(-0.02, right), ylim=(0, top),
                   xlabel="run-to-run Vendi (normalised)", ylabel=f"Recall@{n}", title=f"{title}: {split}, Recall@{n}")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_frontier(tables: list[Path], out: Path, title: str, command: str) -> list[Point]:
    """results/<out>.{md,json,png} from the tables; the md and json are written atomically (the PNG is never read)."""
    points = score(load_points(tables))
    write_text_atomic(out.with_suffix(".md"), render_markdown(points, command))
    write_json_atomic(out.with_suffix(".json"), {"command": command, "points": [
        {k: v for k, v in asdict(p).items() if k != "per_query"} for p in points]})
    plot(points, out.with_suffix(".png"), title)
    return points
