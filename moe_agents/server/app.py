"""The FastAPI application: one pipeline behind OpenAI's chat-completions API.

==============================  ============================================================
endpoint                        what
==============================  ============================================================
``POST /v1/chat/completions``   answers (``stream: true``: server-sent events, see ``stream``)
``GET /v1/models``              the policies: the pipeline, its presets, each expert alone
``POST /v1/route``              the selection for a chat request; no model is called
``POST /v1/feedback``           ``{id, score}``: a score in [0, 1] for a result; returns trust
``GET /health/live``            the process is up (no key needed)
``GET /health/ready``           200 once models are loaded and the gate fitted; 503 before and
                                while shutting down (no key needed)
``GET /metrics``                Prometheus' text format (``moe_agents.metrics``)
``GET /``                       the chat page (``static/index.html``; no key needed to load it)
==============================  ============================================================

The application owns the pipeline's lifetime: models load in the background when it starts (the
server answers health checks meanwhile) and are released when it stops. A client that disconnects
cancels its request's expert calls.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from ..errors import MoEError
from ..logging import get_logger
from ..metrics import CONTENT_TYPE, PipelineMetrics
from ..pipeline import Pipeline
from ..routing.permission import Preset
from ..types import Query
from . import wire
from .disconnect import ClientDisconnected, until_disconnect
from .errors import APIError, from_exception
from .settings import ServerConfig
from .stream import stream_response

__all__ = ["create_app"]

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)


class ServerState:
    """What the endpoints share: the pipeline, its settings and metrics, and readiness."""

    def __init__(self, pipeline: Pipeline, config: ServerConfig, metrics: PipelineMetrics) -> None:
        self.pipeline, self.config, self.metrics = pipeline, config, metrics
        self.ready = False
        self.closing = False
        self.load_error: str | None = None
        self.started = int(time.time())
        self.max_body = int(config.max_body_mb * 2**20)

    def models(self) -> list[str]:
        """Every model name a request may use: the pipeline, its presets, each expert alone."""
        name = self.config.model_name
        return [
            name,
            *(f"{name}:{p.value}" for p in Preset),
            *(f"{name}/{e}" for e in self.pipeline.experts),
        ]

    def policy(self, model: str) -> tuple[Preset, str | None]:
        """The preset and forced expert a model name stands for.

        Raises:
            APIError: 404 for an unknown model, naming the known ones.
        """
        name = self.config.model_name
        if model == name:
            return Preset.WAKE, None
        if model.startswith(f"{name}:") and model.removeprefix(f"{name}:") in {p.value for p in Preset}:
            return Preset(model.removeprefix(f"{name}:")), None
        if model.startswith(f"{name}/") and model.removeprefix(f"{name}/") in self.pipeline.experts:
            return Preset.WAKE, model.removeprefix(f"{name}/")
        raise APIError.not_found(
            f"unknown model {model!r}; models: {', '.join(self.models())}",
            code="model_not_found",
            param="model",
        )

    def check_ready(self) -> None:
        if self.closing:
            raise APIError.unavailable("the server is shutting down")
        if not self.ready:
            detail = f": loading failed: {self.load_error}" if self.load_error else ": loading models"
            raise APIError.unavailable(f"the server is not ready yet{detail}")

    def check_key(self, request: Request) -> None:
        """Raises a 401 unless the request carries one of the configured keys (none: open)."""
        keys = self.config.api_keys
        if not keys:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not given:
            raise APIError(
                401,
                "missing API key (Authorization: Bearer <key>)",
                "authentication_error",
                "invalid_api_key",
            )
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise APIError(401, "invalid API key", "authentication_error", "invalid_api_key")

    async def body(self, request: Request, model: type[M]) -> M:
        """The request's JSON body as ``model``; a 400 (413 when too large) names the problem."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise APIError(413, f"request body larger than {self.max_body} bytes", "invalid_request_error")
        raw = await request.body()
        if len(raw) > self.max_body:
            raise APIError(413, f"request body larger than {self.max_body} bytes", "invalid_request_error")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError.bad_request(f"the body is not valid JSON: {exc}") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise APIError.bad_request(
                f"{param}: {first['msg']}" if param else first["msg"], param=param
            ) from None

    async def chat(self, request: Request) -> tuple[wire.ChatRequest, Preset, str | None, Query]:
        """A chat request's body, the preset and forced expert its model names, and its query;
        the key, the model and readiness are checked first (401, 404, 503; bad input 400)."""
        self.check_key(request)
        body = await self.body(request, wire.ChatRequest)
        preset, expert = self.policy(body.model)
        self.check_ready()
        query = await wire.to_query(
            body,
            allow_remote=self.config.allow_remote_media,
            timeout_s=self.config.remote_media_timeout_s,
            max_bytes=self.pipeline.limits.max_attachment_bytes,
        )
        return body, preset, expert, query


def create_app(
    pipeline: Pipeline, config: ServerConfig | None = None, *, metrics: PipelineMetrics | None = None
) -> FastAPI:
    """The HTTP application serving ``pipeline`` (see the module docstring).

    Args:
        pipeline: the pipeline; the application opens it on start-up (in the background) and
            closes it on shutdown.
        config: keys, media and streaming settings (default: ``ServerConfig()``, open).
        metrics: the Prometheus series to serve (default: new ones observing ``pipeline``).
    """
    state = ServerState(pipeline, config or ServerConfig(), metrics or PipelineMetrics(pipeline))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = anyio.Event()

        async def hold() -> None:
            start = time.perf_counter()
            try:
                async with pipeline:
                    state.ready = True
                    log.info("server.ready", s=round(time.perf_counter() - start, 3))
                    await stop.wait()
            except Exception as exc:  # reported by /health/ready; the process stays up to say so
                state.load_error = f"{type(exc).__name__}: {exc}"
                log.error("server.load_failed", error=state.load_error)
            finally:
                state.ready = False

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            yield
            state.closing, state.ready = True, False
            stop.set()

    app = FastAPI(
        title="moe-agents",
        summary="A mixture of experts behind OpenAI's chat-completions API.",
        lifespan=lifespan,
    )
    app.state.moe = state

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(MoEError)  # handled here, not re-raised as a server error
    async def moe_error(_request: Request, exc: MoEError) -> JSONResponse:
        err = from_exception(exc)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        err = APIError(exc.status_code, str(exc.detail), kind)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        err = from_exception(exc)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        body, preset, expert, query = await state.chat(request)
        if body.stream:
            return await stream_response(
                request,
                pipeline,
                body,
                query,
                preset=preset,
                expert=expert,
                keepalive_s=state.config.keepalive_s,
            )
        try:
            result = await until_disconnect(
                request, lambda: pipeline.run(query, preset=preset, expert=expert)
            )
        except ClientDisconnected:
            return Response(status_code=499)
        return JSONResponse(
            wire.completion(result, body.model, details=body.moe.details),
            headers=wire.selection_headers(result.id, result.selection),
        )

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        state.check_key(request)
        return {"object": "list", "data": [_model(m, state.started) for m in state.models()]}

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> dict[str, Any]:
        state.check_key(request)
        state.policy(model)
        return _model(model, state.started)

    @app.post("/v1/route")
    async def route(request: Request) -> dict[str, Any]:
        body, preset, expert, query = await state.chat(request)
        selection = await pipeline.route(query, preset=preset, expert=expert)
        return {"object": "moe.selection", "model": body.model, **selection.to_dict()}

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        state.check_key(request)
        body = await state.body(request, wire.FeedbackRequest)
        try:  # the pipeline checks the score (errors.check_unit: a number in [0, 1], not a bool)
            await pipeline.feedback(body.id, body.score)
        except MoEError as exc:
            err = from_exception(exc)
            err.param = err.param or "score"
            raise err from None
        result = pipeline.result(body.id)
        return {
            "id": body.id,
            "score": float(body.score),
            "experts": list(result.answers),
            "trust": _trust(pipeline, result),
        }

    @app.get("/health/live")
    @app.get("/health/liveliness", include_in_schema=False)
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/health/ready")
    @app.get("/health/readiness", include_in_schema=False)
    async def ready() -> JSONResponse:
        try:
            state.check_ready()
        except APIError as exc:
            body = {"status": "shutting_down" if state.closing else "loading", **exc.body()}
            if state.load_error:
                body["status"] = "failed"
            return JSONResponse(body, status_code=503, headers=exc.headers)
        return JSONResponse({"status": "ready", "experts": list(pipeline.experts)})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        state.check_key(request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("moe_agents.server").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL}}", state.config.model_name))

    return app


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "moe-agents"}


def _trust(pipeline: Pipeline, result: Any) -> dict[str, float]:
    """The trust of the result's experts in its context now, as the router reads it (pooled over
    contexts while this one has too little evidence), so it compares with the selection's scores;
    empty without a trust store."""
    store, context = pipeline.router.trust, result.selection.context
    names = list(result.answers)
    if store is None or context is None or not names:
        return {}
    values, _ = store.lookup(names, context, backoff=pipeline.router.config.selection.min_evidence)
    return {n: round(float(v), 4) for n, v in zip(names, values, strict=True)}
