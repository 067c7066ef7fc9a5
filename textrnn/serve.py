"""``textrnn serve``: one loaded model behind the completions API that inference servers share.

vLLM, llama.cpp's server and text-generation-inference all speak ``POST /v1/completions``, so
existing clients (the ``openai`` package, curl scripts, UIs) work unchanged. Data flow::

    HTTP request -> parse_request (every field checked: 4xx + error object) -> Engine.submit (bounded queue: 503)
    Engine thread: admit -> read the prompt -> one model.step for every active row -> text per choice
    -> the request's outbox -> its writer (one JSON answer, or server-sent events as the text comes)

On a CPU, EnginePool runs one engine per core over the same model, a request going to the least loaded.

The engine runs continuous batching: streams join and leave between steps, and each step advances
every active stream by one token with a single call of the model, so many clients cost little more
than one. Each stream keeps its own state row, sampling settings, random generator (a seed gives
the same text whatever else runs), stop strings and length. Beam-search requests take one row per
beam and step in the same call. Nothing in a request names a file: the model is the one loaded.
"""

import asyncio
import collections
import json
import math
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textrnn.config import SampleConfig
from textrnn.errors import TextrnnError
from textrnn.nn import map_state
from textrnn.sample import BeamSearch, TextStream, token_table

STATIC = Path(__file__).parent / "static"


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


# ---------------------------------------------------------------------------------------------
# The continuous-batching engine


# How often at most the engine wakes a request's writer with more text. Waking the event loop at every
# step would make the HTTP side fight the engine for the interpreter lock on every character; a stream
# gets its first text at once, then what accumulated every 40 ms (25 updates a second), and its end at once.
WAKE_INTERVAL = 0.04


class Handle:
    """One request in the engine. The engine thread appends ``(index, text, finish_reason)`` to ``outbox``
    (a deque: safe across threads) and then wakes ``event`` on the request's event loop: for a stream, at
    its first text, then at most every ``WAKE_INTERVAL`` seconds; for a plain answer, when it is complete."""

    def __init__(self, request: CompletionRequest, loop: asyncio.AbstractEventLoop | None):
        self.request = request
        self.loop = loop
        self.event = asyncio.Event() if loop is not None else None
        self.outbox: collections.deque = collections.deque()
        self.choices = len(request.prompts) * request.n
        self.finished = 0
        self.completion_tokens = 0
        self.cancelled = False
        self.error: str | None = None
        self.streaming = request.stream
        self.woken_at = -math.inf  # when the engine last woke the writer

    @property
    def done(self) -> bool:
        return self.finished == self.choices or self.error is not None

    def cancel(self) -> None:
        """The client left: the engine drops the request's rows at its next step."""
        self.cancelled = True


@dataclass(eq=False)
class _Job:
    """A sampled choice (one row) or a beam search (one row per live beam) of a request."""

    handle: Handle
    index: int  # the (first) choice index
    ids: list[int]
    seed: int | None
    search: BeamSearch | None = None
    stream: TextStream | None = None
    draws: random.Random = field(default_factory=random.Random)
    tokens: int = 0
    limit: int = 0  # max_tokens
    feed: list[int] | None = None  # the prompt, while it is being read inside the batched steps
    fed: int = 0  # how much of it has been input
    state: object = None  # beam jobs keep their own rows between steps
    next_tokens: torch.Tensor | None = None
    done: bool = False

    @property
    def rows(self) -> int:
        return self.handle.request.beam if self.search is not None else 1


@dataclass(eq=False)
class _Prefill:
    """A long prompt being read in chunks before its choices join the batch."""

    ids: list[int]
    jobs: list[_Job]
    state: object = None
    position: int = 0  # tokens of ids[:-1] read so far


# Prompts up to this many tokens are read inside the batched steps, one token a step beside the other
# streams, so a new request never pauses the others (a one-call prefill costs several ms on a CPU,
# mostly fixed overhead); longer prompts are read between steps, PREFILL_CHUNK tokens a call.
PIGGYBACK_TOKENS = 64
PREFILL_CHUNK = 256


class Engine:
    """Continuous batching over one model: ``submit`` queues a request's choices; a thread admits them as
    rows free up, prefills each prompt once, and steps every active row together.

    ``max_batch`` bounds the rows stepping together, ``max_queue`` the choices waiting; a request that
    would overflow the queue is refused (503). ``close`` stops taking requests, lets the active and
    queued ones finish, and ends the thread.
    """

    def __init__(self, model, tokenizer, limits: Limits = Limits()):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.limits = limits
        self.table = token_table(tokenizer)
        self.device = next(model.parameters()).device
        self._condition = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._closing = False
        self._thread: threading.Thread | None = None
        # The sampled rows, in order: their jobs, state (rows on dim 1), next input tokens and settings.
        self._jobs: list[_Job] = []
        self._state = None
        self._tokens = torch.zeros(0, dtype=torch.long, device=self.device)
        self._settings = None
        self._beams: list[_Job] = []
        self._prefilling: list[_Prefill] = []
        with torch.no_grad():
            _, template = model.step(torch.zeros(1, dtype=torch.long, device=self.device), None)
        self._zero_state = map_state(torch.zeros_like, template)
        self.steps = 0
        self._now = time.monotonic()

    # -- the request side (any thread) --

    def submit(self, request: CompletionRequest, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        handle = Handle(request, loop)
        jobs: list[_Job] = []
        for prompt_index, ids in enumerate(request.prompt_ids):
            base = prompt_index * request.n
            if request.beam > 1:
                config = SampleConfig(length=request.max_tokens, beam=request.beam, num_samples=request.n)
                config = _with_stops(config, request.stop)
                search = BeamSearch(self.table, config, self.tokenizer.unk_id)
                jobs.append(_Job(handle, base, ids, None, search=search))
                continue
            for choice in range(request.n):
                seed = None if request.seed is None else (request.seed + base + choice) % 2**63
                job = _Job(handle, base + choice, ids, seed, stream=TextStream(self.table, request.stop))
                job.draws = random.Random(seed)
                jobs.append(job)
        with self._condition:
            if self._closing:
                raise ApiError(503, "the server is shutting down", "server_unavailable")
            if len(self._waiting) + len(jobs) > self.limits.max_queue:
                raise ApiError(
                    503, f"the server is busy ({len(self._waiting)} choices waiting): try again shortly", "server_busy"
                )
            for job in jobs:
                job.limit = request.max_tokens
            self._waiting.extend(jobs)
            self._condition.notify()
        return handle

    def load(self) -> int:
        """Rows stepping or being read plus choices waiting (read without the lock: a hint for EnginePool)."""
        return self._rows() + len(self._waiting)

    def status(self) -> dict:
        return {
            "active_rows": self._rows(),
            "queued": len(self._waiting),
            "steps": self.steps,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="textrnn-engine", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the ones taken, stop the thread."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the engine thread --

    def _run(self) -> None:
        while True:
            with self._condition:
                while not (self._busy() or self._waiting or self._closing):
                    self._condition.wait()
                if self._closing and not (self._busy() or self._waiting):
                    return
                admitted = self._admit()
            try:
                with torch.no_grad():
                    self._join(admitted)
                    self._drop_cancelled()
                    self._prefill_chunk()
                    if self._jobs or self._beams:
                        self._step()
            except Exception as error:  # never let one failure stop the server: fail the requests it touched
                self._fail_all(f"generation failed: {type(error).__name__}: {str(error)[:200]}")

    def _busy(self) -> bool:
        return bool(self._jobs or self._beams or self._prefilling)

    def _rows(self) -> int:
        waiting_rows = sum(job.rows for prefill in self._prefilling for job in prefill.jobs)
        return len(self._jobs) + sum(job.rows for job in self._beams) + waiting_rows

    def _admit(self) -> list[_Job]:
        rows = self._rows()
        admitted = []
        while self._waiting and rows + self._waiting[0].rows <= self.limits.max_batch:
            job = self._waiting.popleft()
            if not job.handle.cancelled:
                admitted.append(job)
                rows += job.rows
        return admitted

    def _join(self, admitted: list[_Job]) -> None:
        """Short prompts join the batch at once, to be read one token per step with the other rows (nobody
        waits for them); long prompts and beam searches go to the prefill queue (``_prefill_chunk``)."""
        groups: dict[int, list[_Job]] = {}
        joined = []
        for job in admitted:
            if job.search is None and len(job.ids) <= PIGGYBACK_TOKENS:
                job.feed, job.fed = (job.ids, 1) if len(job.ids) > 1 else (None, 0)
                joined.append((job, self._zero_state, job.ids[0]))
            else:
                groups.setdefault(id(job.ids), []).append(job)  # the choices of one prompt share its ids
        for jobs in groups.values():
            self._prefilling.append(_Prefill(jobs[0].ids, jobs))
        self._add_rows(joined)

    def _add_rows(self, joined: list) -> None:
        """Append sampled rows: ``(job, state with one row, first input token)`` each."""
        if not joined:
            return
        parts = ([self._state] if self._state is not None else []) + [state for _, state, _ in joined]
        self._state = _cat_states(parts)
        first = torch.as_tensor([token for _, _, token in joined], device=self.device)
        self._tokens = torch.cat([self._tokens, first])
        self._jobs.extend(job for job, _, _ in joined)
        self._settings = None

    def _prefill_chunk(self) -> None:
        """Run the next ``PREFILL_CHUNK`` tokens of the first waiting long prompt through the model (one call),
        so that a long prompt delays the other streams by one chunk at a time, never by its whole length.
        When all but its last token are read, its choices join the batch with that state."""
        if not self._prefilling:
            return
        prefill = self._prefilling[0]
        end = min(prefill.position + PREFILL_CHUNK, len(prefill.ids) - 1)
        if end > prefill.position:
            chunk = torch.as_tensor(prefill.ids[prefill.position : end], device=self.device).unsqueeze(0)
            _, prefill.state = self.model(chunk, prefill.state)
            prefill.position = end
        if prefill.position < len(prefill.ids) - 1:
            return
        self._prefilling.pop(0)
        state = prefill.state if prefill.state is not None else self._zero_state
        last = prefill.ids[-1]
        joined = []
        for job in prefill.jobs:
            if job.search is not None:
                job.state, job.next_tokens = state, torch.as_tensor([last], device=self.device)
                self._beams.append(job)
            else:
                job.feed = None
                joined.append((job, state, last))
        self._add_rows(joined)

    def _drop_cancelled(self) -> None:
        for job in self._jobs + self._beams:
            if job.handle.cancelled or job.handle.error is not None:
                job.done = True
        for prefill in self._prefilling:
            prefill.jobs = [job for job in prefill.jobs if not job.handle.cancelled]
        self._prefilling = [prefill for prefill in self._prefilling if prefill.jobs]
        self._remove_done()

    def _remove_done(self) -> None:
        self._beams = [job for job in self._beams if not job.done]
        keep = [row for row, job in enumerate(self._jobs) if not job.done]
        if len(keep) == len(self._jobs):
            return
        self._jobs = [self._jobs[row] for row in keep]
        if keep:
            index = torch.as_tensor(keep, device=self.device)
            self._state = map_state(lambda tensor: tensor.index_select(1, index), self._state)
            self._tokens = self._tokens.index_select(0, index)
        else:
            self._state, self._tokens = None, self._tokens[:0]
        self._settings = None

    def _step(self) -> None:
        """One model step for every row; sample the streams, advance the beams, publish the text."""
        sampled = len(self._jobs)
        states = ([self._state] if sampled else []) + [job.state for job in self._beams]
        tokens = torch.cat([self._tokens[:sampled], *[job.next_tokens for job in self._beams]])
        logits, state = self.model.step(tokens, _cat_states(states) if len(states) > 1 else states[0])
        self.steps += 1
        woken: set[Handle] = set()
        self._now = time.monotonic()
        if sampled:
            chosen = self._sample(logits[:sampled])
            # Rows still reading their prompt take its next token instead of the one drawn, and show nothing.
            reading = [row for row, job in enumerate(self._jobs) if job.feed is not None]
            if reading:
                prompt_tokens = []
                for row in reading:
                    job = self._jobs[row]
                    prompt_tokens.append(job.feed[job.fed])
                    job.fed += 1
                    if job.fed == len(job.feed):
                        job.feed = None
                rows = torch.as_tensor(reading, device=self.device)
                chosen[rows] = torch.as_tensor(prompt_tokens, device=self.device)
            self._state = map_state(lambda tensor: tensor[:, :sampled], state) if self._beams else state
            self._tokens = chosen
            skip = set(reading)
            now = self._now
            # The hot loop (every row, every step): the common case inline, the end of a choice in _publish.
            for row, (job, token) in enumerate(zip(self._jobs, chosen.tolist())):
                if row in skip:
                    continue
                stream = job.stream
                text = stream.push(token)
                job.tokens += 1
                if stream.stopped:
                    self._publish(job, job.index, text, "stop", woken)
                elif job.tokens == job.limit:
                    self._publish(job, job.index, text + stream.flush(), "length", woken)
                elif text:
                    handle = job.handle
                    handle.outbox.append((job.index, text, None))
                    if handle.streaming and now - handle.woken_at >= WAKE_INTERVAL:
                        handle.woken_at = now
                        woken.add(handle)
        row = sampled
        for job in self._beams:
            width = job.next_tokens.shape[0]
            parents = job.search.advance(logits[row : row + width])
            if parents is None:
                job.tokens += 1
                results = job.search.results(job.handle.request.n)
                # A tiny vocabulary can leave fewer texts than choices: the rest are empty, cut at the cap.
                results += [("", "length", -math.inf)] * (job.handle.request.n - len(results))
                for offset, (text, reason, _) in enumerate(results):
                    self._publish(job, job.index + offset, text, reason, woken)
            else:
                rows = torch.arange(row, row + width, device=self.device).index_select(0, parents)
                job.state = map_state(lambda tensor, rows=rows: tensor.index_select(1, rows), state)
                job.next_tokens = job.search.tokens
                job.tokens += 1
            row += width
        self._remove_done()
        self._wake(woken)

    def _publish(self, job: _Job, index: int, text: str, reason: str | None, woken: set) -> None:
        handle = job.handle
        handle.outbox.append((index, text, reason))
        if reason is not None:
            job.done = True
            handle.completion_tokens += job.tokens  # a beam search: the steps it ran, for each text it returns
            handle.finished += 1
        if handle.done or (handle.streaming and self._now - handle.woken_at >= WAKE_INTERVAL):
            handle.woken_at = self._now
            woken.add(handle)

    def _wake(self, handles) -> None:
        by_loop: dict = {}
        for handle in handles:
            if handle.loop is not None:
                by_loop.setdefault(handle.loop, []).append(handle.event)
        for loop, events in by_loop.items():
            try:
                loop.call_soon_threadsafe(_set_all, events)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

    def _fail_all(self, message: str) -> None:
        woken = set()
        for job in self._jobs + self._beams:
            job.handle.error = message
            job.done = True
            woken.add(job.handle)
        for prefill in self._prefilling:
            for job in prefill.jobs:
                job.handle.error = message
                woken.add(job.handle)
        self._jobs, self._beams, self._prefilling, self._state, self._settings = [], [], [], None, None
        self._tokens = self._tokens[:0]
        self._wake(woken)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of ``logits`` (S, V), each row with its request's temperature, top-k, top-p or
        greedy choice and its own random numbers: one vectorized pass for all rows."""
        if self._settings is None:
            self._settings = _Settings.of([job.handle.request for job in self._jobs], logits.shape[1], self.device)
        settings = self._settings
        logits = logits.float()
        logits[:, self.tokenizer.unk_id] = float("-inf")  # never produce <unk>
        if settings.all_greedy:
            return logits.argmax(dim=-1)
        scaled = logits / settings.temperature
        order = None
        if settings.any_filter:
            scaled, order = torch.sort(scaled, dim=-1, descending=True)
            if settings.top_k is not None:
                scaled = scaled.masked_fill(settings.top_k, float("-inf"))
            if settings.top_p is not None:
                probabilities = torch.softmax(scaled, dim=-1)
                # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
                scaled = scaled.masked_fill(probabilities.cumsum(-1) - probabilities >= settings.top_p, float("-inf"))
        cumulative = torch.softmax(scaled, dim=-1).cumsum(dim=-1)
        draws = torch.tensor([job.draws.random() for job in self._jobs], device=self.device)
        # Inverse-CDF draw; the factor keeps the target below the total, so it lands on a token with mass.
        target = (draws * cumulative[:, -1] * (1 - 1e-6)).unsqueeze(1)
        chosen = torch.searchsorted(cumulative, target, right=True).clamp_(max=scaled.shape[1] - 1)
        if order is not None:
            chosen = order.gather(1, chosen)
        chosen = chosen.squeeze(1)
        if settings.greedy is not None:
            chosen = torch.where(settings.greedy, logits.argmax(dim=-1), chosen)
        return chosen


class EnginePool:
    """Several engines over the one loaded model, each stepping its own batch in its own thread, so that on a
    CPU each core runs a batch (the step's matrix products release the interpreter lock). A request goes
    whole to the engine with the least load. Same interface as ``Engine``.

    Why not one batch with two threads per matrix product: the HTTP side and the clients need the cores
    too, and a product split over two threads waits for the slower one at every step (measured slower).
    """

    def __init__(self, model, tokenizer, limits: Limits, engines: int):
        self.engines = [Engine(model, tokenizer, limits) for _ in range(engines)]
        self.model, self.tokenizer, self.limits = model, tokenizer, limits
        self._lock = threading.Lock()

    @property
    def steps(self) -> int:
        return sum(engine.steps for engine in self.engines)

    def submit(self, request: CompletionRequest, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        with self._lock:
            waiting = sum(len(engine._waiting) for engine in self.engines)
            choices = len(request.prompts) * request.n
            if waiting + choices > self.limits.max_queue:
                raise ApiError(503, f"the server is busy ({waiting} choices waiting): try again shortly", "server_busy")
            return min(self.engines, key=Engine.load).submit(request, loop)

    def status(self) -> dict:
        totals = collections.Counter()
        for engine in self.engines:
            totals.update(engine.status())
        return {**totals, "engines": len(self.engines)}

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def close(self, timeout: float | None = None) -> None:
        for engine in self.engines:
            engine.close(timeout)


@dataclass
class _Settings:
    """The sampling settings of the sampled rows as tensors, rebuilt when rows join or leave."""

    temperature: torch.Tensor  # (S, 1)
    top_k: torch.Tensor | None  # (S, V) mask of the sorted positions past each row's k
    top_p: torch.Tensor | None  # (S, 1)
    greedy: torch.Tensor | None  # (S,)
    all_greedy: bool
    any_filter: bool

    @classmethod
    def of(cls, requests: list[CompletionRequest], vocab: int, device) -> "_Settings":
        greedy = [request.greedy for request in requests]
        temperature = torch.tensor([[1.0 if r.greedy else r.temperature] for r in requests], device=device)
        ks = [r.top_k if r.top_k is not None and not r.greedy else vocab for r in requests]
        top_k = None
        if min(ks) < vocab:
            top_k = torch.arange(vocab, device=device).unsqueeze(0) >= torch.tensor(ks, device=device).unsqueeze(1)
        ps = [1.0 if r.greedy else r.top_p for r in requests]
        top_p = torch.tensor(ps, device=device).unsqueeze(1) if min(ps) < 1.0 else None
        return cls(
            temperature,
            top_k,
            top_p,
            torch.tensor(greedy, device=device) if any(greedy) else None,
            all(greedy),
            top_k is not None or top_p is not None,
        )


def _set_all(events) -> None:
    for event in events:
        event.set()


def _cat_states(states: list):
    """Concatenate states along their row dimension (1: states are (layers, B, H) tensors or tuples of them)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=1)
    return tuple(_cat_states([state[part] for state in states]) for part in range(len(first)))


def _with_stops(config: SampleConfig, stops: tuple[str, ...]) -> SampleConfig:
    import dataclasses

    return dataclasses.replace(config, stop=stops)


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


def create_app(engine: Engine, info: dict):
    """The ASGI application: ``/v1/completions``, ``/v1/models``, ``/health`` and the playground at ``/``."""
    require_serve()
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    name = info["id"]
    limits = engine.limits

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            # uvicorn has waited for the open requests (SIGTERM drains): finish what is left and stop.
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="textrnn", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) else error.detail
        return JSONResponse(ApiError(error.status_code, message, kind).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        message = f"internal error ({type(error).__name__}); the server is still running"
        return JSONResponse(ApiError(500, message, "internal_error").body(), status_code=500)

    @app.get("/")
    async def playground():
        return HTMLResponse((STATIC / "playground.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, **engine.status()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [info]}

    @app.get("/v1/models/{model:path}")
    async def one_model(model: str):
        if model != name:
            raise ApiError(404, f"the model {model!r} does not exist; this server has {name!r}", "not_found_error")
        return info

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await _read_body(request, limits.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=400)
        parsed = parse_request(body, name, engine.tokenizer, limits)
        handle = engine.submit(parsed, asyncio.get_running_loop())
        identity = (completion_id(), int(time.time()), name)
        if parsed.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(_events(handle, *identity), media_type="text/event-stream", headers=headers)
        return await _answer(handle, request, *identity)

    async def _answer(handle: Handle, request, cid: str, created: int, model: str):
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
        return JSONResponse({**body, "usage": usage(handle.request, handle)})

    return app


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is larger than {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
    from textrnn.checkpoint import load_run

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
