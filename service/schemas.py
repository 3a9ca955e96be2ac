"""Request and response models of the HTTP API, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "boho summer festival outfit", "limit": 10}]},
    )

    query: str = Field(description="The broad intent, e.g. 'late night drive'")
    limit: int = Field(10, ge=1, description="Items to return (at most R4T_MAX_LIMIT)")
    filter: dict | None = Field(
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


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
