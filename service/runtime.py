"""What the service loads once at start-up: encoder artifact, store and resolver, checked to fit.

Any missing or mismatched piece raises ArtifactError with one line, and the service does not start.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.encoder import OnnxEncoder
from service.errors import EmptyQuery, InvalidInput
from service.manifest import ArtifactError
from service.resolver import Resolver
from service.schemas import ResultItem, SearchRequest, SearchResponse
from service.settings import Settings
from service.store import EdgeStore, ServerStore, Store

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"


@dataclass
class Runtime:
    settings: Settings
    encoder: OnnxEncoder
    store: Store
    resolver: Resolver
    index: dict = field(default_factory=dict)
    warmed_up: bool = False


def open_index(settings: Settings) -> tuple[Store, dict]:
    """The Edge shard under the index dir, or the server collection when R4T_QDRANT_URL is set."""
    meta_path = Path(settings.index_path) / INDEX_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if settings.qdrant_url:
        store = ServerStore(settings.qdrant_url, settings.collection_name, api_key=settings.qdrant_api_key)
        return store, meta
    if not meta:
        raise ArtifactError(f"no index at {settings.index_path}: run `r4t index --dataset {settings.dataset}`")
    try:
        return EdgeStore.open(Path(settings.index_path) / "shard"), meta
    except FileNotFoundError as exc:
        raise ArtifactError(str(exc)) from None
    except Exception as exc:  # Edge raises bare Exception, e.g. WouldBlock on a WAL another process holds
        raise ArtifactError(
            f"cannot open the index at {settings.index_path}: {exc} (is another server using it?)"
        ) from exc


def check_fit(settings: Settings, encoder: OnnxEncoder, store: Store, meta: dict) -> None:
    """The index must hold vectors of this encoder: same width and, when recorded, same sha256."""
    if store.dim != encoder.dim:
        raise ArtifactError(f"index has {store.dim}-d vectors but the encoder emits {encoder.dim}-d")
    if meta and meta.get("encoder_sha256") != encoder.manifest.encoder_sha256:
        raise ArtifactError(
            f"index {settings.index_path} was built with encoder {meta.get('encoder')!r} "
            f"({str(meta.get('encoder_sha256'))[:12]}), not the one at {settings.encoder_path}: re-run `r4t index`"
        )


def load_runtime(settings: Settings) -> Runtime:
    encoder = OnnxEncoder(settings.encoder_path, device=settings.device, threads=settings.onnx_threads)
    if settings.require_gpu and encoder.provider != "CUDAExecutionProvider":
        raise ArtifactError(f"R4T_REQUIRE_GPU is set but ONNX Runtime runs on {encoder.provider}")
    store, meta = open_index(settings)
    try:
        check_fit(settings, encoder, store, meta)
    except ArtifactError:
        store.close()  # a refused start must not keep the shard (and its WAL lock) open
        raise
    runtime = Runtime(settings, encoder, store, Resolver(store), meta)
    search(runtime, SearchRequest(query="warm-up query", limit=1))  # one real pass before ready
    runtime.warmed_up = True
    log.info("ready: %d items, encoder %s on %s", store.count(), encoder.manifest.encoder.name, encoder.provider)
    return runtime


def search(rt: Runtime, req: SearchRequest) -> SearchResponse:
    """No fan-out: embed the query, one nearest-neighbour search, items with scores."""
    started = time.perf_counter()
    query = req.query.strip()
    if not query:
        raise EmptyQuery("query is empty or only whitespace")
    try:
        query.encode("utf-8")  # JSON may escape a lone surrogate ("\ud800"); the tokenizer raises TypeError
    except UnicodeEncodeError:
        raise InvalidInput("query", "query is not valid Unicode (it holds a lone surrogate)") from None
    if req.limit > rt.settings.max_limit:
        raise InvalidInput("limit", f"limit must be <= {rt.settings.max_limit}")
    if rt.encoder.count_tokens(query) > rt.settings.max_query_tokens:
        raise InvalidInput("query", f"query is longer than {rt.settings.max_query_tokens} tokens")
    vector = rt.encoder.encode([query])  # (1, D)
    encoded = time.perf_counter()
    items = rt.resolver.resolve(vector, limit_per_vector=req.limit, filter=req.filter,
                                hnsw_ef=rt.settings.hnsw_ef)
    done = time.perf_counter()
    return SearchResponse(
        items=[ResultItem(id=it.id, text=it.text, payload=it.payload, score=it.score) for it in items],
        timings={"encode": 1e3 * (encoded - started), "resolve": 1e3 * (done - encoded),
                 "total": 1e3 * (done - started)},
    )
