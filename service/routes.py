"""The HTTP routes: thin handlers over `service.pipeline`, the runtime injected as a dependency."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import errors, pipeline
from service.runtime import Runtime
from service.schemas import (
    BatchRequest,
    BatchResponse,
    FanoutRequest,
    FanoutResponse,
    Info,
    Readiness,
    SearchRequest,
    SearchResponse,
    problem_responses,
)

POST_PROBLEMS = problem_responses(400, 413, 422, 429, 503, 504)
PAGE = resources.files("service").joinpath("static/playground.html").read_text()

router = APIRouter()


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in timings.items())


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/playground")


@router.get("/playground", include_in_schema=False)
def playground() -> HTMLResponse:
    """The playground page: two strategies side by side on one intent, through the public API."""
    return HTMLResponse(PAGE)


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
def readyz(rt: Runtime = Depends(get_runtime)):
    checks = {"artifact": rt.encoder is not None, "warm_up": rt.warmed_up, "store": rt.store.ping()}
    body = Readiness(ready=all(checks.values()), checks=checks)
    if not body.ready:
        return errors.problem(503, "Not ready", ", ".join(k for k, v in checks.items() if not v), checks=checks)
    return body


@router.get("/info", response_model=Info)
def info(rt: Runtime = Depends(get_runtime)):
    graph, private = rt.graph, {"encoder": {"source"}}  # names and sha256s only: no local filesystem path
    return Info(manifest=rt.encoder.manifest.model_dump(exclude=private), provider=rt.encoder.provider,
                graph=graph and {"name": graph.directory.name, "provider": graph.provider,
                                 "manifest": graph.manifest.model_dump(exclude=private)},
                strategies=rt.strategies, llm=rt.llm and rt.llm.name,
                index=rt.index and rt.index.model_dump(), items=rt.store.count(), dataset=rt.settings.dataset,
                default_strategy=rt.default._asdict(),
                filterable=rt.filterable)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
def metrics(rt: Runtime = Depends(get_runtime)) -> Response:
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/search", response_model=SearchResponse, responses=POST_PROBLEMS)
async def search(req: SearchRequest, rt: Runtime = Depends(get_runtime)):
    """Single-query search (the no-fan-out baseline), through the encoder's micro-batcher."""
    return await errors.within_deadline(pipeline.search(rt, req), rt.deadline_s)


@router.post("/fanout", response_model=FanoutResponse, response_model_exclude_none=True, responses=POST_PROBLEMS)
async def fanout(req: FanoutRequest, request: Request, response: Response, rt: Runtime = Depends(get_runtime)):
    """One broad query -> K fan-out vectors -> one batched store call -> fused items."""
    request.state.strategy = rt.strategy(req.strategy)
    (result,) = await errors.within_deadline(pipeline.fanout(rt, [req.query], req), rt.deadline_s)
    response.headers["Server-Timing"] = server_timing(result.timings)
    return result


@router.post("/fanout/batch", response_model=BatchResponse, response_model_exclude_none=True,
             responses=POST_PROBLEMS)
async def fanout_batch(req: BatchRequest, request: Request, response: Response, rt: Runtime = Depends(get_runtime)):
    """Many queries through one ONNX run and one store call; query i uses seed + i."""
    request.state.strategy = rt.strategy(req.strategy)
    if len(req.queries) > rt.settings.max_batch_queries:
        raise errors.InvalidInput("queries", f"at most {rt.settings.max_batch_queries} queries per batch")
    results = await errors.within_deadline(pipeline.fanout(rt, req.queries, req, field="queries"), rt.deadline_s)
    timings = results[0].timings
    response.headers["Server-Timing"] = server_timing(timings)
    return BatchResponse(results=results, timings=timings)
