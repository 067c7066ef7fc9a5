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


@torch.no_grad()
def generate(model, prefix: str, config: SampleConfig | None = None, tokenizer=None, **options) -> list[str]:
    """Continue ``prefix`` ``config.num_samples`` times; each result starts with ``prefix`` as given.

    ``options`` are ``SampleConfig`` fields (``length=100, temperature=0.8, seed=1``...), a
    shortcut for passing a config. The tokenizer defaults to the one ``load_checkpoint`` attached.
    """
    config = config or SampleConfig(**options)
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TypeError("generate needs a tokenizer: pass tokenizer= or use a model from textrnn.load_checkpoint")
    unknown = tokenizer.unknown_characters(prefix)
    if unknown:
        raise TextrnnError(
            f"the prefix has characters the model's vocabulary lacks: {''.join(unknown)!r} "
            f"(shown after the model's normalization); remove or replace them"
        )
    ids = tokenizer.encode(prefix)
    if len(ids) == 0:
        raise TextrnnError("the prefix is empty (after normalization): give --prefix with at least one character")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)

    was_training = model.training
    model.eval()
    try:
        tokens = torch.as_tensor(ids, device=device).unsqueeze(0).expand(config.num_samples, -1)
        logits, state = model(tokens, None)
        logits = logits[:, -1]
        out = torch.empty(config.num_samples, config.length, dtype=torch.long, device=device)
        for position in range(config.length):
            logits = logits.float()
            logits[:, tokenizer.unk_id] = float("-inf")  # never produce <unk>
            if config.greedy:
                chosen = logits.argmax(dim=-1)
            else:
                probabilities = torch.softmax(_filter_logits(logits, config), dim=-1)
                chosen = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            out[:, position] = chosen
            logits, state = model(chosen.unsqueeze(1), state)
            logits = logits[:, -1]
    finally:
        model.train(was_training)
    return [prefix + tokenizer.decode(row) for row in out.cpu().tolist()]
