"""An OpenAI-compatible HTTP server over any hslm runtime.

    POST /v1/chat/completions   messages → the model's turn (stream: server-sent events)
    POST /v1/completions        prompt → continuation
    GET  /v1/models

`response_format` {"type": "json_schema", "json_schema": {"schema": ...}} and
{"type": "json_object"} use guided decoding, so the answer always parses. Requests are served
on threads and generate one at a time (the runtime's lock); mistakes in a request get
OpenAI-style 4xx errors and the server keeps serving.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hslm.generate import Generation, SamplingParams
from hslm.runtime.engine import Runtime
from hslm.runtime.guided import GuideError
from hslm.tokenizer import TokenizerError

MAX_BODY_BYTES = 4 << 20


@dataclass
class RequestError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status != 404 else "not_found_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}


def _number(body: dict, key: str, default, low, high, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not float(value).is_integer()) or not low <= value <= high:
        raise RequestError(400, f"'{key}' must be a {kind.__name__} in [{low}, {high}], "
                                f"got {value!r}", key)
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


class OpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], runtime: Runtime, model_name: str | None = None):
        self.runtime = runtime
        self.model_name = model_name or runtime.name
        super().__init__(address, _Handler)

    # ---------------------------------------------------------------- request → generation
    def prepare(self, body: dict, chat: bool) -> tuple[list[int], SamplingParams, dict]:
        if body.get("model") not in (None, self.model_name):
            raise RequestError(404, f"model {body.get('model')!r} does not exist; this server "
                                    f"serves {self.model_name!r}", "model", "model_not_found")
        tokenizer = self.runtime.tokenizer
        try:
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages or not all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and
                        isinstance(m.get("content"), str) for m in messages):
                    raise RequestError(400, "'messages' must be a non-empty list of "
                                            "{'role', 'content'} objects", "messages")
                prompt_ids = tokenizer.encode_chat(messages)  # messages as text
            else:
                prompt = body.get("prompt")
                if not isinstance(prompt, str) or not prompt:
                    raise RequestError(400, "'prompt' must be a non-empty string", "prompt")
                prompt_ids = tokenizer.encode(prompt, add_bos=True)
        except TokenizerError as err:
            raise RequestError(400, str(err), "messages") from None
        room = self.runtime.context_length - len(prompt_ids)
        if room < 1:
            raise RequestError(400, f"the prompt has {len(prompt_ids)} tokens; this model's "
                                    f"context is {self.runtime.context_length}", "messages",
                               "context_length_exceeded")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", min(256, room), 1,
                             room, int)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
            seed=_number(body, "seed", None, 0, 2**63 - 1, int), stop_strings=stop)
        constraint = _constraint(body)
        if constraint:
            try:  # refuse a bad schema now, with a 400, not mid-stream
                self.runtime.guide(**constraint)
            except GuideError as err:
                raise RequestError(400, str(err), "response_format") from None
        return prompt_ids, params, constraint


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet by default; hslm-serve --verbose logs
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": 0,
                 "owned_by": "hslm"}]})
        else:
            self._send_json(404, RequestError(404, f"no route {self.path}").body())

    def do_POST(self):
        try:
            chat = {"/v1/chat/completions": True, "/v1/completions": False}.get(
                self.path.rstrip("/"))
            if chat is None:
                raise RequestError(404, f"no route {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RequestError(400, f"the body is not valid JSON: {err}") from None
            if not isinstance(body, dict):
                raise RequestError(400, "the body must be a JSON object")
            prompt_ids, params, constraint = self.server.prepare(body, chat)
        except RequestError as err:
            self._send_json(err.status, err.body())
            return
        if body.get("stream"):
            self._stream(prompt_ids, params, constraint, chat)
        else:
            self._complete(prompt_ids, params, constraint, chat)

    def _generate(self, prompt_ids, params, constraint, result: Generation):
        with self.server.runtime.lock:
            yield from self.server.runtime.stream(prompt_ids, params, result=result, **constraint)

    def _envelope(self, chat: bool, streaming: bool) -> dict:
        kind = ("chat.completion" if chat else "text_completion") + (".chunk" if streaming and chat else "")
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind,
                "created": int(time.time()), "model": self.server.model_name}

    def _complete(self, prompt_ids, params, constraint, chat: bool) -> None:
        result = Generation(text="")
        for _ in self._generate(prompt_ids, params, constraint, result):
            pass
        choice = {"index": 0, "finish_reason": result.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(result.token_ids),
                 "total_tokens": len(prompt_ids) + len(result.token_ids)}
        self._send_json(200, {**self._envelope(chat, False), "choices": [choice], "usage": usage})

    def _stream(self, prompt_ids, params, constraint, chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        envelope = self._envelope(chat, True)

        def send(delta: str | None, finish_reason: str | None, first: bool = False) -> None:
            if chat:
                content = {"role": "assistant", "content": ""} if first else (
                    {"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": content, "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish_reason}
            event = json.dumps({**envelope, "choices": [choice]}, ensure_ascii=False)
            self.wfile.write(f"data: {event}\n\n".encode())
            self.wfile.flush()

        result = Generation(text="")
        pieces = self._generate(prompt_ids, params, constraint, result)
        try:
            if chat:
                send(None, None, first=True)
            for piece in pieces:
                send(piece, None)
            send(None, result.finish_reason)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        finally:
            pieces.close()  # releases the runtime's lock at once


def serve(runtime: Runtime, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, verbose: bool = False) -> OpenAIServer:
    """A bound server (call `serve_forever()`; port 0 picks a free port)."""
    server = OpenAIServer((host, port), runtime, model_name)
    server.verbose = verbose
    return server
