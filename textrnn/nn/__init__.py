"""Recurrent encoders shared by every model. State is a value: ``forward(x, state) -> (out, state)``."""

from textrnn.nn.layers import detach_state, make_encoder

__all__ = ["detach_state", "make_encoder"]
