"""OpenAI request bodies -> a prompt and a GenerationConfig, and the JSON shapes of the answers.

Plain dicts, no web framework: the checks are pure functions, each failure an `ApiError` with the
status and OpenAI error shape the client expects."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from eaglex.errors import EaglexError
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig

MAX_STOPS = 4
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "suffix", "echo", "best_of")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        code = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "server_overloaded"}.get(self.status)
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": code}}


@dataclass
class Job:
    """One parsed request."""

    chat: bool
    model: str
    prompt: list[int]
    config: GenerationConfig
    stops: list[str]
    stream: bool
    include_usage: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def parse(
    body: Any, chat: bool, engine: Engine, model: str, context_limit: int, default_max_tokens: int
) -> Job:
    """Validates an OpenAI chat or text completion body; raises ApiError (400/404) on anything wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if body.get("model") != model:
        raise ApiError(404, f"the model {body.get('model')!r} does not exist; this server serves {model!r}")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, 0):
            raise ApiError(400, f"{name} is not supported by this server", name)
    if _number(body, "n", 1, int) != 1:
        raise ApiError(400, "n must be 1: this server returns one choice per request", "n")
    prompt = _chat_prompt(body, engine) if chat else _text_prompt(body, engine)
    if not prompt:
        raise ApiError(400, "the prompt is empty", "messages" if chat else "prompt")
    limit_name = (
        "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _number(body, limit_name, None, int)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"{limit_name} must be at least 1, got {max_tokens}", limit_name)
    room = context_limit - len(prompt)
    if room < 1 or (max_tokens is not None and max_tokens > room):
        asked = len(prompt) + (max_tokens or 1)
        raise ApiError(
            400,
            f"this model's context holds {context_limit} tokens per request, but the request needs {asked} "
            f"({len(prompt)} in the prompt, {max_tokens or 1} to generate): shorten the prompt or max_tokens",
            limit_name if max_tokens is not None and room >= 1 else "messages" if chat else "prompt",
        )
    temperature = _number(body, "temperature", 1.0, float)
    top_p = _number(body, "top_p", 1.0, float)
    top_k = _number(body, "top_k", 0, int)
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"temperature must be between 0 and 2, got {temperature}", "temperature")
    if not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", "top_p")
    if top_k < 0:
        raise ApiError(400, f"top_k must be >= 0 (0 = off), got {top_k}", "top_k")
    seed = _number(body, "seed", None, int)
    config = engine.default_config(
        max_new_tokens=max_tokens if max_tokens is not None else min(default_max_tokens, room),
        temperature=temperature,
        top_p=top_p,
        sample_top_k=top_k,
        seed=seed,
    )
    try:
        engine.check(prompt, config)
    except EaglexError as e:
        raise ApiError(400, str(e)) from None
    options = body.get("stream_options") or {}
    return Job(
        chat=chat,
        model=model,
        prompt=prompt,
        config=config,
        stops=_stops(body.get("stop")),
        stream=_flag(body, "stream"),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
    )


def _number(body: dict, name: str, default: Any, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {value!r}", name)
    if kind is int and value != int(value):
        raise ApiError(400, f"{name} must be an integer, got {value!r}", name)
    return kind(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
    return bool(value)


def _stops(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    return stops


def _chat_prompt(body: dict, engine: Engine) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    rendered = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "each message needs a role and a content", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones are understood
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, "only text content parts are supported", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, "each message's content must be a string", "messages")
        rendered.append({"role": message["role"], "content": content})
    try:
        return engine.tokenizer.apply_chat_template(rendered)
    except EaglexError as e:
        raise ApiError(400, str(e), "messages") from None


def _text_prompt(body: dict, engine: Engine) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in a batch of one
    if isinstance(prompt, str):
        return engine.tokenizer.encode(prompt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return list(prompt)  # token ids
    raise ApiError(400, "prompt must be a string, or a list of token ids (one prompt per request)", "prompt")


def chunk(job: Job, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
    """One streamed chunk (chat.completion.chunk or text_completion)."""
    if job.chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice, kind = (
            {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None},
            "text_completion",
        )
    return {"id": _id(job), "object": kind, "created": job.created, "model": job.model, "choices": [choice]}


def completion(job: Job, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    """The whole answer of a request that does not stream."""
    if job.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        kind = "chat.completion"
    else:
        choice, kind = (
            {"index": 0, "text": text, "finish_reason": finish, "logprobs": None},
            "text_completion",
        )
    return {
        "id": _id(job),
        "object": kind,
        "created": job.created,
        "model": job.model,
        "choices": [choice],
        "usage": usage,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _id(job: Job) -> str:
    return f"{'chatcmpl' if job.chat else 'cmpl'}-{job.id}"
