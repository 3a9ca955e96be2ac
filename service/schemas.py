"""Request and response models of the HTTP API, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.filters import PayloadFilter, state_filterable
from service.jsontypes import integer, number

# Characters a query may not consist of only (it is stripped of them; an empty query is a 400): Python's
# str.isspace() and ECMA-262's \s together, spelled out so that every regex engine reads the schema alike.
BLANK = "\t\n\x0b\x0c\r \x1c\x1d\x1e\x1f\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
NOT_BLANK = r"[^\x09-\x0d \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "boho summer festival outfit", "limit": 10}]},
    )

    query: str = Field(description="The broad intent, e.g. 'late night drive'")
    limit: integer(1) = Field(10, description="Items to return (at most R4T_MAX_LIMIT)")
    filter: PayloadFilter | None = Field(
        None,
        description="Qdrant payload filter, e.g. {'must': [{'key': 'artist', 'match': {'value': 'Drake'}}]}",
    )


class ResultItem(BaseModel):
    id: str
    text: str
    payload: dict
    score: float


class SearchResponse(BaseModel):
    items: list[ResultItem]
    timings: dict[str, float] = Field(description="Milliseconds per stage: encode, resolve, total")


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field inside the body, or 'body'")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: every 4xx and 5xx body of this service (media type application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def problem_responses(*statuses: int) -> dict:
    """OpenAPI `responses` entries for the problem statuses a route can return."""
    why = {400: "Empty query or unreadable body", 404: "No such route", 413: "Request body over R4T_MAX_BODY_BYTES",
           422: "A field fails validation (the errors name it)", 429: "Queue full: retry after Retry-After seconds",
           503: "The index or the LLM writer is unavailable", 504: "Past R4T_REQUEST_TIMEOUT_MS"}
    body = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {s: {"model": Problem, "description": why[s], "content": body} for s in statuses}


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]


class DefaultStrategy(BaseModel):
    name: str
    why: str = Field(description="Why this strategy is the default, e.g. the graph's measured val check")


class GraphInfo(BaseModel):
    name: str = Field(description="The graph artifact's directory name")
    provider: str = Field(description="The ONNX Runtime provider the graph actually runs on")
    manifest: dict = Field(description="Its manifest, without local paths (provenance: space, teacher, val recall)")


class Info(BaseModel):
    """What this server serves: artifact names, sha256s and measured facts, never a local filesystem path."""

    dataset: str
    items: int = Field(description="Points in the index")
    provider: str = Field(description="The ONNX Runtime provider the encoder actually runs on")
    manifest: dict = Field(description="The encoder artifact's manifest, without local paths")
    graph: GraphInfo | None = None
    strategies: list[str] = Field(description="The strategies this server can run")
    default_strategy: DefaultStrategy
    llm: str | None = Field(None, description="The LLM fan-out writer's name, when one is configured")
    index: dict | None = Field(None, description="index.json: the catalog and encoder the vectors belong to")
    filterable: dict[str, str] | None = Field(None, description="Payload key -> index kind: the keys a filter may "
                                              "use (None: any key, R4T_STRICT_FILTERS=false)")


Strategy = Literal["diffusion", "llm", "memory", "single"]
Fusion = Literal["union", "rrf"]


class MMRParams(BaseModel):
    """Re-rank the fused candidates by maximal marginal relevance against the query embedding."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lambda_: number(0, 1) = Field(0.5, alias="lambda", description="1 = relevance only, 0 = diversity only")
    candidates: integer(1) | None = Field(None, description="Fused items MMR chooses from (at most R4T_MAX_LIMIT); "
                                                             "unset: 100, or R4T_MAX_LIMIT where that is smaller")


class FanoutOptions(BaseModel):
    """What /fanout and /fanout/batch share."""

    model_config = ConfigDict(extra="forbid")

    k: integer(1) | None = Field(None, description="Fan-out vectors per query (at most R4T_MAX_K and the fan-out "
                                                   "graph's rows); unset: 10, or that maximum where it is smaller")
    limit_per_fanout: integer(1) = Field(10, description="Hits searched per fan-out vector (at most R4T_MAX_LIMIT)")
    limit: integer(1) = Field(10, description="Items returned after fusion (at most R4T_MAX_LIMIT)")
    strategy: Strategy | None = Field(None, description="diffusion (one ONNX pass) | llm (fan-out LM) | "
                                                               "single (no fan-out) | memory (single plus the nearest "
                                                               "train sets' item memory, co-membership index); unset: the server's measured "
                                                               "default (/info default_strategy)")
    fusion: Fusion = Field("union", description="union: round robin over the fan-outs' ranks | rrf")
    fill: StrictBool = Field(True, description="When overlapping fan-outs fuse to fewer than `limit` items, search "
                                         "those vectors deeper (doubling, up to `limit` each) until they do")
    mmr: MMRParams | None = None
    filter: PayloadFilter | None = Field(None, description="Qdrant payload filter applied to every fan-out search")
    seed: integer(0) | None = Field(None, description="Noise / sampling seed; the response echoes the one used")
    return_vectors: StrictBool = Field(False, description="Include the fan-out vectors in the response")
    explain: StrictBool = Field(False, description="Add `view`: the returned set's statistics and a 2-D map of its "
                                             "items, fan-out vectors and query (what the playground draws)")


class FanoutRequest(FanoutOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"query": "boho summer festival outfit", "k": 10, "limit": 20, "strategy": "diffusion", "seed": 7},
            {"query": "late night drive", "strategy": "llm", "fusion": "rrf", "mmr": {"lambda": 0.7}},
        ]},
    )

    query: str = Field(description="The broad intent")


class BatchRequest(FanoutOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"queries": ["office chic", "beach wedding guest"], "limit": 10}]},
    )

    queries: list[str] = Field(min_length=1, description="Broad intents; query i uses seed + i")


class FanoutItem(ResultItem):
    found_by: list[tuple[int, int]] = Field(description="[fan-out index, 0-based rank] of every fan-out that "
                                                        "found the item")


class Projection(BaseModel):
    """PCA of the returned items, the fan-out vectors and the query (cosine directions), fitted on all of them."""

    query: tuple[float, float]
    fanouts: list[tuple[float, float]]
    items: list[tuple[float, float]] = Field(description="In the order of `items`")


class SetView(BaseModel):
    distinct_items: int
    group_key: str | None = Field(None, description="The payload field counted as groups: artist (MPD), "
                                                    "category (Polyvore); absent when the items carry neither")
    distinct_groups: int | None = Field(None, description="Distinct values of group_key (absent with it)")
    vendi: float = Field(description="Vendi score (cosine kernel) of the returned items' vectors: 1 = one item "
                                     "repeated, n = n orthogonal items")
    mean_pairwise_distance: float = Field(description="1 − mean cosine over pairs of returned items")
    projection: Projection


class FanoutResponse(BaseModel):
    query: str
    strategy: Strategy
    seed: int
    items: list[FanoutItem]
    subqueries: list[str] | None = Field(None, description="The llm strategy's sub-queries")
    fanouts: list[list[float]] | None = Field(None, description="The fan-out vectors, when return_vectors")
    view: SetView | None = Field(None, description="When explain: set statistics and a 2-D projection")
    timings: dict[str, float] = Field(description="Milliseconds: queue (waiting for an ONNX run), encode, "
                                                  "sample (diffusion: the one graph run that embeds and "
                                                  "samples; llm: generation), resolve, total")


class BatchResponse(BaseModel):
    results: list[FanoutResponse]
    timings: dict[str, float]


def state_limits(doc: dict, strategies: list[str], max_limit: int, max_k: int, max_batch_queries: int,
                 max_query_chars: int, filterable: dict[str, str] | None = None) -> dict:
    """Write the limits this server enforces into its OpenAPI document: the strategies it can run, the largest
    limit, k and batch, the query's length and that it is not blank, and (strict filters) the payload keys and
    tests a filter may use. The routes check the same values (422)."""
    schemas = doc["components"]["schemas"]
    if filterable is not None:
        state_filterable(schemas, filterable)
    query = {"minLength": 1, "maxLength": max_query_chars, "pattern": NOT_BLANK}
    for name in ("SearchRequest", "FanoutRequest", "BatchRequest"):
        props = schemas[name]["properties"]
        props["limit"]["maximum"] = max_limit
        if name != "SearchRequest":
            props["limit_per_fanout"]["maximum"] = max_limit
            props["k"]["anyOf"][0]["maximum"] = max_k
            props["strategy"]["anyOf"][0]["enum"] = strategies
        if name == "BatchRequest":
            props["queries"]["items"].update(query)
            props["queries"]["maxItems"] = max_batch_queries
        else:
            props["query"].update(query)
    schemas["MMRParams"]["properties"]["candidates"]["anyOf"][0]["maximum"] = max_limit
    return doc
