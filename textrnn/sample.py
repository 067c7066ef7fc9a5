"""Text generation: greedy, temperature, top-k and top-p (nucleus) sampling.

The prefix is run through the model once to warm the state; after that each new
character costs one step of the recurrence (no re-running of the prefix).
"""

from __future__ import annotations

import torch

from textrnn.config import SampleConfig
from textrnn.errors import TextrnnError


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


@torch.no_grad()
def generate(model, prefix: str, config: SampleConfig | None = None, tokenizer=None, **options) -> list[str]:
    """Continue ``prefix`` ``config.num_samples`` times; each result starts with ``prefix`` as given.

    ``options`` are ``SampleConfig`` fields (``length=100, temperature=0.8, seed=1``...), a
    shortcut for passing a config. The tokenizer defaults to the one ``load_checkpoint`` attached.
    """
    config = config or SampleConfig(**options)
    tokenizer = _tokenizer_of(model, tokenizer)
    if model.config.task != "causal":
        raise TextrnnError(
            "this model was trained with --task infill: it reads both sides of a character and cannot write left "
            "to right; fill blanks with `textrnn fill` instead"
        )
    _check_known(tokenizer, prefix, "the prefix")
    ids = tokenizer.encode(prefix)
    if len(ids) == 0:
        raise TextrnnError("the prefix is empty (after normalization): give --prefix with at least one character")
    device = next(model.parameters()).device
    generator = _generator(device, config.seed)

    was_training = model.training
    model.eval()
    try:
        tokens = torch.as_tensor(ids, device=device).unsqueeze(0).expand(config.num_samples, -1)
        logits, state = model(tokens, None)
        logits = logits[:, -1]
        out = torch.empty(config.num_samples, config.length, dtype=torch.long, device=device)
        for position in range(config.length):
            chosen = _choose(logits, config, generator, tokenizer.unk_id)
            out[:, position] = chosen
            logits, state = model.step(chosen, state)
    finally:
        model.train(was_training)
    return [prefix + tokenizer.decode(row) for row in out.cpu().tolist()]


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
