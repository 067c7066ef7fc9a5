"""The HTTP side of ``textrnn serve``: the completions API on FastAPI and uvicorn (answers, server-sent events,
the playground page, ``/v1/models``, ``/health``, errors as the API's ``error`` object, bodies over the limit
refused with a 413 the client can read), loading a run into engines, and a server that drains open requests
on SIGTERM.

The routes are plain Starlette endpoints: each takes the request, and finds the engine and the model's
``/v1/models`` entry on ``request.app.state``. No ``from __future__ import annotations`` here all the same:
FastAPI reads the annotations of its own routes as objects.
"""

import asyncio
import contextlib
import json
import os
import time
import uuid
from pathlib import Path

import torch

from textrnn.errors import TextrnnError
from textrnn.serve.engine import Engine, EnginePool, Handle
from textrnn.serve.request import ApiError, CompletionRequest, Limits, parse_request

STATIC = Path(__file__).parent / "static"


# ---------------------------------------------------------------------------------------------
# Answers


def completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


def choice(index: int, text: str, reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": reason}


def usage(request: CompletionRequest, handle: Handle) -> dict:
    prompt = sum(len(ids) for ids in request.prompt_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": handle.completion_tokens,
        "total_tokens": prompt + handle.completion_tokens,
    }


def model_info(model, tokenizer, config: dict, name: str, limits: Limits) -> dict:
    """``GET /v1/models``'s entry: the OpenAI fields, then textrnn's: the run's config and validation figures."""
    run_dir = Path(config["run_dir"])
    weights = config.get("weights", "best")
    validation = _validation(run_dir, weights)
    weights_file = run_dir / f"{weights}.pt"
    created = int(weights_file.stat().st_mtime) if weights_file.is_file() else int(time.time())
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "textrnn",
        "textrnn": {
            "run": run_dir.name,
            "weights": weights,
            "parameters": sum(p.numel() for p in model.parameters()),
            "model": config.get("model"),
            "tokenizer": {**config.get("tokenizer", {}), "vocab_size": tokenizer.vocab_size},
            "corpus": config.get("data", {}).get("corpus"),
            "validation": validation,
            "limits": {
                "max_tokens": limits.max_tokens,
                "max_prompt_chars": limits.max_prompt_chars,
                "max_n": limits.max_n,
                "max_beam": limits.max_beam,
            },
        },
    }


def _validation(run_dir: Path, weights: str) -> dict | None:
    """The metrics.jsonl record of the weights served: the best validation perplexity, or the last record."""
    path = run_dir / "metrics.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("val_perplexity"), int | float)]
    if not records:
        return None
    record = min(records, key=lambda r: r["val_perplexity"]) if weights == "best" else records[-1]
    keys = ("step", "val_perplexity", "val_bits_per_char", "train_perplexity", "tokens", "elapsed_sec")
    return {key: record.get(key) for key in keys if key in record}


# ---------------------------------------------------------------------------------------------
# The HTTP application


def require_serve() -> None:
    """A clear error when the optional ``serve`` extra is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TextrnnError('textrnn serve needs FastAPI and uvicorn: pip install "textrnn[serve]"') from None


def create_app(engine: Engine | EnginePool, info: dict):
    """The ASGI application over ``engine``: ``/v1/completions``, ``/v1/models``, ``/health`` and the playground
    at ``/``; ``info`` is the model's ``/v1/models`` entry. The engine starts and stops with the application."""
    require_serve()
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    routes = [
        Route("/", playground),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/models/{model:path}", one_model),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    errors = {ApiError: api_error, HTTPException: http_error, Exception: internal_error}
    app = FastAPI(
        title="textrnn",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        routes=routes,
        exception_handlers=errors,
        lifespan=_lifespan,
    )
    app.state.engine, app.state.info = engine, info
    return app


@contextlib.asynccontextmanager
async def _lifespan(app):
    engine = app.state.engine
    engine.start()
    try:
        yield
    finally:
        # uvicorn has waited for the open requests (SIGTERM drains): finish what is left and stop.
        await asyncio.to_thread(engine.close)


# ---------------------------------------------------------------------------------------------
# Routes: Starlette endpoints, each taking the request (the engine and the model's entry are on app.state)


async def playground(request):
    from starlette.responses import HTMLResponse

    return HTMLResponse((STATIC / "playground.html").read_text(encoding="utf-8"))


async def health(request):
    state = request.app.state
    return _json({"status": "ok", "model": state.info["id"], **state.engine.status()})


async def models(request):
    return _json({"object": "list", "data": [request.app.state.info]})


async def one_model(request):
    info, model = request.app.state.info, request.path_params["model"]
    if model != info["id"]:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {info['id']!r}", "not_found_error")
    return _json(info)


async def completions(request):
    """``POST /v1/completions``: check the body, queue its choices, answer once they end or stream them."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response, StreamingResponse

    engine, name = request.app.state.engine, request.app.state.info["id"]
    try:
        body = await _read_body(request, engine.limits.max_body_bytes)
    except ClientDisconnect:
        return Response(status_code=400)
    parsed = parse_request(body, name, engine.tokenizer, engine.limits)
    handle = engine.submit(parsed, asyncio.get_running_loop())
    identity = (completion_id(), int(time.time()), name)
    if parsed.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_events(handle, *identity), media_type="text/event-stream", headers=headers)
    return await _answer(handle, request, *identity)


async def api_error(request, error: ApiError):
    return _json(error.body(), error.status)


async def http_error(request, error):
    """Starlette's own refusals (no such route, wrong method) as the API's error object."""
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) else error.detail
    return _json(ApiError(error.status_code, message, kind).body(), error.status_code)


async def internal_error(request, error: Exception):
    message = f"internal error ({type(error).__name__}); the server is still running"
    return _json(ApiError(500, message, "internal_error").body(), 500)


def _json(content: dict, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status)


# An over-limit body is still read, and thrown away, up to this size: a client such as urllib sends the whole
# body before it reads the answer, and a server that closes the connection with unread data in it makes the
# kernel reset the connection, which loses the answer (the client sees "connection reset", not the 413).
DISCARD_BYTES = 64 << 20


async def _read_body(request, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes held; a larger one is a 413, answered once the body has been
    read (discarding it) up to ``DISCARD_BYTES``, or at once when the client declares a body larger than that or
    waits for "100 Continue" before sending it."""
    too_large = ApiError(413, f"the body is larger than {limit:,} bytes")
    declared = request.headers.get("content-length", "")
    declared = int(declared) if declared.isdigit() else 0
    waiting = request.headers.get("expect", "").lower() == "100-continue"  # no body comes until it is asked for
    if declared > limit and (declared > DISCARD_BYTES or waiting):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DISCARD_BYTES:
            break
        else:
            chunks.clear()
    if size > limit:
        raise too_large
    return b"".join(chunks)


async def _answer(handle: Handle, request, cid: str, created: int, model: str):
    """The whole answer once every choice has ended; a client that leaves meanwhile cancels the request."""
    from starlette.responses import Response

    texts = [[] for _ in range(handle.choices)]
    reasons: list = [None] * handle.choices
    finished = 0
    try:
        while finished < handle.choices and handle.error is None:
            try:
                await asyncio.wait_for(handle.event.wait(), 1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    handle.cancel()
                    return Response(status_code=499)
                continue
            handle.event.clear()
            while handle.outbox:
                index, text, reason = handle.outbox.popleft()
                texts[index].append(text)
                if reason is not None:
                    reasons[index] = reason
                    finished += 1
    except asyncio.CancelledError:
        handle.cancel()
        raise
    if handle.error is not None:
        raise ApiError(500, handle.error, "internal_error")
    choices = [choice(index, "".join(parts), reasons[index]) for index, parts in enumerate(texts)]
    body = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    return _json({**body, "usage": usage(handle.request, handle)})


def _sse(data) -> str:
    return "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


async def _events(handle: Handle, cid: str, created: int, model: str):
    """Server-sent events: a chunk per choice with new text (what came since the last write, so a slow
    reader gets fewer, larger chunks), each choice's last chunk with its finish_reason, then ``[DONE]``."""
    finished = 0
    head = {"id": cid, "object": "text_completion", "created": created, "model": model}
    try:
        while finished < handle.choices:
            await handle.event.wait()
            handle.event.clear()
            merged: dict[int, list] = {}
            while handle.outbox:
                index, text, reason = handle.outbox.popleft()
                entry = merged.setdefault(index, [[], None])
                entry[0].append(text)
                if reason is not None:
                    entry[1] = reason
                    finished += 1
            events = [_sse({**head, "choices": [choice(i, "".join(t), r)]}) for i, (t, r) in merged.items()]
            if handle.error is not None:
                events.append(_sse(ApiError(500, handle.error, "internal_error").body()))
                yield "".join(events) + "data: [DONE]\n\n"
                return
            if finished == handle.choices:
                if handle.request.include_usage:
                    events.append(_sse({**head, "choices": [], "usage": usage(handle.request, handle)}))
                events.append("data: [DONE]\n\n")
            if events:
                yield "".join(events)
    finally:
        if finished < handle.choices:  # the client left (or the server is stopping the stream)
            handle.cancel()


def load_server(
    checkpoint=None,
    weights: str | None = None,
    device="cpu",
    limits: Limits = Limits(),
    name=None,
    threads: int | None = None,
    engines: int | None = None,
):
    """Load a run once and build ``(app, engine, info)`` for it. ``engines``: batching engines over the one
    model (default: one per core on a CPU, at most 4); ``threads``: torch threads (default: 1 with several
    engines, torch's choice with one)."""
    require_serve()
    from textrnn.lm.model import load_run

    model, tokenizer, config = load_run(checkpoint, weights, device)
    if model.config.task != "causal":
        raise TextrnnError("this run was trained with --task infill: it cannot continue text, so it cannot be served")
    if engines is None:  # one engine per core on a CPU (at most 4); one on a GPU, where a batch fills it
        engines = 1 if torch.device(device).type != "cpu" else max(1, min(4, os.cpu_count() or 1))
    if engines > 1 or threads is not None:
        torch.set_num_threads(threads or 1)  # each engine's steps on one core: no thread pool to share
    engine = EnginePool(model, tokenizer, limits, engines) if engines > 1 else Engine(model, tokenizer, limits)
    info = model_info(model, tokenizer, config, name or Path(config["run_dir"]).resolve().name, limits)
    return create_app(engine, info), engine, info


def run_server(app, host: str = "127.0.0.1", port: int = 8000, drain_seconds: float = 30.0, sock=None) -> None:
    """Serve ``app`` with uvicorn until SIGTERM or Ctrl-C; open requests get ``drain_seconds`` to finish
    (uvicorn stops listening at once, so new connections are refused while the open ones drain)."""
    make_server(app, drain_seconds).run(sockets=[sock if sock is not None else bind(host, port)])


def make_server(app, drain_seconds: float = 30.0):
    """The uvicorn server for ``app`` (``.run(sockets=[bind(...)])`` serves; ``should_exit = True`` stops)."""
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=drain_seconds, limit_concurrency=4096
    )
    return uvicorn.Server(config)


def bind(host: str, port: int):
    """A listening socket for ``host:port`` (port 0: a free one); a taken port is a clear error."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as error:
        raise TextrnnError(
            f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --host or --port"
        ) from None
    return sock
