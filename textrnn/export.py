"""ONNX export of a run: checked against PyTorch with onnxruntime before anything is written.

A causal language model leaves as its one-step function, the loop of ``textrnn sample``::

    tokens (B,) int64, hidden (L, B, H) [, cell (L, B, H) for LSTMs]
        -> logits (B, V), new_hidden (L, B, H) [, new_cell (L, B, H)]

(L layers, H hidden units, V tokens; the zero state starts a text). A forecaster leaves as
``window (B, lookback, F) -> forecast (B, horizon)`` in scaled units. The batch axis B is
dynamic in both. The run's description (task, sizes and, for forecasters, the series and
their scalers) travels in the model's metadata under the key ``textrnn``; a language
model's ``tokenizer.json`` is copied beside the ``.onnx`` file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textrnn.atomic import atomic_write
from textrnn.errors import TextrnnError

FORMATS = ("onnx",)
OPSET = 17
TOLERANCE = 1e-5  # absolute and relative, fp32
CHECK_BATCH = 5  # the check runs another batch size than the traced one, so the dynamic axis is exercised
_TRACE_BATCH = 2


def require_onnx():
    """``(onnx, onnxruntime)``, or a clear error naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise TextrnnError("export needs onnx and onnxruntime: pip install 'textrnn[export]'") from None
    return onnx, onnxruntime


class LanguageModelStep(nn.Module):
    """A causal ``CharLM`` as one step with the state as separate tensors, the form ONNX takes.

    ``forward(tokens (B,), hidden (L, B, H)[, cell (L, B, H)]) -> (logits (B, V), new_hidden[, new_cell])``.
    It runs the model's own forward over a sequence of length one (embedding, encoder, deep
    output, head), so the exported graph is the model, not a copy of its equations.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.state_shapes = state_shapes(model)
        self.with_cell = len(self.state_shapes) == 2

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor | None = None):
        state = (hidden, cell) if self.with_cell else hidden
        logits, state = self.model(tokens.unsqueeze(1), state)
        if self.with_cell:
            return logits.squeeze(1), state[0], state[1]
        return logits.squeeze(1), state


@torch.no_grad()
def state_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """The recurrent state of a causal ``CharLM`` as (L, H) per tensor, batch left out: one tensor for
    RNNs and GRUs, two (hidden, cell) for the LSTMs. Read from one step, so any cell's layout is right."""
    was_training = model.training
    model.eval()
    try:
        _, state = model.step(torch.zeros(1, dtype=torch.long), None)
    finally:
        model.train(was_training)
    parts = state if isinstance(state, tuple) else (state,)
    if not 1 <= len(parts) <= 2 or any(not isinstance(part, torch.Tensor) or part.dim() != 3 for part in parts):
        raise TextrnnError("the model's recurrent state is not one or two (layers, batch, hidden) tensors")
    return [(part.shape[0], part.shape[2]) for part in parts]


@contextlib.contextmanager
def _traceable_cells():
    """Send the scratch cells through their autograd path while tracing.

    Their hand-written autograd Functions write each step into preallocated buffers
    (``out=``), which the exporter cannot translate (it stops at ``addmm(..., out=)``); the
    autograd path computes the same forward with plain operators. The check afterwards
    compares the graph with the model as ``textrnn sample`` runs it (hand-written path).
    """
    from textrnn.nn import cells

    previous = cells.HANDWRITTEN_BACKWARD
    cells.HANDWRITTEN_BACKWARD = False
    try:
        yield
    finally:
        cells.HANDWRITTEN_BACKWARD = previous


@contextlib.contextmanager
def _quiet_output():
    """Send file descriptors 1 and 2 to /dev/null while exporting: when the TorchScript exporter fails it writes
    the whole traced graph to stdout (torch 2.13 turns its ONNX log on by mistake), hundreds of lines that would
    break ``--json``; the failure is reported as one line instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        for descriptor, copy in zip((1, 2), saved):
            os.dup2(copy, descriptor)
            os.close(copy)


def _to_onnx(module: nn.Module, arguments: tuple, inputs: list[str], outputs: list[str], batch_axes: dict) -> bytes:
    """Trace ``module`` with the TorchScript exporter (it knows nn.LSTM/GRU/RNN) into ONNX bytes."""
    buffer = io.BytesIO()
    with _traceable_cells(), _quiet_output(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notes: the numerical check decides
        torch.onnx.export(
            module,
            arguments,
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {axis: "batch"} for name, axis in batch_axes.items()},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def _describe(what: str, error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{what} could not be exported to ONNX ({(lines[0] if lines else type(error).__name__)[:200]})"


def language_model_graph(model: nn.Module) -> tuple[bytes, dict]:
    """A causal ``CharLM`` -> (ONNX bytes of its one-step function, the names and shapes of its inputs)."""
    config = model.config
    if config.task != "causal":
        raise TextrnnError(
            f"this model was trained with --task {config.task}: it reads the text on both sides of each character, so "
            "it has no left-to-right step to export; export a causal model (trained without --task infill)"
        )
    step = LanguageModelStep(model).eval()
    state_names = ["hidden", "cell"] if step.with_cell else ["hidden"]
    inputs = ["tokens", *state_names]
    outputs = ["logits", *(f"new_{name}" for name in state_names)]
    arguments = (
        torch.zeros(_TRACE_BATCH, dtype=torch.long),
        *(torch.zeros(layers, _TRACE_BATCH, hidden_size) for layers, hidden_size in step.state_shapes),
    )
    batch_axes = {"tokens": 0, "logits": 0, **{name: 1 for name in [*state_names, *outputs[1:]]}}
    try:
        graph = _to_onnx(step, arguments, inputs, outputs, batch_axes)
    except Exception as error:  # the exporter raises many kinds; the message names the cell
        raise TextrnnError(_describe(f"the {config.cell} ({config.backend} backend) model", error)) from None
    return graph, {"inputs": inputs, "outputs": outputs, "state": state_names}


def forecaster_graph(model: nn.Module, lookback: int, input_size: int) -> tuple[bytes, dict]:
    """A ``Forecaster`` -> (ONNX bytes of ``window (B, lookback, F) -> forecast (B, horizon)``, names)."""
    arguments = (torch.zeros(_TRACE_BATCH, lookback, input_size),)
    try:
        graph = _to_onnx(model.eval(), arguments, ["window"], ["forecast"], {"window": 0, "forecast": 0})
    except Exception as error:
        config = model.config
        raise TextrnnError(_describe(f"the {config.cell} ({config.backend} backend) forecaster", error)) from None
    return graph, {"inputs": ["window"], "outputs": ["forecast"], "state": []}


def _random_inputs(model: nn.Module, task: str, generator: torch.Generator, lookback: int = 0, input_size: int = 0):
    config = model.config
    if task == "forecast":
        return (torch.randn(CHECK_BATCH, lookback, input_size, generator=generator),)
    tokens = torch.randint(0, config.vocab_size, (CHECK_BATCH,), generator=generator)
    states = [torch.randn(layers, CHECK_BATCH, hidden, generator=generator) for layers, hidden in state_shapes(model)]
    return (tokens, *states)


@torch.no_grad()
def _reference(model: nn.Module, task: str, arguments: tuple) -> list[np.ndarray]:
    """What PyTorch computes for ``arguments``: the sampler's ``model.step`` (language models), ``model(window)``."""
    if task == "forecast":
        return [model(*arguments).numpy()]
    tokens, *states = arguments
    logits, state = model.step(tokens, tuple(states) if len(states) == 2 else states[0])
    return [logits.numpy(), *(part.numpy() for part in (state if isinstance(state, tuple) else (state,)))]


def check_graph(
    graph: bytes, model: nn.Module, task: str, names: dict, lookback: int = 0, input_size: int = 0
) -> float:
    """Run ``graph`` with onnxruntime on random inputs and compare with PyTorch -> the largest difference.

    Raises ``TextrnnError`` when the graph is invalid or any output differs by more than
    ``TOLERANCE`` (absolute plus relative, as ``numpy.allclose``).
    """
    onnx, onnxruntime = require_onnx()
    try:
        onnx.checker.check_model(onnx.load_from_string(graph))
        session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise TextrnnError(_describe("the model (the ONNX checker or onnxruntime refused the graph)", error)) from None
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(3):
        arguments = _random_inputs(model, task, generator, lookback, input_size)
        got = session.run(names["outputs"], {name: value.numpy() for name, value in zip(names["inputs"], arguments)})
        for name, result, expected in zip(names["outputs"], got, _reference(model, task, arguments)):
            if result.shape != expected.shape:
                raise TextrnnError(f"the ONNX graph gives {name} of shape {result.shape}, PyTorch {expected.shape}")
            difference = np.abs(result - expected)
            worst = max(worst, float(difference.max(initial=0.0)))
            if not np.all(difference <= TOLERANCE + TOLERANCE * np.abs(expected)):
                raise TextrnnError(
                    f"the ONNX graph differs from PyTorch by up to {float(difference.max()):.2e} in {name} "
                    f"(allowed {TOLERANCE:g}); nothing was written"
                )
    return worst


def _with_metadata(graph: bytes, description: dict) -> bytes:
    onnx, _ = require_onnx()
    proto = onnx.load_from_string(graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "textrnn", json.dumps(description, sort_keys=True)
    proto.producer_name = "textrnn"
    return proto.SerializeToString()


def _newest_any_run() -> tuple[Path, str]:
    """The newest run of either task: (run directory, task)."""
    from textrnn.checkpoint import WEIGHTS, newest_run

    found = []
    for task in ("charlm", "forecast"):
        try:
            found.append((newest_run(task=task), task))
        except TextrnnError:
            continue
    if not found:
        raise TextrnnError(
            "no trained runs in checkpoints/: train one with `textrnn train` (or `textrnn forecast train`), "
            "or give --checkpoint DIR"
        )

    def written(item):
        return max((item[0] / f"{w}.pt").stat().st_mtime for w in WEIGHTS if (item[0] / f"{w}.pt").is_file())

    return max(found, key=written)


def _task_of(checkpoint: Path) -> str:
    run_dir = checkpoint.parent if checkpoint.is_file() else checkpoint
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("task", "charlm")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return "charlm"  # load_run then names what is wrong with the directory


def export_run(
    checkpoint: str | Path | None, out: str | Path, weights: str | None = None, export_format: str = "onnx"
) -> dict:
    """Export a run (``checkpoint``: a run directory, or None for the newest run of either task) to ``out``.

    The graph is checked with onnxruntime against PyTorch before it is written (atomically);
    a language model's ``tokenizer.json`` is copied beside ``out``. Returns what was written:
    ``out``, ``task``, ``inputs``, ``outputs``, ``max_abs_difference``, ``opset``, ``bytes``,
    ``tokenizer`` (None for forecasters) and ``checkpoint`` (the run directory).
    """
    if export_format not in FORMATS:
        raise TextrnnError(f"unknown export format {export_format!r}: choose one of {', '.join(FORMATS)}")
    require_onnx()
    from textrnn.forecast.model import load_forecast_run
    from textrnn.lm.model import load_run

    if checkpoint is None:
        checkpoint, task = _newest_any_run()
    else:
        checkpoint = Path(checkpoint)
        task = _task_of(checkpoint) if checkpoint.exists() else "charlm"
    out = Path(out)
    if out.suffix != ".onnx":
        raise TextrnnError(f"--out {out} should end in .onnx (the tokenizer.json goes beside it)")
    if task == "forecast":
        model, forecast_config, config = load_forecast_run(checkpoint, weights, "cpu")
        input_size = int(config["data"]["input_size"])
        lookback = forecast_config.lookback
        graph, names = forecaster_graph(model, lookback, input_size)
        difference = check_graph(graph, model, task, names, lookback, input_size)
        description = {
            "task": "forecast",
            "cell": forecast_config.cell,
            "lookback": lookback,
            "horizon": forecast_config.horizon,
            "input_size": input_size,
            "residual": forecast_config.residual,
            "calendar": forecast_config.calendar,
            "series": [{"name": item["name"], "scaler": item["scaler"]} for item in config["data"]["series"]],
        }
    else:
        model, tokenizer, config = load_run(checkpoint, weights, "cpu")
        graph, names = language_model_graph(model)
        difference = check_graph(graph, model, task, names)
        description = {
            "task": "causal",
            "cell": model.config.cell,
            "num_layers": model.config.num_layers,
            "hidden_size": model.config.hidden_size,
            "vocab_size": model.config.vocab_size,
            "tokenizer": config["tokenizer"].get("type", "char"),
            "unk_id": tokenizer.unk_id,
            "state": names["state"],
        }
    description.update(run=str(config["run_dir"]), weights=config["weights"], inputs=names["inputs"])
    graph = _with_metadata(graph, description)
    tokenizer_path = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if task != "forecast":
            tokenizer_path = out.parent / "tokenizer.json"
            source = Path(config["run_dir"]) / "tokenizer.json"
            if source.resolve() != tokenizer_path.resolve():
                atomic_write(tokenizer_path, source.read_bytes())
        atomic_write(out, graph)
    except OSError as error:
        raise TextrnnError(f"could not write {out} ({error.strerror or error})") from None
    return {
        "out": str(out),
        "task": description["task"],
        "inputs": names["inputs"],
        "outputs": names["outputs"],
        "max_abs_difference": difference,
        "opset": OPSET,
        "bytes": len(graph),
        "tokenizer": None if tokenizer_path is None else str(tokenizer_path),
        "checkpoint": str(config["run_dir"]),
    }


__all__ = ["FORMATS", "LanguageModelStep", "check_graph", "export_run", "forecaster_graph", "language_model_graph"]
