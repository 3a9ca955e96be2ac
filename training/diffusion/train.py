"""`r4t diffusion train`: fit the set denoiser on synthesized pairs (EMA, checkpoints, resume).

Targets and queries are unit vectors; the model maps rows into its space (`SetDenoiser.to_x0`). A
checkpoint (model, EMA, optimizer, step, loss history) is written atomically every `ckpt_every`
steps and at the end; a rerun resumes from it. The EMA weights are what sampling and export use.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from service.atomic import write_json_atomic
from training.diffusion.model import DiffusionConfig, SetDenoiser, count_parameters, edm_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 500
    ema_decay: float = 0.999
    ckpt_every: int = 1000
    log_every: int = 50
    val_fraction: float = 0.05  # pairs held out for the validation loss
    seed: int = 0


def _save(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_model(path: Path) -> SetDenoiser:
    """The EMA denoiser from a checkpoint (or final model) file; a distilled student keeps its sigmas."""
    return model_from_state(torch.load(path, map_location="cpu", weights_only=False))


def _config(state: dict) -> DiffusionConfig:
    """The model config a file was written with; older files lack later fields and load as they were trained."""
    return DiffusionConfig(**{"noise": "lognormal", **state["model_config"]})  # before `noise`: log-normal


def model_from_state(state: dict) -> SetDenoiser:
    """The EMA denoiser of a loaded checkpoint, model or student file."""
    model = SetDenoiser(_config(state))
    model.load_state_dict(state["ema"])
    model.sigmas = state.get("sigmas")
    return model.eval()


def train(query: np.ndarray, targets: np.ndarray, model_cfg: DiffusionConfig, cfg: TrainConfig, out_dir: Path) -> dict:
    """query (n, d), targets (n, L, d) unit vectors -> out_dir/{checkpoint.pt, model.pt, loss.csv, loss.png}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if targets.shape[1:] != (model_cfg.rows, model_cfg.dim) or query.shape[1] != model_cfg.dim:
        raise ValueError(f"pairs are {query.shape} / {targets.shape}; "
                         f"the model expects d={model_cfg.dim}, L={model_cfg.rows}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(query))
    n_val = max(1, int(len(order) * cfg.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    q = torch.from_numpy(query).float()
    model = SetDenoiser(model_cfg)
    x = model.to_x0(torch.from_numpy(targets).float(), q)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    step, history = 0, []
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        same_run = {**state["train_config"], "steps": 0} == {**asdict(cfg), "steps": 0}  # steps may grow
        if _config(state) != model_cfg or not same_run:
            raise ValueError(f"{ckpt} was written by another config; pick another output directory")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        rng = np.random.default_rng([cfg.seed, step])
        log.info("resumed %s at step %d", ckpt, step)

    def checkpoint():
        _save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
               "sched": sched.state_dict(), "step": step, "history": history, "torch_rng": torch.get_rng_state(),
               "model_config": model_cfg.as_dict(), "train_config": asdict(cfg)}, ckpt)

    def val_loss() -> float:
        g = torch.Generator().manual_seed(1234)  # the same noise every time: a comparable curve
        with torch.no_grad():
            return float(np.mean([edm_loss(ema, x[val_idx[i : i + 512]], q[val_idx[i : i + 512]], g).item()
                                  for i in range(0, len(val_idx), 512)]))

    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="diffusion", unit="step")
    running = []
    while step < cfg.steps:
        model.train()
        idx = torch.from_numpy(rng.choice(train_idx, size=min(cfg.batch_size, len(train_idx)), replace=False))
        loss = edm_loss(model, x[idx], q[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema_decay)
        step += 1
        running.append(loss.item())
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "train_loss": float(np.mean(running)), "val_loss": val_loss(),
                            "lr": sched.get_last_lr()[0]})
            running = []
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}", val=f"{history[-1]['val_loss']:.4f}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            checkpoint()
    bar.close()
    seconds = time.perf_counter() - started
    _save({"ema": ema.state_dict(), "model_config": model_cfg.as_dict(), "step": step}, out_dir / "model.pt")
    write_loss_curve(history, out_dir)
    report = {"steps": step, "pairs_train": len(train_idx), "pairs_val": len(val_idx),
              "parameters": count_parameters(model), "seconds_this_run": round(seconds, 1),
              "final": history[-1] if history else None, "model_config": model_cfg.as_dict(),
              "train_config": asdict(cfg)}
    write_json_atomic(out_dir / "train.json", report)
    return report


def write_loss_curve(history: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out_dir / "loss.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "train_loss", "val_loss", "lr"])
        writer.writeheader()
        writer.writerows(history)
    if not history:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_loss"] for h in history], label="train (online weights)")
    ax.plot(steps, [h["val_loss"] for h in history], label="val (EMA weights)")
    ax.set(xlabel="step", ylabel="EDM loss", yscale="log", title="Set diffusion training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=110)
    plt.close(fig)
