"""`r4t diffusion steps`: retrieval quality and model-only latency against the number of sampler steps.

Every step count is scored by the same `r4t eval` machinery (same queries, index and seeds), so the
rows are comparable; latency is the denoiser alone (no encoder, no search) on this machine's CPU.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from service.atomic import write_json_atomic, write_text_atomic
from training.diffusion.model import SetDenoiser
from training.diffusion.sampler import model_sigmas, sample
from training.evaluate import EvalConfig, Row, diffusion_strategy, score_split


def model_latency(model: SetDenoiser, steps: int, batch: int, guidance: float = 1.0, repeats: int = 10) -> float:
    """Median milliseconds of one sampling pass (all steps) for `batch` queries, after one warm-up."""
    cfg = model.cfg
    sigmas = model_sigmas(model, steps)
    query = torch.nn.functional.normalize(torch.randn(batch, cfg.dim), dim=-1)  # (B, d)
    noise = torch.randn(batch, cfg.rows, cfg.dim)  # (B, L, d)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            started = time.perf_counter()
            sample(model, query, noise, sigmas, guidance)
            if i:
                times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def steps_sweep(model: SetDenoiser, encoder, resolver, dataset, cfg: EvalConfig, steps: tuple[int, ...],
                guidance: float = 1.0, batches: tuple[int, ...] = (1, 64)) -> list[dict]:
    """One row per (split, step count): the eval metrics plus model-only latency per batch size."""
    rows = []
    for n_steps in steps:
        strategy = diffusion_strategy(f"R4T-Diffusion ({n_steps} steps)", model, encoder, resolver, n_steps, guidance)
        latency = {f"ms_batch_{b}": round(model_latency(model, n_steps, b, guidance), 2) for b in batches}
        for split in cfg.splits:
            row: Row = score_split(strategy, dataset, split, cfg)
            rows.append({"steps": n_steps, **asdict(row), **latency})
    return rows


def write_sweep(rows: list[dict], header: dict, out_dir, stem: str) -> None:
    """<stem>.json, <stem>.md and <stem>.png (Recall@N against steps, one line per split and N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{stem}.json", {"header": header, "rows": rows})
    ns = header["n_values"]
    lat = [k for k in rows[0] if k.startswith("ms_batch_")]
    lines = [f"# Diffusion quality vs sampler steps: {header['dataset']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "dataset"]
    lines += ["", "| split | steps | " + " | ".join(f"Recall@{n}" for n in ns) + " | Vendi | "
              + " | ".join(f"model ms ({k.removeprefix('ms_')})" for k in lat) + " |",
              "|---|---:|" + "---:|" * (len(ns) + 1 + len(lat))]
    for r in rows:
        lines.append(f"| {r['split']} | {r['steps']} | " + " | ".join(f"{r['recall'][n]:.4f}" for n in ns)
                     + f" | {r['vendi_runs']:.4f} | " + " | ".join(str(r[k]) for k in lat) + " |")
    write_text_atomic(out_dir / f"{stem}.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == split]
        for n in ns:
            ax.plot([r["steps"] for r in mine], [r["recall"][n] for r in mine], marker="o", label=f"{split} R@{n}")
    ax.set(xscale="log", xlabel="sampler steps", ylabel="Recall@N", title=f"R4T-Diffusion on {header['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}.png", dpi=110)
    plt.close(fig)
