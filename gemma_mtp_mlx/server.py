"""`gemma-mtp serve`: an OpenAI-compatible HTTP server over the engine (Starlette on uvicorn).

Requests are accepted concurrently (uvicorn's event loop, on a thread of its own) and
answered one at a time, in arrival order, on the main thread, which loaded the engine and
owns everything MLX touches (MLX streams belong to the thread that made them, and its
thread-local state must not be torn down while Python finalizes). Handlers parse and check
the request (openai_api.py), template and tokenize it, and queue a `Job`; the worker streams
the answer's pieces back through the job's asyncio queue. A client that goes away cancels its
job at the next round; a full queue answers 429. Conversations' caches are kept
(prefix_cache.py), so a chat client resending its history prefills only the new turn.
`GET /stats` (behind the API key, as /v1 is): the answers so far (acceptance, redone rounds)
and the engine's calibration (decode width, guard margins, redo rate per verify width).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import openai_api as api
from .errors import first_line
from .live import drafter_words
from .openai_api import ApiError
from .request import Request, RequestError

log = logging.getLogger("gemma_mtp.server")


@dataclass(frozen=True)
class ServerConfig:
    model_id: str  # what /v1/models lists and responses name
    api_key: str | None = None
    max_queue: int = 16  # requests waiting beyond the one being answered
    cache_bytes: int = 2 * 10**9  # the prefix cache's budget
    default: Request = field(default_factory=lambda: Request(max_tokens=2048))
    # what a request does not say: its budget, and the draft policy of every request
    max_body_bytes: int = 4 * 2**20


@dataclass
class Job:
    prompt_ids: list[int]
    request: Request
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached: int = 0  # prompt tokens the prefix cache held
    state: str = "queued"  # then "running", or "dropped" if cancelled while queued

    def emit(self, kind: str, item=None) -> None:
        """From the worker thread: hand ("chunk", text) / ("done", stats) / ("error",
        ApiError) to the handler's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, item))
        except RuntimeError:  # the loop is gone (shutdown)
            self.cancelled.set()


@dataclass
class Counts:
    """What the server answered since it started (GET /stats)."""

    requests: int = 0
    generated_tokens: int = 0
    draft_rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    redone_rounds: int = 0

    def add(self, stats) -> None:
        rounds = stats.draft_rounds
        self.requests += 1
        self.generated_tokens += stats.generated_tokens
        self.draft_rounds += len(rounds)
        self.drafted_tokens += sum(r.draft_len for r in rounds)
        self.accepted_tokens += sum(r.accepted for r in rounds)
        self.redone_rounds += stats.redone_rounds

    def to_dict(self) -> dict:
        def rate(part: int, whole: int) -> float | None:  # None: nothing measured yet
            return round(part / whole, 4) if whole else None

        return {**vars(self), "acceptance_rate": rate(self.accepted_tokens, self.drafted_tokens),
                "redo_rate": rate(self.redone_rounds, self.draft_rounds)}


class Worker:
    """Answers jobs one at a time, in arrival order, on the thread that calls `run` (the
    main thread: the one that loaded the engine and owns everything MLX touches)."""

    def __init__(self, engine, config: ServerConfig):
        from .decoding import PREFILL_CHUNK
        from .prefix_cache import PrefixCache

        self.engine, self.config = engine, config
        self.cache = PrefixCache(engine.new_session, config.cache_bytes, PREFILL_CHUNK)
        self.jobs: queue.Queue = queue.Queue()
        self.pending = 0  # jobs queued or being answered
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.counts = Counts()

    def submit(self, job: Job) -> None:
        """From a handler: queue the job, or 429 when the queue is full."""
        with self.lock:
            if self.pending > self.config.max_queue:
                raise ApiError(429, f"the server is busy ({self.pending - 1} requests waiting); "
                               "retry later", kind="server_busy", code="queue_full")
            self.pending += 1
        self.jobs.put(job)

    def cancel(self, job: Job) -> None:
        """From a handler whose client went away: stop the job; a queued one frees its place
        in the queue at once."""
        job.cancelled.set()
        with self.lock:
            if job.state == "queued":
                job.state = "dropped"
                self.pending -= 1

    def run(self, alive=lambda: True) -> None:
        """Answer jobs until `stopping` is set or `alive()` turns false."""
        while not self.stopping.is_set() and alive():
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            with self.lock:
                if job.state == "dropped":
                    continue
                job.state = "running"
            last = self._answer(job) if not self.cancelled(job) else None
            with self.lock:  # before the last item: the client may send its next request
                self.pending -= 1
            if last is not None:
                job.emit(*last)

    def cancelled(self, job: Job) -> bool:
        return job.cancelled.is_set() or self.stopping.is_set()

    def _answer(self, job: Job) -> tuple[str, object]:
        """Stream the job's text pieces; returns its last item: ("done", stats) or
        ("error", ApiError)."""
        job.cached, chunks = self.cache.stream(self.engine, job.prompt_ids, job.request)
        stats = None
        try:
            for chunk in chunks:
                stats = chunk.stats
                if self.cancelled(job):
                    break
                job.emit("chunk", chunk.text)
        except RequestError as e:
            return "error", ApiError(400, str(e), code=_code(e))
        except Exception as e:  # a bug: say so, keep serving
            log.exception("request failed")
            return "error", ApiError(500, f"internal error: {first_line(e)}", kind="server_error")
        finally:
            chunks.close()
            if stats is not None:
                with self.lock:
                    self.counts.add(stats)
        return "done", stats

    def describe(self) -> dict:
        """GET /stats: the answers so far and the engine's calibration (None until the
        first request that needs one)."""
        from .calibration import describe

        with self.lock:
            counts = self.counts.to_dict()
        calibration = self.engine.calibration
        return {"object": "gemma_mtp.stats", "model": self.config.model_id, **counts,
                "calibration": describe(calibration) if calibration is not None else None}


def _code(e: RequestError) -> str | None:
    from .request import ContextError

    return "context_length_exceeded" if isinstance(e, ContextError) else None


# -- HTTP ------------------------------------------------------------------------------------------
def make_app(worker: Worker) -> Starlette:
    """The app over a started worker."""
    config = worker.config

    async def models(request: HttpRequest) -> Response:
        try:
            check_key(request, config.api_key)
        except ApiError as e:
            return error_response(request, e)
        card = {"id": config.model_id, "object": "model", "created": 0, "owned_by": "gemma-mtp"}
        return JSONResponse({"object": "list", "data": [card]})

    async def stats(request: HttpRequest) -> Response:
        try:
            check_key(request, config.api_key)
        except ApiError as e:
            return error_response(request, e)
        return JSONResponse(worker.describe())

    async def health(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "pending": worker.pending})

    async def chat(request: HttpRequest) -> Response:
        return await _complete(worker, request, chat=True)

    async def completions(request: HttpRequest) -> Response:
        return await _complete(worker, request, chat=False)

    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return error_response(request, ApiError(exc.status_code, exc.detail, kind=kind))

    async def bug(request: HttpRequest, exc: Exception) -> Response:
        log.error("request failed", exc_info=exc)  # a server bug: its traceback is wanted
        error = ApiError(500, f"internal error: {first_line(exc)}", kind="server_error")
        return error_response(request, error)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: bug})
    app.state.worker = worker
    return app


def error_response(request: HttpRequest, error: ApiError) -> Response:
    log_line(request, error.status, error.message)
    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def log_line(request: HttpRequest, status: int, what: str) -> None:
    """One line per request (no tracebacks for client errors)."""
    sys.stderr.write(f"{request.method} {request.url.path} {status} · {what}\n")
    sys.stderr.flush()


def check_key(request: HttpRequest, key: str | None) -> None:
    if key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                       kind="authentication_error", code="invalid_api_key")


async def read_json(request: HttpRequest, limit: int):
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise api.bad(f"invalid JSON body: {first_line(e)}") from None
    except RecursionError:
        raise api.bad("invalid JSON body: nested too deeply") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def prompt_ids(engine, parsed: api.Parsed) -> list[int]:
    """The tokens to answer: the chat template over the messages, or the raw prompt."""
    if parsed.messages is None:
        if isinstance(parsed.prompt, list):
            if max(parsed.prompt) >= engine.target.vocab_size:
                raise api.bad("'prompt' holds a token id outside the vocabulary", "prompt")
            return list(parsed.prompt)
        try:
            return engine.encode(parsed.prompt, raw=True)
        except Exception as e:  # e.g. lone surrogates the tokenizer cannot encode
            raise api.bad(f"cannot tokenize the prompt: {first_line(e)}", "prompt") from None
    if not engine.has_chat_template:
        raise api.bad("this model has no chat template: use /v1/completions", "messages")
    role = engine.model_role
    messages = [dict(m, role=role if m["role"] == "assistant" else m["role"])
                for m in parsed.messages]
    try:
        return engine.encode_chat(messages)
    except Exception as e:  # the template's own checks (e.g. roles must alternate)
        raise api.bad(f"the chat template refused the messages: {first_line(e)}",
                      "messages") from None


async def _complete(worker: Worker, request: HttpRequest, chat: bool) -> Response:
    config, engine = worker.config, worker.engine
    try:
        check_key(request, config.api_key)
        body = await read_json(request, config.max_body_bytes)
        parsed = api.parse(body, chat, config.default)
        ids = prompt_ids(engine, parsed)
        try:
            engine.check_context(None, ids)
        except RequestError as e:
            raise ApiError(400, str(e), "messages" if chat else "prompt", code=_code(e)) from None
        job = Job(ids, parsed.request, asyncio.get_running_loop())
        worker.submit(job)
    except ApiError as e:
        return error_response(request, e)
    reply = Reply(request, worker, job, parsed, api.new_id(chat), chat)
    if parsed.stream:
        return StreamingResponse(
            reply.events(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await reply.whole()


@dataclass
class Reply:
    """One answer on its way to its client: whole, or as server-sent events."""

    request: HttpRequest
    worker: Worker
    job: Job
    parsed: api.Parsed
    rid: str
    chat: bool
    t0: float = field(default_factory=time.perf_counter)

    async def next(self):
        """The job's next item, or None when the client has gone (the job is then
        cancelled)."""
        while True:
            try:
                return await asyncio.wait_for(self.job.out.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    self.worker.cancel(self.job)
                    return None

    def body(self, text: str | None, finish: str | None = None, first=False) -> str:
        chunk = api.chunk_body(self.chat, self.rid, self.worker.config.model_id, text, finish,
                               first)
        return sse(chunk)

    async def whole(self) -> Response:
        text = []
        while (item := await self.next()) is not None:
            kind, value = item
            if kind == "chunk":
                text.append(value)
            elif kind == "error":
                return error_response(self.request, value)
            else:
                log_line(self.request, 200, summary(value, self.job.cached, self.t0))
                return JSONResponse(api.completion_body(
                    self.chat, self.rid, self.worker.config.model_id, "".join(text), value,
                    self.job.cached))
        log_line(self.request, 499, "client went away")
        return Response(status_code=499)

    async def events(self):
        """Server-sent events in the OpenAI chunk format, ending with `data: [DONE]`."""
        first, ended = True, False
        try:
            while (item := await self.next()) is not None:
                kind, value = item
                if kind == "chunk" and (value or first):
                    yield self.body(value, first=first)
                    first = False
                elif kind == "error":
                    ended = True
                    log_line(self.request, value.status, value.message)
                    yield sse(value.body())
                    return
                elif kind == "done":
                    ended = True
                    yield self.body(None, value.finish_reason, first)
                    if self.parsed.include_usage:
                        yield sse(api.usage_chunk(self.chat, self.rid,
                                                  self.worker.config.model_id, value,
                                                  self.job.cached))
                    log_line(self.request, 200, summary(value, self.job.cached, self.t0))
                    yield "data: [DONE]\n\n"
                    return
        finally:  # also when the client disconnects mid-stream (the task is then cancelled)
            self.worker.cancel(self.job)
            if not ended:
                log_line(self.request, 499, "client went away: generation cancelled")


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def summary(stats, cached: int, t0: float) -> str:
    """The live view's numbers, one line."""
    parts = [f"{stats.generated_tokens} tokens", f"{stats.tokens_per_s:.1f} tok/s",
             f"prefill {stats.prompt_tokens} tok (cached {cached})", f"TTFT {stats.ttft_s:.2f} s"]
    parts.append(drafter_words(stats, stats.drafting))
    if stats.redone_rounds:
        parts.append(f"{stats.redone_rounds} redone")
    parts.append(f"finish {stats.finish_reason}")
    parts.append(f"{time.perf_counter() - t0:.2f} s")
    return " · ".join(parts)


def listen(host: str, port: int):
    """A listening socket, or OSError (a port in use, a bad address) before any loading."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(engine, config: ServerConfig, sock) -> None:
    """Serve on `sock` until Ctrl-C or SIGTERM: HTTP on a thread of its own (uvicorn), the
    answers on this one."""
    import signal

    import uvicorn

    worker = Worker(engine, config)
    server = uvicorn.Server(uvicorn.Config(
        make_app(worker), log_level="warning", access_log=False, timeout_graceful_shutdown=2,
        lifespan="off",
    ))
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http",
                            daemon=True)
    host, port = sock.getsockname()[:2]

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    http.start()
    sys.stderr.write(f"gemma-mtp serve · {config.model_id} · http://{host}:{port}/v1 · "
                     f"Ctrl-C stops\n")
    sys.stderr.flush()
    try:
        worker.run(alive=http.is_alive)
    finally:
        worker.stopping.set()
        server.should_exit = True
        http.join(10)
        signal.signal(signal.SIGTERM, previous)
