"""Text generation: greedy, temperature, top-k and top-p (nucleus) sampling, stop strings, beam search.

The prefix is run through the model once to warm the state (``prime``: a long one in chunks of
``PROMPT_CHUNK`` tokens, the state carried); after that each new token costs one step of the
recurrence (no re-running of the prefix). ``generate``
returns whole samples; ``iter_generate`` yields the text while it is being made;
``beam_search`` keeps the ``beam`` most likely continuations at every step.

Stop strings follow the OpenAI / vLLM convention: a sample ends just before the first
occurrence of any stop string in the generated text (the prefix is not searched) and the
stop string itself is not returned; ``length`` (tokens) stays the cap. Text that could be
the start of a stop string is held back until the next tokens show whether it is one.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from textrnn.config import SampleConfig
from textrnn.errors import TextrnnError
from textrnn.nn import map_state


def _filter_logits(logits: torch.Tensor, config: SampleConfig) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k / top-p. ``logits`` is (N, V)."""
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _tokenizer_of(model, tokenizer):
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TypeError("pass tokenizer= or use a model from textrnn.load_checkpoint (it carries its tokenizer)")
    return tokenizer


def _check_known(tokenizer, text: str, what: str) -> None:
    unknown = tokenizer.unknown_characters(text)
    if unknown:
        raise TextrnnError(
            f"{what} has characters the model's vocabulary lacks: {''.join(unknown)!r} "
            f"(shown after the model's normalization); remove or replace them"
        )


def _choose(logits: torch.Tensor, config: SampleConfig, generator: torch.Generator, unk_id: int) -> torch.Tensor:
    """One token per row of ``logits`` (N, V): the most likely, or a draw after temperature / top-k / top-p."""
    logits = logits.float().clone()
    logits[:, unk_id] = float("-inf")  # never produce <unk>
    if config.greedy:
        return logits.argmax(dim=-1)
    probabilities = torch.softmax(_filter_logits(logits, config), dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def prompt_ids(model, tokenizer, prefix: str) -> list[int]:
    """The token ids of ``prefix`` for a next-character model; a clear error for the wrong model, unknown
    characters or an empty prefix."""
    if model.config.task != "causal":
        raise TextrnnError(
            "this model was trained with --task infill: it reads both sides of a character and cannot write left "
            "to right; fill blanks with `textrnn fill` instead"
        )
    _check_known(tokenizer, prefix, "the prefix")
    ids = [int(i) for i in tokenizer.encode(prefix)]
    if len(ids) == 0:
        raise TextrnnError("the prefix is empty (after normalization): give --prefix with at least one character")
    return ids


PROMPT_CHUNK = 512  # prompt tokens per forward call: a long prompt is read in pieces, the state carried


def prime(model, ids: list[int], rows: int, chunk: int | None = None):
    """Read the prompt ``ids`` into ``rows`` identical rows, ``chunk`` tokens a call with the state carried (so a
    prompt of any length takes the memory of one chunk's logits) -> the last logits (rows, V) and the state. The
    result is that of one call over the whole prompt."""
    chunk = chunk or PROMPT_CHUNK
    device = next(model.parameters()).device
    tokens = torch.as_tensor(ids, device=device).unsqueeze(0).expand(rows, -1)
    state = None
    for start in range(0, tokens.shape[1], chunk):
        logits, state = model(tokens[:, start : start + chunk], state)
    return logits[:, -1], state


# ---------------------------------------------------------------------------------------------
# Tokens to text, with stop strings


def token_table(tokenizer) -> list[str] | list[bytes]:
    """What each token id stands for, so text can be decoded one token at a time: its character for a
    character tokenizer (``<unk>``: U+FFFD), else its UTF-8 bytes (a byte or BPE token may hold part of a
    character, which waits for the next token)."""
    if tokenizer.kind == "byte":
        return ["\ufffd".encode()] + [bytes([value]) for value in range(256)]
    if tokenizer.kind == "bpe":
        return [b"\xef\xbf\xbd" if i == tokenizer.unk_id else piece for i, piece in enumerate(tokenizer._bytes)]
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


def decode_piece(pending: bytes, entry: str | bytes) -> tuple[str, bytes]:
    """The text of one more token -> (text, the bytes of an unfinished character). ``entry`` is the token's
    ``token_table`` entry; bytes are decoded after ``pending`` as far as whole characters go, invalid
    sequences as U+FFFD (as ``tokenizer.decode`` shows them)."""
    if isinstance(entry, str):
        return entry, pending
    data = pending + entry
    text, used = codecs.utf_8_decode(data, "replace", False)
    return text, data[used:]


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the first stop string in ``text`` starts, or -1."""
    found = [position for position in (text.find(stop) for stop in stops) if position >= 0]
    return min(found) if found else -1


def held_length(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of ``text`` that begins some stop string (it may yet become one)."""
    for length in range(min(len(text), max(len(stop) for stop in stops) - 1), 0, -1):
        tail = text[-length:]
        if any(stop.startswith(tail) for stop in stops):
            return length
    return 0


class TextStream:
    """Turns one sample's tokens into text that is safe to show: it ends before a stop string, and text that
    may be the start of one is held back until it is known not to be.

    ``push(token)`` returns the new text (often one character, sometimes none) and sets ``stopped`` when a
    stop string appeared; ``flush()`` returns the held-back text at the length cap.
    """

    __slots__ = ("_table", "_texts", "_stops", "_pending", "_held", "stopped")

    def __init__(self, table: list[str] | list[bytes], stops: tuple[str, ...] = ()):
        self._table = table
        self._texts = isinstance(table[0], str)  # one whole character per token: no decoding to do
        self._stops = stops
        self._pending = b""
        self._held = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        if self._texts:
            piece = self._table[token]
        else:
            piece, self._pending = decode_piece(self._pending, self._table[token])
        if not self._stops:
            return piece
        window = self._held + piece
        cut = first_stop(window, self._stops)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return window[:cut]
        keep = held_length(window, self._stops)
        self._held = window[len(window) - keep :]
        return window[: len(window) - keep]

    def flush(self) -> str:
        """The held-back text: at the length cap it did not become a stop string. An unfinished UTF-8
        sequence is dropped, as ``tokenizer.decode`` drops it."""
        held, self._held = self._held, ""
        return held


# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Chunk:
    """A piece of one sample's text from ``iter_generate``: ``finish_reason`` is None until the sample's last
    chunk, which says ``"stop"`` (a stop string ended it) or ``"length"`` (the length cap did)."""

    index: int
    text: str
    finish_reason: str | None = None


@torch.no_grad()
def iter_generate(model, prefix: str, config: SampleConfig | None = None, tokenizer=None, **options) -> Iterator[Chunk]:
    """``generate`` as an iterator of ``Chunk``s, yielded as the tokens are made; the prefix is not repeated.

    The samples advance together, one step of the model per token for all of them, with the same random
    draws as ``generate``: joined up, each sample's chunks give ``generate``'s text after the prefix.
    Every sample ends with one chunk that has a ``finish_reason`` (its text may be empty). Beam search
    does not stream: with ``config.beam > 1`` the results come as one chunk each at the end.
    """
    config = config or SampleConfig(**options)
    tokenizer = _tokenizer_of(model, tokenizer)
    if config.beam > 1:
        for index, (text, reason, _) in enumerate(beam_search(model, prefix, config, tokenizer)):
            yield Chunk(index, text, reason)
        return
    ids = prompt_ids(model, tokenizer, prefix)
    device = next(model.parameters()).device
    generator = _generator(device, config.seed)
    table = token_table(tokenizer)
    streams = [TextStream(table, config.stop) for _ in range(config.num_samples)]
    live = list(range(config.num_samples))

    was_training = model.training
    model.eval()
    try:
        logits, state = prime(model, ids, config.num_samples)
        for position in range(config.length):
            # Every row is drawn, finished or not, so the random draws stay those of generate().
            chosen = _choose(logits, config, generator, tokenizer.unk_id)
            values = chosen.tolist()
            for index in list(live):
                stream = streams[index]
                text = stream.push(values[index])
                if stream.stopped:
                    live.remove(index)
                    yield Chunk(index, text, "stop")
                elif text:
                    yield Chunk(index, text)
            if not live:
                return
            if position + 1 < config.length:
                logits, state = model.step(chosen, state)
        for index in live:
            yield Chunk(index, streams[index].flush(), "length")
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model, prefix: str, config: SampleConfig | None = None, tokenizer=None, **options) -> list[str]:
    """Continue ``prefix`` ``config.num_samples`` times; each result starts with ``prefix`` as given.

    ``options`` are ``SampleConfig`` fields (``length=100, temperature=0.8, seed=1``...), a
    shortcut for passing a config. The tokenizer defaults to the one ``load_checkpoint`` attached.
    With ``stop`` strings a sample ends before the first one it writes; with ``beam > 1`` the
    results are the ``num_samples`` best continuations of a beam search.
    """
    config = config or SampleConfig(**options)
    tokenizer = _tokenizer_of(model, tokenizer)
    if config.stop or config.beam > 1:
        texts = [""] * config.num_samples
        for chunk in iter_generate(model, prefix, config, tokenizer):
            texts[chunk.index] += chunk.text
        return [prefix + text for text in texts]
    ids = prompt_ids(model, tokenizer, prefix)
    device = next(model.parameters()).device
    generator = _generator(device, config.seed)

    was_training = model.training
    model.eval()
    try:
        logits, state = prime(model, ids, config.num_samples)
        # The tokens stay on the device until the end: no host sync per step.
        out = torch.empty(config.num_samples, config.length, dtype=torch.long, device=device)
        for position in range(config.length):
            chosen = _choose(logits, config, generator, tokenizer.unk_id)
            out[:, position] = chosen
            logits, state = model.step(chosen, state)
    finally:
        model.train(was_training)
    return [prefix + tokenizer.decode(row) for row in out.cpu().tolist()]


# ---------------------------------------------------------------------------------------------
# Beam search


@dataclass
class _Hypothesis:
    tokens: int  # tokens generated so far
    log_probability: float  # their summed log-probability
    text: str  # the text so far (up to a stop string)
    pending: bytes  # an unfinished UTF-8 character
    finish_reason: str | None = None

    @property
    def score(self) -> float:
        """Length-normalized: the mean log-probability per generated token."""
        return self.log_probability / max(self.tokens, 1)


class BeamSearch:
    """The ``beam`` most likely continuations, one model step at a time, each beam with its own state.

    The caller runs the model: it gives ``advance`` the logits (K, V) of the K live beams (after the
    prefix, K = 1); ``advance`` keeps the best ``beam`` extensions and returns, for each, the row of the
    beam it extends (K',), so the caller reorders the state rows, and ``tokens`` (K',) to feed next; it
    returns None when the search is over. A beam ends at a stop string (its text stops before it) or at
    ``length`` tokens. Beams are ranked by length-normalized log-probability (the mean per token), so a
    beam that stopped early competes fairly with longer ones. Ties keep the order ``torch.topk`` gives:
    the search is deterministic.
    """

    def __init__(self, table: list[str] | list[bytes], config: SampleConfig, unk_id: int):
        self.table = table
        self.width = config.beam
        self.length = config.length
        self.stops = config.stop
        self.keep = max(config.num_samples, config.beam)
        self.unk_id = unk_id
        self.live = [_Hypothesis(0, 0.0, "", b"")]
        self.finished: list[_Hypothesis] = []
        self.tokens: torch.Tensor | None = None
        if self.length == 0:
            self._finish_live()

    def _finish_live(self) -> None:
        for hypothesis in self.live:
            hypothesis.finish_reason = "length"
        self.finished.extend(self.live)
        self.live = []

    def advance(self, logits: torch.Tensor) -> torch.Tensor | None:
        if not self.live:
            return None
        log_probabilities = torch.log_softmax(logits.float(), dim=-1)
        log_probabilities[:, self.unk_id] = float("-inf")  # never produce <unk>
        scores = log_probabilities + torch.tensor([h.log_probability for h in self.live]).unsqueeze(1)
        vocab = scores.shape[1]
        # 2 * width candidates: enough to keep `width` live beams even if up to `width` of them stop here.
        count = min(2 * self.width, scores.numel())
        top_scores, top_indices = torch.topk(scores.flatten(), count)
        parents, tokens, live = [], [], []
        for score, index in zip(top_scores.tolist(), top_indices.tolist()):
            if score == -math.inf or len(live) == self.width:
                break
            parent, token = divmod(index, vocab)
            before = self.live[parent]
            piece, pending = decode_piece(before.pending, self.table[token])
            hypothesis = _Hypothesis(before.tokens + 1, score, before.text + piece, pending)
            if self.stops:
                # Only the new end can hold a stop string that was not there before.
                start = max(0, len(before.text) - max(len(stop) for stop in self.stops) + 1)
                cut = first_stop(hypothesis.text[start:], self.stops)
                if cut >= 0:
                    hypothesis.text = hypothesis.text[: start + cut]
                    hypothesis.finish_reason = "stop"
                    self.finished.append(hypothesis)
                    continue
            parents.append(parent)
            tokens.append(token)
            live.append(hypothesis)
        self.live = live
        self.finished = sorted(self.finished, key=lambda h: -h.score)[: self.keep]
        if live and live[0].tokens >= self.length:
            self._finish_live()
        if not self.live:
            return None
        self.tokens = torch.tensor(tokens, device=logits.device)
        return torch.tensor(parents, device=logits.device)

    def results(self, count: int) -> list[tuple[str, str, float]]:
        """The ``count`` best ``(text, finish_reason, score)``, best first; live beams count as cut at the cap."""
        if self.live:
            self._finish_live()
        ranked = sorted(self.finished, key=lambda h: -h.score)[:count]
        return [(h.text, h.finish_reason, h.score) for h in ranked]


@torch.no_grad()
def beam_search(model, prefix: str, config: SampleConfig | None = None, tokenizer=None, **options):
    """The ``config.num_samples`` best continuations of ``prefix`` by beam search with ``config.beam`` beams:
    a list of ``(text, finish_reason, score)``, best first, where ``text`` is the continuation (without the
    prefix and without a stop string) and ``score`` its mean log-probability per token (natural log).

    The prefix runs through the model once; each step advances every beam by one token with one call of
    ``model.step``, the state rows reordered to follow the beams they extend.
    """
    config = config or SampleConfig(**options)
    tokenizer = _tokenizer_of(model, tokenizer)
    ids = prompt_ids(model, tokenizer, prefix)
    search = BeamSearch(token_table(tokenizer), config, tokenizer.unk_id)
    was_training = model.training
    model.eval()
    try:
        logits, state = prime(model, ids, 1)
        while (parents := search.advance(logits)) is not None:
            state = map_state(lambda tensor: tensor.index_select(1, parents), state)
            logits, state = model.step(search.tokens, state)
    finally:
        model.train(was_training)
    return search.results(config.num_samples)


@torch.no_grad()
def fill(model, text: str, config: SampleConfig | None = None, tokenizer=None, blank: str = "_", **options) -> str:
    """Replace every ``blank`` in ``text`` with a character predicted from both sides (an infill model).

    Blanks are filled left to right, each seeing the ones already filled; blanks not yet filled
    are read as ``<unk>``. ``config.greedy`` takes the most likely character, otherwise one is drawn
    (temperature, top-k, top-p, seed as in ``generate``). The text around the blanks is kept as given.
    """
    config = config or SampleConfig(**options)
    tokenizer = _tokenizer_of(model, tokenizer)
    if model.config.task != "infill":
        raise TextrnnError(
            "fill needs a model trained with --task infill (a next-character model cannot see the text after a blank)"
        )
    pieces = text.split(blank)
    if len(pieces) == 1:
        raise TextrnnError(f'the text has no {blank!r} to fill, e.g. "time tr{blank}veller"')
    _check_known(tokenizer, "".join(pieces), "the text")
    ids: list[int] = []
    blanks: list[int] = []
    for index, piece in enumerate(pieces):
        ids.extend(int(i) for i in tokenizer.encode(piece))
        if index < len(pieces) - 1:
            blanks.append(len(ids))
            ids.append(tokenizer.unk_id)
    device = next(model.parameters()).device
    generator = _generator(device, config.seed)
    tokens = torch.as_tensor(ids, device=device).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        for position in blanks:
            logits, _ = model(tokens)
            tokens[0, position] = _choose(logits[:, position], config, generator, tokenizer.unk_id)[0]
    finally:
        model.train(was_training)
    chars = [tokenizer.decode([int(tokens[0, position])]) for position in blanks]
    return "".join(piece + (chars[index] if index < len(chars) else "") for index, piece in enumerate(pieces))
