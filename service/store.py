"""Vector store facade: one `Store` interface over Qdrant Edge (embedded) and a Qdrant server.

Both backends score float32 vectors by cosine (text spaces) or by inner product (`distance="dot"`:
co-membership spaces, whose unnormalised item vectors carry popularity) and accept the same payload
filters (`service/filters.py`). Every backend failure surfaces as `StoreUnavailable`.

A co-membership index may also hold the item memory: a sparse vector per item (`MEMORY`) over the train sets
that contain it. `search_memory_batch` then scores each item by q·v + coef·Σ_j w_j [item ∈ set_j] in one
Qdrant query: a dense and a sparse prefetch, their union rescored by the dense query, fused by a score formula.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

# InvalidFilter is re-exported: callers catch it from the store they call.
from service.filters import InvalidFilter, parse_filter, to_edge_filter, validate_filter  # noqa: F401

logger = logging.getLogger(__name__)

# Fixed forever: point ids are uuid5(namespace, item id), so changing it orphans every stored point.
_ID_NAMESPACE = uuid.UUID("6f1c1f5e-3f7a-4d2b-9a43-5b7e2f4c8d10")
_CHUNK = 1_000  # points per upsert call: bounds peak memory of the list-of-floats conversion
_EDGE_CONFIG = "edge_config.json"  # written by EdgeShard.create; its presence marks a shard dir
PAYLOAD_INDEX_KINDS = ("keyword", "integer", "float", "bool", "datetime", "text", "uuid")
DISTANCES = ("cosine", "dot")
MEMORY = "memory"  # the named sparse vector of the item memory: indices of the train sets holding the item


@dataclass(frozen=True, slots=True)
class MemoryQuery:
    """The memory half of one query: the nearest train sets (indices into the memory's dimensions), their
    weights, and `coef`, the memory term's weight against the dense score."""

    sets: np.ndarray  # (n,) int
    weights: np.ndarray  # (n,) float32
    coef: float

    def nonzero(self) -> tuple[list[int], list[float]]:
        keep = np.asarray(self.weights) > 0
        return np.asarray(self.sets)[keep].astype(int).tolist(), np.asarray(self.weights)[keep].astype(float).tolist()


class StoreUnavailable(Exception):
    """The backend cannot answer (closed, server down); the service maps it to 503."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: catalog item id, cosine score, stored payload, optional (D,) vector.

    A search with `with_payload=False` cannot know the item id: `id` is then the point id and
    `payload` is empty (`Store.payloads` maps point ids to payloads later).
    """

    id: str
    score: float
    payload: dict
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class HnswSettings:
    """HNSW graph parameters (Qdrant semantics), the search-time beam used when none is given, and the
    int8 scalar quantization the graph is walked with (measured on MPD, 189k x 384-d, ef 128, 10 queries:
    11.5 -> 5.3 ms per batch at the same recall@10 vs exact, 0.95). An index build takes them from `for_distance`."""

    m: int = 16  # edges per node
    ef_construct: int = 128  # beam width while building the graph
    full_scan_threshold: int = 10_000  # KB of (filtered) vectors below which Qdrant scans instead
    default_ef: int = 128  # search beam when a call passes hnsw_ef=None
    int8: bool = True  # keep an int8 copy of the vectors in RAM for the search (set when the index is built)
    oversampling: float = 2.0  # quantized candidates per requested hit, rescored with the float vectors

    @classmethod
    def for_distance(cls, distance: str) -> HnswSettings:
        """What an index of this distance is built with. Inner product (MPD co-membership, val titles, recall vs
        exact): the int8 copy, clipped at the 0.99 quantile, loses the factor norms it ranks by (recall@10 0.62), and
        the product is not a metric, so HNSW's greedy walk strands more often: no int8 and a denser graph (m 16 /
        ef_construct 128 float: recall@10 0.96, @100 0.88, @500 0.71; m 32 / 256: 0.96-0.98, 0.95-0.96, 0.89)."""
        _check_distance(distance)
        return cls() if distance == "cosine" else cls(m=32, ef_construct=256, int8=False)


@runtime_checkable
class Store(Protocol):
    """What the resolver, rewards, evaluation and the service need from a vector index."""

    dim: int
    memory: bool  # the index holds the item memory (search_memory_batch works)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               memory: Sequence[Sequence[int]] | None = None) -> None: ...
    def search_batch(
        self,
        vectors: np.ndarray,
        limit: int,
        filter: dict | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
    ) -> list[list[Hit]]: ...
    def search_memory_batch(
        self,
        vectors: np.ndarray,
        memories: Sequence[MemoryQuery],
        limit: int,
        memory_depth: int,
        filter: dict | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
    ) -> list[list[Hit]]: ...
    def payloads(self, point_ids: Sequence[str]) -> dict[str, dict]: ...
    def payload_index(self) -> dict[str, str]: ...  # indexed payload field -> kind (PAYLOAD_INDEX_KINDS)
    def fetch_vectors(self, ids: Sequence[str]) -> np.ndarray: ...
    def count(self) -> int: ...
    def ping(self) -> bool: ...  # cheap liveness check, never raises
    def close(self) -> None: ...


def point_id(item_id: str) -> str:
    """Qdrant point id (a uuid5) for a catalog item id: arbitrary strings are not valid point ids."""
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


def _matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must be (N, {dim}), got {vectors.shape}")
    return vectors


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def _check_queries(vectors: np.ndarray, dim: int, limit: int) -> np.ndarray:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return _matrix(vectors, dim)


def _chunks(
    ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict], dim: int,
    memory: Sequence[Sequence[int]] | None = None, has_memory: bool = False,
) -> Iterator[tuple[list[str], list[list[float]], list[dict], list[list[int]] | None]]:
    """Upsert input, checked now, then lazily in chunks of (point ids, vectors, payloads with "id", memory rows)."""
    vectors = _matrix(vectors, dim)  # (N, D)
    if not len(ids) == len(vectors) == len(payloads):
        raise ValueError(f"got {len(ids)} ids, {len(vectors)} vectors, {len(payloads)} payloads")
    if memory is not None and not has_memory:
        raise ValueError("this index holds no item memory: create it with memory=True")
    if memory is not None and len(memory) != len(ids):
        raise ValueError(f"got {len(ids)} ids but {len(memory)} memory rows")
    return (
        (
            [point_id(i) for i in ids[lo : lo + _CHUNK]],
            vectors[lo : lo + _CHUNK].tolist(),
            [{**p, "id": i} for i, p in zip(ids[lo : lo + _CHUNK], payloads[lo : lo + _CHUNK])],
            None if memory is None else [sorted(int(j) for j in row) for row in memory[lo : lo + _CHUNK]],
        )
        for lo in range(0, len(ids), _CHUNK)
    )


def _check_memory(store, vectors: np.ndarray, memories: Sequence[MemoryQuery], limit: int, memory_depth: int
                  ) -> np.ndarray:
    vectors = _check_queries(vectors, store.dim, limit)
    if not store.memory:
        raise ValueError("this index holds no item memory (rebuild it from a co-membership space)")
    if len(memories) != len(vectors) or memory_depth < 1:
        raise ValueError(f"got {len(vectors)} vectors but {len(memories)} memory queries (memory_depth >= 1)")
    return vectors


def _ordered_vectors(ids: Sequence[str], found: dict[str, Any], dim: int) -> np.ndarray:
    """(N, D) rows in the order of `ids`; KeyError naming the ids the backend did not return."""
    missing = [i for i in ids if i not in found]
    if missing:
        raise KeyError(f"{len(missing)} ids not in the store: {missing[:10]}")
    out = np.empty((len(ids), dim), dtype=np.float32)  # (N, D)
    for row, item_id in enumerate(ids):
        out[row] = _dense(found[item_id])
    return out


def _dense(vector: Any) -> np.ndarray:
    # Both libraries return the unnamed default vector as a list, but a dict keyed "" is possible.
    if isinstance(vector, dict):
        vector = vector[""]
    return np.asarray(vector, dtype=np.float32)


def _hit(pid: Any, score: float, payload: dict | None, vector: Any) -> Hit:
    payload = payload or {}
    item_id = str(payload.get("id", pid))
    return Hit(item_id, float(score), payload, None if vector is None else _dense(vector))


@contextmanager
def _backend(name: str, closed: bool) -> Iterator[None]:
    """Turn a failing backend call into StoreUnavailable (Edge raises bare Exception for everything).

    TypeError/ValueError pass through: both libraries use them for input they cannot encode.
    """
    if closed:
        raise StoreUnavailable(f"{name} store is closed")
    try:
        yield
    except (TypeError, ValueError):
        raise
    except Exception as e:
        raise StoreUnavailable(f"{name} store cannot answer: {e}") from e


def _payload_kind(kind: str) -> str:
    if kind not in PAYLOAD_INDEX_KINDS:
        raise ValueError(f"payload index kind must be one of {PAYLOAD_INDEX_KINDS}, got {kind!r}")
    return kind


def _answers(probe: Callable[[], object]) -> bool:
    """True when the probe returns at all: ping() must never raise, whatever the library throws."""
    try:
        probe()
    except Exception:
        return False
    return True


class EdgeStore:
    """Qdrant Edge shard in a directory on disk: the embedded default backend."""

    def __init__(self, shard: qe.EdgeShard, path: Path, dim: int, default_ef: int,
                 oversampling: float = HnswSettings.oversampling, memory: bool = False) -> None:
        self._shard, self.path, self.dim, self.default_ef = shard, path, dim, default_ef
        self.oversampling, self.memory = oversampling, memory
        self._closed = False

    @classmethod
    def create(cls, path: Path, dim: int, hnsw: HnswSettings = HnswSettings(), distance: str = "cosine",
               memory: bool = False) -> EdgeStore:
        path = Path(path)
        _check_distance(distance)
        if (path / _EDGE_CONFIG).exists():
            raise FileExistsError(f"an Edge shard already exists at {path}; open it or pick a new dir")
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim,
                                        distance=qe.Distance.Dot if distance == "dot" else qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=hnsw.m, ef_construct=hnsw.ef_construct, full_scan_threshold=hnsw.full_scan_threshold
            ),
            # Edge runs no background optimizer; a 1 KB indexing threshold makes optimize() build
            # HNSW for every non-empty segment (the Qdrant default, 10 MB, leaves ~6k x 384-d unindexed).
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
            quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99,
                                                            memory=qe.Memory.Cached) if hnsw.int8 else None,
            sparse_vectors={MEMORY: qe.EdgeSparseVectorParams()} if memory else None,
        )
        path.mkdir(parents=True, exist_ok=True)
        return cls(qe.EdgeShard.create(str(path), config), path, dim, hnsw.default_ef, hnsw.oversampling, memory)

    @classmethod
    def open(cls, path: Path, default_ef: int = HnswSettings.default_ef) -> EdgeStore:
        path = Path(path)
        config_file = path / _EDGE_CONFIG
        # Checked before load: EdgeShard.load on an empty dir fails but leaves a segments/ dir behind.
        if not config_file.is_file():
            raise FileNotFoundError(f"no Edge shard at {path} (missing {_EDGE_CONFIG}); build the index first")
        config = json.loads(config_file.read_text())
        dim, memory = int(config["vectors"][""]["size"]), MEMORY in (config.get("sparse_vectors") or {})
        return cls(qe.EdgeShard.load(str(path)), path, dim, default_ef, memory=memory)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               memory: Sequence[Sequence[int]] | None = None) -> None:
        for pids, vecs, pays, rows in _chunks(ids, vectors, payloads, self.dim, memory, self.memory):
            if rows is not None:  # an item no train set holds stores no memory vector
                vecs = [{"": v, MEMORY: qe.SparseVector(r, [1.0] * len(r))} if r else {"": v}
                        for v, r in zip(vecs, rows)]
            # Built outside _backend: a payload Edge cannot store raises TypeError/ValueError here.
            points = [qe.Point(*point) for point in zip(pids, vecs, pays)]
            with _backend("edge", self._closed):
                self._shard.update(qe.UpdateOperation.upsert_points(points))
        with _backend("edge", self._closed):
            self._shard.flush()
        logger.debug("edge upserted %d points into %s", len(ids), self.path)

    def optimize(self) -> None:
        """Build the HNSW index (blocking); call after a bulk upsert, before serving."""
        with _backend("edge", self._closed):
            self._shard.optimize()
            self._shard.flush()
        logger.info("edge index at %s: %d vectors indexed", self.path, self.indexed_vectors_count)

    def index_payload(self, field: str, kind: str) -> None:
        """Index a payload field (see PAYLOAD_INDEX_KINDS): filtered search gets ~10x faster."""
        schema = getattr(qe.PayloadSchemaType, _payload_kind(kind).capitalize())
        with _backend("edge", self._closed):
            self._shard.update(qe.UpdateOperation.create_field_index(field, schema))

    def payload_index(self) -> dict[str, str]:
        """The shard's payload indexes: field -> kind."""
        with _backend("edge", self._closed):
            schema = self._shard.info().payload_schema
        return {f: str(i.data_type).rsplit(".", 1)[-1].lower() for f, i in schema.items()}

    @property
    def indexed_vectors_count(self) -> int:
        with _backend("edge", self._closed):
            return self._shard.info().indexed_vectors_count

    def search_batch(
        self,
        vectors: np.ndarray,
        limit: int,
        filter: dict | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
    ) -> list[list[Hit]]:
        vectors = _check_queries(vectors, self.dim, limit)
        parsed = validate_filter(filter)
        edge_filter = None if parsed is None else to_edge_filter(parsed)
        # An exact search ignores the int8 copy; an approximate one rescores its candidates in float.
        quantization = qe.QuantizationSearchParams(ignore=exact, rescore=True, oversampling=self.oversampling)
        params = qe.SearchParams(hnsw_ef=hnsw_ef or self.default_ef, exact=exact, quantization=quantization)
        requests = [
            qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(q.tolist()), filter=edge_filter,
                params=params, with_payload=with_payload, with_vector=with_vectors,
            )
            for q in vectors
        ]
        with _backend("edge", self._closed):
            batches = self._shard.query_batch(qe.QueryBatchRequest(requests)) if requests else []
        return [[_hit(p.id, p.score, p.payload, p.vector) for p in points] for points in batches]

    def search_memory_batch(
        self,
        vectors: np.ndarray,
        memories: Sequence[MemoryQuery],
        limit: int,
        memory_depth: int,
        filter: dict | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
    ) -> list[list[Hit]]:
        """Top `limit` by q·v + coef·memory, per query; exact whenever `memory_depth` covers every item the
        query's sets hold: the dense top `limit` plus those items, rescored by the dense query, hold the answer."""
        vectors = _check_memory(self, vectors, memories, limit, memory_depth)
        parsed = validate_filter(filter)
        f = None if parsed is None else to_edge_filter(parsed)
        quantization = qe.QuantizationSearchParams(ignore=exact, rescore=True, oversampling=self.oversampling)
        params = qe.SearchParams(hnsw_ef=max(hnsw_ef or self.default_ef, limit), exact=exact,
                                 quantization=quantization)
        E, requests = qe.Expression, []
        for q, m in zip(vectors, memories):
            dense = qe.Query.Nearest(q.tolist())
            by_memory = qe.Prefetch(limit=memory_depth, query=qe.Query.Nearest(qe.SparseVector(*m.nonzero()),
                                                                                using=MEMORY), filter=f)
            union = qe.Prefetch(limit=limit + memory_depth, query=dense, params=params, filter=f,
                                prefetches=[qe.Prefetch(limit=limit, query=dense, params=params, filter=f), by_memory])
            formula = E.Sum([E.Variable("$score[0]"), E.Mult([E.Constant(float(m.coef)), E.Variable("$score[1]")])])
            requests.append(qe.QueryRequest(limit=limit, query=qe.Formula(formula, defaults={"$score[1]": 0.0}),
                                            prefetches=[union, by_memory], filter=f, with_payload=with_payload,
                                            with_vector=[""] if with_vectors else False))
        with _backend("edge", self._closed):
            batches = self._shard.query_batch(qe.QueryBatchRequest(requests)) if requests else []
        return [[_hit(p.id, p.score, p.payload, p.vector) for p in points] for points in batches]

    def payloads(self, point_ids: Sequence[str]) -> dict[str, dict]:
        with _backend("edge", self._closed):
            records = self._shard.retrieve(list(point_ids), with_payload=True, with_vector=False)
        return {str(r.id): r.payload or {} for r in records}

    def fetch_vectors(self, ids: Sequence[str]) -> np.ndarray:
        with _backend("edge", self._closed):
            records = self._shard.retrieve([point_id(i) for i in ids], with_payload=True, with_vector=True)
        found = {str(r.payload["id"]): r.vector for r in records}
        return _ordered_vectors(ids, found, self.dim)

    def count(self) -> int:
        with _backend("edge", self._closed):
            return self._shard.count(qe.CountRequest(exact=True))

    def ping(self) -> bool:
        return _answers(self.count)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shard.close()


class ServerStore:
    """A collection on a Qdrant server, or qdrant-client's in-process ":memory:" mode for tests."""

    def __init__(
        self,
        location: str,
        collection: str,
        dim: int | None = None,
        create: bool = False,
        api_key: str | None = None,
        hnsw: HnswSettings = HnswSettings(),
        distance: str = "cosine",
        memory: bool = False,
    ) -> None:
        _check_distance(distance)
        if create and dim is None:
            raise ValueError("dim is required to create a collection")
        self.location, self.collection, self.default_ef = location, collection, hnsw.default_ef
        self.oversampling = hnsw.oversampling
        self._closed, self._local = False, location == ":memory:"
        self._declared: dict[str, str] = {}  # local mode builds no payload index; it keeps what was declared
        with _backend("server", False):
            self._client = QdrantClient(location) if self._local else QdrantClient(url=location, api_key=api_key)
            if create and not self._client.collection_exists(collection):
                self._client.create_collection(
                    collection,
                    vectors_config=models.VectorParams(
                        size=dim, distance=models.Distance.DOT if distance == "dot" else models.Distance.COSINE),
                    hnsw_config=models.HnswConfigDiff(
                        m=hnsw.m, ef_construct=hnsw.ef_construct, full_scan_threshold=hnsw.full_scan_threshold
                    ),
                    quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=0.99, always_ram=True)) if hnsw.int8 else None,
                    sparse_vectors_config={MEMORY: models.SparseVectorParams()} if memory else None,
                )
            exists = self._client.collection_exists(collection)
            params = self._client.get_collection(collection).config.params if exists else None
        size = params.vectors.size if params else None
        self.memory = bool(params and MEMORY in (params.sparse_vectors or {}))
        if size is None:
            raise FileNotFoundError(f"no collection {collection!r} at {location}; build the index first")
        if dim is not None and size != dim:
            raise ValueError(f"collection {collection!r} holds {size}-d vectors, not {dim}-d")
        self.dim = size

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               memory: Sequence[Sequence[int]] | None = None) -> None:
        for pids, vecs, pays, rows in _chunks(ids, vectors, payloads, self.dim, memory, self.memory):
            if rows is None:
                batch = models.Batch(ids=pids, vectors=vecs, payloads=pays)
            else:  # an item no train set holds stores no memory vector
                batch = [models.PointStruct(id=i, payload=p, vector={"": v, **(
                    {MEMORY: models.SparseVector(indices=r, values=[1.0] * len(r))} if r else {})})
                    for i, v, p, r in zip(pids, vecs, pays, rows)]
            with _backend("server", self._closed):
                self._client.upsert(self.collection, points=batch, wait=True)

    def index_payload(self, field: str, kind: str) -> None:
        """Index a payload field (see PAYLOAD_INDEX_KINDS); local mode has no indexes: it records the field."""
        schema = models.PayloadSchemaType(_payload_kind(kind))
        if self._local:
            self._declared[field] = kind
            return
        with _backend("server", self._closed):
            self._client.create_payload_index(self.collection, field, field_schema=schema, wait=True)

    def payload_index(self) -> dict[str, str]:
        """The collection's payload indexes: field -> kind (local mode: the fields declared by index_payload)."""
        if self._local:
            return dict(self._declared)
        with _backend("server", self._closed):
            schema = self._client.get_collection(self.collection).payload_schema
        return {f: str(getattr(i.data_type, "value", i.data_type)) for f, i in schema.items()}

    def search_batch(
        self,
        vectors: np.ndarray,
        limit: int,
        filter: dict | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
    ) -> list[list[Hit]]:
        vectors = _check_queries(vectors, self.dim, limit)
        parsed = parse_filter(filter)
        # Local mode always scans exactly and warns on every call that carries search params.
        quantization = models.QuantizationSearchParams(ignore=exact, rescore=True, oversampling=self.oversampling)
        params = None if self._local else models.SearchParams(hnsw_ef=hnsw_ef or self.default_ef, exact=exact,
                                                              quantization=quantization)
        requests = [
            models.QueryRequest(
                query=q.tolist(), limit=limit, filter=parsed, params=params,
                with_payload=with_payload, with_vector=with_vectors,
            )
            for q in vectors
        ]
        with _backend("server", self._closed):
            responses = self._client.query_batch_points(self.collection, requests) if requests else []
        return [[_hit(p.id, p.score, p.payload, p.vector) for p in r.points] for r in responses]

    def search_memory_batch(
        self,
        vectors: np.ndarray,
        memories: Sequence[MemoryQuery],
        limit: int,
        memory_depth: int,
        filter: dict | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
    ) -> list[list[Hit]]:
        """The same query as `EdgeStore.search_memory_batch`, through qdrant-client."""
        vectors = _check_memory(self, vectors, memories, limit, memory_depth)
        f = parse_filter(filter)
        quantization = models.QuantizationSearchParams(ignore=exact, rescore=True, oversampling=self.oversampling)
        params = None if self._local else models.SearchParams(hnsw_ef=max(hnsw_ef or self.default_ef, limit),
                                                              exact=exact, quantization=quantization)
        requests = []
        for q, m in zip(vectors, memories):
            sets, weights = m.nonzero()
            by_memory = models.Prefetch(query=models.SparseVector(indices=sets, values=weights), using=MEMORY,
                                        limit=memory_depth, filter=f)
            union = models.Prefetch(query=q.tolist(), limit=limit + memory_depth, params=params, filter=f, prefetch=[
                models.Prefetch(query=q.tolist(), limit=limit, params=params, filter=f), by_memory])
            formula = models.FormulaQuery(formula=models.SumExpression(sum=[
                "$score[0]", models.MultExpression(mult=[float(m.coef), "$score[1]"])]), defaults={"$score[1]": 0.0})
            requests.append(models.QueryRequest(query=formula, prefetch=[union, by_memory], limit=limit, filter=f,
                                                with_payload=with_payload, with_vector=[""] if with_vectors else False))
        with _backend("server", self._closed):
            responses = self._client.query_batch_points(self.collection, requests) if requests else []
        return [[_hit(p.id, p.score, p.payload, p.vector) for p in r.points] for r in responses]

    def payloads(self, point_ids: Sequence[str]) -> dict[str, dict]:
        with _backend("server", self._closed):
            records = self._client.retrieve(self.collection, list(point_ids), with_payload=True, with_vectors=False)
        return {str(r.id): r.payload or {} for r in records}

    def fetch_vectors(self, ids: Sequence[str]) -> np.ndarray:
        with _backend("server", self._closed):
            records = self._client.retrieve(
                self.collection, [point_id(i) for i in ids], with_payload=True, with_vectors=True
            )
        found = {str(r.payload["id"]): r.vector for r in records}
        return _ordered_vectors(ids, found, self.dim)

    def count(self) -> int:
        with _backend("server", self._closed):
            return self._client.count(self.collection, exact=True).count

    def ping(self) -> bool:
        # An approximate count is cheap on the server and fails once the collection is gone.
        return not self._closed and _answers(lambda: self._client.count(self.collection, exact=False))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


def open_store(location: str | Path, collection: str = "catalog", api_key: str | None = None) -> Store:
    """An existing index: an http(s) URL or ":memory:" opens a server collection, anything else an Edge dir."""
    text = str(location)
    if text == ":memory:" or text.startswith(("http://", "https://")):
        return ServerStore(text, collection, api_key=api_key)
    return EdgeStore.open(Path(text))
