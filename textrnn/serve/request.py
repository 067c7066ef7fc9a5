"""Completion requests: the JSON body of ``POST /v1/completions`` checked into a ``CompletionRequest``.

``FIELDS`` is the table of the fields a body may hold: each with its check, default and bounds; the parser
walks it, then applies the few rules that join fields (greedy and temperature, prompts x n, beam search).
A bad field is an ``ApiError``: a 4xx with the OpenAI-style ``error`` object naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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


@dataclass
class CompletionRequest:
    """A checked ``POST /v1/completions`` body; ``prompt_ids[p]`` is prompt ``p`` encoded (its length in tokens)."""

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


# ---------------------------------------------------------------------------------------------
# The table of fields


@dataclass(frozen=True)
class Field:
    """One field of the body. ``check(field, value, limits)`` turns its JSON value into the request's value
    or raises ``ApiError``; a value in ``unset`` (same value and type; null always) means ``default`` and is
    not checked. A bound is a number or the name of a ``Limits`` field."""

    name: str
    check: Callable
    default: object = None
    low: float | str | None = None
    high: float | str | None = None
    low_open: bool = False  # the low bound itself is refused
    unset: tuple = (None,)
    sampling: bool = False  # a sampling setting: beam search takes none of them

    def read(self, data: dict, limits: Limits):
        value = data.get(self.name)
        if any(value == off and type(value) is type(off) for off in self.unset):
            return self.default
        return self.check(self, value, limits)

    def bounds(self, limits: Limits) -> tuple:
        return tuple(getattr(limits, bound) if isinstance(bound, str) else bound for bound in (self.low, self.high))


def _integer(field: Field, value, limits: Limits) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{field.name} must be an integer, got {_shown(value)}", param=field.name)
    return _within(field, value, limits)


def _number(field: Field, value, limits: Limits) -> float:
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))  # a huge int is finite
    if not finite or isinstance(value, bool):
        raise ApiError(400, f"{field.name} must be a finite number, got {_shown(value)}", param=field.name)
    return float(_within(field, value, limits))


def _within(field: Field, value, limits: Limits):
    low, high = field.bounds(limits)
    if value > high or value < low or (field.low_open and value == low):
        bracket = "(" if field.low_open else "["
        raise ApiError(400, f"{field.name} must be in {bracket}{low}, {high}], got {_shown(value)}", param=field.name)
    return value


def _boolean(field: Field, value, limits: Limits) -> bool:
    if not isinstance(value, bool):
        raise ApiError(400, f"{field.name} must be true or false, got {_shown(value)}", param=field.name)
    return value


def _string(field: Field, value, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{field.name} must be a string, got {_shown(value)}", param=field.name)
    return value


def _as_given(field: Field, value, limits: Limits):
    return value


def _unsupported(field: Field, value, limits: Limits):
    raise ApiError(400, f"{field.name} is not supported by textrnn (leave it out)", param=field.name)


def _strings(name: str, value, what: str) -> list[str]:
    """A string or a list of strings, as a list; anything else is refused with ``what`` as the message."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ApiError(400, what, param=name)
    return items


def _prompts(field: Field, value, limits: Limits) -> list[str]:
    if value is None:
        raise ApiError(400, "prompt is required: a string or a list of strings", param="prompt")
    what = "prompt must be a string or a list of strings (token ids are not accepted: send text)"
    prompts = _strings("prompt", value, what)
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


def _stops(field: Field, value, limits: Limits) -> tuple[str, ...]:
    stops = _strings("stop", value, "stop must be a string or a list of strings")
    if len(stops) > limits.max_stops:
        raise ApiError(400, f"stop holds at most {limits.max_stops} strings, got {len(stops)}", param="stop")
    if not all(1 <= len(item) <= limits.max_stop_chars for item in stops):
        raise ApiError(400, f"each stop string must have 1 to {limits.max_stop_chars} characters", param="stop")
    return tuple(stops)


def _stream_options(field: Field, value, limits: Limits) -> bool:
    """``{"include_usage": true|false}``: whether a stream ends with a chunk holding ``usage``."""
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise ApiError(400, 'stream_options must be {"include_usage": true|false}', param="stream_options")
    if not isinstance(value.get("include_usage", False), bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", param="stream_options")
    return value.get("include_usage", False)


FIELDS = (
    Field("model", _string),  # a name other than the model's is a 404, checked before the table is walked
    Field("prompt", _prompts, unset=()),
    Field("max_tokens", _integer, 16, 1, "max_tokens"),
    Field("temperature", _number, 1.0, 0.0, 1000.0, sampling=True),
    Field("top_p", _number, 1.0, 0.0, 1.0, low_open=True, sampling=True),
    Field("top_k", _integer, None, 1, 1 << 30, unset=(None, -1), sampling=True),
    Field("greedy", _boolean, False, sampling=True),
    Field("n", _integer, 1, 1, "max_n"),
    Field("best_of", _as_given),  # OpenAI's: accepted when it equals n
    Field("stop", _stops, ()),
    Field("seed", _integer, None, 0, 2**63 - 1),
    Field("stream", _boolean, False),
    Field("stream_options", _stream_options, False),
    Field("beam", _integer, 1, 1, "max_beam"),
    Field("user", _string),  # OpenAI's end-user id: ignored
    # OpenAI fields textrnn does not implement: accepted at the values that mean "off", refused otherwise.
    Field("echo", _unsupported, unset=(None, False)),
    Field("logprobs", _unsupported, unset=(None, 0)),
    Field("presence_penalty", _unsupported, unset=(None, 0, 0.0)),
    Field("frequency_penalty", _unsupported, unset=(None, 0, 0.0)),
    Field("logit_bias", _unsupported, unset=(None, {})),
    Field("suffix", _unsupported, unset=(None, "")),
)
_NAMES = {field.name for field in FIELDS}
_TAKEN = ", ".join(sorted(field.name for field in FIELDS if field.check is not _unsupported))
_SAMPLING = [field for field in FIELDS if field.sampling]


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_request(body: bytes, model_name: str, tokenizer, limits: Limits) -> CompletionRequest:
    """Check a completions request: the JSON object, the model's name (404 if another), each field of
    ``FIELDS``, then the rules that join fields; any problem is an ``ApiError`` naming the field."""
    data = _json_object(body)
    unknown = sorted(set(data) - _NAMES)
    if unknown:
        raise ApiError(400, f"unknown field {_shown(unknown[0])}; textrnn takes {_TAKEN}", param=unknown[0])
    model = data.get("model")
    if isinstance(model, str) and model != model_name:
        raise ApiError(
            404,
            f"the model {_shown(model)} does not exist; this server has {model_name!r} (GET /v1/models)",
            "not_found_error",
            "model",
        )
    values = {field.name: field.read(data, limits) for field in FIELDS}
    _check_together(values, limits)
    return CompletionRequest(
        prompts=values["prompt"],
        prompt_ids=_encode(values["prompt"], tokenizer),
        max_tokens=values["max_tokens"],
        temperature=values["temperature"],
        top_p=values["top_p"],
        top_k=values["top_k"],
        greedy=values["greedy"] or values["temperature"] == 0.0,  # temperature 0: the most likely, as in OpenAI's
        n=values["n"],
        stop=values["stop"],
        seed=values["seed"],
        stream=values["stream"],
        include_usage=values["stream_options"],
        beam=values["beam"],
    )


def _check_together(values: dict, limits: Limits) -> None:
    """The rules that join fields, on the values of ``FIELDS`` already checked one by one."""
    n, beam, temperature = values["n"], values["beam"], values["temperature"]
    if not values["greedy"] and 0.0 < temperature < 1e-3:
        raise ApiError(400, "temperature must be 0 (greedy) or at least 0.001", param="temperature")
    if values["best_of"] is not None and values["best_of"] != n:
        raise ApiError(400, "best_of is not supported by textrnn (use beam for the most likely text)", param="best_of")
    if len(values["prompt"]) * n > limits.max_n:
        raise ApiError(400, f"{len(values['prompt'])} prompts x n={n} is more than {limits.max_n} choices", param="n")
    if beam > 1 and any(values[field.name] != field.default for field in _SAMPLING):
        names = [field.name for field in _SAMPLING]
        raise ApiError(400, f"beam search takes no {', '.join(names[:-1])} or {names[-1]}", param="beam")
    if beam > 1 and n > beam:
        raise ApiError(400, f"n={n} is more than beam={beam}", param="n")


def _encode(prompts: list[str], tokenizer) -> list[list[int]]:
    """Each prompt's token ids; a character the vocabulary lacks, or nothing left, is an ``ApiError``."""
    ids = []
    for index, prompt in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt {index}"
        unknown = tokenizer.unknown_characters(prompt)
        if unknown:
            raise ApiError(
                400,
                f"{where} has characters the model's vocabulary lacks: {_shown(''.join(unknown)[:40])} "
                "(after the model's normalization); remove or replace them",
                param="prompt",
            )
        encoded = [int(i) for i in tokenizer.encode(prompt)]
        if not encoded:
            raise ApiError(400, f"{where} is empty after the model's normalization", param="prompt")
        ids.append(encoded)
    return ids


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"the body is not valid JSON ({str(error)[:120]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
