"""Training speed of the scratch cells against the fused (torch.nn) backend, measured in one process.

Each configuration trains a character model (one-hot or embedded input -> encoder ->
linear head -> cross-entropy -> backward -> gradient clipping -> SGD step) on random
tokens. The configurations take turns (one block of steps each, ``--repeats`` times)
so that background load hits them alike; the table gives the median tokens/s of each
and the scratch/fused ratio, the figure that matters on a shared machine.

    python scripts/bench_cells.py                       # the d2l size: hidden 256, batch 32, 35 steps, 2 threads
    python scripts/bench_cells.py --device cuda --json bench-cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from textrnn.nn import SCRATCH_ONLY_CELLS, cells, make_encoder


class Model(nn.Module):
    """Tokens (B, T) -> logits (B, T, V) through the encoder under test."""

    def __init__(self, cell, backend, vocab_size, embedding_size, hidden_size, num_layers, transition_depth):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        input_size = embedding_size or vocab_size
        self.encoder = make_encoder(
            cell, input_size, hidden_size, num_layers, 0.0, backend=backend, transition_depth=transition_depth
        )
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens):
        if self.embedding is None:
            features = F.one_hot(tokens, self.vocab_size).float()
        else:
            features = self.embedding(tokens)
        outputs, _ = self.encoder(features)
        return self.head(outputs)


class Trainer:
    """One configuration: its model, optimizer and a pool of batches already on the device.

    ``backend`` is "fused", "scratch", or "scratch-autograd" (the scratch cells
    differentiated by autograd instead of by their hand-written backward).
    """

    def __init__(self, cell, backend, arguments, device):
        self.name = (cell, backend)
        self.handwritten = backend != "scratch-autograd"
        self.model = Model(
            cell,
            backend.removesuffix("-autograd"),
            arguments.vocab_size,
            arguments.embedding_size,
            arguments.hidden_size,
            arguments.num_layers,
            arguments.transition_depth if backend == "scratch" else 1,
        ).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        shape = (8, arguments.batch_size, arguments.num_steps + 1)
        self.batches = torch.randint(0, arguments.vocab_size, shape, device=device)
        self.step_count = 0
        self.tokens_per_step = arguments.batch_size * arguments.num_steps
        self.device = device
        self.samples: list[float] = []

    def step(self):
        cells.HANDWRITTEN_BACKWARD = self.handwritten
        batch = self.batches[self.step_count % len(self.batches)]
        self.step_count += 1
        logits = self.model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()

    def run(self, steps: int) -> float:
        """Train ``steps`` steps; the tokens per second they took."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return steps * self.tokens_per_step / (time.perf_counter() - start)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gru,lstm,rnn_tanh,peephole_lstm", help="comma-separated cells")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=35, help="time steps per batch")
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=28)
    parser.add_argument("--embedding-size", type=int, default=0, help="0: one-hot input, as in the d2l book")
    parser.add_argument("--transition-depth", type=int, default=1, help="for the scratch backend")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per configuration")
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed block")
    parser.add_argument("--autograd", action="store_true", help="also time the scratch cells through autograd")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    device = torch.device(arguments.device)
    cells_measured = [cell.strip() for cell in arguments.cells.split(",") if cell.strip()]
    trainers = []
    for cell in cells_measured:
        backends = ["scratch"] if cell in SCRATCH_ONLY_CELLS else ["fused", "scratch"]
        backends += ["scratch-autograd"] if arguments.autograd else []
        trainers += [Trainer(cell, backend, arguments, device) for backend in backends]

    for trainer in trainers:
        for _ in range(arguments.warmup):
            trainer.step()
        synchronize(device)
    for _ in range(arguments.repeats):
        for trainer in trainers:
            trainer.samples.append(trainer.run(arguments.steps))

    speed = {trainer.name: statistics.median(trainer.samples) for trainer in trainers}
    fused_lstm = speed.get(("lstm", "fused"))
    rows = []
    for (cell, backend), tokens_per_sec in speed.items():
        # A scratch-only cell is compared with the fused LSTM, its nearest fused relative.
        baseline = speed.get((cell, "fused"), fused_lstm if cell == "peephole_lstm" else None)
        ratio = tokens_per_sec / baseline if baseline else None
        rows.append({"cell": cell, "backend": backend, "tokens_per_sec": tokens_per_sec, "ratio_to_fused": ratio})

    settings = {key: value for key, value in vars(arguments).items() if key != "json"}
    print(
        f"torch {torch.__version__}, {device_name(device)} ({device}, {arguments.threads} threads), "
        f"hidden {arguments.hidden_size}, "
        f"batch {arguments.batch_size}, {arguments.num_steps} steps, {arguments.num_layers} layer(s), "
        f"median of {arguments.repeats} x {arguments.steps} steps"
    )
    print(f"{'cell':<15}{'backend':<18}{'tokens/s':>11}{'scratch/fused':>15}")
    for row in rows:
        ratio = "" if row["ratio_to_fused"] is None or row["backend"] == "fused" else f"{row['ratio_to_fused']:.2f}"
        print(f"{row['cell']:<15}{row['backend']:<18}{row['tokens_per_sec']:>11.0f}{ratio:>15}")
    if "peephole_lstm" in cells_measured and fused_lstm:
        print("(peephole_lstm has no fused form: its ratio is to the fused lstm)")
    if arguments.json:
        result = {"torch": torch.__version__, "device": device_name(device), "settings": settings, "results": rows}
        with open(arguments.json, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
