"""Completion requests: the JSON body of ``POST /v1/completions`` checked field by field into a
``CompletionRequest``; a bad field is an ``ApiError`` (a 4xx with the OpenAI-style ``error`` object).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from textrnn.errors import TextrnnError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much the server holds at once."""

    max_tokens: int = 4096  # tokens (characters for a character model) per choice
    max_prompt_chars: int = 4096  # characters per prompt
    max_prompts: int = 16  # prompts in one request
    max_n: int = 16  # choices per request: prompts x n
    max_beam: int = 8
    max_stops: int = 4
    max_stop_chars: int = 100
    max_batch: int = 256  # rows (streams, or beams) stepping together
    max_queue: int = 256  # choices waiting to join the batch; more: 503
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise TextrnnError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.max_beam > self.max_batch:
            raise TextrnnError(f"--max-beam {self.max_beam} is more than --max-batch {self.max_batch}")


class ApiError(Exception):
    """A request the server refuses: an HTTP status and the error object clients expect."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass
class CompletionRequest:
    """A checked ``POST /v1/completions`` body."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    greedy: bool = False
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    beam: int = 1


# OpenAI fields textrnn does not implement: accepted at the value that means "off", refused otherwise.
_NEUTRAL = {
    "echo": (False,),
    "logprobs": (None, 0),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
}
_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "greedy",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "beam",
    "best_of",
    "user",
    *_NEUTRAL,
}


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _integer(data: dict, name: str, default, low: int, high: int, none_ok: bool = False):
    value = data.get(name, default)
    if value is None and (none_ok or default is None):
        return None
    if not _is_integer(value):
        raise ApiError(400, f"{name} must be an integer, got {_shown(value)}", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be in [{low}, {high}], got {_shown(value)}", param=name)
    return value


def _number(data: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = data.get(name, default)
    if value is None:
        return default
    if not _is_number(value):
        raise ApiError(400, f"{name} must be a finite number, got {_shown(value)}", param=name)
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ApiError(400, f"{name} must be in {bracket}{low}, {high}], got {_shown(value)}", param=name)
    return float(value)


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_request(body: bytes, model_name: str, tokenizer, limits: Limits) -> CompletionRequest:
    """Check every field of a completions request; any problem is an ``ApiError`` naming the field."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"the body is not valid JSON ({str(error)[:120]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"unknown field {_shown(unknown[0])}; textrnn takes {', '.join(sorted(_FIELDS - set(_NEUTRAL)))}",
            param=unknown[0],
        )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {_shown(model)}", param="model")
    if model not in (None, model_name):
        raise ApiError(
            404,
            f"the model {_shown(model)} does not exist; this server has {model_name!r} (GET /v1/models)",
            "not_found_error",
            "model",
        )
    for name, neutral in _NEUTRAL.items():
        if name in data and not any(data[name] == value and type(data[name]) is type(value) for value in neutral):
            raise ApiError(400, f"{name} is not supported by textrnn (leave it out)", param=name)
    if data.get("user") is not None and not isinstance(data["user"], str):
        raise ApiError(400, "user must be a string", param="user")

    prompts = _prompts(data.get("prompt"), limits)
    ids = []
    for index, prompt in enumerate(prompts):
        unknown_chars = tokenizer.unknown_characters(prompt)
        where = "prompt" if len(prompts) == 1 else f"prompt {index}"
        if unknown_chars:
            raise ApiError(
                400,
                f"{where} has characters the model's vocabulary lacks: {_shown(''.join(unknown_chars)[:40])} "
                "(after the model's normalization); remove or replace them",
                param="prompt",
            )
        encoded = [int(i) for i in tokenizer.encode(prompt)]
        if not encoded:
            raise ApiError(400, f"{where} is empty after the model's normalization", param="prompt")
        ids.append(encoded)

    request = CompletionRequest(prompts, ids)
    request.max_tokens = _integer(data, "max_tokens", 16, 1, limits.max_tokens)
    request.temperature = _number(data, "temperature", 1.0, 0.0, 1000.0)
    request.top_p = _number(data, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = data.get("top_k")
    request.top_k = None if top_k in (None, -1) else _integer(data, "top_k", None, 1, 1 << 30)
    greedy = data.get("greedy", False)
    if not isinstance(greedy, bool):
        raise ApiError(400, f"greedy must be true or false, got {_shown(greedy)}", param="greedy")
    # temperature 0 means the most likely token, as in the OpenAI API.
    request.greedy = greedy or request.temperature == 0.0
    if not request.greedy and request.temperature < 1e-3:
        raise ApiError(400, "temperature must be 0 (greedy) or at least 0.001", param="temperature")
    request.n = _integer(data, "n", 1, 1, limits.max_n)
    best_of = data.get("best_of")
    if best_of is not None and best_of != request.n:
        raise ApiError(400, "best_of is not supported by textrnn (use beam for the most likely text)", param="best_of")
    if len(prompts) * request.n > limits.max_n:
        raise ApiError(400, f"{len(prompts)} prompts x n={request.n} is more than {limits.max_n} choices", param="n")
    request.stop = _stops(data.get("stop"), limits)
    request.seed = _integer(data, "seed", None, 0, 2**63 - 1, none_ok=True)
    for name in ("stream",):
        value = data.get(name, False)
        if not isinstance(value, bool) and value is not None:
            raise ApiError(400, f"{name} must be true or false, got {_shown(value)}", param=name)
    request.stream = bool(data.get("stream"))
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise ApiError(400, 'stream_options must be {"include_usage": true|false}', param="stream_options")
        if not isinstance(options.get("include_usage", False), bool):
            raise ApiError(400, "stream_options.include_usage must be true or false", param="stream_options")
        request.include_usage = options.get("include_usage", False)
    request.beam = _integer(data, "beam", 1, 1, limits.max_beam)
    if request.beam > 1:
        sampling = request.greedy or request.temperature != 1.0 or request.top_p != 1.0 or request.top_k is not None
        if sampling:
            raise ApiError(400, "beam search takes no temperature, top_p, top_k or greedy", param="beam")
        if request.n > request.beam:
            raise ApiError(400, f"n={request.n} is more than beam={request.beam}", param="n")
    return request


def _prompts(prompt, limits: Limits) -> list[str]:
    if prompt is None:
        raise ApiError(400, "prompt is required: a string or a list of strings", param="prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(item, str) for item in prompts):
        raise ApiError(
            400, "prompt must be a string or a list of strings (token ids are not accepted: send text)", param="prompt"
        )
    if not 1 <= len(prompts) <= limits.max_prompts:
        raise ApiError(400, f"prompt must hold 1 to {limits.max_prompts} strings, got {len(prompts)}", param="prompt")
    for prompt in prompts:
        if not prompt:
            raise ApiError(400, "prompt is empty: give at least one character to continue", param="prompt")
        if len(prompt) > limits.max_prompt_chars:
            raise ApiError(
                400, f"prompt has {len(prompt):,} characters; the limit is {limits.max_prompt_chars:,}", param="prompt"
            )
    return prompts


def _stops(stop, limits: Limits) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stops) > limits.max_stops:
        raise ApiError(400, f"stop holds at most {limits.max_stops} strings, got {len(stops)}", param="stop")
    if not all(1 <= len(item) <= limits.max_stop_chars for item in stops):
        raise ApiError(400, f"each stop string must have 1 to {limits.max_stop_chars} characters", param="stop")
    return tuple(stops)
