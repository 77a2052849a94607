"""An OpenAI-compatible HTTP server over any hslm runtime, on Starlette and uvicorn.

    POST /v1/chat/completions   messages → the model's turn (stream: server-sent events)
    POST /v1/completions        prompt(s) → continuation; `echo` + `logprobs` score a prompt
    GET  /v1/models, /v1/models/{id}, /health

`response_format` {"type": "json_schema", "json_schema": {"schema": ...}} and
{"type": "json_object"} use guided decoding within `max_tokens`: the answer is complete JSON
whenever the shortest one fits (else 400 before generating). One generation runs at a time
(the runtime's lock), in arrival order, with at most `max_queue` requests waiting (429 beyond);
a client that goes away frees its place at once, between two tokens. Every mistake in a request
gets OpenAI's error object with a 4xx, every failure a 500 (in a stream: an `error` event, then
[DONE]), and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hslm.generate import Generation, SamplingParams, TokenLogprob, prompt_logprobs
from hslm.runtime.engine import Runtime
from hslm.runtime.guided import GuideError
from hslm.tokenizer import TokenizerError

MAX_BODY_BYTES = 4 << 20
DRAIN_BYTES = 64 << 20  # a too-large body is read (and dropped) up to this, so the 413 arrives
DRAIN_SECONDS = 10.0
IDLE_SECONDS = 5.0  # a connection without a request in progress (idle, or sending its head)
MAX_NESTING = 64  # brackets deep, checked before the body is parsed
MAX_INT_DIGITS = 20
MAX_STOP_STRINGS, MAX_STOP_CHARS = 4, 64  # OpenAI's limits
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64  # prompts in one /v1/completions request
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
               "logit_bias", "suffix", "audio", "modalities", "prediction")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error",
               504: "server_error"}
STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


@dataclass
class RequestError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict = field(default_factory=dict)

    def body(self) -> dict:
        return {"error": {"message": self.message,
                          "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        # An error may leave part of the body unread: the connection ends with the answer.
        return JSONResponse(self.body(), self.status, {**self.headers, "Connection": "close"})


# ---------------------------------------------------------------- reading a request
def _nesting(data: bytes) -> int:
    """How deep brackets nest in JSON text (strings skipped), without parsing it."""
    marks = np.frombuffer(STRINGS.sub(b'""', data), dtype=np.uint8)
    steps = np.isin(marks, (0x5B, 0x7B)).astype(np.int64) - np.isin(marks, (0x5D, 0x7D))
    return int(np.cumsum(steps).max(initial=0))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_body(data: bytes) -> dict:
    """The request's JSON object, refusing what would be costly to parse or to hold."""
    if _nesting(data) > MAX_NESTING:
        raise RequestError(400, f"the body nests deeper than {MAX_NESTING} levels")
    try:
        body = json.loads(data, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError too
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


async def read_body(request: Request, timeout: float) -> dict:
    declared = request.headers.get("content-length")
    too_large = RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    if declared is not None and int(declared) > MAX_BODY_BYTES:  # h11 checked it is a number
        if int(declared) <= DRAIN_BYTES:
            await _drain(request)
        raise too_large
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return
            chunks.append(chunk)
    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout:g} s") from None
    if size > MAX_BODY_BYTES:
        await _drain(request)
        raise too_large
    return parse_body(b"".join(chunks))


async def _drain(request: Request) -> None:
    """Read and drop the rest of a refused body (up to DRAIN_BYTES) so that a client still
    sending it reads the answer instead of a reset connection."""
    async def drop() -> None:
        dropped = 0
        async for chunk in request.stream():
            dropped += len(chunk)
            if dropped > DRAIN_BYTES:
                return
    try:
        await asyncio.wait_for(drop(), DRAIN_SECONDS)
    except (asyncio.TimeoutError, RuntimeError):  # RuntimeError: the stream was read already
        pass


def _number(body: dict, key: str, default, low, high, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not float(value).is_integer()) or not low <= value <= high:
        raise RequestError(400, f"'{key}' must be a{'n' if kind is int else ''} "
                                f"{kind.__name__} in [{low}, {high}], got {value!r}", key)
    return kind(value)


def _constraint(body: dict) -> dict:
    """Guided-decoding options for `response_format`."""
    response_format = body.get("response_format") or {"type": "text"}
    if not isinstance(response_format, dict):
        raise RequestError(400, "'response_format' must be an object", "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise RequestError(400, "response_format json_schema needs {'json_schema': "
                                    "{'name': ..., 'schema': {...}}}", "response_format")
        return {"json_schema": spec["schema"]}
    raise RequestError(400, f"unsupported response_format type {kind!r} (text, json_object, "
                            "json_schema)", "response_format")


def _message_text(message) -> dict:
    """A chat message with its content as one string (OpenAI allows a list of text parts)."""
    if not isinstance(message, dict):
        raise RequestError(400, "every message must be a {'role', 'content'} object", "messages")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" and
                   isinstance(part.get("text"), str) for part in content):
            raise RequestError(400, "content parts must be {'type': 'text', 'text': ...} "
                                    "(this model reads text only)", "messages")
        content = "\n".join(part["text"] for part in content)
    role = "system" if message.get("role") == "developer" else message.get("role")
    return {"role": role, "content": content}


def _stop_strings(body: dict) -> list[str]:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS
                                             for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise RequestError(400, f"'stop' must be a string or a list of at most "
                                f"{MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} "
                                "characters", "stop")
    return stop


@dataclass
class Job:
    """What one request asks for: prompts (one but for /v1/completions), sampling, guidance."""

    chat: bool
    prompts: list[list[int]]
    params: SamplingParams
    constraint: dict
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    prompt_texts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the admission queue
class Admission:
    """One generation at a time; at most `max_queue` requests wait, served in arrival order.
    Used from the event loop only."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.waiting: deque[asyncio.Future] = deque()
        self.busy = False
        self.seconds_per_request = 1.0  # a running mean, for Retry-After

    async def enter(self) -> bool:
        """True once it is this request's turn; RequestError 429 if the queue is full."""
        if not self.busy and not self.waiting:
            self.busy = True
            return True
        if len(self.waiting) >= self.max_queue:
            retry = math.ceil(self.seconds_per_request * (len(self.waiting) + 1))
            raise RequestError(429, f"{len(self.waiting)} requests are waiting already; retry "
                                    f"in {retry} s", code="queue_full",
                               headers={"Retry-After": str(retry)})
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # the turn came as the client left: pass it on
            else:
                self.waiting.remove(turn)
            raise
        return True

    def leave(self, seconds: float | None = None) -> None:
        if seconds is not None:
            self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * seconds
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.busy = False


class GenerationTimeout(Exception):
    pass


_DONE = object()


class Run:
    """A job generating on the worker thread; its results arrive on an asyncio queue:
    ("piece", text, its tokens' logprobs) and ("end", Generation, logprobs not sent yet) for
    each prompt, an exception if one was raised, then _DONE. `cancel()` stops it before its
    next token."""

    def __init__(self, server: OpenAIServer, job: Job, deadline: float):
        self.server, self.job, self.deadline = server, job, deadline
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.echoed: list[list[TokenLogprob]] = []
        started = time.monotonic()
        future = self.loop.run_in_executor(server.worker, self._work)
        future.add_done_callback(lambda _: server.admission.leave(time.monotonic() - started))

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _work(self) -> None:
        runtime, job = self.server.runtime, self.job
        try:
            with runtime.lock:
                for prompt_ids in job.prompts:
                    if job.echo:
                        self.echoed.append(prompt_logprobs(runtime.source, prompt_ids,
                                                           job.params.logprobs or 0))
                    result, sent = Generation(text=""), 0
                    if job.params.max_new_tokens:
                        pieces = runtime.stream(prompt_ids, job.params, result=result,
                                                **job.constraint)
                        try:
                            for piece in pieces:
                                if self.cancelled.is_set():
                                    return
                                if time.monotonic() > self.deadline:
                                    raise GenerationTimeout
                                self._put(("piece", piece, result.logprobs[sent:]))
                                sent = len(result.logprobs)
                        finally:
                            pieces.close()
                    self._put(("end", result, result.logprobs[sent:]))
        except Exception as err:  # reported to the client, which decides the status
            self._put(err)
        finally:
            self._put(_DONE)

    async def events(self) -> AsyncIterator[tuple]:
        while (item := await self.queue.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield item


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work):
    """`work`'s result, or None (with `work` cancelled) if the client goes away first."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, gone):
            if not pending.done():
                pending.cancel()
    if not task.done() or task.cancelled():
        return None
    return task.result()


# ---------------------------------------------------------------- the server
class OpenAIServer:
    """The ASGI app (`app`) with its runtime, admission queue and worker thread."""

    def __init__(self, runtime: Runtime, model_name: str | None = None, *,
                 api_key: str | None = None, cors_origins: Sequence[str] = (),
                 max_queue: int = 64, timeout: float = 300.0, loopback: bool = True):
        self.runtime = runtime
        self.model_name = model_name or runtime.name
        self.api_key, self.timeout, self.loopback = api_key, timeout, loopback
        self.admission = Admission(max_queue)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="hslm-generate")
        middleware = [Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                 allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type"])] \
            if cors_origins else []
        routes = [Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/models", self.models, methods=["GET"]),
                  Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
                  Route("/health", self.health, methods=["GET"])]
        handlers = {HTTPException: self._http_error, RequestError: self._request_error,
                    Exception: self._server_error}
        self.app = self._guard(Starlette(routes=routes, middleware=middleware,
                                         exception_handlers=handlers))

    # ---------------------------------------------------------------- checks before routing
    def _guard(self, app):
        """Host (DNS rebinding) and API key checks in front of `app`."""
        async def guarded(scope, receive, send):
            if scope["type"] == "http":
                error = self._refusal(scope)
                if error is not None:
                    return await error.response()(scope, receive, send)
            await app(scope, receive, send)
        return guarded

    def _refusal(self, scope) -> RequestError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.loopback:
            host = headers.get("host", "")
            name = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] \
                if host.count(":") == 1 else host
            if name.lower() not in LOOPBACK_NAMES:
                return RequestError(421, f"this server answers to localhost only, not to host "
                                         f"{host!r}", code="misdirected_request")
        if scope["method"] == "OPTIONS" or scope["path"] == "/health" or self.api_key is None:
            return None  # a CORS preflight carries no key
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(),
                                                                 self.api_key.encode()):
            return RequestError(401, "a valid API key is needed: Authorization: Bearer KEY",
                                code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    # ---------------------------------------------------------------- errors
    async def _http_error(self, request: Request, err: HTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
            err.status_code, err.detail)
        return RequestError(err.status_code, message, headers=dict(err.headers or {})).response()

    async def _request_error(self, request: Request, err: RequestError) -> JSONResponse:
        return err.response()

    async def _server_error(self, request: Request, err: Exception) -> JSONResponse:
        return RequestError(500, f"the server failed: {type(err).__name__}: {err}").response()

    # ---------------------------------------------------------------- routes
    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.model_name,
                             "waiting": len(self.admission.waiting)})

    def _model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "hslm"}

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> JSONResponse:
        if request.path_params["model_id"] != self.model_name:
            raise self._no_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    def _no_model(self, name) -> RequestError:
        return RequestError(404, f"model {name!r} does not exist; this server serves "
                                 f"{self.model_name!r}", "model", "model_not_found")

    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._answer(request, chat=False)

    async def _answer(self, request: Request, chat: bool) -> Response:
        arrived = time.monotonic()
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            await _drain(request)
            raise RequestError(415, f"the body must be application/json, not "
                                    f"{media_type or 'unlabelled'!r}")
        job = self.prepare(await read_body(request, self.timeout), chat)
        try:
            entered = await _unless_disconnected(
                request, asyncio.wait_for(self.admission.enter(), self.timeout))
        except asyncio.TimeoutError:
            raise RequestError(504, f"the request waited {self.timeout:g} s for its turn",
                               code="timeout") from None
        if not entered:
            return Response(status_code=499)  # nobody is listening
        run = Run(self, job, arrived + self.timeout)
        if job.stream:
            return _EventStream(self, run, request)
        answer = await _unless_disconnected(request, self._collect(run))
        if answer is None:
            run.cancel()
            return Response(status_code=499)
        return JSONResponse(answer)

    # ---------------------------------------------------------------- request → job
    def prepare(self, body: dict, chat: bool) -> Job:
        if body.get("model") not in (None, self.model_name):
            raise self._no_model(body.get("model"))
        for key in UNSUPPORTED:
            if body.get(key) not in (None, [], {}):
                raise RequestError(400, f"'{key}' is not supported by this server", key)
        for key in ("n", "best_of"):
            if body.get(key) not in (None, 1):
                raise RequestError(400, f"'{key}' must be 1: this server gives one choice", key)
        tokenizer = self.runtime.tokenizer
        try:
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise RequestError(400, "'messages' must be a non-empty list of "
                                            "{'role', 'content'} objects", "messages")
                prompts = [tokenizer.encode_chat([_message_text(m) for m in messages])]
                texts = []
            else:
                prompts, texts = self._prompts(body.get("prompt"))
        except TokenizerError as err:
            raise RequestError(400, str(err), "messages" if chat else "prompt") from None
        longest = max(map(len, prompts))
        room = self.runtime.context_length - longest
        if room < 1:
            raise RequestError(400, f"the prompt has {longest} tokens; this model's context is "
                                    f"{self.runtime.context_length}",
                               "messages" if chat else "prompt", "context_length_exceeded")
        echo = not chat and body.get("echo") is True
        max_tokens = _number({"max_tokens": body.get("max_completion_tokens",
                                                     body.get("max_tokens"))},
                             "max_tokens", min(256, room), 0 if not chat else 1, room, int)
        if chat:
            logprobs = body.get("logprobs") is True
            top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, int)
            if top and not logprobs:
                raise RequestError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        else:
            top = _number(body, "logprobs", None, 0, MAX_TOP_LOGPROBS, int)
            logprobs = top is not None
        stream = body.get("stream") is True
        if stream and len(prompts) > 1:
            raise RequestError(400, "streaming answers one prompt at a time", "stream")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise RequestError(400, "'stream_options' must be an object", "stream_options")
        try:
            params = SamplingParams(
                max_new_tokens=max_tokens,
                temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
                top_k=_number(body, "top_k", 0, 0, tokenizer.vocab_size, int),
                min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
                repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
                frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
                presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
                seed=_number(body, "seed", None, -2**63, 2**64 - 1, int),
                stop_strings=_stop_strings(body), logprobs=top if logprobs else None)
        except ValueError as err:
            raise RequestError(400, str(err)) from None
        if params.seed is not None:
            params.seed %= 2**63  # torch's generators take a non-negative seed
        constraint = _constraint(body)
        if constraint:
            self._check_guided(constraint, max_tokens, len(prompts))
        return Job(chat, prompts, params, constraint, stream,
                   stream_options.get("include_usage") is True, echo, texts)

    def _prompts(self, prompt) -> tuple[list[list[int]], list[str]]:
        """/v1/completions prompts as ids, and their text: a string (encoded as text after
        <bos>), a list of token ids (used as given), or a list of either."""
        batch = prompt if isinstance(prompt, list) and prompt and \
            all(isinstance(p, (str, list)) for p in prompt) else [prompt]
        if len(batch) > MAX_PROMPTS:
            raise RequestError(400, f"at most {MAX_PROMPTS} prompts in one request", "prompt")
        vocab = self.runtime.tokenizer.vocab_size
        ids, texts = [], []
        for one in batch:
            if isinstance(one, str) and one:
                ids.append(self.runtime.tokenizer.encode(one, add_bos=True))
                texts.append(one)
            elif isinstance(one, list) and one and all(
                    isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in one):
                ids.append(one)
                texts.append(self.runtime.tokenizer.decode(one))
            else:
                raise RequestError(400, "'prompt' must be a non-empty string, a list of token "
                                        f"ids in [0, {vocab}), or a list of those", "prompt")
        return ids, texts

    def _check_guided(self, constraint: dict, max_tokens: int, prompts: int) -> None:
        try:  # refuse a bad schema, or one whose shortest answer cannot fit, now
            guide = self.runtime.guide(**constraint)
        except GuideError as err:
            raise RequestError(400, str(err), "response_format") from None
        shortest = guide.closing_path()
        if max_tokens and shortest is not None and len(shortest) > max_tokens:
            raise RequestError(400, f"the shortest answer this response_format allows takes "
                                    f"{len(shortest)} tokens; max_tokens is {max_tokens}",
                               "max_tokens")

    # ---------------------------------------------------------------- job → OpenAI's objects
    def _envelope(self, chat: bool, streaming: bool) -> dict:
        kind = ("chat.completion" if chat else "text_completion") + \
            (".chunk" if streaming and chat else "")
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": kind, "created": int(time.time()), "model": self.model_name}

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        data = self.runtime.tokenizer.piece_bytes(token_id)
        return data.decode("utf-8", errors="replace"), list(data)

    def chat_logprobs(self, logprobs: Sequence[TokenLogprob]) -> dict:
        def entry(token_id: int, logprob: float) -> dict:
            text, data = self._token(token_id)
            return {"token": text, "logprob": logprob, "bytes": data}
        return {"content": [{**entry(lp.token_id, lp.logprob),
                             "top_logprobs": [entry(t, v) for t, v in lp.top]}
                            for lp in logprobs]}

    def completion_logprobs(self, logprobs: Sequence[TokenLogprob], offset: int = 0) -> dict:
        tokens, offsets = [], []
        for lp in logprobs:
            offsets.append(offset)
            tokens.append(self._token(lp.token_id)[0])
            offset += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
                "top_logprobs": [None if lp.logprob is None else
                                 {self._token(t)[0]: v for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}

    def usage(self, job: Job, results: Sequence[Generation]) -> dict:
        prompt = sum(map(len, job.prompts))
        completion = sum(len(r.token_ids) for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def _collect(self, run: Run) -> dict:
        job, results = run.job, []
        try:
            async for event in run.events():
                if event[0] == "end":
                    results.append(event[1])
        except GenerationTimeout:
            raise RequestError(504, f"the answer took more than {self.timeout:g} s",
                               code="timeout") from None
        except GuideError as err:
            raise RequestError(500, f"guided decoding failed: {err}") from None
        choices = []
        for index, result in enumerate(results):
            choice = {"index": index, "finish_reason": result.finish_reason, "logprobs": None}
            if job.chat:
                choice["message"] = {"role": "assistant", "content": result.text}
                if job.params.logprobs is not None:
                    choice["logprobs"] = self.chat_logprobs(result.logprobs)
            else:
                echoed = run.echoed[index] if job.echo else []
                prefix = job.prompt_texts[index] if job.echo else ""
                choice["text"] = prefix + result.text
                if job.params.logprobs is not None:
                    prompt_part = self.completion_logprobs(echoed)
                    answer_part = self.completion_logprobs(result.logprobs, len(prefix))
                    choice["logprobs"] = {key: prompt_part[key] + answer_part[key]
                                          for key in prompt_part}
            choices.append(choice)
        return {**self._envelope(job.chat, False), "choices": choices,
                "usage": self.usage(job, results)}


class _EventStream:
    """Server-sent events of one run: chunks as pieces arrive, the finish reason, usage when
    asked, then [DONE]; a failure becomes an `error` event. A client that leaves cancels the
    run."""

    def __init__(self, server: OpenAIServer, run: Run, request: Request):
        self.server, self.run, self.request = server, run, request

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(_disconnected(self.request))
        watcher.add_done_callback(lambda _: self.run.cancel())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache")]})
            async for event in self._events():
                if self.run.cancelled.is_set():
                    break
                await send({"type": "http.response.body", "body": event.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except OSError:  # the client went away while we wrote
            pass
        finally:
            self.run.cancel()
            watcher.cancel()

    async def _events(self) -> AsyncIterator[str]:
        server, job = self.server, self.run.job
        envelope = server._envelope(job.chat, True)
        usage = {"usage": None} if job.include_usage else {}

        def chunk(choice: dict | None) -> str:
            choices = [] if choice is None else [{"index": 0, "logprobs": None, **choice}]
            event = {**envelope, "choices": choices, **usage}
            return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

        def logprobs(part: list[TokenLogprob]) -> dict | None:
            if job.params.logprobs is None:
                return None
            return server.chat_logprobs(part) if job.chat else server.completion_logprobs(part)

        try:
            if job.chat:
                yield chunk({"delta": {"role": "assistant", "content": ""},
                             "finish_reason": None})
            result = None
            async for event in self.run.events():
                if event[0] == "piece":
                    key = {"delta": {"content": event[1]}} if job.chat else {"text": event[1]}
                    yield chunk({**key, "finish_reason": None, "logprobs": logprobs(event[2])})
                else:
                    result, rest = event[1], event[2]
            if result is None:  # cancelled: nobody is listening
                return
            end = {"delta": {}} if job.chat else {"text": ""}
            yield chunk({**end, "finish_reason": result.finish_reason,
                         "logprobs": logprobs(rest)})
            if job.include_usage:
                usage["usage"] = server.usage(job, [result])
                yield chunk(None)
        except Exception as err:
            error = err if isinstance(err, RequestError) else \
                RequestError(504, f"the answer took more than {server.timeout:g} s",
                             code="timeout") if isinstance(err, GenerationTimeout) else \
                RequestError(500, f"the server failed: {type(err).__name__}: {err}")
            yield f"event: error\ndata: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"


class _HeadTimeout(H11Protocol):
    """uvicorn's HTTP/1.1 that also closes a connection with no request in progress for
    IDLE_SECONDS: uvicorn's keep-alive timeout only starts after a first answer and stops at the
    first byte, so a client that connects and sends nothing, or a request head byte by byte,
    would hold its connection forever."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self.loop.call_later(IDLE_SECONDS, self._close_if_idle, self.cycle)

    def _close_if_idle(self, cycle_then) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()


class Server:
    """A bound server: `serve_forever()` runs uvicorn on it until `shutdown()`."""

    def __init__(self, app: OpenAIServer, sock: socket.socket, verbose: bool):
        self.openai, self.socket = app, sock
        self.config = uvicorn.Config(
            app.app, http=_HeadTimeout, lifespan="off", log_level="info" if verbose else "warning",
            access_log=verbose, timeout_keep_alive=IDLE_SECONDS, limit_concurrency=1024,
            h11_max_incomplete_event_size=64 << 10)
        self.uvicorn = uvicorn.Server(self.config)
        self.stopped = threading.Event()
        self.stopped.set()  # until serve_forever runs

    @property
    def runtime(self) -> Runtime:
        return self.openai.runtime

    @property
    def model_name(self) -> str:
        return self.openai.model_name

    @property
    def server_address(self) -> tuple:
        return self.socket.getsockname()

    def serve_forever(self) -> None:
        self.stopped.clear()
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.stopped.set()

    def shutdown(self, timeout: float = 30) -> None:
        self.uvicorn.should_exit = True
        self.stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self.openai.worker.shutdown(wait=False)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(runtime: Runtime, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, verbose: bool = False, *, api_key: str | None = None,
          cors_origins: Sequence[str] = (), max_queue: int = 64,
          timeout: float = 300.0) -> Server:
    """A bound server (call `serve_forever()`; port 0 picks a free port). Bound to a loopback
    address, it answers only requests whose Host is localhost (DNS rebinding)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    app = OpenAIServer(runtime, model_name, api_key=api_key, cors_origins=cors_origins,
                       max_queue=max_queue, timeout=timeout, loopback=is_loopback(host))
    return Server(app, sock, verbose)
