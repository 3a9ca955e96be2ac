"""One error layer: typed domain errors -> HTTP status with an RFC 9457 problem+json body."""

from __future__ import annotations

import asyncio

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batcher import Overloaded
from service.filters import InvalidFilter
from service.llm import LLMUnavailable
from service.store import StoreUnavailable

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


class EmptyQuery(ValueError):
    """The query is empty or only whitespace."""

    def __init__(self, message: str, field: str = "query"):
        super().__init__(message)
        self.field = field


class InvalidInput(ValueError):
    """A field is well-typed but unusable (e.g. a query longer than the token limit)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class DeadlineExceeded(TimeoutError):
    """The request ran past R4T_REQUEST_TIMEOUT_MS."""


async def within_deadline(awaitable, seconds: float):
    """`awaitable`'s result, or DeadlineExceeded (504) once `seconds` have passed; the work is cancelled
    (a query still waiting in a micro-batcher queue is dropped before its run)."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise DeadlineExceeded(f"the request took longer than {1e3 * seconds:g} ms (R4T_REQUEST_TIMEOUT_MS)") from None


def problem(status: int, title: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def validation_error(error: dict) -> dict:
    """One pydantic/FastAPI error as {field, message}; the field is the dotted path inside the body."""
    if error["type"] == "json_invalid":
        # FastAPI puts the character offset where a field would be: ("body", 0) must not read as field "0".
        reason = error.get("ctx", {}).get("error", "not JSON")
        return {"field": "body", "message": f"{error['msg']}: {reason} at character {error['loc'][-1]}"}
    return {"field": ".".join(str(p) for p in error["loc"] if p != "body") or "body", "message": error["msg"]}


def install(app: FastAPI) -> None:
    """Register the handlers; unknown exceptions still become a 500 problem, logged with a trace."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = [validation_error(e) for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(EmptyQuery)
    async def empty_query(request: Request, exc: EmptyQuery):
        return problem(400, "Empty query", str(exc), errors=[{"field": exc.field, "message": str(exc)}])

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput):
        return problem(422, "Invalid request", f"{exc.field}: {exc}",
                       errors=[{"field": exc.field, "message": str(exc)}])

    @app.exception_handler(InvalidFilter)
    async def invalid_filter(request: Request, exc: InvalidFilter):
        return problem(422, "Invalid filter", f"filter: {exc}", errors=[{"field": "filter", "message": str(exc)}])

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable):
        log.warning("store unavailable: %s", exc)  # the store's own message may name hosts or paths: log only
        return problem(503, "Index unavailable", "the vector store does not answer; retry later")

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return problem(429, "Too many requests", str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(DeadlineExceeded)
    async def deadline(request: Request, exc: DeadlineExceeded):
        return problem(504, "Deadline exceeded", str(exc))

    @app.exception_handler(LLMUnavailable)
    async def llm_down(request: Request, exc: LLMUnavailable):
        log.warning("llm unavailable: %s", exc)  # it names the endpoint's URL: log only
        return problem(503, "LLM fan-out unavailable", "the LLM fan-out writer does not answer; retry later, or "
                                                       "use another strategy")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # The router's own headers travel on: a 405 names the methods the path allows (RFC 9110 §15.5.6).
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # Starlette sends this from its outermost middleware, then re-raises so the server logs the trace.
        return problem(500, "Internal server error", "an unexpected error; the server log has the trace")


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 problem+json before any route reads it.

    A declared Content-Length is checked up front; a body without one (chunked) is read into memory up to
    the limit and then handed on, so no route ever sees a partial body.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await self.too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self.too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, scope, receive, send):
        detail = f"the body exceeds {self.max_bytes} bytes (R4T_MAX_BODY_BYTES)"
        await problem(413, "Request body too large", detail)(scope, receive, send)
