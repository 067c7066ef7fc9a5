"""Perplexity and bits per character with the state carried through the whole text.

The text is read as one stream: every token after the first is predicted from all of
the text before it (in chunks, state carried), so the figure is exact rather than an
average over independent windows.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from textrnn.text.splits import document_starts, pieces, unknown_characters
from textrnn.text.tokenizer import unknown_counts

EVAL_CHUNK = 1024  # time steps per forward call; any value gives the same result
EVAL_ROWS = 256  # windows per forward call for infill models


@torch.no_grad()
def cross_entropy_sum(
    model, tokens: torch.Tensor, window: int = 256, starts: list[int] | None = None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats, a 0-d tensor on the model's device) and the number of predicted tokens.

    Causal models predict ``tokens[1:]`` from one carried stream. Infill models predict every
    token from the text on both sides of it within non-overlapping windows of ``window`` tokens
    (use the training ``num_steps``, the context the model learned with). ``starts``: where
    documents begin in ``tokens``; each is then scored on its own, from a fresh state.
    """
    if starts:
        total, count = torch.zeros((), device=tokens.device), 0
        for piece in pieces(tokens, starts):
            if piece.numel() >= 2 or getattr(model.config, "task", "causal") == "infill":
                piece_total, piece_count = cross_entropy_sum(model, piece, window)
                total, count = total + piece_total, count + piece_count
        return total, count
    was_training = model.training
    model.eval()
    try:
        if getattr(model.config, "task", "causal") == "infill":
            return _infill_sum(model, tokens, window)
        inputs = tokens[:-1].unsqueeze(0)
        targets = tokens[1:]
        total = torch.zeros((), device=tokens.device)
        state = None
        for start in range(0, targets.numel(), EVAL_CHUNK):
            logits, state = model(inputs[:, start : start + EVAL_CHUNK].long(), state)
            chunk_targets = targets[start : start + EVAL_CHUNK].long()
            total += F.cross_entropy(logits[0].float(), chunk_targets, reduction="sum")
    finally:
        model.train(was_training)
    return total, targets.numel()


def _infill_sum(model, tokens: torch.Tensor, window: int) -> tuple[torch.Tensor, int]:
    full = tokens.numel() // window * window
    pieces = [tokens[:full].view(-1, window)] if full else []
    if full < tokens.numel():
        pieces.append(tokens[full:].unsqueeze(0))
    total = torch.zeros((), device=tokens.device)
    for piece in pieces:
        for rows in piece.split(EVAL_ROWS):
            rows = rows.long()
            logits, _ = model(rows)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), rows.reshape(-1), reduction="sum")
    return total, tokens.numel()


def metrics_from_sum(nats: float, count: int, characters: int | None = None) -> dict:
    """Cross-entropy and perplexity per token, and bits per character: the same nats over the
    ``characters`` the tokens spell (default: one per token), so tokenizers compare honestly."""
    cross_entropy = nats / count
    return {
        "cross_entropy": cross_entropy,
        "perplexity": math.exp(cross_entropy) if cross_entropy < 700 else math.inf,  # exp overflows past ~709
        "bits_per_char": nats / (characters or count) / math.log(2),
        "tokens": count,
    }


def perplexity(
    model,
    tokens: torch.Tensor,
    unk_id: int | None = 0,
    window: int = 256,
    characters: int | None = None,
    starts: list[int] | None = None,
) -> dict:
    """Exact metrics of ``model`` on a token stream ``(N,)``: see ``metrics_from_sum``, plus unknown tokens.
    ``characters``: how many characters the predicted tokens spell, when that is not one per token.
    ``starts``: where documents begin in ``tokens`` (each is scored from a fresh state)."""
    if tokens.numel() < 2:
        raise ValueError("perplexity needs at least two tokens")
    total, count = cross_entropy_sum(model, tokens, window, starts)
    result = metrics_from_sum(float(total), count, characters)
    result["unknown_tokens"] = 0 if unk_id is None else int((tokens == unk_id).sum())
    return result


def evaluate_text(model, tokenizer, path, window: int = 256, dynamic=None, train_tokens=None) -> dict:
    """Exact metrics on a UTF-8 text file (normalized as the model's training text was); with ``dynamic`` (a
    ``lm.dynamic.DynamicConfig``) also dynamic evaluation's, its gradient statistics read from ``train_tokens``.
    ``unknown_characters`` maps the characters the vocabulary lacks to their counts."""
    from textrnn.errors import TextrnnError
    from textrnn.text.corpus import read_text

    text = tokenizer.normalize(read_text(path))
    ids = tokenizer.encode_compact(text)
    if len(ids) < 2:
        raise TextrnnError(f"{path} has {len(ids)} tokens after normalization: evaluation needs at least two")
    result = _evaluate(model, tokenizer, ids, window, dynamic, train_tokens)
    return {**result, "unknown_characters": unknown_counts(tokenizer, text, ids)}


def run_data(tokenizer, run_config: dict, data_dir=None) -> tuple[dict, dict]:
    """The train / val / test token arrays of the corpus a run was trained on (checked by its sha1), and the
    description of that corpus (``load_splits``'s ``data``)."""
    from textrnn.checkpoint import train_config_of
    from textrnn.errors import TextrnnError
    from textrnn.text.splits import load_splits

    _, splits, data = load_splits(train_config_of(run_config), data_dir, tokenizer)
    if data["sha1"] != run_config["data"]["sha1"]:
        raise TextrnnError(
            f"{data['path'] or ' '.join(data['paths'])} is not the text this run was trained on (sha1 differs), so "
            "its splits are not the same text: evaluate it with --corpus or --text-file instead"
        )
    return splits, data


def run_splits(tokenizer, run_config: dict, data_dir=None) -> dict:
    """The train / val / test token arrays of the corpus a run was trained on (checked by its sha1)."""
    return run_data(tokenizer, run_config, data_dir)[0]


def evaluate_split(model, tokenizer, run_config: dict, split: str, data_dir=None, dynamic=None) -> dict:
    """Exact metrics on one split of the corpus a run was trained on; with ``dynamic``, dynamic evaluation's too
    (its gradient statistics from the training split)."""
    splits, data = run_data(tokenizer, run_config, data_dir)
    window = run_config["train"]["num_steps"]
    return _evaluate(model, tokenizer, splits[split], window, dynamic, splits["train"], document_starts(data, split))


def evaluate_corpus(
    model, tokenizer, run_config: dict, corpus, split: str = "test", glob=None, data_dir=None, dynamic=None
) -> dict:
    """Exact metrics on one split of another corpus (a built-in name, a file, a directory or a tuple of those), cut
    into splits with the run's fractions and read with its normalization and tokenizer. Characters the vocabulary
    lacks are scored as ``<unk>`` and reported in ``unknown_characters`` (character -> count)."""
    from textrnn.text.splits import TextSource, load_splits

    stored = run_config["train"]
    source = TextSource(
        corpus=corpus,
        normalize=run_config["data"]["normalize"],
        tokenizer=run_config["tokenizer"].get("type", "char"),
        val_fraction=stored["val_fraction"],
        test_fraction=stored["test_fraction"],
        glob=glob,
    )
    _, splits, data = load_splits(source, data_dir, tokenizer)
    window = stored["num_steps"]
    starts = document_starts(data, split)
    result = _evaluate(model, tokenizer, splits[split], window, dynamic, splits["train"], starts)
    return {**result, "unknown_characters": unknown_characters(data, (split,))}


def _evaluate(model, tokenizer, ids, window: int, dynamic, train_tokens, starts=None) -> dict:
    """``perplexity`` of the ids, and with ``dynamic`` the ``dynamic`` figures beside it."""
    device = next(model.parameters()).device
    tokens = torch.as_tensor(ids, device=device)
    characters = sum(tokenizer.count_characters(piece[1:]) for piece in pieces(ids, starts))
    result = perplexity(model, tokens, tokenizer.unk_id, window, characters, starts)
    if dynamic is not None:
        from textrnn.lm.dynamic import dynamic_sum

        nats, count = dynamic_sum(model, tokens, torch.as_tensor(train_tokens, device=device), dynamic)
        figures = metrics_from_sum(nats, count, tokenizer.count_characters(ids[1:]))
        settings = {"lr": dynamic.lr, "decay": dynamic.decay, "segment": dynamic.segment}
        result["dynamic"] = {key: figures[key] for key in ("cross_entropy", "perplexity", "bits_per_char")} | settings
    return result
