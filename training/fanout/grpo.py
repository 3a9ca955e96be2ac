"""`r4t fanout train`: GRPO (TRL's GRPOTrainer) on set-level rewards from the frozen serving retriever.

Each step samples `group` completions for each of `prompts_per_step` train-split intents, scores
every completion with `RewardModel` (one term per TRL reward function, so TRL logs each term; the
weights make the total), and takes one clipped policy-gradient step (ε = 0.2) with an optional KL
term. Checkpoints every `save_steps`; a rerun resumes from the newest one. The held-out reward
(val split, `val_samples` fan-outs per query) is measured before and after; the reward curves are
written as CSV and PNG beside the final model.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.atomic import write_json_atomic
from training.data import Dataset
from training.fanout.infer import FanoutLM, SampleConfig
from service.parse import parse_fanout
from training.fanout.policy import DEFAULT_POLICY, resolve_policy
from service.prompts import PREFILL, example_queries
from training.fanout.rewards import TERMS, RewardConfig, RewardModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RLConfig:
    policy: str = DEFAULT_POLICY  # name under <artifacts>/policy, a path or an HF id
    steps: int = 100  # optimizer steps
    prompts_per_step: int = 2  # train intents per step
    group: int = 8  # completions per intent (G); prompts_per_step × group completions per step
    micro_batch: int = 4  # completions per forward/backward; the rest is gradient accumulation
    lr: float = 5e-6
    beta: float = 0.0  # KL coefficient against the reference policy (TRL's default; 0 skips the ref model)
    epsilon: float = 0.2  # PPO clip
    temperature: float = 0.8
    max_new_tokens: int = 96
    bf16: bool = False  # only where the CPU has native bf16
    lora: bool = False  # train LoRA adapters (peft) instead of every weight
    lora_r: int = 16
    save_steps: int = 10
    val_queries: int = 64  # held-out intents for the before/after reward
    val_samples: int = 4  # fan-outs per held-out intent
    seed: int = 0
    device: str = "cpu"  # or "cuda": where the policy generates and trains (the reward retriever stays on CPU)

    def __post_init__(self):
        if (self.prompts_per_step * self.group) % self.micro_batch:
            raise ValueError("prompts_per_step × group must be a multiple of micro_batch")
        if self.group < 2:
            raise ValueError("group must be >= 2: GRPO's advantage compares completions of one prompt")

    def sample_config(self, reward: RewardConfig, dataset: str) -> SampleConfig:
        return SampleConfig(task=reward.task, dataset=dataset, k=reward.k, temperature=self.temperature,
                            max_new_tokens=self.max_new_tokens, dtype="bfloat16" if self.bf16 else "float32",
                            device=self.device)


def reward_functions(rewards: RewardModel, echo: tuple[str, ...] = ()) -> tuple[list, list[float]]:
    """One TRL reward function per term (so TRL logs each), sharing one scoring pass per batch.

    `echo`: the prompt's worked example; a completion that copies it has written no fan-out (the
    first 100-step Polyvore run learned to copy it: 96% of its held-out fan-outs).
    """
    cache: dict[tuple, list[dict]] = {}

    def terms(prompts, completions, query, reference, **_) -> list[dict]:
        key = (tuple(query), tuple(completions))
        if key not in cache:
            cache.clear()
            fanouts = [parse_fanout(PREFILL + c, q, rewards.cfg.k, echo) for q, c in zip(query, completions)]
            cache[key] = [r.as_dict() for r in rewards.score(query, fanouts, reference)]
        return cache[key]

    def term_function(name: str):
        def fn(prompts, completions, **kwargs) -> list[float]:
            return [t[name] for t in terms(prompts, completions, **kwargs)]

        fn.__name__ = name
        return fn

    weights = rewards.cfg.weights()
    return [term_function(t) for t in TERMS], [weights[t] for t in TERMS]


def heldout_reward(lm: FanoutLM, rewards: RewardModel, dataset: Dataset, cfg: RLConfig) -> dict:
    """Mean reward (and each term) of `val_samples` fan-outs per val intent, plus the parse rate."""
    sets = dataset.split("val")[: cfg.val_queries]
    fanouts = lm.sample([s.intent for s in sets], cfg.val_samples, seed=cfg.seed, progress=True)
    flat = [(s, f) for s, group in zip(sets, fanouts) for f in group]
    scored = rewards.score([s.intent for s, _ in flat], [f for _, f in flat], [s.item_ids for s, _ in flat])
    out = {t: round(float(np.mean([getattr(r, t) for r in scored])), 4) for t in ("total", *TERMS, "n_queries")}
    out.update(parse_rate=round(float(np.mean([f.ok for _, f in flat])), 4), queries=len(sets),
               samples=cfg.val_samples, tokens_per_s=round(lm.generated_tokens / max(lm.generate_seconds, 1e-9), 1))
    return out


def write_curves(log_history: list[dict], out_dir: Path) -> None:
    """reward_curves.csv and reward_curves.png: the total and every term per optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in log_history if "reward" in h]
    columns = ["step", "reward", "reward_std", *[f"rewards/{t}/mean" for t in TERMS], "loss", "kl",
               "completions/mean_length"]
    with open(out_dir / "reward_curves.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for h in rows:
            writer.writerow([h.get(c, "") for c in columns])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    steps = [h["step"] for h in rows]
    axes[0].plot(steps, [h["reward"] for h in rows], label="total")
    axes[0].set(title="GRPO reward (train batches)", xlabel="step", ylabel="reward")
    for t in TERMS:
        axes[1].plot(steps, [h.get(f"rewards/{t}/mean", np.nan) for h in rows], label=t)
    axes[1].set(title="reward terms (unweighted)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "reward_curves.png", dpi=110)
    plt.close(fig)


def _curves_on_save(out_dir: Path):
    """A TrainerCallback that rewrites the reward curves at every checkpoint, so a stopped run shows them."""
    from transformers import TrainerCallback

    class CurvesOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            write_curves(state.log_history, out_dir)

    return CurvesOnSave()


def _device_name(device: str) -> str:
    import torch

    from service.host import machine

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else machine()


def train_grpo(cfg: RLConfig, rewards: RewardModel, dataset: Dataset, artifacts_dir: Path, out_dir: Path) -> dict:
    """Run GRPO; the tuned policy lands in out_dir/model (HF checkpoint), the report in out_dir."""
    from datasets import Dataset as HFDataset
    from trl import GRPOConfig, GRPOTrainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    resume = any(ckpt_dir.glob("checkpoint-*"))
    # `steps` may grow between runs (resume and go on), `device` may change (same algorithm on other
    # hardware); any other change needs a new run directory.
    rl = {k: v for k, v in asdict(cfg).items() if k != "device"}
    sample_cfg = cfg.sample_config(rewards.cfg, dataset.name)
    echo = list(example_queries(dataset.name, sample_cfg.example))  # what the parser drops as copies
    config = {"rl": {**rl, "steps": None}, "reward": asdict(rewards.cfg), "dataset": dataset.name,
              "parse": {"echo": echo}}
    config_file = out_dir / "rl_config.json"
    if resume and config_file.exists() and json.loads(config_file.read_text()) != config:
        raise ValueError(f"{out_dir} holds checkpoints of another config ({config_file}); pick another name")
    write_json_atomic(config_file, config)
    report_file = out_dir / "rl_report.json"
    if report_file.exists() and (done := json.loads(report_file.read_text()))["steps"] >= cfg.steps:
        log.info("%s already ran %d steps; nothing to do", out_dir, done["steps"])
        return done

    before_file = out_dir / "heldout_before.json"
    if not before_file.exists():  # measured once, so a resumed run compares with the same start
        write_json_atomic(before_file, heldout_reward(FanoutLM(cfg.policy, artifacts_dir, sample_cfg),
                                                      rewards, dataset, cfg))
    before = json.loads(before_file.read_text())

    lm = FanoutLM(cfg.policy, artifacts_dir, sample_cfg)
    train_sets = dataset.split("train")
    train = HFDataset.from_dict({
        "prompt": lm.prompts([s.intent for s in train_sets]),
        "query": [s.intent for s in train_sets],
        "reference": [list(s.item_ids) for s in train_sets],
    })
    funcs, weights = reward_functions(rewards, lm.echo)
    args = GRPOConfig(
        output_dir=str(ckpt_dir), max_steps=cfg.steps, learning_rate=cfg.lr, seed=cfg.seed,
        per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.prompts_per_step * cfg.group // cfg.micro_batch,
        num_generations=cfg.group, max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
        beta=cfg.beta, epsilon=cfg.epsilon, reward_weights=weights, use_cpu=cfg.device == "cpu",
        bf16=cfg.bf16,
        logging_steps=1, save_steps=cfg.save_steps, save_total_limit=2, report_to="none",
        gradient_checkpointing=False,  # TRL turns it on; a 135M model fits, and recomputation costs CPU time
        disable_tqdm=False, remove_unused_columns=False,
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=lm.lm, reward_funcs=funcs, args=args, train_dataset=train,
                          processing_class=lm.tokenizer, peft_config=peft_config,
                          callbacks=[_curves_on_save(out_dir)])
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - started

    model = trainer.model.merge_and_unload() if cfg.lora else trainer.model
    final = out_dir / "model"
    tmp = out_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)

    after = heldout_reward(FanoutLM(str(final), artifacts_dir, sample_cfg), rewards, dataset, cfg)
    write_curves(trainer.state.log_history, out_dir)
    report = {
        "dataset": dataset.name, "policy": cfg.policy, "base_path": resolve_policy(cfg.policy, artifacts_dir),
        "steps": trainer.state.global_step, "prompts_per_step": cfg.prompts_per_step, "group": cfg.group,
        "completions_per_step": cfg.prompts_per_step * cfg.group, "train_seconds": round(seconds, 1),
        "device": _device_name(cfg.device),
        "resumed": resume, "heldout_before": before, "heldout_after": after, "config": config,
    }
    write_json_atomic(report_file, report)
    log.info("GRPO %s: %d steps in %.0f s; held-out reward %.4f -> %.4f", dataset.name, report["steps"], seconds,
             before["total"], after["total"])
    return report
