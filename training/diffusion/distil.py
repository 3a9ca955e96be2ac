"""`r4t diffusion distil`: progressive distillation (Salimans & Ho, 2022) of the deterministic Euler sampler.

Each round halves the step count. The teacher samples on a schedule S; its student, initialised from
the teacher, samples on every other sigma of S and learns, at x_t on its own step t -> s, the x0
estimate whose single Euler step lands where the teacher's two Euler steps (through the sigma m the
student skips) land:

    x_s = Euler(teacher, Euler(teacher, x_t, t -> m), m -> s)
    x0* = x_t - sigma_t (x_s - x_t) / (sigma_s - sigma_t)        (the last step, sigma_s = 0: x0* = x_s)

with the EDM loss weight on (student(x_t) - x0*)^2. Round 1's teacher is the EMA model on a Karras
schedule of `start_steps`; each student becomes the next round's teacher. Every student is written
atomically as `student-s<N>.pt` (weights plus its sigmas, so sampling, eval and export use its
schedule); a rerun skips the rounds already on disk.

Guidance is distilled in (Meng et al., 2023, stage one): round 1's teacher samples with the CFG weight
`guidance`, and its student learns that guided step in its conditional branch. Students sample with
guidance 1, at the cost of one model call a step whatever the teacher's weight.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.diffusion.model import SetDenoiser
from training.diffusion.sampler import karras_sigmas
from training.diffusion.train import _save, model_from_state


@dataclass(frozen=True)
class DistilConfig:
    start_steps: int = 32  # the teacher's Karras schedule; a power of two times final_steps
    final_steps: int = 1
    round_steps: int = 500  # optimizer steps per halving
    batch_size: int = 128
    lr: float = 1e-4
    guidance: float = 1.0  # round 1's teacher samples with this CFG weight; students bake it in
    seed: int = 0

    def rounds(self) -> list[int]:
        """Student step counts, e.g. 32 -> [16, 8, 4, 2, 1]."""
        n, out = self.start_steps, []
        while n > self.final_steps:
            if n % 2:
                raise ValueError(f"start_steps {self.start_steps} is not final_steps {self.final_steps} times 2^k")
            n //= 2
            out.append(n)
        return out


def _euler(model: SetDenoiser, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, q: torch.Tensor,
           guidance: float = 1.0) -> torch.Tensor:
    """One Euler step per row of the batch, each from its own sigma s (B,) to s_next (B,)."""
    ss, sn = s[:, None, None], s_next[:, None, None]
    return x + (sn - ss) * (x - model.guided(x, s, q, guidance)) / ss


def distil_round(teacher: SetDenoiser, sigmas: list[float], query: torch.Tensor, x0: torch.Tensor,
                 cfg: DistilConfig, seed: int, guidance: float = 1.0) -> tuple[SetDenoiser, list[float]]:
    """One halving: a student for sigmas[::2], trained against `teacher` sampling with CFG weight `guidance`
    on `sigmas`. Returns it and its losses."""
    teacher = teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    student.sigmas = sigmas[::2]
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    table = torch.tensor(sigmas, dtype=torch.float32)
    n_student = (len(sigmas) - 1) // 2
    g = torch.Generator().manual_seed(seed)
    sd = teacher.cfg.sigma_data
    losses = []
    for _ in tqdm(range(cfg.round_steps), desc=f"distil {len(sigmas) - 1}->{n_student} steps", unit="step",
                  leave=False):
        idx = torch.randint(len(query), (min(cfg.batch_size, len(query)),), generator=g)
        i = torch.randint(n_student, (len(idx),), generator=g)
        s_t, s_m, s_s = table[2 * i], table[2 * i + 1], table[2 * i + 2]
        q = query[idx]
        x_t = x0[idx] + s_t[:, None, None] * torch.randn(x0[idx].shape, generator=g)
        with torch.no_grad():
            x_s = _euler(teacher, _euler(teacher, x_t, s_t, s_m, q, guidance), s_m, s_s, q, guidance)
            target = x_t - s_t[:, None, None] * (x_s - x_t) / (s_s - s_t)[:, None, None]
        weight = (s_t**2 + sd**2) / (s_t * sd) ** 2
        loss = (weight[:, None, None] * (student(x_t, s_t, q) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return student.eval().requires_grad_(False), losses


def student_path(out_dir: Path, steps: int) -> Path:
    return Path(out_dir) / f"student-s{steps}.pt"


def distil(teacher: SetDenoiser, query: np.ndarray, targets: np.ndarray, cfg: DistilConfig, out_dir: Path,
           on_student=None) -> list[dict]:
    """Every round of `cfg.rounds()`; `on_student(steps, model)` (e.g. an eval) runs after each. One row a round."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    q = torch.from_numpy(query).float()
    x0 = teacher.to_x0(torch.from_numpy(targets).float(), q)
    sigmas = karras_sigmas(cfg.start_steps, teacher.cfg.sigma_min, teacher.cfg.sigma_max)
    rows = []
    for r, steps in enumerate(cfg.rounds()):
        path = student_path(out_dir, steps)
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=False)
            if {"guidance": 1.0, **state["distil_config"]} != asdict(cfg):  # files from before `guidance`: 1
                raise ValueError(f"{path} was written by another distillation config; pick another directory")
            student, row = model_from_state(state), state["row"]
        else:
            started = time.perf_counter()
            student, losses = distil_round(teacher, sigmas, q, x0, cfg, seed=cfg.seed + r,
                                           guidance=cfg.guidance if r == 0 else 1.0)
            row = {"steps": steps, "teacher_steps": len(sigmas) - 1, "seconds": round(time.perf_counter() - started, 1),
                   "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}
            _save({"ema": student.state_dict(), "sigmas": student.sigmas, "model_config": teacher.cfg.as_dict(),
                   "distil_config": asdict(cfg), "row": row}, path)
        if on_student is not None:
            row = {**row, **on_student(steps, student)}
        rows.append(row)
        teacher, sigmas = student, student.sigmas
    return rows


def write_report(rows: list[dict], header: dict, out_dir: Path, stem: str) -> None:
    """<stem>.json, .md and .png: Recall@N per split of the undistilled sampler and the student, by steps."""
    import matplotlib

    from service.atomic import write_json_atomic, write_text_atomic

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{stem}.json", {"header": header, "rows": rows})
    ns = header["n_values"]
    lines = [f"# Progressive distillation of the diffusion sampler: {header['dataset']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "dataset"]
    lines += ["", "| split | steps | sampler | " + " | ".join(f"Recall@{n}" for n in ns)
              + " | Vendi | train s | loss first → last |",
              "|---|---:|---|" + "---:|" * (len(ns) + 1) + "---:|---|"]
    for r in rows:
        for split, m in r["eval"].items():
            loss = f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else ""
            recalls = " | ".join(f"{m['recall'][str(n)]:.4f}" for n in ns)
            lines.append(f"| {split} | {r['steps']} | {r['sampler']} | {recalls}"
                         + f" | {m['vendi']:.4f} | {r.get('seconds', '')} | {loss} |")
    write_text_atomic(out_dir / f"{stem}.md", "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 4), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for sampler, style in (("Karras (undistilled)", "--o"), ("distilled student", "-s")):
            mine = [r for r in rows if r["sampler"] == sampler]
            for split in dict.fromkeys(s for r in mine for s in r["eval"]):
                ax.plot([r["steps"] for r in mine], [r["eval"][split]["recall"][str(n)] for r in mine], style,
                        label=f"{split}, {sampler}")
        ax.set(xscale="log", xlabel="sampler steps", ylabel=f"Recall@{n}", title=f"Recall@{n} vs steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}.png", dpi=110)
    plt.close(fig)
