"""The FastAPI app: `create_app()` loads the runtime once in its lifespan; routes stay thin."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request

from service import errors
from service.runtime import Runtime, load_runtime, search
from service.schemas import Readiness, SearchRequest, SearchResponse
from service.settings import Settings

log = logging.getLogger(__name__)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.runtime = load_runtime(settings or Settings())
        yield
        app.state.runtime.store.close()

    app = FastAPI(title="R4T fan-out retrieval", version="0.1.0", lifespan=lifespan)
    errors.install(app)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness)
    def readyz(rt: Runtime = Depends(get_runtime)):
        checks = {"artifact": rt.encoder is not None, "warm_up": rt.warmed_up, "store": rt.store.ping()}
        body = Readiness(ready=all(checks.values()), checks=checks)
        if not body.ready:
            return errors.problem(503, "Not ready", ", ".join(k for k, v in checks.items() if not v),
                                  checks=checks)
        return body

    @app.get("/info")
    def info(rt: Runtime = Depends(get_runtime)) -> dict:
        return {"manifest": rt.encoder.manifest.model_dump(), "provider": rt.encoder.provider,
                "index": rt.index, "items": rt.store.count(), "dataset": rt.settings.dataset}

    @app.post("/search", response_model=SearchResponse)
    def search_route(req: SearchRequest, rt: Runtime = Depends(get_runtime)):
        """Single-query search (the no-fan-out baseline)."""
        return search(rt, req)

    return app
