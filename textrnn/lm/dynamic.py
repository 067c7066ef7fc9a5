"""Dynamic evaluation (Krause, Kahembwe, Murray and Renals 2018, "Dynamic evaluation of neural sequence models"):
the model keeps learning from the text it is scoring, so that what it reads shapes what it expects next.

The text is read as one stream, in segments of ``segment`` tokens with the state carried. Each segment is
scored first, with the weights as they are, and only then does the model take one gradient step on it, so
every figure is an honest prediction of text the model has not adapted to yet. The step is Krause et al.'s
RMS rule with a decay back towards the trained weights ``theta_0``::

    theta <- theta - lr * grad / (rms + epsilon) + decay * rate * (theta_0 - theta)

where ``rms`` is the root mean square of each weight's gradient over the training split (measured first, on
segments of the same length) and ``rate = rms / mean(rms)``, clipped at ``1 / decay``. Nothing here changes the
run: the adapted weights are thrown away, and dynamic evaluation never takes part in choosing a run's best
weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from textrnn.errors import TextrnnError
from textrnn.nn import detach_state


@dataclass(frozen=True)
class DynamicConfig:
    """The settings of dynamic evaluation. ``decay`` and ``epsilon`` are Krause et al.'s; ``lr`` and ``segment``
    were chosen on the validation splits of two corpora (the Time Machine and 1 MB of Python sources; the grid and
    its figures are in docs/results.md): the best step size differs from text to text, so tune it on ``--split
    val`` for yours."""

    lr: float = 3e-5  # eta: the size of the RMS-normalised gradient step
    decay: float = 0.002  # lambda: how strongly the weights are pulled back towards the trained ones
    segment: int = 20  # tokens scored before each step
    epsilon: float = 2e-5  # added to the gradient RMS
    statistics_tokens: int = 500_000  # training tokens read for the gradient RMS (at most)
    statistics_rows: int = 100  # rows of the batches read for the gradient RMS

    def __post_init__(self) -> None:
        checks = [
            (0 < self.lr < math.inf, f"--dynamic-lr must be positive, got {self.lr}"),
            (0 <= self.decay < math.inf, f"--dynamic-decay must be non-negative, got {self.decay}"),
            (1 <= self.segment <= 100_000, f"--dynamic-segment must be in [1, 100000], got {self.segment}"),
            (0 < self.epsilon < math.inf, f"epsilon must be positive, got {self.epsilon}"),
            (self.statistics_tokens >= 1 and self.statistics_rows >= 1, "the gradient statistics need some text"),
        ]
        for passed, message in checks:
            if not passed:
                raise TextrnnError(message)


def _segment_loss(model, inputs: torch.Tensor, targets: torch.Tensor, state):
    """Summed cross-entropy of ``targets`` (B, T) after ``inputs`` (B, T), and the state after them."""
    logits, state = model(inputs, state)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"), state


def gradient_rms(model, train_tokens: torch.Tensor, config: DynamicConfig) -> list[torch.Tensor]:
    """The root mean square of every weight's gradient of the mean loss over segments of the training split,
    read as ``statistics_rows`` parallel streams (state carried, eval mode: no dropout)."""
    rows = max(1, min(config.statistics_rows, (train_tokens.numel() - 1) // (config.segment + 1)))
    usable = min(train_tokens.numel() - 1, config.statistics_tokens) // (rows * config.segment) * config.segment
    if usable < config.segment:
        raise TextrnnError("the training split is too short for dynamic evaluation's gradient statistics")
    stream = train_tokens[: rows * usable + 1].long()
    inputs, targets = stream[:-1].view(rows, usable), stream[1:].view(rows, usable)
    parameters = [p for p in model.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p) for p in parameters]
    state, count = None, 0
    for start in range(0, usable, config.segment):
        window = slice(start, start + config.segment)
        model.zero_grad(set_to_none=True)
        loss, state = _segment_loss(model, inputs[:, window], targets[:, window], detach_state(state))
        (loss / targets[:, window].numel()).backward()
        torch._foreach_addcmul_(squares, [p.grad for p in parameters], [p.grad for p in parameters])
        count += 1
    model.zero_grad(set_to_none=True)
    return [torch.sqrt(square / count) for square in squares]


def dynamic_sum(model, tokens: torch.Tensor, train_tokens: torch.Tensor, config: DynamicConfig) -> tuple[float, int]:
    """Summed cross-entropy (nats) of ``tokens[1:]`` under dynamic evaluation, and the number of tokens scored.

    ``model`` is a causal language model; its weights are restored before this returns.
    """
    if getattr(model.config, "task", "causal") != "causal":
        raise TextrnnError("dynamic evaluation adapts a left-to-right model as it reads: use it with a causal model")
    trained = [p.detach().clone() for p in model.parameters()]
    was_training = model.training
    model.eval()  # no dropout; gradients still flow
    try:
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN backward refuses eval mode
            return _adapt_and_score(model, tokens, train_tokens, config, trained)
    finally:
        with torch.no_grad():
            torch._foreach_copy_(list(model.parameters()), trained)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _adapt_and_score(model, tokens, train_tokens, config: DynamicConfig, trained: list[torch.Tensor]):
    """Score a segment, then step on it, segment after segment (see the module docstring)."""
    parameters = list(model.parameters())
    rms = gradient_rms(model, train_tokens, config)
    mean_rms = sum(float(value.mean()) for value in rms) / len(rms)
    rates = [
        (value / max(mean_rms, 1e-30)).clamp_max(1.0 / config.decay if config.decay else math.inf) for value in rms
    ]
    denominators = [value + config.epsilon for value in rms]
    stream = tokens.long()
    inputs, targets = stream[:-1].unsqueeze(0), stream[1:].unsqueeze(0)
    total, state = torch.zeros((), device=tokens.device), None
    for start in range(0, targets.shape[1], config.segment):
        window = slice(start, start + config.segment)
        model.zero_grad(set_to_none=True)
        loss, state = _segment_loss(model, inputs[:, window], targets[:, window], detach_state(state))
        total += loss.detach()  # scored before the model adapts to it
        (loss / targets[:, window].numel()).backward()
        with torch.no_grad():
            gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
            steps = torch._foreach_div(gradients, denominators)
            torch._foreach_add_(parameters, steps, alpha=-config.lr)
            if config.decay:
                pulls = torch._foreach_mul(torch._foreach_sub(trained, parameters), rates)
                torch._foreach_add_(parameters, pulls, alpha=config.decay)
    return float(total), targets.shape[1]
