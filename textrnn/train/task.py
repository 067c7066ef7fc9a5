"""What a task gives the one trainer (``textrnn.train.fit``): the interface of ``lm.task.LanguageModelTask`` and
``forecast.task.ForecastTask``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class Task:
    """What a task gives the trainer. Batches are tuples of tensors whose first dimension is the rows of
    the global batch; under torchrun the trainer keeps this process's rows."""

    metric: str  # the validation figure that decides best weights and early stopping: val_<metric>
    unit: str  # what a batch's first tensor counts, element by element: "tokens" | "windows"
    per_epoch: int  # batches in one epoch
    batch_size: int  # rows of a global batch
    carries_state: bool  # the state left by one batch starts the next (truncated BPTT)
    even_rows: bool  # every process must get the same number of rows (a carried state needs it)
    graph_obstacle: str | None = None  # why this task's steps cannot be captured in a CUDA graph (None: they can)

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The global batches of ``epoch`` from batch index ``start`` on."""
        raise NotImplementedError

    def loss(self, model, batch: tuple[torch.Tensor, ...], state):
        """``(mean loss over the batch's rows, state to carry)`` in training mode."""
        raise NotImplementedError

    def validate(self, model) -> dict:
        """``{"val_<metric>": ..., other "val_*" figures}`` on the validation split."""
        raise NotImplementedError

    def invalid_validation(self, step: int) -> str:
        """Why a non-finite validation figure at ``step`` stops the run (the start of the error line)."""
        raise NotImplementedError

    def train_figures(self, mean_loss: float) -> dict:
        """The training loss as reported, e.g. ``{"train_perplexity": ...}``."""
        raise NotImplementedError

    def start_info(self) -> dict:
        return {}

    def summary(self, result: dict, model: torch.nn.Module, main: bool) -> dict:
        """The run's result as the task reports it, from the trainer's ``result``."""
        return result
