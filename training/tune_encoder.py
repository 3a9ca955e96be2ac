"""`r4t encoder tune`: contrastive fine-tuning of the encoder on train-split sets only.

Pairs say what goes together: (set intent ↔ member item text) and (item ↔ item of the same set).
MultipleNegativesRankingLoss treats the other positives of a batch as negatives, so the no-duplicates
batch sampler keeps a repeated title ("chill", "summer") from being its own negative. A held-out
val-split evaluator measures single-query recall during training and drives early stopping.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from service.atomic import write_json_atomic
from training.data import Dataset

log = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    intent_pairs: int = 8  # (intent, member item) pairs sampled per train set
    item_pairs: int = 4  # (item, item of the same set) pairs sampled per train set
    batch_size: int = 128  # in-batch negatives per anchor: bigger is better for MNRL
    epochs: float = 1.0  # passes over the pairs
    lr: float = 5e-5  # AdamW peak learning rate (sentence-transformers' default)
    warmup_ratio: float = 0.1  # linear warm-up share of the steps
    eval_steps: int = 100  # evaluate, checkpoint and maybe stop every this many steps
    patience: int = 3  # stop after this many evaluations without improvement
    eval_queries: int = 300  # val sets in the in-training evaluator
    eval_corpus: int = 20_000  # items in its corpus (the val sets' items + random others)
    max_steps: int = -1  # cap on optimizer steps (-1 = epochs decide); tests use a handful
    bf16: bool = False  # CPU autocast in bfloat16; measured here: no step in 2 min vs 4.8 s/step in fp32
    seed: int = 0  # pair sampling and shuffling; another seed gives another epoch new pairs
    eval_seed: int = 0  # the evaluator's val sample and corpus: keep it fixed to compare runs

    def __post_init__(self):
        if self.intent_pairs < 1 or self.item_pairs < 0:
            raise ValueError("intent_pairs must be >= 1 and item_pairs >= 0")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: MNRL needs in-batch negatives")
        if self.eval_steps < 1 or self.patience < 1:
            raise ValueError("eval_steps and patience must be >= 1")


def training_pairs(dataset: Dataset, cfg: TuneConfig) -> list[tuple[str, str, str]]:
    """(anchor, positive, set id) triples from the train split only, seeded."""
    rng = random.Random(cfg.seed)
    pairs = []
    for s in dataset.split("train"):
        texts = [dataset.items[i].text for i in s.item_ids]
        for text in rng.sample(texts, min(cfg.intent_pairs, len(texts))):
            pairs.append((s.intent, text, s.id))
        for _ in range(cfg.item_pairs if len(texts) > 1 else 0):
            a, b = rng.sample(texts, 2)
            pairs.append((a, b, s.id))
    rng.shuffle(pairs)
    return pairs


def val_evaluator(dataset: Dataset, cfg: TuneConfig):
    """Single-query recall of val-set items from their intent, on a seeded corpus sample."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rng = random.Random(cfg.eval_seed)
    sets = dataset.split("val")
    sets = rng.sample(sets, min(cfg.eval_queries, len(sets)))
    relevant = {s.id: set(s.item_ids) for s in sets}
    corpus_ids = {i for ids in relevant.values() for i in ids}
    others = [i for i in dataset.items if i not in corpus_ids]
    corpus_ids |= set(rng.sample(others, max(0, min(len(others), cfg.eval_corpus - len(corpus_ids)))))
    return InformationRetrievalEvaluator(
        queries={s.id: s.intent for s in sets},
        corpus={i: dataset.items[i].text for i in sorted(corpus_ids)},
        relevant_docs=relevant, name="val", batch_size=256, show_progress_bar=False,
        accuracy_at_k=[10, 100], precision_recall_at_k=[10, 100, 1000], mrr_at_k=[10], ndcg_at_k=[10],
        map_at_k=[100], write_csv=False,
    )


def tune_encoder(base: str, dataset: Dataset, out_dir: Path, cfg: TuneConfig) -> dict:
    """Fine-tune `base` on `dataset`'s train split; the best checkpoint lands in out_dir/model."""
    from datasets import Dataset as HFDataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import EarlyStoppingCallback

    out_dir = Path(out_dir)
    pairs = training_pairs(dataset, cfg)
    train = HFDataset.from_dict({"anchor": [a for a, _, _ in pairs], "positive": [p for _, p, _ in pairs]})
    model = SentenceTransformer(base, device="cpu", local_files_only=True)
    evaluator = val_evaluator(dataset, cfg)
    metric = "eval_val_cosine_recall@100"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, warmup_ratio=cfg.warmup_ratio,
        batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="steps", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.eval_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model=metric, greater_is_better=True, logging_steps=min(10, cfg.eval_steps), seed=cfg.seed,
        use_cpu=True, bf16=cfg.bf16, report_to="none", disable_tqdm=False,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(model),
        evaluator=evaluator, callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience)],
    )
    resume = any((out_dir / "checkpoints").glob("checkpoint-*"))
    config_file = out_dir / "tune_config.json"
    if resume and config_file.exists() and json.loads(config_file.read_text()) != asdict(cfg):
        raise ValueError(f"{out_dir} holds checkpoints of another config ({config_file}); pick another name")
    write_json_atomic(config_file, asdict(cfg))
    before = evaluator(model)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - started
    after = evaluator(model)
    model.save_pretrained(str(out_dir / "model"))
    report = {
        "dataset": dataset.name, "base": base, "pairs": len(pairs), "train_sets": len(dataset.split("train")),
        "steps": trainer.state.global_step, "train_seconds": round(seconds, 1), "resumed": resume,
        "val_before": {k: round(v, 4) for k, v in before.items()},
        "val_after": {k: round(v, 4) for k, v in after.items()},
        "log_history": trainer.state.log_history, "config": asdict(cfg),
    }
    write_json_atomic(out_dir / "tune_report.json", report)
    log.info("tuned %s on %d pairs in %.0f s: val recall@100 %.4f -> %.4f", dataset.name, len(pairs),
             seconds, before.get("val_cosine_recall@100", float("nan")), after.get("val_cosine_recall@100", float("nan")))
    return report
