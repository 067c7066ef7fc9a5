"""Models: features -> recurrent encoder (``textrnn.nn``) -> head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from textrnn.config import ModelConfig
from textrnn.nn import make_encoder


class CharLM(nn.Module):
    """Character language model: embedding (or one-hot) -> encoder -> linear head over the vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        self.config = config
        self.embedding = None if config.one_hot else nn.Embedding(config.vocab_size, config.embedding_size)
        input_size = config.vocab_size if config.one_hot else config.embedding_size
        self.encoder = make_encoder(config.cell, input_size, config.hidden_size, config.num_layers, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        """``tokens`` (B, T) int64 -> logits (B, T, V) and the encoder state after the last step."""
        if self.embedding is None:
            features = F.one_hot(tokens, self.config.vocab_size).float()
        else:
            features = self.dropout(self.embedding(tokens))
        outputs, state = self.encoder(features, state)
        return self.head(self.dropout(outputs)), state
