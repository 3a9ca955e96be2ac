"""/fanout: queries -> K vectors per query (diffusion, llm or single) -> one batched store call -> items.

`/search` (no fan-out, scores only) goes through the same encoder micro-batcher and queue limit.
`diffusion` runs the exported graph once for all queries of a micro-batch; `single` embeds the query
(the no-fan-out baseline); `memory` embeds it too and adds its nearest train sets' item memory to the score
(one Qdrant formula query, `Store.search_memory_batch`); `llm` asks the fan-out LM for sub-queries and embeds them. Every strategy
resolves all of its vectors in ONE `Resolver.resolve_many` call (plus one per `fill` doubling for queries
whose hits overlap), then MMR re-ranks when asked; only a batch whose hits pass R4T_MAX_HITS_PER_CALL is
split into several such calls, one after another.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidInput
from service.filters import check_indexed
from service.resolver import FusedItem, SearchOptions, mmr
from service.runtime import Runtime, check_query
from service.schemas import (
    FanoutItem,
    FanoutOptions,
    FanoutResponse,
    Projection,
    ResultItem,
    SearchRequest,
    SearchResponse,
    SetView,
)
from service.setstats import mean_pairwise_distance, project_2d, vendi
from service.store import MemoryQuery

DEFAULT_K = 10  # fan-out vectors per query when a request names no number (the paper's K)
MMR_CANDIDATES = 100  # fused items MMR chooses from when a request names no number
GROUP_KEYS = ("artist", "category")  # the first payload field the items carry is counted as their groups


def check_options(rt: Runtime, opts: FanoutOptions) -> None:
    """Limits that depend on the settings and the artifacts (the OpenAPI document states the same ones)."""
    s = rt.settings
    for field, value in (("limit", opts.limit), ("limit_per_fanout", opts.limit_per_fanout)):
        if value > s.max_limit:
            raise InvalidInput(field, f"{field} must be <= {s.max_limit}")
    if opts.mmr and (opts.mmr.candidates or 0) > s.max_limit:
        raise InvalidInput("mmr.candidates", f"mmr.candidates must be <= {s.max_limit}")
    if opts.k > rt.max_k:
        raise InvalidInput("k", f"k must be <= {rt.max_k} (R4T_MAX_K, and the fan-out graph's rows)")
    if opts.strategy == "diffusion" and rt.graph is None:
        raise InvalidInput("strategy", "the diffusion strategy is off on this server (no fan-out graph: set R4T_GRAPH)")
    if opts.strategy == "memory" and not rt.has_memory:
        raise InvalidInput("strategy", "the memory strategy is off on this server (it needs a co-membership space "
                                       "encoder and its index with the item memory)")
    if opts.strategy == "llm" and rt.llm is None:
        raise InvalidInput("strategy", "the llm strategy is off on this server (set R4T_LLM_URL or R4T_LLM_POLICY)")
    check_filter(rt, opts.filter)


def check_filter(rt: Runtime, raw) -> None:
    """A filter reads indexed payload keys only (R4T_STRICT_FILTERS)."""
    if rt.filterable is not None:
        check_indexed(raw, rt.filterable)


async def _vectors(rt: Runtime, queries: list[str], opts: FanoutOptions, seeds: list[int], timings: dict):
    """(query embeddings (N, d), fan-out blocks [(K_i, d)], sub-queries or None, item-memory queries or None)."""
    if opts.strategy == "diffusion":
        outs, waited, ran = await rt.graph_batcher.submit(list(zip(queries, seeds)))
        timings.update(queue=waited, sample=ran)
        return np.stack([o.query_embedding for o in outs]), [o.fanout[: opts.k] for o in outs], None, None
    if opts.strategy == "memory":  # one vector per query, and its neighbour sets and weights
        outs, waited, ran = await rt.memory_batcher.submit(queries)
        timings.update(queue=waited, encode=ran)
        coef = rt.encoder.memory["coef"]
        return (np.stack([v for v, _, _ in outs]), [v[None] for v, _, _ in outs], None,
                [MemoryQuery(sets, weights, coef) for _, sets, weights in outs])
    if opts.strategy == "single":
        vecs, waited, ran = await rt.encoder_batcher.submit(queries)
        timings.update(queue=waited, encode=ran)
        return np.stack(vecs), [v[None] for v in vecs], None, None
    started = time.perf_counter()
    rt.llm_gate.enter()  # 429 when R4T_MAX_LLM_QUEUE requests already wait for or run in the LLM pool
    call = rt.llm_pool.submit(rt.llm.write, queries, opts.k, seeds[0])
    call.add_done_callback(rt.llm_gate.leave)  # when the call ends (or is cancelled unstarted), not the request
    subqueries = await asyncio.wrap_future(call)
    timings["sample"] = time.perf_counter() - started
    texts = queries + [q for subs in subqueries for q in subs]
    vecs, waited, ran = await rt.encoder_batcher.submit(texts)
    timings.update(queue=waited, encode=ran)
    bounds = np.cumsum([len(queries)] + [len(subs) for subs in subqueries])
    blocks = [np.stack(vecs[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return np.stack(vecs[: len(queries)]), blocks, subqueries, None


def set_view(query: np.ndarray, fanouts: np.ndarray, items: list[FusedItem]) -> SetView:
    """The returned set's statistics and one 2-D PCA map of its items, the fan-out vectors and the query."""
    vectors = np.stack([it.vector for it in items]) if items else np.zeros((0, len(query)))
    xy = project_2d(np.concatenate([query[None], fanouts, vectors])).round(4).tolist()
    key = next((k for k in GROUP_KEYS if any(k in it.payload for it in items)), None)
    return SetView(
        distinct_items=len({it.id for it in items}),
        group_key=key,
        distinct_groups=len({str(it.payload.get(key)) for it in items}) if key else None,
        vendi=round(vendi(vectors), 4) if items else 0.0,
        mean_pairwise_distance=round(mean_pairwise_distance(vectors), 4),
        projection=Projection(query=xy[0], fanouts=xy[1: 1 + len(fanouts)], items=xy[1 + len(fanouts):]),
    )


async def fanout(rt: Runtime, queries: list[str], opts: FanoutOptions, field: str = "query") -> list[FanoutResponse]:
    """The whole online path for one or many queries; query i of a batch uses seed + i."""
    started = time.perf_counter()
    queries = [check_query(rt, q, field if field == "query" else f"{field}.{i}") for i, q in enumerate(queries)]
    opts = opts.model_copy(update={"strategy": rt.strategy(opts.strategy),
                                   "k": opts.k or min(DEFAULT_K, rt.max_k)})
    check_options(rt, opts)
    seed = opts.seed if opts.seed is not None else secrets.randbits(31)
    seeds = [seed + i for i in range(len(queries))]
    timings: dict[str, float] = {}
    z, blocks, subqueries, memories = await _vectors(rt, queries, opts, seeds, timings)
    resolve_started = time.perf_counter()
    depth = (opts.mmr.candidates or min(MMR_CANDIDATES, rt.settings.max_limit)) if opts.mmr else opts.limit
    # Hits per query: k rows searched limit_per_fanout deep, `fill` going down to `depth`. A batch is resolved
    # in calls of at most R4T_MAX_HITS_PER_CALL hits, so memory stays bounded by it and not by the batch, and
    # a request past its deadline starts no further call.
    step = max(1, rt.settings.max_hits_per_call // (opts.k * max(opts.limit_per_fanout, depth)))
    resolved = []
    for lo in range(0, len(blocks), step):
        resolved += await run_in_threadpool(_resolve, rt, z[lo:lo + step], blocks[lo:lo + step], opts, depth,
                                            memories and memories[lo:lo + step])
    timings["resolve"] = time.perf_counter() - resolve_started
    timings["total"] = time.perf_counter() - started
    ms = {k: round(1e3 * v, 3) for k, v in timings.items()}
    rt.metrics.observe_stages(opts.strategy, ms)
    return [
        FanoutResponse(query=q, strategy=opts.strategy, seed=seeds[i], items=resolved[i][0],
                       subqueries=subqueries[i] if subqueries else None,
                       fanouts=blocks[i].tolist() if opts.return_vectors else None, view=resolved[i][1], timings=ms)
        for i, q in enumerate(queries)
    ]


def _resolve(rt: Runtime, z: np.ndarray, blocks: list[np.ndarray], opts: FanoutOptions, depth: int,
             memories: list[MemoryQuery] | None = None) -> list[tuple[list[FanoutItem], SetView | None]]:
    """One store call for these queries' blocks (or item-memory queries), then MMR and the explained view (off the
    event loop)."""
    search = SearchOptions(opts.filter, with_vectors=opts.mmr is not None or opts.explain,
                           hnsw_ef=rt.settings.hnsw_ef)
    if memories:
        fused = rt.resolver.resolve_memory_many(z, memories, depth, rt.settings.memory_depth, search)
    else:
        fused = rt.resolver.resolve_many(blocks, opts.limit_per_fanout, opts.fusion, depth, search, fill=opts.fill)
    if opts.mmr:
        fused = [mmr(z[i], items, opts.limit, opts.mmr.lambda_) for i, items in enumerate(fused)]
    return [([FanoutItem(id=it.id, text=it.text, payload=it.payload, score=it.score,
                         found_by=[(p.vector, p.rank) for p in it.found_by]) for it in items],
             set_view(z[i], blocks[i], items) if opts.explain else None)
            for i, items in enumerate(fused)]


async def search(rt: Runtime, req: SearchRequest) -> SearchResponse:
    """No fan-out: embed the query (through the same micro-batcher and queue limit as /fanout), one search."""
    started = time.perf_counter()
    query = check_query(rt, req.query)
    if req.limit > rt.settings.max_limit:
        raise InvalidInput("limit", f"limit must be <= {rt.settings.max_limit}")
    check_filter(rt, req.filter)
    vecs, waited, ran = await rt.encoder_batcher.submit([query])
    resolve_started = time.perf_counter()
    items = await run_in_threadpool(rt.resolver.resolve, np.stack(vecs), req.limit,
                                    search=SearchOptions(req.filter, hnsw_ef=rt.settings.hnsw_ef))
    done = time.perf_counter()
    return SearchResponse(
        items=[ResultItem(id=it.id, text=it.text, payload=it.payload, score=it.score) for it in items],
        timings={"queue": round(1e3 * waited, 3), "encode": round(1e3 * ran, 3),
                 "resolve": round(1e3 * (done - resolve_started), 3), "total": round(1e3 * (done - started), 3)},
    )
