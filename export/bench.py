"""`r4t bench graph`: model-only latency of exported fan-out graphs in ONNX Runtime, batch by batch.

Opens each artifact exactly as the service does (`FanoutGraph`: same session options, same provider
choice), feeds real queries and fixed noise, and times `session.run` alone: no HTTP, no store. On
CUDA, inputs and outputs can be bound on the device (IO binding) so the copies leave the timing.
Reports the provider that actually ran, since onnxruntime-gpu lists CUDA even where it cannot start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.host import machine  # noqa: F401  (re-exported: the report header)
from service.graph import FanoutGraph


@dataclass(frozen=True)
class GraphBenchConfig:
    batches: tuple[int, ...] = (1, 8, 64, 256)
    device: str = "cpu"  # cpu | cuda
    threads: int = 0  # intra-op threads; 0 = one per physical core
    io_binding: bool = False  # CUDA only: keep inputs and outputs on the device
    min_runs: int = 5
    max_seconds: float = 5.0  # per (graph, batch) cell, after warm-up
    warmup: int = 2
    seed: int = 0


ROUND = 5  # timed runs of one graph before the next graph's turn
MAX_RUNS = 1000  # per (graph, batch) cell


def _inputs(graph: FanoutGraph, queries: list[str], batch: int, seed: int) -> dict[str, np.ndarray]:
    texts = [queries[i % len(queries)] for i in range(batch)]
    encodings = graph.tokenizer.encode_batch(texts)
    noise = np.random.default_rng(seed).standard_normal((batch, graph.rows, graph.dim), dtype=np.float32)
    return {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "noise": noise}


def _runner(graph: FanoutGraph, feeds: dict[str, np.ndarray], io_binding: bool):
    """A no-argument callable that runs the graph once on `feeds`."""
    session = graph.session
    if not (io_binding and graph.provider == "CUDAExecutionProvider"):
        return lambda: session.run(None, feeds)
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for name in ("query_embedding", "fanout"):
        binding.bind_output(name, "cuda")

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def bench_graphs(directories: list[Path], queries: list[str], cfg: GraphBenchConfig) -> list[dict]:
    """One row per (graph, batch size): p50/p95 ms per run, ms per query, queries per second.

    The graphs of one batch size are timed in alternating rounds of `ROUND` runs, so a machine that
    drifts (a shared VM, a CPU that throttles) slows every graph alike instead of the one timed last.
    """
    graphs = [FanoutGraph(d, cfg.device, cfg.threads) for d in directories]
    rows = []
    for batch in cfg.batches:
        runs = [_runner(g, _inputs(g, queries, batch, cfg.seed), cfg.io_binding) for g in graphs]
        for run in runs:
            for _ in range(cfg.warmup):
                run()
        times: list[list[float]] = [[] for _ in graphs]
        started = time.perf_counter()
        while (len(times[0]) < cfg.min_runs or time.perf_counter() - started < cfg.max_seconds * len(graphs)) \
                and len(times[0]) < MAX_RUNS:
            for run, ts in zip(runs, times):
                for _ in range(ROUND):
                    t0 = time.perf_counter()
                    run()
                    ts.append((time.perf_counter() - t0) * 1000)
        rows += [_row(g, cfg, batch, ts) for g, ts in zip(graphs, times)]
    return rows


def _row(graph: FanoutGraph, cfg: GraphBenchConfig, batch: int, times: list[float]) -> dict:
    p50, p95 = np.percentile(times, [50, 95])
    return {
        "graph": graph.directory.name, "precision": graph.manifest.precision, "steps": graph.info.steps,
        "provider": graph.provider, "io_binding": cfg.io_binding and graph.provider == "CUDAExecutionProvider",
        "batch": batch, "runs": len(times), "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
        "ms_per_query": round(float(p50) / batch, 4), "qps": round(batch * 1000 / float(p50), 1),
    }


def write_report(rows: list[dict], header: dict, out: Path, stem: str) -> list[Path]:
    """JSON (every row), a markdown table and a ms-per-query-vs-batch plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    files[0].write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")
    lines = [f"# Fan-out graph latency ({header['dataset']})", "",
             f"Machine: {header['machine']}. Command: `{header['command']}`.",
             "Model only: one `session.run` of encoder + unrolled sampler per batch; no HTTP, no store; the graphs "
             f"of a batch size are timed in alternating rounds of {ROUND} runs.", "",
             "| graph | precision | steps | provider | batch | p50 ms | p95 ms | ms/query | queries/s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['graph']} | {r['precision']} | {r['steps']} | {r['provider'].removesuffix('ExecutionProvider')}"
              f"{' +IO binding' if r['io_binding'] else ''} | {r['batch']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{r['ms_per_query']:.3f} | {r['qps']:.0f} |" for r in rows]
    files[1].write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    def label(r: dict) -> str:
        return f"{r['graph']} {r['provider'].removesuffix('ExecutionProvider')}{' +IO' if r['io_binding'] else ''}"

    for curve in dict.fromkeys(label(r) for r in rows):
        sub = [r for r in rows if label(r) == curve]
        ax.plot([r["batch"] for r in sub], [r["ms_per_query"] for r in sub], marker="o", label=curve)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per query (p50)", title="fan-out graph")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(files[2], dpi=120)
    plt.close(fig)
    return files


def write_figure5(graph_rows: list[dict], generate: dict, out: Path, stem: str) -> list[Path]:
    """The paper's Figure 5 from two measured reports: fan-out graph vs LLM generation, ms per query by batch.

    `graph_rows`: `bench_graphs` rows (one provider's curve, the fastest per batch is kept);
    `generate`: a `gen_bench` report, {"models": {name: {"rows": [...], ...}}, ...}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[int, dict] = {}
    for r in graph_rows:
        if r["batch"] not in best or r["ms_per_query"] < best[r["batch"]]["ms_per_query"]:
            best[r["batch"]] = r
    models = generate["models"]
    lines = ["| batch | fan-out graph ms/query | " + " | ".join(f"{m} ms/query | ratio" for m in models) + " |",
             "|---:|---:|" + "---:|---:|" * len(models)]
    for batch in sorted(best):
        cells = []
        for m in models.values():
            row = next((r for r in m["rows"] if r["batch"] == batch), None)
            cells += [f"{row['ms_per_query']:.3f}", f"{row['ms_per_query'] / best[batch]['ms_per_query']:.0f}×"] \
                if row else ["–", "–"]
        lines.append(f"| {batch} | {best[batch]['ms_per_query']:.4f} | " + " | ".join(cells) + " |")
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sorted(best), [best[b]["ms_per_query"] for b in sorted(best)], marker="o", label="R4T fan-out graph")
    for name, m in models.items():
        ax.plot([r["batch"] for r in m["rows"]], [r["ms_per_query"] for r in m["rows"]], marker="s",
                label=f"LLM fan-out: {name}")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per query", title="fan-out latency vs batch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files = [out / f"{stem}.md", out / f"{stem}.png"]
    fig.savefig(files[1], dpi=120)
    plt.close(fig)
    files[0].write_text("\n".join(lines) + "\n")
    return files
