"""The two scans of minGRU and minLSTM (``textrnn.nn.minimal``), forward and backward, timed in one process.

``log_scan`` (cumulative sum and ``logcumsumexp``, the form for a GPU) against ``linear_scan`` (one fused
multiply-add per step with a written-out backward, the form textrnn uses on a CPU), next to the layer's own
matrix product of the same shape, so the table shows what each scan costs beside the work it wraps. The three
take turns ``--repeats`` times; the table gives the median nanoseconds per element of ``(B, T, H)``.

    python scripts/bench_scan.py                    # the d2l size: batch 32, 35 steps, 256 units, 2 threads
    python scripts/bench_scan.py --device cuda --json scan-cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from textrnn.nn.minimal import linear_scan, log_scan


def _timed(function, device: torch.device, inner: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(inner):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / inner


def cases(batch: int, steps: int, hidden: int, device: torch.device) -> dict:
    """name -> a function running one forward and backward pass of that operation."""
    generator = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape):
        return torch.rand(*shape, generator=generator).mul_(0.9).add_(0.05).to(device).requires_grad_()

    a, b, h0 = leaf(batch, steps, hidden), leaf(batch, steps, hidden), leaf(batch, hidden)
    x, weight = leaf(batch * steps, hidden), leaf(2 * hidden, hidden)

    def log_space():
        log_scan(a.log(), b.log(), h0).sum().backward()

    def linear():
        linear_scan(a, b, h0).sum().backward()

    def product():  # minGRU's projection of the chunk: (B*T, H) x (H, 2H)
        (x @ weight.T).sum().backward()

    return {"log_scan": log_space, "linear_scan": linear, "matmul (B*T, H) x (H, 2H)": product}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20, help="calls per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    functions = cases(options.batch, options.steps, options.hidden, device)
    for function in functions.values():  # warm-up
        _timed(function, device, 3)
    times = {name: [] for name in functions}
    for _ in range(options.repeats):
        for name, function in functions.items():
            times[name].append(_timed(function, device, options.inner))
    elements = options.batch * options.steps * options.hidden
    result = {name: statistics.median(values) / elements * 1e9 for name, values in times.items()}
    print(f"forward + backward, ns per element of (B, T, H) = ({options.batch}, {options.steps}, {options.hidden}), "
          f"{options.threads} threads, torch {torch.__version__}, {device}")  # fmt: skip
    for name, value in result.items():
        print(f"  {name:28s} {value:8.2f}  ({value / result['linear_scan']:.2f}x linear_scan)")
    if options.json:
        with open(options.json, "w") as out:
            json.dump({"options": vars(options), "ns_per_element": result}, out, indent=2)


if __name__ == "__main__":
    main()
