"""The OpenAI-compatible routes over a BatchEngine (FastAPI on uvicorn).

POST /v1/chat/completions and /v1/completions (streamed as server-sent events with `stream: true`),
GET /v1/models, /health and /metrics (Prometheus text). Every request is one sequence of the runtime's
continuous batch; a client that disconnects cancels its sequence, which leaves the batch before the next
pass."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from eaglex.errors import EaglexError
from eaglex.runtime.generate import GenerationStats
from eaglex.runtime.scheduler import BatchEngine, QueueFull
from eaglex.runtime.tokenizer import StreamDecoder
from eaglex.server.metrics import prometheus_text
from eaglex.server.protocol import ApiError, Job, chunk, completion, parse, usage
from eaglex.server.stops import StopCutter

DISCONNECT_POLL_SECONDS = 0.1


def create_app(batch: BatchEngine, model: str, default_max_tokens: int = 256) -> FastAPI:
    """The app serving `batch` under the model name `model`; closes the batch engine at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batch.close()

    app = FastAPI(title="eaglex", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status in (429, 503) else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model, "active": len(batch.active), "queued": batch.queue_depth}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "eaglex"}
        return {"object": "list", "data": [entry]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(batch), media_type="text/plain; version=0.0.4")

    async def complete(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        job = parse(body, chat, batch.engine, model, batch.context_limit, default_max_tokens)
        stats = GenerationStats()
        try:
            tokens = batch.stream(job.prompt, job.config, stats)
        except QueueFull as e:
            raise ApiError(503, str(e)) from None
        except EaglexError as e:
            raise ApiError(400, str(e)) from None
        pieces = _pieces(batch, job, tokens, stats)
        if job.stream:
            return StreamingResponse(_events(job, pieces, stats), media_type="text/event-stream")
        return await _whole(request, job, pieces, stats)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)

    return app


async def _pieces(
    batch: BatchEngine, job: Job, tokens: AsyncIterator[list[int]], stats: GenerationStats
) -> AsyncIterator[tuple[str, str | None]]:
    """(text, None) pieces as they are accepted, then ("", finish_reason). Text is cut at stop strings and
    held back while a multi-byte character or a possible stop string is incomplete."""
    decoder, cutter = StreamDecoder(batch.engine.tokenizer), StopCutter(job.stops)
    finish = None
    async with contextlib.aclosing(tokens):  # leaving early cancels the sequence at once
        async for new in tokens:
            stats.new_tokens += len(new)
            text, stopped = cutter.push(decoder.push(new))
            if text:
                yield text, None
            if stopped:
                finish = "stop"
                break
    if finish is None:
        if tail := cutter.flush():
            yield tail, None
        finish = "stop" if stats.stop_reason == "stop token" else "length"
    yield "", finish


async def _events(job: Job, pieces: AsyncIterator[tuple[str, str | None]], stats: GenerationStats):
    """Server-sent events: a role chunk, text chunks, the finish chunk, usage if asked, then [DONE]."""
    yield _event(chunk(job, None, None, first=True))
    async with contextlib.aclosing(pieces):
        async for text, finish in pieces:
            yield _event(chunk(job, text, finish))
    if job.include_usage:
        yield _event(
            {**chunk(job, None, None), "choices": [], "usage": usage(len(job.prompt), stats.new_tokens)}
        )
    yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _whole(
    request: Request, job: Job, pieces: AsyncIterator[tuple[str, str | None]], stats: GenerationStats
) -> JSONResponse:
    """Collects the answer while watching the connection: a client that leaves cancels the sequence."""

    async def collect() -> tuple[str, str]:
        text, finish = [], "stop"
        async with contextlib.aclosing(pieces):
            async for piece, end in pieces:
                text.append(piece)
                finish = end or finish
        return "".join(text), finish

    task = asyncio.create_task(collect())
    while not task.done():
        await asyncio.wait([task], timeout=DISCONNECT_POLL_SECONDS)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
    try:
        text, finish = task.result()
    except EaglexError as e:
        raise ApiError(500, str(e)) from None
    return JSONResponse(completion(job, text, finish, usage(len(job.prompt), stats.new_tokens)))
