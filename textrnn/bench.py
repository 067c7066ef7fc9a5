"""Speed and memory benchmarks, each figure next to a d2l-style baseline measured in the same run.

Every configuration runs in a fresh worker process (``python -m textrnn.bench --worker JSON``),
so its peak memory (RSS on a CPU, max allocated on CUDA) is its own. A worker trains with
the real trainer (``textrnn.lm.task.train``) for a fixed time, then times evaluation (the
exact carried-state pass of ``textrnn eval``) and sampling (``textrnn.generate``). The
baseline is a per-batch loop written the way the d2l book trains: one-hot inputs,
``nn.GRU`` in (T, B) layout, SGD, a Python gradient clip whose norm comparison syncs, and
``loss.item()`` every batch; its evaluation and sampling are the book's too (a loss read
per batch; one character per forward pass with ``.item()``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from textrnn.tables import columns
from textrnn.train.step import cpu_has_bf16

SIZES = {
    "d2l": {"hidden_size": 256, "num_layers": 1, "batch_size": 32, "num_steps": 35},
    "large": {"hidden_size": 1024, "num_layers": 3, "batch_size": 128, "num_steps": 100},
}
CELLS = ("gru", "lstm", "rnn_tanh", "peephole_lstm", "mingru", "minlstm")
SCRATCH_ONLY = ("peephole_lstm", "mingru", "minlstm")
MINIMAL_BLOCKS = ("plain", "residual")  # mingru, minlstm: each layer shape is a row of its own
STREAMS = (1, 8, 64)  # batched sampling: streams per batch
SAMPLE_LENGTH = 200


# ----------------------------------------------------------------------------- corpus


def synthetic_text(size: int, seed: int = 0) -> str:
    """``size`` characters of lowercase pseudo-words (27 symbols), like a normalized book."""
    random = np.random.default_rng(seed)
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    weights = np.linspace(2.0, 0.1, len(letters))
    codes = random.choice(letters, size=size, p=weights / weights.sum())
    codes[random.random(size) < 0.18] = ord(" ")
    return codes.tobytes().decode("ascii")


def corpus_file(directory: Path, size: int) -> Path:
    """A synthetic corpus of ``size`` bytes, written 10 MB at a time."""
    path = directory / f"synthetic-{size}.txt"
    if not path.exists():
        with open(path, "w", encoding="ascii") as out:
            for number, start in enumerate(range(0, size, 10_000_000)):
                out.write(synthetic_text(min(10_000_000, size - start), seed=number))
    return path


# ----------------------------------------------------------------------------- the d2l-style baseline


class _D2LModel(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = nn.GRU(vocab_size, hidden_size, num_layers)
        self.linear = nn.Linear(hidden_size, vocab_size)

    def forward(self, inputs, state):
        x = F.one_hot(inputs.T.long(), self.vocab_size).type(torch.float32)
        y, state = self.rnn(x, state)
        return self.linear(y.reshape(-1, y.shape[-1])), state


def _d2l_clip(model: nn.Module, theta: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in params))
    if norm > theta:  # a host sync, as in the book
        for param in params:
            param.grad[:] *= theta / norm


def d2l_baseline(
    tokens: torch.Tensor, vocab_size: int, size: dict, device: torch.device, seconds: float, train_only: bool = False
) -> dict:
    batch, steps = size["batch_size"], size["num_steps"]
    torch.manual_seed(0)
    model = _D2LModel(vocab_size, size["hidden_size"], size["num_layers"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    usable = (len(tokens) - 1) // batch * batch
    inputs = tokens[:usable].reshape(batch, -1).to(device)
    targets = tokens[1 : usable + 1].reshape(batch, -1).to(device)
    state, count, started, position = None, 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        if position + steps > inputs.shape[1]:
            position, state = 0, None
        x, y = inputs[:, position : position + steps], targets[:, position : position + steps]
        position += steps
        if state is not None:
            state.detach_()
        logits, state = model(x, state)
        loss = F.cross_entropy(logits, y.T.reshape(-1).long()).mean()
        optimizer.zero_grad()
        loss.backward()
        _d2l_clip(model, 1.0)
        optimizer.step()
        loss.item()
        count += y.numel()
    train_rate = count / (time.perf_counter() - started)
    if train_only:
        return {"train_tokens_per_sec": train_rate}

    with torch.no_grad():  # evaluation: a loss read per batch
        state, count, started = None, 0, time.perf_counter()
        for position in range(0, inputs.shape[1] - steps, steps):
            logits, state = model(inputs[:, position : position + steps], state)
            F.cross_entropy(logits, targets[:, position : position + steps].T.reshape(-1).long()).item()
            count += batch * steps
            if time.perf_counter() - started > seconds / 2:
                break
        eval_rate = count / (time.perf_counter() - started)

        started = time.perf_counter()  # the book's predict_ch8: one character per call, .item() each
        state = None
        outputs = [int(tokens[0])]
        for _ in range(SAMPLE_LENGTH):
            logits, state = model(torch.tensor([[outputs[-1]]], device=device), state)
            outputs.append(int(logits.argmax(dim=1).reshape(1).item()))
        sample_rate = SAMPLE_LENGTH / (time.perf_counter() - started)
    return {"train_tokens_per_sec": train_rate, "eval_tokens_per_sec": eval_rate, "sample_chars_per_sec": sample_rate}


# ----------------------------------------------------------------------------- workers


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # the high-water mark of this process's memory; ru_maxrss would carry the parent's over exec
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux, bytes on macOS


def _textrnn_run(job: dict, device: torch.device) -> dict:
    from textrnn.config import ModelConfig, SampleConfig, TrainConfig
    from textrnn.lm.evaluate import cross_entropy_sum
    from textrnn.lm.sample import generate
    from textrnn.lm.task import train

    size = SIZES[job["size"]]
    extra = {"block": job["block"]} if "block" in job else {}
    model_config = ModelConfig(  # the bare cell: no regularizer costs time the baseline does not spend
        cell=job["cell"],
        backend=job["backend"],
        hidden_size=size["hidden_size"],
        num_layers=size["num_layers"],
        dropout=0.0,
        weight_drop=0.0,
        dropout_embedding=0.0,
        dropout_layers=0.0,
        dropout_output=0.0,
        **extra,
    )
    train_config = TrainConfig(
        corpus=job["corpus"],
        normalize="none",
        val_fraction=0.002,  # the trainer's closing validation is not what is measured here
        test_fraction=0.002,
        batch_size=size["batch_size"],
        num_steps=size["num_steps"],
        max_seconds=job["seconds"],
        max_steps=job.get("max_steps"),
        eval_every=10**9,
        warmup_steps=0,
        average="none",
        device=device.type,
        precision=job.get("precision", "fp32"),
        max_bad_steps=0,
    )
    with tempfile.TemporaryDirectory() as out:
        summary = train(model_config, train_config, Path(out) / "run")
        from textrnn.lm.model import load_run

        model, tokenizer, _ = load_run(Path(out) / "run", "last", device)
        result = {"train_tokens_per_sec": summary["tokens_per_sec"], "steps": summary["steps"]}
        text = Path(job["corpus"]).read_text(encoding="utf-8")[: job.get("eval_chars", 100_000)]
        tokens = torch.from_numpy(tokenizer.encode(text)).to(device)
        started = time.perf_counter()
        cross_entropy_sum(model, tokens, 256)
        result["eval_tokens_per_sec"] = len(tokens) / (time.perf_counter() - started)
        length = job.get("sample_length", SAMPLE_LENGTH)
        for streams in job.get("streams", (1,)):
            started = time.perf_counter()
            generate(model, "the ", SampleConfig(length=length, num_samples=streams, seed=0), tokenizer)
            rate = length * streams / (time.perf_counter() - started)
            result["sample_chars_per_sec" if streams == 1 else f"sample_chars_per_sec_{streams}"] = rate
    return result


def _corpus_run(job: dict) -> dict:
    from textrnn.text.splits import TextSource, load_splits

    started = time.perf_counter()
    _, splits, _ = load_splits(TextSource(corpus=job["corpus"], normalize="none"))
    seconds = time.perf_counter() - started
    tokens = sum(len(split) for split in splits.values())
    return {
        "load_seconds": seconds,
        "tokens": tokens,
        "token_bytes": int(sum(split.nbytes for split in splits.values())),
    }


def _baseline_tokens(corpus: str) -> tuple[torch.Tensor, int]:
    text = Path(corpus).read_text(encoding="utf-8")
    vocabulary = sorted(set(text))
    lookup = np.zeros(max(map(ord, vocabulary)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary))
    return torch.from_numpy(lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]), len(vocabulary)


def worker(job: dict) -> dict:
    """One measurement in this process: the ``kind`` of ``job`` is baseline, textrnn or corpus."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    if job["kind"] == "corpus":
        result = _corpus_run(job)
    elif job["kind"] == "baseline":
        result = d2l_baseline(*_baseline_tokens(job["corpus"]), SIZES[job["size"]], device, job["seconds"])
    else:
        result = {}
        if job.get("paired_seconds"):  # the baseline again, right before: a ratio that machine load cannot skew
            paired = d2l_baseline(
                *_baseline_tokens(job["corpus"]), SIZES[job["size"]], device, job["paired_seconds"], train_only=True
            )
            result["paired_baseline_train_tokens_per_sec"] = paired["train_tokens_per_sec"]
        result.update(_textrnn_run(job, device))
    result["peak_memory_mb"] = _peak_memory_mb(device)
    return result


def _spawn(job: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "textrnn.bench", "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {completed.returncode}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the suite


def plan(quick: bool, device: str) -> list[dict]:
    """The jobs of one run, in order: per size the baseline first, then textrnn's configurations.

    ``quick``: the d2l size, the fused GRU and LSTM (and the LSTM in bf16 where the CPU has bf16), minGRU in both layer shapes,
    1 and 10 MB corpora.
    """
    seconds = 2.0 if quick else 4.0
    jobs = []
    for size in ("d2l",) if quick else ("d2l", "large"):
        limit = {"seconds": seconds, "paired_seconds": 1.0 if quick else 2.0}
        if quick:
            limit["eval_chars"] = 20_000
        cells, backends = (("gru", "lstm", "mingru"), ("fused", "scratch")) if quick else (CELLS, ("fused", "scratch"))
        if size == "large" and device == "cpu":
            # A step of 128 x 100 tokens through three layers of 1024 takes seconds on two cores (the
            # baseline's about 17 s): two steps of the fused GRU and LSTM, a short evaluation, no more.
            limit = {"seconds": 0.0, "max_steps": 2, "eval_chars": 2_000, "sample_length": 50}
            cells, backends = ("gru", "lstm"), ("fused",)
        jobs.append({"kind": "baseline", "size": size, "seconds": seconds})
        jobs.extend(_cell_jobs(size, cells, backends, limit, quick))
        if size == "d2l":
            for cell in ("lstm",) if quick else ("gru", "lstm"):
                if cell == "lstm" and device == "cpu" and not cpu_has_bf16():
                    continue  # oneDNN refuses a bf16 LSTM without bf16 instructions (textrnn.train.step)
                jobs.append(
                    {"kind": "textrnn", "size": size, "cell": cell, "backend": "fused", "precision": "bf16", **limit}
                )
    for megabytes in (1, 10) if quick else (1, 10, 100):
        jobs.append({"kind": "corpus", "megabytes": megabytes})
    return jobs


def _cell_jobs(size: str, cells, backends, limit: dict, quick: bool) -> list[dict]:
    """One job per cell and backend it has (in quick plans the classic cells fused only); minGRU and
    minLSTM once per layer shape."""
    jobs = []
    for cell in cells:
        for backend in backends:
            no_fused = backend == "fused" and cell in SCRATCH_ONLY
            if no_fused or (quick and backend == "scratch" and cell not in SCRATCH_ONLY):
                continue
            job = {"kind": "textrnn", "size": size, "cell": cell, "backend": backend, **limit}
            if size == "d2l":
                job["streams"] = STREAMS if (cell, backend) == ("lstm", "fused") else (1,)
            if cell in ("mingru", "minlstm"):
                jobs.extend({**job, "block": block} for block in MINIMAL_BLOCKS)
            else:
                jobs.append(job)
    return jobs


def run_suite(
    quick: bool = False, device: str = "cpu", threads: int | None = None, corpus: str | None = None, report=None
):
    """Run every job of ``plan`` in its own process; returns the JSON record of the run."""
    report = report or (lambda job, result: None)
    threads = threads or torch.get_num_threads()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        text_corpus = corpus or str(corpus_file(scratch, 1_000_000))
        for job in plan(quick, device):
            job = {**job, "device": device, "threads": threads}
            if job["kind"] == "corpus":
                job["corpus"] = str(corpus_file(scratch, job["megabytes"] * 1_000_000))
            else:
                job["corpus"] = text_corpus
            result = _spawn(job)
            results.append({"job": job, "result": result})
            report(job, result)
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": threads,
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        },
        "quick": quick,
        "results": results,
        "table": table(results),
    }


def _label(job: dict) -> str:
    if job["kind"] == "baseline":
        return f"d2l-style loop (nn.GRU, one-hot, SGD, syncs), {job['size']}"
    if job["kind"] == "corpus":
        return f"corpus {job['megabytes']} MB"
    precision = f" {job['precision']}" if job.get("precision", "fp32") != "fp32" else ""
    block = f" {job['block']}" if "block" in job else ""
    return f"textrnn {job['cell']}{block} {job['backend']}{precision}, {job['size']}"


def table(results: list[dict]) -> str:
    """Rows: configuration, training / evaluation / sampling rates with their ratios to the baseline, memory.

    A training ratio is against the baseline run in the same worker just before (``paired``) where
    there is one, else against the baseline row of its size; the other ratios against the baseline row.
    """
    lines = [("configuration", "train tok/s", "x base", "eval tok/s", "x base", "sample ch/s", "x base", "peak MB")]
    baselines = {}
    corpus_lines = [("corpus", "load + tokenize s", "tokens", "token array MB", "peak MB")]
    for item in results:
        job, result = item["job"], item["result"]
        if "error" in result:
            lines.append((_label(job), "error: " + result["error"][:60], "", "", "", "", "", ""))
            continue
        if job["kind"] == "corpus":
            corpus_lines.append(
                (
                    _label(job),
                    f"{result['load_seconds']:.2f}",
                    f"{result['tokens']:,}",
                    f"{result['token_bytes'] / 2**20:.1f}",
                    f"{result['peak_memory_mb']:,.0f}",
                )
            )
            continue
        if job["kind"] == "baseline":
            baselines[job["size"]] = result
        base = baselines.get(job["size"], {})

        def ratio(key, result=result, base=base):
            return f"{result[key] / base[key]:.2f}" if key in result and base.get(key) else ""

        paired = result.get("paired_baseline_train_tokens_per_sec")
        train_ratio = f"{result['train_tokens_per_sec'] / paired:.2f}" if paired else ratio("train_tokens_per_sec")
        lines.append(
            (
                _label(job),
                f"{result['train_tokens_per_sec']:,.0f}",
                train_ratio,
                f"{result['eval_tokens_per_sec']:,.0f}",
                ratio("eval_tokens_per_sec"),
                f"{result['sample_chars_per_sec']:,.0f}",
                ratio("sample_chars_per_sec"),
                f"{result['peak_memory_mb']:,.0f}",
            )
        )
        streams = [key for key in result if key.startswith("sample_chars_per_sec_")]
        for key in streams:
            count = int(key.rsplit("_", 1)[1])
            scaling = result[key] / result["sample_chars_per_sec"] / count
            lines.append(
                (
                    f"  sampling {count} streams in one batch",
                    "",
                    "",
                    "",
                    "",
                    f"{result[key]:,.0f}",
                    f"{scaling:.2f} of linear",
                    "",
                )
            )
    return "\n\n".join(filter(None, (columns(lines), _against_gru(results), columns(corpus_lines))))


def _paired_rate(result: dict) -> float | None:
    """Training tokens/s over the baseline's just before in the same worker: free of the machine's load."""
    paired = result.get("paired_baseline_train_tokens_per_sec")
    return result["train_tokens_per_sec"] / paired if paired and "train_tokens_per_sec" in result else None


def _against_gru(results: list[dict]) -> str:
    """minGRU and minLSTM training speed as a multiple of the fused GRU's of the same size (paired rates)."""
    rates = {}
    for item in results:
        job, rate = item["job"], _paired_rate(item["result"])
        if job["kind"] == "textrnn" and rate and job.get("precision", "fp32") == "fp32":
            rates[(job["size"], job["cell"], job.get("block"), job["backend"])] = rate
    lines = []
    for (size, cell, block, _), rate in rates.items():
        gru = rates.get((size, "gru", None, "fused"))
        if block and gru:
            lines.append(f"{cell} {block}, {size}: {rate / gru:.2f}x the fused GRU's training tokens/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m textrnn.bench --worker JSON``: one measurement in this process, its result as JSON on stdout."""
    arguments = argv if argv is not None else sys.argv[1:]
    if arguments[:1] != ["--worker"] or len(arguments) != 2:
        raise SystemExit("usage: python -m textrnn.bench --worker JSON  (the suite itself: textrnn bench)")
    print(json.dumps(worker(json.loads(arguments[1]))))


def describe(job: dict, result: dict) -> str:
    """One progress line per finished measurement."""
    if "error" in result:
        return f"{_label(job)}: error: {result['error']}"
    if job["kind"] == "corpus":
        return f"{_label(job)}: {result['load_seconds']:.2f} s, peak {result['peak_memory_mb']:,.0f} MB"
    return f"{_label(job)}: {result['train_tokens_per_sec']:,.0f} training tokens/s"


if __name__ == "__main__":
    main()
