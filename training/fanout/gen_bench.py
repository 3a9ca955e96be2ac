"""LLM fan-out generation time against batch size: the LLM side of the paper's Figure 5.

Generation time depends on the architecture, the prompt and output lengths and the device, not on
the weights. So a model can be timed from its `config.json` alone, with random weights: that is how
architectures whose weights are not on this machine (say Qwen3-4B) get a number. Every sequence is
forced to exactly `new_tokens` tokens, the measured mean fan-out length of the tuned policy, and the
prompt is `prompt_tokens` long, the measured length of the fan-out prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class GenBenchConfig:
    batches: tuple[int, ...] = (1, 8, 64, 256, 1024)
    prompt_tokens: int = 160
    new_tokens: int = 64
    dtype: str = "bfloat16"
    repeats: int = 3
    seed: int = 0


def load_for_timing(model: str, device: str, dtype: str):
    """A causal LM from a checkpoint directory, or from a bare config.json with random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(model)
    torch_dtype = getattr(torch, dtype)
    if path.is_file() and path.suffix == ".json":
        config = AutoConfig.for_model(**json.loads(path.read_text()))
        with torch.device(device):
            lm = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        weights = "random (config only)"
    else:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device)
        weights = "trained"
    return lm.eval(), weights


@torch.inference_mode()
def bench_generate(lm, cfg: GenBenchConfig, device: str) -> list[dict]:
    """Median wall time of one `generate` call per batch size (sampling at T = 0.8, KV cache on)."""
    vocab = lm.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows = []
    for batch in cfg.batches:
        ids = torch.randint(100, vocab - 100, (batch, cfg.prompt_tokens), generator=gen).to(device)
        mask = torch.ones_like(ids)
        kwargs = dict(attention_mask=mask, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                      do_sample=True, temperature=0.8, pad_token_id=0)
        lm.generate(ids, **kwargs)  # warm-up: kernels, allocator
        times = []
        for _ in range(cfg.repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = lm.generate(ids, **kwargs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        assert out.shape[1] == cfg.prompt_tokens + cfg.new_tokens
        ms = sorted(times)[len(times) // 2]
        rows.append({"batch": batch, "ms": round(ms, 2), "ms_per_query": round(ms / batch, 4),
                     "qps": round(batch * 1000 / ms, 1), "repeats": cfg.repeats})
    return rows
