"""The FastAPI app: `create_app()` loads the runtime once in its lifespan; routes stay thin."""

from __future__ import annotations

import gc
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from importlib import resources

from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import errors
from service.pipeline import fanout, search
from service.runtime import Runtime, load_runtime
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
    state_limits,
)

from service.settings import Settings

POST_PROBLEMS = problem_responses(400, 413, 422, 429, 503, 504)

log = logging.getLogger(__name__)
access = logging.getLogger("r4t.access")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what an X-Request-ID may hold to be echoed and logged


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def request_id(header: str | None) -> str:
    """The caller's X-Request-ID when it is short and plain, else a fresh one (never echo arbitrary bytes)."""
    return header if header and REQUEST_ID.fullmatch(header) else uuid.uuid4().hex


def route_label(request: Request) -> str:
    """The matched route's template, so a scan of random paths adds no metric series."""
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in timings.items())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = load_runtime(settings)
        runtime.start_batchers()
        app.state.runtime = runtime
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's scans: a full pass took ~90 ms on MPD, ~0 after
        yield
        await runtime.close()

    app = FastAPI(title="R4T fan-out retrieval", version="0.1.0", lifespan=lifespan)

    def openapi() -> dict:
        """The OpenAPI document with this server's limits and strategies in it (once the runtime has loaded)."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        rt = getattr(app.state, "runtime", None)
        if rt is None:
            return doc
        s = rt.settings
        app.openapi_schema = state_limits(doc, rt.strategies, s.max_limit, rt.max_k, s.max_batch_queries,
                                          s.max_query_chars)
        return app.openapi_schema

    app.openapi = openapi
    errors.install(app)
    app.add_middleware(errors.BodyLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def request_id_and_metrics(request: Request, call_next):
        """Echo a valid X-Request-ID (or make one), count the request by route, write one JSON access line."""
        rid = request_id(request.headers.get("x-request-id"))
        request.state.request_id = rid
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        strategy = getattr(request.state, "strategy", "-")
        rt = getattr(request.app.state, "runtime", None)
        if rt is not None:
            if response.status_code == 429:
                rt.metrics.rejected.labels(strategy).inc()
            rt.metrics.requests.labels(route_label(request), strategy, str(response.status_code)).inc()
        access.info("%s %s %d", request.method, request.url.path, response.status_code,
                    extra={"request_id": rid, "status": response.status_code, "strategy": strategy,
                           "ms": round(1e3 * (time.perf_counter() - started), 3)})
        return response

    app.mount("/static", StaticFiles(packages=[("service", "static")]), name="static")
    page = resources.files("service").joinpath("static/playground.html").read_text()

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/playground")

    @app.get("/playground", include_in_schema=False)
    def playground() -> HTMLResponse:
        """The playground page: two strategies side by side on one intent, through the public API."""
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses=problem_responses(503))
    def readyz(rt: Runtime = Depends(get_runtime)):
        checks = {"artifact": rt.encoder is not None, "warm_up": rt.warmed_up, "store": rt.store.ping()}
        body = Readiness(ready=all(checks.values()), checks=checks)
        if not body.ready:
            return errors.problem(503, "Not ready", ", ".join(k for k, v in checks.items() if not v),
                                  checks=checks)
        return body

    @app.get("/info", response_model=Info)
    def info(rt: Runtime = Depends(get_runtime)):
        graph, private = rt.graph, {"encoder": {"source"}}  # names and sha256s only: no local filesystem path
        return Info(manifest=rt.encoder.manifest.model_dump(exclude=private), provider=rt.encoder.provider,
                    graph=graph and {"name": graph.directory.name, "provider": graph.provider,
                                     "manifest": graph.manifest.model_dump(exclude=private)},
                    strategies=rt.strategies, llm=rt.llm and rt.llm.name,
                    index=rt.index and rt.index.model_dump(), items=rt.store.count(), dataset=rt.settings.dataset,
                    default_strategy=rt.default._asdict())

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    def metrics(rt: Runtime = Depends(get_runtime)) -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/search", response_model=SearchResponse, responses=POST_PROBLEMS)
    async def search_route(req: SearchRequest, rt: Runtime = Depends(get_runtime)):
        """Single-query search (the no-fan-out baseline), through the encoder's micro-batcher."""
        return await errors.within_deadline(search(rt, req), rt.deadline_s)

    @app.post("/fanout", response_model=FanoutResponse, response_model_exclude_none=True, responses=POST_PROBLEMS)
    async def fanout_route(req: FanoutRequest, request: Request, response: Response,
                           rt: Runtime = Depends(get_runtime)):
        """One broad query -> K fan-out vectors -> one batched store call -> fused items."""
        request.state.strategy = rt.strategy(req.strategy)
        (result,) = await errors.within_deadline(fanout(rt, [req.query], req), rt.deadline_s)
        response.headers["Server-Timing"] = server_timing(result.timings)
        return result

    @app.post("/fanout/batch", response_model=BatchResponse, response_model_exclude_none=True,
              responses=POST_PROBLEMS)
    async def fanout_batch(req: BatchRequest, request: Request, response: Response,
                           rt: Runtime = Depends(get_runtime)):
        """Many queries through one ONNX run and one store call; query i uses seed + i."""
        request.state.strategy = rt.strategy(req.strategy)
        if len(req.queries) > rt.settings.max_batch_queries:
            raise errors.InvalidInput("queries", f"at most {rt.settings.max_batch_queries} queries per batch")
        results = await errors.within_deadline(fanout(rt, req.queries, req, field="queries"), rt.deadline_s)
        timings = results[0].timings
        response.headers["Server-Timing"] = server_timing(timings)
        return BatchResponse(results=results, timings=timings)

    return app
