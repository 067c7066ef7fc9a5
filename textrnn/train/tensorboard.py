"""Trainer events -> TensorBoard scalars (``--tensorboard DIR`` on ``train`` and ``forecast train``).

``TensorBoardLogger(log_dir)`` is a trainer callback: ``logger(event, info)``. It writes every
number of the ``log`` events (learning rate, gradient norm, training perplexity or loss,
tokens or windows per second) under ``log/<key>`` and every number of the ``eval`` events
(the ``metrics.jsonl`` record: validation perplexity, bits per character or sMAPE, ...)
under ``eval/<key>``, each at the event's ``step``. It reads only the Python numbers the
trainer already put in the event, so it adds no host sync to the training step.
"""

from __future__ import annotations

import math
from pathlib import Path

from textrnn.errors import TextrnnError

# Counters that are the x axis or flags, not curves.
_NOT_SCALARS = ("step",)


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TextrnnError("--tensorboard needs tensorboard: pip install 'textrnn[tensorboard]'") from None
    return SummaryWriter


def scalars(info: dict) -> dict[str, float]:
    """The finite Python numbers of an event (booleans, tensors, text and None left out), minus ``step``."""
    return {
        key: float(value)
        for key, value in info.items()
        if key not in _NOT_SCALARS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardLogger:
    """A trainer callback writing the scalars of ``log`` and ``eval`` events to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | Path):
        SummaryWriter = require_tensorboard()
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as error:
            raise TextrnnError(f"cannot write TensorBoard logs to {log_dir} ({error.strerror or error})") from None
        self.log_dir = Path(log_dir)

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            # The run directory, so a TensorBoard view can be traced back to its checkpoint.
            if "run_dir" in info:
                self.writer.add_text("run", f"run directory: {info['run_dir']}", global_step=0)
        elif event in ("log", "eval"):
            step = int(info["step"])
            for key, value in scalars(info).items():
                self.writer.add_scalar(f"{event}/{key}", value, global_step=step)
            if event == "eval":
                self.writer.flush()  # validations are rare: make them visible to a running TensorBoard at once
        elif event == "end":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tee(*callbacks):
    """One trainer callback that hands each event to every callback given (None skipped), in order;
    its ``close()`` closes those that have one."""
    active = [callback for callback in callbacks if callback is not None]

    def forward(event: str, info: dict) -> None:
        for callback in active:
            callback(event, info)

    def close() -> None:
        for callback in active:
            if hasattr(callback, "close"):
                callback.close()

    forward.close = close
    return forward
