"""The learning-rate schedule and the run's progress towards its limits."""

from __future__ import annotations

import math


def learning_rate(config, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay over the run's progress."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "constant":
        return config.lr * warmup
    return config.lr * warmup * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def progress(config, per_epoch: int, step: int, elapsed: float) -> float:
    """How far the run is towards whichever limit comes first (0..1)."""
    fractions = []
    if config.max_steps:
        fractions.append(step / config.max_steps)
    if config.max_seconds:
        fractions.append(elapsed / config.max_seconds)
    if config.epochs:
        fractions.append(step / (config.epochs * per_epoch))
    return max(fractions)
