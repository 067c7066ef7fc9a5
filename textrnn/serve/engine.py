"""The continuous-batching engine: streams join and leave between steps, and each step advances every active
stream by one token with a single call of the model. Each stream keeps its own state row, sampling settings,
random generator (a seed gives the same text whatever else runs), stop strings and length; beam-search
requests take one row per beam and step in the same call. ``EnginePool`` runs one engine per core over the
one model on a CPU, a request going to the least loaded.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import threading
import time
from dataclasses import dataclass, field

import torch

from textrnn.config import SampleConfig
from textrnn.lm.sample import BeamSearch, TextStream, token_table
from textrnn.nn import map_state
from textrnn.serve.request import ApiError, CompletionRequest, Limits

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
    ids: list[int]  # the prompt
    limit: int  # max_tokens
    search: BeamSearch | None = None
    stream: TextStream | None = None
    draws: random.Random = field(default_factory=random.Random)  # a sampled choice's random numbers
    tokens: int = 0
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
        """Queue the request's choices; its text arrives in the handle's outbox (woken on ``loop``). A full
        queue or a closing engine is a 503."""
        handle = Handle(request, loop)
        jobs = self._jobs_of(handle)
        with self._condition:
            if self._closing:
                raise ApiError(503, "the server is shutting down", "server_unavailable")
            if len(self._waiting) + len(jobs) > self.limits.max_queue:
                raise ApiError(
                    503, f"the server is busy ({len(self._waiting)} choices waiting): try again shortly", "server_busy"
                )
            self._waiting.extend(jobs)
            self._condition.notify()
        return handle

    def _jobs_of(self, handle: Handle) -> list[_Job]:
        """A job per sampled choice (choice i of prompt p seeded with seed + p * n + i), or per prompt for a
        beam search (its n best texts)."""
        request = handle.request
        jobs = []
        for prompt_index, ids in enumerate(request.prompt_ids):
            base = prompt_index * request.n
            if request.beam > 1:
                config = SampleConfig(
                    length=request.max_tokens, beam=request.beam, num_samples=request.n, stop=request.stop
                )
                search = BeamSearch(self.table, config, self.tokenizer.unk_id)
                jobs.append(_Job(handle, base, ids, request.max_tokens, search=search))
                continue
            for choice in range(request.n):
                seed = None if request.seed is None else (request.seed + base + choice) % 2**63
                stream = TextStream(self.table, request.stop)
                jobs.append(
                    _Job(handle, base + choice, ids, request.max_tokens, stream=stream, draws=random.Random(seed))
                )
        return jobs

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
        if prefill.position >= len(prefill.ids) - 1:
            self._prefilling.pop(0)
            self._join_prefilled(prefill)

    def _join_prefilled(self, prefill: _Prefill) -> None:
        """A read prompt's choices join the batch from its state, its last token their first input."""
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
        """One model step for every row (the sampled rows, then each beam search's rows); sample the streams,
        advance the beams, publish the text."""
        sampled = len(self._jobs)
        states = ([self._state] if sampled else []) + [job.state for job in self._beams]
        tokens = torch.cat([self._tokens[:sampled], *[job.next_tokens for job in self._beams]])
        logits, state = self.model.step(tokens, _cat_states(states) if len(states) > 1 else states[0])
        self.steps += 1
        woken: set[Handle] = set()
        self._now = time.monotonic()
        if sampled:
            self._state = map_state(lambda tensor: tensor[:, :sampled], state) if self._beams else state
            self._advance_sampled(logits[:sampled], woken)
        self._advance_beams(logits, state, sampled, woken)
        self._remove_done()
        self._wake(woken)

    def _advance_sampled(self, logits: torch.Tensor, woken: set) -> None:
        """Draw the next token of every sampled row from ``logits`` (S, V) and publish the text it makes."""
        chosen = self._sample(logits)
        reading = self._feed_prompts(chosen)
        self._tokens = chosen
        now = self._now
        # The hot loop (every row, every step): the common case inline, the end of a choice in _publish.
        for row, (job, token) in enumerate(zip(self._jobs, chosen.tolist())):
            if row in reading:
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

    def _feed_prompts(self, chosen: torch.Tensor) -> set[int]:
        """Rows still reading their prompt take its next token instead of the one drawn (written into
        ``chosen``, (S,)) and show nothing; returns those rows."""
        reading = [row for row, job in enumerate(self._jobs) if job.feed is not None]
        if not reading:
            return set()
        prompt_tokens = []
        for row in reading:
            job = self._jobs[row]
            prompt_tokens.append(job.feed[job.fed])
            job.fed += 1
            if job.fed == len(job.feed):
                job.feed = None
        rows = torch.as_tensor(reading, device=self.device)
        chosen[rows] = torch.as_tensor(prompt_tokens, device=self.device)
        return set(reading)

    def _advance_beams(self, logits: torch.Tensor, state, row: int, woken: set) -> None:
        """Advance each beam search by its rows of ``logits`` (R, V) and ``state`` (rows on dim 1), which start
        at ``row``; a search that has ended publishes its n best texts."""
        for job in self._beams:
            width = job.next_tokens.shape[0]
            parents = job.search.advance(logits[row : row + width])
            job.tokens += 1
            if parents is None:
                self._publish_beams(job, woken)
            else:
                rows = torch.arange(row, row + width, device=self.device).index_select(0, parents)
                job.state = map_state(lambda tensor, rows=rows: tensor.index_select(1, rows), state)
                job.next_tokens = job.search.tokens
            row += width

    def _publish_beams(self, job: _Job, woken: set) -> None:
        n = job.handle.request.n
        results = job.search.results(n)
        # A tiny vocabulary can leave fewer texts than choices: the rest are empty, cut at the cap.
        results += [("", "length", -math.inf)] * (n - len(results))
        for offset, (text, reason, _) in enumerate(results):
            self._publish(job, job.index + offset, text, reason, woken)

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
    def of(cls, requests: list[CompletionRequest], vocab: int, device) -> _Settings:
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
