"""What the service loads once at start-up: encoder artifact, store and resolver, checked to fit.

Any missing or mismatched piece raises ArtifactError with one line, and the service does not start.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from service.batcher import Gate, MicroBatcher
from service.encoder import OnnxEncoder
from service.errors import EmptyQuery, InvalidInput
from service.graph import FanoutGraph
from service.llm import FanoutWriter, make_writer
from service.manifest import SHARD_DIR, ArtifactError, IndexMeta
from service.metrics import Metrics
from service.resolver import Resolver
from service.schemas import BLANK
from service.settings import Settings
from service.store import EdgeStore, ServerStore, Store

log = logging.getLogger(__name__)



class Default(NamedTuple):
    """The strategy a request that names none runs, and why (shown by /info)."""

    name: str
    why: str


@dataclass
class Runtime:
    settings: Settings
    encoder: OnnxEncoder
    store: Store
    resolver: Resolver
    index: IndexMeta | None = None  # index.json; None for a server collection built elsewhere
    graph: FanoutGraph | None = None
    llm: FanoutWriter | None = None
    metrics: Metrics = field(default_factory=Metrics)
    warmed_up: bool = False
    executor: ThreadPoolExecutor | None = None  # runs the ONNX sessions: bounded, one run per worker
    llm_pool: ThreadPoolExecutor | None = None
    llm_gate: Gate | None = None  # bounds the requests waiting for or running in llm_pool (429 beyond)
    encoder_batcher: MicroBatcher | None = None
    memory_batcher: MicroBatcher | None = None
    graph_batcher: MicroBatcher | None = None
    default: Default = Default("single", "no fan-out graph")
    # payload field -> index kind: the keys a filter may use (the store's payload indexes); None: any key
    # (R4T_STRICT_FILTERS=false)
    filterable: dict[str, str] | None = None

    @property
    def deadline_s(self) -> float:
        return self.settings.request_timeout_ms / 1e3

    @property
    def strategies(self) -> list[str]:
        """The strategies this server can run."""
        return ["single"] + (["memory"] if self.has_memory else []) + (["diffusion"] if self.graph else []) + \
            (["llm"] if self.llm else [])

    @property
    def has_memory(self) -> bool:
        """The encoder gives the item memory's query and the index holds the memory."""
        return self.encoder.memory is not None and self.store.memory

    @property
    def max_k(self) -> int:
        """The largest k a request may ask for: R4T_MAX_K, and no more than the fan-out graph's rows."""
        return min(self.settings.max_k, self.graph.rows) if self.graph else self.settings.max_k

    def strategy(self, requested: str | None) -> str:
        return requested or self.default.name

    def start_batchers(self) -> None:
        """Micro-batchers over the encoder and the graph, sharing one bounded executor."""
        s, m = self.settings, self.metrics
        self.executor = ThreadPoolExecutor(max_workers=s.onnx_workers, thread_name_prefix="onnx")
        workers = self.llm.concurrency if self.llm else 1
        self.llm_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm")
        self.llm_gate = Gate("llm", s.max_llm_queue)

        def batcher(name, run):
            m.queue_depth.labels(name).set(0)
            return MicroBatcher(name, run, self.executor, s.max_batch, s.max_wait_ms / 1e3, s.max_queue,
                                on_batch=lambda n, sec: m.batch_size.labels(name).observe(n),
                                on_depth=lambda q: m.queue_depth.labels(name).set(q))

        self.encoder_batcher = batcher("encoder", lambda texts: list(self.encoder.encode(texts)))
        if self.has_memory:
            self.memory_batcher = batcher("memory", lambda texts: list(zip(*self.encoder.encode_memory(texts))))
        m.provider.labels("encoder", self.encoder.provider).set(1)
        if self.graph is not None:
            self.graph_batcher = batcher("graph", self.graph.run)
            m.provider.labels("graph", self.graph.provider).set(1)

    async def close(self) -> None:
        for b in (self.encoder_batcher, self.memory_batcher, self.graph_batcher):
            if b is not None:
                await b.close()
        for pool in (self.executor, self.llm_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def open_index(settings: Settings) -> tuple[Store, IndexMeta | None]:
    """The Edge shard under the index dir, or the server collection when R4T_QDRANT_URL is set."""
    meta = IndexMeta.read(settings.index_path)
    if settings.qdrant_url:
        store = ServerStore(settings.qdrant_url, settings.collection_name, api_key=settings.qdrant_api_key)
        return store, meta
    if meta is None:
        raise ArtifactError(f"no index at {settings.index_path}: run `r4t index --dataset {settings.dataset}`")
    try:
        return EdgeStore.open(Path(settings.index_path) / SHARD_DIR), meta
    except FileNotFoundError as exc:
        raise ArtifactError(str(exc)) from None
    except Exception as exc:  # Edge raises bare Exception, e.g. WouldBlock on a WAL another process holds
        raise ArtifactError(
            f"cannot open the index at {settings.index_path}: {exc} (is another server using it?)"
        ) from exc


def check_fit(settings: Settings, encoder: OnnxEncoder, store: Store, meta: IndexMeta | None) -> None:
    """The index must hold vectors of this encoder: same width and, when recorded, same sha256."""
    if store.dim != encoder.dim:
        raise ArtifactError(f"index has {store.dim}-d vectors but the encoder emits {encoder.dim}-d")
    if meta is not None and meta.encoder_sha256 != encoder.manifest.encoder_sha256:
        raise ArtifactError(
            f"index {settings.index_path} was built with encoder {meta.encoder!r} "
            f"({meta.encoder_sha256[:12]}), not the one at {settings.encoder_path}: re-run `r4t index`"
        )


def load_graph(settings: Settings, encoder: OnnxEncoder) -> FanoutGraph | None:
    """The fan-out graph, checked to share the encoder's space and the served catalog."""
    path = settings.graph_path
    if path is None:
        return None
    if not path.is_dir():
        raise ArtifactError(f"no fan-out graph at {path}: run `r4t export --dataset {settings.dataset}` "
                            "(or R4T_GRAPH=none to serve without the diffusion strategy)")
    graph = FanoutGraph(path, device=settings.device, threads=settings.onnx_threads, spin=settings.onnx_spin)
    if graph.manifest.encoder_sha256 != encoder.manifest.encoder_sha256:
        raise ArtifactError(f"fan-out graph {path} was trained in another encoder's space than "
                            f"{settings.encoder_path}: re-export it with --encoder {settings.encoder}")
    if graph.info.dataset != settings.dataset:
        raise ArtifactError(f"fan-out graph {path} was trained on {graph.info.dataset}, not {settings.dataset}")
    if settings.require_gpu and graph.provider != "CUDAExecutionProvider":
        raise ArtifactError(f"R4T_REQUIRE_GPU is set but the fan-out graph runs on {graph.provider}")
    return graph


def _checks(val: dict) -> dict:
    return val.get("at") or {str(val["n"]): val}  # every cut-off checked (older manifests: one)


def _verdict(name: str, val: dict) -> str:
    checks = _checks(val)
    return f"val on {val['sets']} sets, {name} vs single: " + "; ".join(
        f"R@{n} {c[f'recall_{name}']:.4f} vs {c['recall_single']:.4f}, paired 95% "
        f"[{c['ci_vs_single'][1]:+.4f}, {c['ci_vs_single'][2]:+.4f}]" for n, c in checks.items())


def _mean_recall(name: str, val: dict) -> float:
    checks = _checks(val)
    return sum(c[f"recall_{name}"] for c in checks.values()) / len(checks)


def default_strategy(settings: Settings, graph: FanoutGraph | None, memory: dict | None = None) -> Default:
    """(strategy, why) for requests that name none, unless R4T_DEFAULT_STRATEGY says: of diffusion (its graph's
    manifest, written by `r4t space export`) and memory (the encoder's config.space.memory, written by
    `r4t space memory`, when the server can run it), the one whose recorded val check is no worse than single at
    every cut-off and whose val recall is higher (mean over the cut-offs; a tie goes to diffusion), else single."""
    if settings.default_strategy:
        return Default(settings.default_strategy, "R4T_DEFAULT_STRATEGY")
    val = graph.manifest.config.get("provenance", {}).get("val") if graph is not None else None
    mem_val = (memory or {}).get("val")
    reasons = {"diffusion": _verdict("diffusion", val) if val else "no fan-out graph" if graph is None else
               "the fan-out graph's manifest records no val check against single"}
    if mem_val:
        reasons["memory"] = _verdict("memory", mem_val)
    passed = [(name, v) for name, v in (("diffusion", val), ("memory", mem_val)) if v and v.get("non_inferior")]
    if not passed:
        return Default("single", "; ".join(reasons.values()))
    name, _ = max(passed, key=lambda c: _mean_recall(*c))
    return Default(name, "; ".join([reasons[name]] + [r for n, r in reasons.items() if n != name]))


def load_runtime(settings: Settings) -> Runtime:
    encoder = OnnxEncoder(settings.encoder_path, device=settings.device, threads=settings.onnx_threads,
                          spin=settings.onnx_spin)
    if settings.require_gpu and encoder.provider != "CUDAExecutionProvider":
        raise ArtifactError(f"R4T_REQUIRE_GPU is set but ONNX Runtime runs on {encoder.provider}")
    graph = load_graph(settings, encoder)
    store, meta = open_index(settings)
    try:
        check_fit(settings, encoder, store, meta)
    except ArtifactError:
        store.close()  # a refused start must not keep the shard (and its WAL lock) open
        raise
    runtime = Runtime(settings, encoder, store, Resolver(store), meta, graph=graph, llm=make_writer(settings),
                      filterable=store.payload_index() if settings.strict_filters else None)
    runtime.default = default_strategy(settings, graph, encoder.memory if runtime.has_memory else None)
    if runtime.default.name not in runtime.strategies:
        store.close()
        raise ArtifactError(f"R4T_DEFAULT_STRATEGY={runtime.default.name} but this server has no "
                            f"{runtime.default.name} strategy")
    runtime.resolver.resolve(encoder.encode(["warm-up query"]), limit_per_vector=1)  # one real pass before ready
    if graph is not None:
        runtime.resolver.resolve(graph.run([("warm-up query", 0)])[0].fanout, limit_per_vector=1)
    runtime.warmed_up = True
    if runtime.filterable == {}:
        log.warning("the index has no payload index: every filter is refused (rebuild it with `r4t index` or "
                    "`r4t space build`, or set R4T_STRICT_FILTERS=false)")
    if meta is not None and meta.distance == "dot" and meta.quantization:
        log.warning("the index scores by inner product over an %s copy, which loses the vector norms it ranks by "
                    "(a third of the exact top 10 missed on MPD): rebuild it with `r4t space build`", meta.quantization)
    log.info("ready: %d items, encoder %s on %s, fan-out graph %s, llm %s", store.count(),
             encoder.manifest.encoder.name, encoder.provider, graph and graph.directory,
             runtime.llm and runtime.llm.name)
    return runtime


def check_query(rt: Runtime, query: str, field: str = "query") -> str:
    """The stripped query, or a 4xx naming `field`: over the length limit, blank, invalid Unicode."""
    if len(query) > rt.settings.max_query_chars:
        raise InvalidInput(field, f"{field} is longer than {rt.settings.max_query_chars} characters")
    query = query.strip(BLANK)
    if not query:
        raise EmptyQuery(f"{field} is empty or only whitespace", field)
    try:
        query.encode("utf-8")  # JSON may escape a lone surrogate ("\ud800"); the tokenizer raises TypeError
    except UnicodeEncodeError:
        raise InvalidInput(field, f"{field} is not valid Unicode (it holds a lone surrogate)") from None
    return query
