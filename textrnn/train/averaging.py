"""Averaged weights beside the trained ones (``--average ema|asgd``)."""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    """Averaged weights beside the trained ones: an exponential moving average (``ema``) from the first step,
    or the uniform average of the iterates from the point where validation stopped improving (``asgd``: the
    non-monotonic trigger of Merity et al.'s NT-ASGD, over whatever optimizer trains). One foreach lerp per
    step, no host sync. Evaluated at each validation; the better of the two becomes ``best.pt``."""

    def __init__(self, model: torch.nn.Module, mode: str, decay: float):
        self.mode, self.decay, self.count = mode, decay, 0
        self.weights = [p.detach().clone() for p in model.parameters()]

    def update(self, model: torch.nn.Module) -> None:
        self.count += 1
        weight = 1.0 / self.count if self.mode == "asgd" else 1.0 - self.decay
        torch._foreach_lerp_(self.weights, [p.detach() for p in model.parameters()], weight)

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module):
        """``model`` holds the averaged weights inside the block, its own again after it."""
        own = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            torch._foreach_copy_(list(model.parameters()), self.weights)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(model.parameters()), own)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "count": self.count, "weights": [w.cpu() for w in self.weights]}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]
        torch._foreach_copy_(self.weights, [w.to(self.weights[0].device) for w in state["weights"]])
