"""Batches for truncated backpropagation through time.

``sequential``: the stream is cut into ``batch_size`` contiguous rows and batch ``k``
holds columns ``[k*T, (k+1)*T)`` of every row, so the state left by one batch is the
right start for the next (carried, detached). A new random offset in ``[0, T)`` each
epoch shifts the cut points. ``random``: windows at random positions, state reset
every batch. Both are a pure function of ``(seed, epoch)``, so a run can resume at
any batch.

Several documents (``starts``: where each begins in the stream) are kept apart in
``sequential`` batches by a third tensor, ``starts`` (B, T + 1) bool on the CPU: column
``t < T`` marks a row whose input ``t`` is the first token of a document (the state is
reset there), column ``T`` one whose next batch begins a document; a target that is the
first token of a document is not predicted from the one before it (the loss skips it).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from textrnn.errors import TextrnnError


class Batches:
    """Token batches ``(x, y)`` of shape ``(B, T)``, ``y`` being ``x`` shifted by one.

    ``tokens`` may be stored compactly (uint8, int16); batches come out as int64.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        num_steps: int,
        partition: str,
        seed: int,
        split: str = "train",
        starts: list[int] | None = None,
    ):
        needed = batch_size * num_steps + num_steps
        if tokens.numel() < needed:
            raise TextrnnError(
                f"the {split} split has {tokens.numel()} tokens, but one batch of {batch_size} x {num_steps} needs "
                f"{needed}: use a smaller --batch-size or --num-steps, or a longer corpus"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.partition = partition
        self.seed = seed
        # Room for the largest offset (T - 1) plus the one-token shift of the targets.
        self.row_length = (tokens.numel() - num_steps) // batch_size
        self.carries_state = partition == "sequential"
        # the documents after the first (a document at 0 starts the stream, and every row starts afresh anyway)
        self.starts = [start for start in starts or () if start > 0] if self.carries_state else []
        if partition == "sequential":
            self.per_epoch = self.row_length // num_steps
        else:
            self.per_epoch = (self.row_length * batch_size // num_steps) // batch_size

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def _marks(self, offset: int) -> torch.Tensor:
        """(B, row length + 1) bool: True where a row's input is the first token of a document."""
        marks = torch.zeros(self.batch_size, self.row_length + 1, dtype=torch.bool)
        for start in self.starts:
            position = start - offset
            if 0 <= position < self.row_length * self.batch_size:
                marks[position // self.row_length, position % self.row_length] = True
        return marks

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch, beginning at batch index ``start``."""
        generator = self._generator(epoch)
        offset = int(torch.randint(0, self.num_steps, (1,), generator=generator))
        B, T = self.batch_size, self.num_steps
        if self.partition == "sequential":
            span = self.row_length * B
            inputs = self.tokens[offset : offset + span].view(B, -1)
            targets = self.tokens[offset + 1 : offset + 1 + span].view(B, -1)
            marks = self._marks(offset) if self.starts else None
            for k in range(start, self.per_epoch):
                batch = inputs[:, k * T : (k + 1) * T].long(), targets[:, k * T : (k + 1) * T].long()
                yield (*batch, marks[:, k * T : (k + 1) * T + 1]) if marks is not None else batch
        else:
            order = torch.randperm(self.per_epoch * B, generator=generator)
            starts = (offset + order * T).to(self.tokens.device)
            window = torch.arange(T, device=self.tokens.device)
            for k in range(start, self.per_epoch):
                positions = starts[k * B : (k + 1) * B, None] + window
                yield self.tokens[positions].long(), self.tokens[positions + 1].long()
