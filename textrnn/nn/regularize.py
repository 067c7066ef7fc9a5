"""Regularizers of recurrent language models (the AWD-LSTM family, Merity et al. 2018).

Shapes: B batch, T time steps, H features, V vocabulary, E embedding width.

- Weight drop (DropConnect on ``W_hh``, Wan et al. 2013; ``drop_connect``): each entry of
  a hidden-to-hidden matrix is zeroed with probability p and the rest scaled by 1/(1-p),
  one mask per forward call (so per batch), shared by every step and row of it. The
  recurrent layers of ``textrnn.nn`` take it as ``weight_drop`` on both backends; the
  stored parameters are never touched, the dropped copy only flows through the call.
- Locked (variational) dropout (Gal and Ghahramani 2016; ``LockedDropout``,
  ``locked_mask``): one mask per row (batch element) and feature, the same at every time
  step, where ordinary dropout draws a new mask per step.
- Embedding dropout (``embedding_dropout``): whole rows of the embedding matrix (word
  types) dropped, the rest scaled by 1/(1-p), one mask per forward call: a dropped
  character vanishes from the whole batch.
- Activation regularization (AR) and temporal activation regularization (TAR):
  ``alpha * mean(h^2)`` and ``beta * mean((h_t - h_{t-1})^2)`` on a layer's outputs.

Every mask is drawn from torch's generator of the tensor's device, so a saved RNG state
replays it exactly; in evaluation mode (``training=False``) everything is the identity.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from textrnn.errors import TextrnnError


def check_probability(p: float, name: str) -> None:
    """Refuse a drop probability outside [0, 1), naming the option (``name``, e.g. ``--weight-drop``)."""
    if not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise TextrnnError(f"{name} must be in [0, 1), got {p}")


def drop_connect(weight: Tensor, p: float, training: bool) -> Tensor:
    """``weight`` with each entry zeroed with probability ``p`` and the rest scaled by 1/(1-p); itself in eval."""
    if not training or p == 0:
        return weight
    return F.dropout(weight, p, training=True)


def locked_mask(reference: Tensor, batch_size: int, width: int, p: float) -> Tensor:
    """A locked-dropout mask (B, H): 0 with probability ``p``, else 1/(1-p); dtype and device of ``reference``."""
    return reference.new_empty(batch_size, width).bernoulli_(1 - p).div_(1 - p)


class LockedDropout(nn.Module):
    """Locked (variational) dropout over (B, T, H): one mask per row and feature, shared by all T steps.

    Training: ``x * m[:, None, :]`` with ``m`` (B, H) drawn per call (0 with probability p,
    else 1/(1-p)); a (B, H) input (one step) gets ``x * m``. Evaluation: ``x`` unchanged.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        check_probability(p, "locked dropout")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, T, H) -> (B, T, H), or (B, H) -> (B, H)."""
        if not self.training or self.p == 0:
            return x
        mask = locked_mask(x, x.shape[0], x.shape[-1], self.p)
        return x * mask.view(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """The embedding matrix ``weight`` (V, E) with whole rows zeroed with probability ``p``, the rest scaled by 1/(1-p).

    Use it for the lookup only (``F.embedding(tokens, embedding_dropout(weight, p, training))``):
    a head tied to the same matrix must see it whole. ``weight`` itself in evaluation.
    """
    if not training or p == 0:
        return weight
    return weight * locked_mask(weight, weight.shape[0], 1, p)


def activation_regularization(outputs: Tensor, alpha: float) -> Tensor:
    """AR: ``alpha * mean(outputs^2)`` over every element of ``outputs`` (B, T, H); a 0-dim tensor."""
    return alpha * outputs.pow(2).mean()


def temporal_activation_regularization(outputs: Tensor, beta: float) -> Tensor:
    """TAR: ``beta * mean((h_t - h_{t-1})^2)`` over ``outputs`` (B, T, H), T >= 2 (0 for one step); a 0-dim tensor."""
    if outputs.shape[1] < 2:
        return outputs.new_zeros(())
    return beta * (outputs[:, 1:] - outputs[:, :-1]).pow(2).mean()


__all__ = [
    "LockedDropout",
    "activation_regularization",
    "check_probability",
    "drop_connect",
    "embedding_dropout",
    "locked_mask",
    "temporal_activation_regularization",
]
