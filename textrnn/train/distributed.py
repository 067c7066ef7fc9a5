"""Where training runs: the device, and data parallelism on PyTorch's own engine as started by ``torchrun``.

``torchrun --nproc_per_node N -m textrnn train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``train`` then joins the process group (NCCL on
GPUs, gloo on CPUs) and wraps the model in ``DistributedDataParallel``. ``--batch-size``
stays the global batch: every process builds the same global batches and keeps its own
contiguous block of rows, so the hidden state it carries continues its own rows of text.
Without ``WORLD_SIZE`` (or with 1) every helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import gc
import os

import torch
import torch.distributed as dist

from textrnn.errors import TextrnnError
from textrnn.nn import map_state


def resolve_device(name: str) -> torch.device:
    """``--device auto|cpu|cuda|mps`` -> a device torch can use, or a clear error."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TextrnnError("--device cuda was asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    if name == "mps" and not mps:
        raise TextrnnError("--device mps was asked for, but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def join(device_name: str) -> tuple[World, torch.device]:
    """This process's place among the training processes (one, without torchrun) and its device."""
    world = World()
    device = world.device(resolve_device(device_name))
    world.start(device)
    return world, device


class World:
    """This process's place among the training processes."""

    def __init__(self):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started = False

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a machine: ``cuda:LOCAL_RANK``."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        if self.active and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.started = True

    def close(self) -> None:
        """Leave the group together: every process reaches the end before any destroys it, and objects that
        hold it (DDP) are collected first, while the interpreter is whole (gloo aborted at exit otherwise)."""
        if self.started and dist.is_initialized():
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
            self.started = False

    def rows(self, batch_size: int, strict: bool = True) -> slice:
        """This process's rows of a global batch: equal blocks (``strict``: a carried state needs them), else
        blocks that differ by one row at most (a short last batch of windows)."""
        if strict and batch_size % self.size:
            raise TextrnnError(
                f"--batch-size {batch_size} is the global batch: it must divide evenly among {self.size} processes"
            )
        share, extra = divmod(batch_size, self.size)
        begin = self.rank * share + min(self.rank, extra)
        return slice(begin, begin + share + (self.rank < extra))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the processes (every process calls it at the same point)."""
        if not self.active:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.size

    def agree(self, stop: bool, elapsed: float) -> tuple[bool, float]:
        """Whether any process was asked to stop, and the longest elapsed time: one collective per step,
        so every process stops after the same step and reads the same point of a time-based schedule."""
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        values = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return bool(values[0]), float(values[1])

    @contextlib.contextmanager
    def main_first(self):
        """The first process does the work inside first (preparing a corpus cache); the others then do it
        (and find the cache made)."""
        if self.active and not self.main:
            dist.barrier()
        yield
        if self.active and self.main:
            dist.barrier()

    def gather_objects(self, value) -> list | object:
        """``value`` from every process, as a list in rank order (``value`` itself with one process)."""
        if not self.active:
            return value
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def gather_rows(self, state):
        """The carried state of every process, its rows back in global order (dimension 1: the batch)."""
        if not self.active or state is None:
            return state

        def gather(tensor: torch.Tensor) -> torch.Tensor:
            parts = [torch.empty_like(tensor) for _ in range(self.size)]
            dist.all_gather(parts, tensor.contiguous())
            return torch.cat(parts, dim=1)

        return map_state(gather, state)
