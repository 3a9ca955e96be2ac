"""Online configuration: one pydantic-settings model read from `R4T_*` environment variables.

The offline CLI uses the same model for artifact paths, so `r4t index` writes exactly where
`r4t serve` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.layout import ArtifactLayout
from service.manifest import default_collection


BASE_ENCODER = "all-MiniLM-L6-v2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="R4T_", env_file=".env", extra="ignore")

    artifacts_dir: Path = Field(Path("artifacts"), description="Root of encoder, index and model artifacts")
    dataset: Literal["polyvore", "mpd"] = Field("polyvore", description="Which catalog's index to serve")
    encoder: str = Field(BASE_ENCODER, description="Encoder artifact name under <artifacts>/encoders/")
    encoder_dir: Path | None = Field(None, description="Encoder artifact; default <artifacts>/encoders/<encoder>")
    index_dir: Path | None = Field(None, description="Index; default <artifacts>/index/<dataset>/<encoder>")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = the embedded Edge shard")
    qdrant_api_key: str | None = None
    collection: str | None = Field(None, description="Server collection; default r4t-<dataset>")
    device: Literal["cpu", "cuda"] = Field("cpu", description="ONNX Runtime device; cuda falls back to CPU")
    require_gpu: bool = Field(False, description="Refuse to start when the CUDA provider is not in use")
    onnx_threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per physical core")
    onnx_spin: bool = Field(True, description="Let idle intra-op threads spin (lower latency on dedicated cores; "
                                              "turn off where the cores are shared)")
    max_query_chars: int = Field(512, gt=0, description="Longer queries get 422 before they are tokenised; "
                                                        "tokens beyond the encoder's max_len are cut, as offline")
    max_limit: int = Field(1000, ge=10, description="Largest `limit` a request may ask for (at least the "
                                                   "default, 10)")
    hnsw_ef: int | None = Field(None, gt=0, description="HNSW ef at search time; unset = store default")
    graph: str = Field("", description="Fan-out graph under <artifacts>/graphs/; default <dataset>-s4; "
                                       "'none' serves without the diffusion strategy")
    graph_dir: Path | None = Field(None, description="Fan-out graph artifact; overrides `graph`")
    max_k: int = Field(32, gt=0, description="Largest `k` (fan-outs per query) a request may ask for")
    max_batch: int = Field(64, gt=0, description="Queries per ONNX run when concurrent requests are micro-batched")
    max_wait_ms: float = Field(2.0, ge=0, description="How long a run waits for more requests to join it")
    max_queue: int = Field(512, gt=0, description="Queued queries beyond which requests get 429")
    max_batch_queries: int = Field(256, gt=0, description="Queries one /fanout/batch request may carry "
                                                          "(at most max_queue)")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Larger request bodies get 413")
    memory_depth: int = Field(2_000, gt=0, description="memory strategy: items the sparse prefetch returns (the "
                              "ranking is exact while the query's neighbour sets hold no more items than this; "
                              "2,000 ties the exact depth on MPD: results/memory_mpd.md)")
    strict_filters: bool = Field(True, description="Reject (422) a filter on a payload key the index has no payload "
                                 "index for (Qdrant strict mode): such a filter scans every point's payload "
                                 "(~0.2-0.7 s per query on MPD, against ~2 ms on an indexed key)")
    max_hits_per_call: int = Field(100_000, gt=0, description="Hits one store call may return (queries × k × "
                                                              "depth); a larger batch is resolved in several "
                                                              "calls, so its memory stays bounded")
    onnx_workers: int = Field(1, gt=0, description="Threads that run ONNX sessions (the bounded executor)")
    llm_url: str | None = Field(None, description="OpenAI-compatible endpoint for the llm strategy, e.g. "
                                                  "http://localhost:8001/v1 (vLLM)")
    llm_model: str = Field("", description="Model name sent to R4T_LLM_URL")
    llm_api_key: str | None = None
    llm_policy: Path | None = Field(None, description="Local fan-out LM checkpoint for the llm strategy "
                                                      "(needs the [train] extra: torch)")
    default_strategy: Literal["", "single", "diffusion", "llm"] = Field(
        "", description="Strategy of requests that name none; '' = diffusion where the graph's manifest records a "
                        "val result no worse than single, else single")
    llm_timeout_s: float = Field(30.0, gt=0, description="Deadline of one LLM fan-out call")
    max_llm_queue: int = Field(32, gt=0, description="llm-strategy requests waiting or running beyond which "
                                                     "requests get 429")
    request_timeout_ms: float = Field(10_000.0, gt=0, description="Deadline of one /search or /fanout request, "
                                                                  "queueing included; past it the answer is 504")
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def batch_fits_queue(self) -> Settings:
        if self.max_batch_queries > self.max_queue:
            raise ValueError(f"max_batch_queries ({self.max_batch_queries}) must not exceed max_queue "
                             f"({self.max_queue}): such a batch could never be admitted")
        return self

    @property
    def layout(self) -> ArtifactLayout:
        return ArtifactLayout(self.artifacts_dir)

    @property
    def encoder_path(self) -> Path:
        return self.encoder_dir or self.layout.encoder(self.encoder)

    @property
    def index_path(self) -> Path:
        """Each (dataset, encoder) pair has its own index: vectors of two encoders never mix."""
        return self.index_dir or self.layout.index(self.dataset, self.encoder)

    @property
    def graph_path(self) -> Path | None:
        """The fan-out graph to serve, or None when the diffusion strategy is switched off."""
        if self.graph_dir:
            return self.graph_dir
        if self.graph == "none":
            return None
        return self.layout.graph(self.graph or f"{self.dataset}-s4")

    @property
    def collection_name(self) -> str:
        return self.collection or default_collection(self.dataset)
