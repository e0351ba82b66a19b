"""The OpenAI wire format: request bodies in (checked field by field), response bodies out.

No HTTP and no MLX here: `server.py` does the serving. A field that would change the answer
and is not implemented (`n` > 1, tools, images, `response_format`, `logprobs`, penalties,
`logit_bias`, ...) is a 400, never silently ignored; fields that change nothing here
(`user`, zero penalties, `stream_options`, ...) are accepted, as clients send them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

from .request import Request, RequestError, SamplingParams


class ApiError(Exception):
    """An error response: HTTP status and an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (
            status, message, param, kind, code
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


# Fields that would change the answer, with the value that changes nothing (None: absent).
UNSUPPORTED = {
    "tools": [], "tool_choice": "none", "functions": [], "function_call": "none",
    "response_format": {"type": "text"}, "logprobs": False, "top_logprobs": 0,
    "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1,
    "logit_bias": {}, "echo": False, "suffix": "", "best_of": 1, "n": 1,
    "audio": None, "modalities": ["text"], "prediction": None,
}  # fmt: skip


@dataclass
class Parsed:
    """A checked request: what to feed (messages or a prompt) and how to answer."""

    request: Request
    stream: bool
    include_usage: bool
    messages: list[dict] | None = None  # chat: roles "system", "user", "assistant"
    prompt: str | list[int] | None = None  # completions: text, or token ids


def _number(body: dict, name: str, default, kind=float, low=None, high=None):
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok:
        raise bad(f"'{name}' must be {'a number' if kind is float else 'an integer'}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise bad(f"'{name}' must be in [{low}, {high if high is not None else 'inf'}]", name)
    return kind(value)


def _check_unsupported(body: dict) -> None:
    for name, harmless in UNSUPPORTED.items():
        value = body.get(name)
        if value is None or value == harmless or (name == "tool_choice" and not body.get("tools")):
            continue
        if name in ("n", "best_of"):
            raise bad(f"'{name}' must be 1: one answer per request", name)
        raise bad(f"'{name}' is not supported by this server", name)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad("'stop' must be a non-empty string or a list of them", "stop")
    return tuple(stop)


def _request(body: dict, default: Request) -> Request:
    max_tokens = _number(body, "max_completion_tokens", None, int)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", default.max_tokens, int)
    if max_tokens <= 0:
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise bad(f"'{name}' must be at least 1", name)
    sampling = SamplingParams(
        temperature=_number(body, "temperature", 0.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0),
        top_k=_number(body, "top_k", 0, int, low=0),
        min_p=_number(body, "min_p", 0.0, low=0.0, high=1.0),
        seed=_number(body, "seed", None, int),
    )
    request = replace(default, max_tokens=max_tokens, sampling=sampling, stop=_stops(body))
    try:
        request.validate()
    except RequestError as e:
        raise bad(str(e)) from None
    return request


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    include_usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(stream, bool) or not isinstance(include_usage, bool):
        raise bad("'stream' and 'stream_options.include_usage' must be booleans", "stream")
    return stream, include_usage


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(f"messages[{i}]: only text content is supported", "messages")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if content is None and message.get("role") == "assistant":
        return ""
    raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"messages[{i}]: role must be one of {', '.join(ROLES)}", "messages")
        if m.get("tool_calls"):
            raise bad(f"messages[{i}]: tool calls are not supported", "messages")
        out.append({"role": ROLES[m["role"]], "content": _content(m, i)})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise bad("'messages' holds no user message with text", "messages")
    return out


def _prompt(body: dict) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt
    ):
        return prompt
    raise bad("'prompt' must be a non-empty string or token id list (one prompt)", "prompt")


def parse(body, chat: bool, default: Request) -> Parsed:
    """A chat (`messages`) or text completion (`prompt`) request body, checked; what the
    body does not say comes from `default` (the server's budget and draft policy)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    _check_unsupported(body)
    stream, include_usage = _stream_flags(body)
    request = _request(body, default)
    if chat:
        return Parsed(request, stream, include_usage, messages=_messages(body))
    return Parsed(request, stream, include_usage, prompt=_prompt(body))


# -- responses -----------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(stats, cached: int) -> dict:
    completion = stats.generated_tokens
    prompt = stats.prompt_tokens + cached
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def timings(stats, cached: int) -> dict:
    """llama.cpp's server `timings` (its names), plus the drafter's figures."""
    rounds = stats.draft_rounds
    return {
        "cache_n": cached,
        "prompt_n": stats.prompt_tokens,
        "prompt_ms": round(stats.prefill_seconds * 1e3, 3),
        "prompt_per_second": round(stats.prefill_tokens_per_s, 3),
        "predicted_n": stats.generated_tokens,
        "predicted_ms": round(stats.decode_seconds * 1e3, 3),
        "predicted_per_second": round(stats.tokens_per_s, 3),
        "draft_n": sum(r.draft_len for r in rounds),
        "draft_n_accepted": sum(r.accepted for r in rounds),
        "draft_rounds": len(rounds),
        "acceptance_rate": stats.to_dict()["acceptance_rate"],
        "per_position_acceptance": [round(x, 4) for x in stats.per_position_acceptance],
        "redone_rounds": stats.redone_rounds,  # verify rows too near a tie, redone plainly
        "decode_width": stats.decode_width,  # rows of each single-token pass
    }


def completion_body(chat: bool, rid: str, model: str, text: str, stats, cached: int) -> dict:
    choice = {"index": 0, "finish_reason": stats.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(stats, cached),
        "timings": timings(stats, cached),
    }


def chunk_body(chat: bool, rid: str, model: str, text: str | None, finish: str | None,
               first: bool = False) -> dict:
    choice = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        delta = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def usage_chunk(chat: bool, rid: str, model: str, stats, cached: int) -> dict:
    body = chunk_body(chat, rid, model, None, None)
    body["choices"] = []
    body["usage"] = usage(stats, cached)
    body["timings"] = timings(stats, cached)
    return body

