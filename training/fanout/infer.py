"""Fan-out inference shared by evaluation, pair synthesis and the service's `llm` strategy.

For a batch of broad queries: build the prompts, sample G completions each at temperature T in
batched `generate` calls, and parse them. Embedding and scoring stay with the caller (the rewards and
the resolver), so the LM is the only torch part here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from service.parse import Fanout, parse_fanout
from service.prompts import PREFILL, Task, chat_prompt, example_queries


@dataclass(frozen=True)
class SampleConfig:
    task: Task = "wscr"
    dataset: str = "polyvore"  # words the prompt for fashion or music
    k: int = 10
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 96  # ten short queries fit; longer outputs are truncated, hence malformed
    think: bool = False
    prefill: bool = True  # open the assistant turn with '<queries>\n["'
    example: str = "domain"  # "paper": Appendix D's placeholder list; "domain": a worked example
    batch_size: int = 32  # sequences per generate call
    dtype: str = "float32"  # bfloat16 only where the CPU has native bf16 (measured here: 4 tok/s)
    device: str = "cpu"  # or "cuda"


class FanoutLM:
    """A policy LM that writes fan-outs. `model` is a name under <artifacts>/policy, a path or an HF id."""

    def __init__(self, model: str, artifacts_dir: Path, cfg: SampleConfig = SampleConfig()):
        from training.fanout.policy import load_policy

        self.name, self.cfg = model, cfg
        self.lm, self.tokenizer = load_policy(model, artifacts_dir, cfg.dtype)
        self.lm.to(cfg.device)
        self.generated_tokens, self.generate_seconds = 0, 0.0

    @property
    def echo(self) -> tuple[str, ...]:
        """The prompt's worked example (its query and sub-queries): the parser drops them like echoes of the query."""
        return example_queries(self.cfg.dataset, self.cfg.example)

    def prompts(self, queries: list[str]) -> list[str]:
        c = self.cfg
        return [chat_prompt(self.tokenizer, q, c.task, c.dataset, c.think, c.k, c.prefill, c.example)
                for q in queries]

    def generate(self, queries: list[str], n: int = 1, seed: int = 0, progress: bool = False) -> list[list[str]]:
        """n completions per query (prefill prepended, so each reads as the model's whole answer)."""
        import torch

        c = self.cfg
        torch.manual_seed(seed)
        prompts = self.prompts(queries)
        per_call = max(1, c.batch_size // n)
        out: list[list[str]] = []
        head = PREFILL if c.prefill and not c.think else ""
        for lo in tqdm(range(0, len(prompts), per_call), desc="fan-out", disable=not progress, leave=False):
            batch = self.tokenizer(prompts[lo : lo + per_call], return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(c.device)
            started = time.perf_counter()
            with torch.inference_mode():
                ids = self.lm.generate(
                    **batch, max_new_tokens=c.max_new_tokens, num_return_sequences=n,
                    do_sample=c.temperature > 0, temperature=c.temperature or None,
                    top_p=c.top_p if c.temperature > 0 else None, top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            self.generate_seconds += time.perf_counter() - started
            new = ids[:, batch["input_ids"].shape[1]:]
            self.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
            texts = [head + t for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
            out += [texts[i : i + n] for i in range(0, len(texts), n)]
        return out

    def sample(self, queries: list[str], n: int = 1, seed: int = 0, progress: bool = False) -> list[list[Fanout]]:
        """n parsed fan-outs per query."""
        texts = self.generate(queries, n, seed, progress)
        return [[parse_fanout(t, q, self.cfg.k, self.echo) for t in group] for q, group in zip(queries, texts)]


def record_fanouts(lm: FanoutLM, queries: list[str], n: int, seeds: Sequence[int], out: Path,
                   progress: bool = True, chunk: int = 1024) -> int:
    """Sample n raw completions per (query, seed) and write them as JSON lines, atomically.

    Generation and scoring can then run on different machines: a GPU writes the fan-outs in
    seconds, `RecordedLM` replays them where the index lives. The first line holds the settings.
    Queries go in chunks (chunk c of a seed samples with seed + 7919·c); each finished chunk is
    written atomically under `<out>.parts/`, so a run stopped part-way resumes from its last chunk;
    the parts are joined into `out` and removed at the end.
    """
    from service.atomic import write_text_atomic

    out = Path(out)
    unique = list(dict.fromkeys(queries))
    meta = {"policy": lm.name, "n": n, "seeds": list(seeds), **asdict(lm.cfg)}
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    head = parts / "meta.json"
    stamp = json.dumps({**meta, "chunk": chunk, "queries": hashlib.sha256("\n".join(unique).encode()).hexdigest()})
    if not head.exists():
        write_text_atomic(head, stamp)
    elif head.read_text() != stamp:
        raise ValueError(f"{parts} holds chunks of another recording: remove it or record to another --out")
    names = []
    for seed in seeds:
        for c, lo in enumerate(range(0, len(unique), chunk)):
            names.append(part := parts / f"seed{seed}-{c:05d}.jsonl")
            if part.exists():
                continue
            group = unique[lo : lo + chunk]
            texts = lm.generate(group, n, seed + 7919 * c, progress)
            write_text_atomic(part, "".join(json.dumps({"query": q, "seed": seed, "texts": t}) + "\n"
                                            for q, t in zip(group, texts)))
    lines = [json.dumps({"meta": meta})] + [line for name in names for line in name.read_text().splitlines()]
    write_text_atomic(out, "\n".join(lines) + "\n")
    shutil.rmtree(parts)
    return len(lines) - 1


class RecordedLM:
    """Replays fan-outs written by `record_fanouts` behind FanoutLM's `sample` interface.

    `seed` pins every lookup to one recorded seed: pair synthesis asks for a seed per shard, and any
    genuine sample of the policy serves it as well.
    """

    def __init__(self, path: Path, k: int = 10, seed: int | None = None):
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        self.meta = records[0].get("meta", {})
        self.name = f"{self.meta.get('policy', '?')} (recorded in {Path(path).name})"
        self.path, self.k, self.seed = Path(path), k, seed
        self.echo = example_queries(self.meta.get("dataset", ""), self.meta.get("example", "domain"))
        self.texts = {(r["query"], r["seed"]): r["texts"] for r in records if "query" in r}

    def sample(self, queries: list[str], n: int = 1, seed: int = 0, progress: bool = False) -> list[list[Fanout]]:
        seed = seed if self.seed is None else self.seed
        out = []
        for q in queries:
            texts = self.texts.get((q, seed), [])
            if len(texts) < n:
                raise KeyError(f"{self.path} holds {len(texts)} fan-outs of {q!r} at seed {seed}, {n} needed: "
                               "record the same queries and seeds that the evaluation asks for")
            out.append([parse_fanout(t, q, self.k, self.echo) for t in texts[:n]])
        return out


def latency_report(lm: FanoutLM, queries: list[str], seed: int = 0) -> dict:
    """Wall time of one fan-out per query at batch 1 (generation + parsing), after one warm-up."""
    import platform

    import numpy as np
    import torch

    lm.sample(queries[:1], 1, seed)
    times, parsed, tokens = [], 0, lm.generated_tokens
    for i, q in enumerate(tqdm(queries, desc="latency", leave=False)):
        started = time.perf_counter()
        fanout = lm.sample([q], 1, seed + i)[0][0]
        times.append(time.perf_counter() - started)
        parsed += fanout.ok
    ms = np.array(times) * 1000
    return {"policy": lm.name, "queries": len(queries), "median_ms": round(float(np.median(ms)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "mean_ms": round(float(ms.mean()), 1),
            "parse_rate": round(parsed / len(queries), 4),
            "tokens_per_query": round((lm.generated_tokens - tokens) / len(queries), 1),
            "dtype": lm.cfg.dtype, "max_new_tokens": lm.cfg.max_new_tokens, "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
