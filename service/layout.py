"""Every path under the artifacts root, named once: the offline stages write there, the service reads there.

    encoders/<name>/            an encoder or space-head artifact (ONNX + tokenizer + manifest)
    index/<dataset>/<encoder>/  the catalog's index in that encoder's space (index.json + the Edge shard)
    graphs/<name>/              a fan-out graph artifact (encoder + unrolled sampler)
    spaces/<name>/              a co-membership space (item, set and title vectors; train-split incidence)
    pairs/<name>/               synthesized (query, target set) pairs, sharded
    diffusion/<name>/model.pt   a trained set denoiser (and its checkpoints beside it)
    fanout/<name>/model         a GRPO-tuned fan-out LM;  policy/<name>: a converted start policy
    tune/<name>/                a fine-tuned text encoder's work directory
    reports/                    reports `make serve` writes for its own stages (e.g. memory_<dataset>.json)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ArtifactLayout:
    root: Path

    def encoder(self, name: str) -> Path:
        return self.root / "encoders" / name

    def index(self, dataset: str, encoder: str) -> Path:
        """Each (dataset, encoder) pair has its own index: vectors of two encoders never mix."""
        return self.root / "index" / dataset / encoder

    def graph(self, name: str) -> Path:
        return self.root / "graphs" / name

    def space(self, name: str) -> Path:
        return self.root / "spaces" / name

    def pairs(self, name: str) -> Path:
        return self.root / "pairs" / name

    def diffusion(self, name: str) -> Path:
        return self.root / "diffusion" / name

    def denoiser(self, name: str) -> Path:
        return self.diffusion(name) / "model.pt"

    def fanout(self, name: str) -> Path:
        return self.root / "fanout" / name

    def fanout_model(self, name: str) -> Path:
        return self.fanout(name) / "model"

    def policy(self, name: str) -> Path:
        return self.root / "policy" / name

    def tune(self, name: str) -> Path:
        return self.root / "tune" / name
