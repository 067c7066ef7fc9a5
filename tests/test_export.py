"""textrnn export --format onnx: every cell round-trips through onnxruntime, infill is refused, and the
numpy-only sampler in scripts/ writes what `textrnn sample --greedy` writes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import ForecastConfig, ModelConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.model import Forecaster
from textrnn.lm.model import CharLM

from conftest import TINY_CLI

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from textrnn import export  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "onnx_sample.py"
VARIANTS = [
    ("gru", "fused", {}),
    ("lstm", "fused", {}),
    ("rnn_tanh", "fused", {}),
    ("rnn_relu", "fused", {"one_hot": True, "output_depth": 2}),
    ("gru", "scratch", {}),
    ("lstm", "scratch", {}),
    ("rnn_tanh", "scratch", {"transition_depth": 2}),
    ("peephole_lstm", "scratch", {}),
]


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.mark.parametrize("cell, backend, extra", VARIANTS)
def test_each_cell_round_trips_through_onnxruntime(cell, backend, extra):
    config = ModelConfig(
        vocab_size=12, cell=cell, backend=backend, hidden_size=8, num_layers=2, dropout=0.0, embedding_size=8, **extra
    )
    model = CharLM(config).eval()
    graph, names = export.language_model_graph(model)
    assert export.check_graph(graph, model, "causal", names) <= 1e-5
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    inputs = {item.name: item.shape for item in session.get_inputs()}
    with_cell = cell in ("lstm", "peephole_lstm")
    assert list(inputs) == ["tokens", "hidden", *(["cell"] if with_cell else [])]
    assert inputs["tokens"] == ["batch"] and inputs["hidden"] == [2, "batch", 8]  # dynamic batch, fixed sizes
    # The one step, taken over a text, gives the logits of the whole-sequence forward.
    tokens = torch.randint(0, 12, (3, 6))
    with torch.no_grad():
        expected, _ = model(tokens)
    state = {name: np.zeros((2, 3, 8), dtype=np.float32) for name in list(inputs)[1:]}
    for position in range(6):
        logits, *new_state = session.run(None, {"tokens": tokens[:, position].numpy(), **state})
        state = dict(zip(state, new_state))
        np.testing.assert_allclose(logits, expected[:, position].numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell, backend, bidirectional", [("lstm", "fused", False), ("peephole_lstm", "scratch", True)])
def test_forecasters_export_window_in_forecast_out(cell, backend, bidirectional):
    config = ForecastConfig(
        cell=cell, backend=backend, bidirectional=bidirectional, hidden_size=8, lookback=12, horizon=3
    )
    model = Forecaster(config, 4).eval()
    graph, names = export.forecaster_graph(model, 12, 4)
    assert export.check_graph(graph, model, "forecast", names, 12, 4) <= 1e-5
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (forecast,) = session.run(None, {"window": np.zeros((7, 12, 4), dtype=np.float32)})
    assert forecast.shape == (7, 3)


def test_an_infill_model_is_refused_naming_why():
    config = ModelConfig(vocab_size=12, hidden_size=8, num_layers=1, task="infill", bidirectional=True, dropout=0.0)
    with pytest.raises(TextrnnError, match="--task infill: it reads the text on both sides"):
        export.language_model_graph(CharLM(config).eval())


def test_a_graph_that_disagrees_with_pytorch_is_not_written(tiny_corpus, monkeypatch):
    assert invoke("train", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "3", "--eval-every", "3").exit_code == 0
    original = export._reference
    monkeypatch.setattr(export, "_reference", lambda *args: [value + 1e-3 for value in original(*args)])
    result = invoke("export", "--out", "out/model.onnx")
    assert result.exit_code == 1 and "differs from PyTorch by up to 1.00e-03" in result.stderr
    assert not Path("out/model.onnx").exists()


def train(tiny_corpus, out, *options):
    result = invoke(
        "train", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "40", "--eval-every", "20", "--lr", "0.03",
        "--out", out, *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def without_torch(*args, expect_failure: bool = False) -> str:
    """Run scripts/onnx_sample.py where `import torch` (and textrnn) fails: numpy, onnxruntime, tokenizers only.
    Returns its stdout (its stderr when ``expect_failure``)."""
    blocker = (
        "import runpy, sys; sys.modules['torch'] = None; sys.modules['textrnn'] = None; "
        f"sys.argv = ['onnx_sample.py', *{list(map(str, args))!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert (result.returncode != 0) == expect_failure, result.stderr
    return result.stderr if expect_failure else result.stdout


@pytest.mark.parametrize("cell, options", [("lstm", []), ("gru", ["--tokenizer", "byte", "--num-layers", "2"])])
def test_the_onnx_sampler_writes_what_sample_greedy_writes(tiny_corpus, cell, options):
    train(tiny_corpus, "runs/a", "--cell", cell, *options)
    result = invoke("export", "--checkpoint", "runs/a", "--out", "exported/model.onnx", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["max_abs_difference"] <= 1e-5 and summary["tokenizer"] == str(Path("exported/tokenizer.json"))
    metadata = {item.key: item.value for item in onnx.load("exported/model.onnx").metadata_props}
    assert json.loads(metadata["textrnn"])["cell"] == cell
    for prefix in ("the time", "his grey"):
        expected = invoke("sample", "--checkpoint", "runs/a", "--prefix", prefix, "--length", "60", "--greedy")
        assert expected.exit_code == 0
        assert without_torch("exported/model.onnx", "--prefix", prefix, "--length", "60", "--greedy") == expected.stdout
    if "byte" not in options:  # a character the vocabulary lacks is named, as `textrnn sample` does
        assert "lacks: 'Z'" in without_torch("exported/model.onnx", "--prefix", "Zeit", expect_failure=True)


def test_export_defaults_to_the_newest_run_and_exports_forecasters(tiny_corpus, tmp_path):
    hours = np.arange(24 * 30)
    lines = [f"2021-01-{1 + h // 24:02d} {h % 24:02d}:00,{100 + 20 * np.sin(2 * np.pi * h / 24):.3f}" for h in hours]
    (tmp_path / "load.csv").write_text("time,load\n" + "\n".join(lines) + "\n")
    result = invoke(
        "forecast", "train", "--csv", tmp_path / "load.csv", "--time-col", "time", "--target", "load",
        "--lookback", "24", "--hidden-size", "8", "--batch-size", "32", "--max-steps", "5", "--eval-every", "5",
        "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke("export", "--out", "forecaster.onnx", "--json")  # the newest run is the forecaster
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "forecast" and summary["inputs"] == ["window"] and summary["tokenizer"] is None
    description = json.loads({item.key: item.value for item in onnx.load("forecaster.onnx").metadata_props}["textrnn"])
    assert description["lookback"] == 24 and description["series"][0]["name"] == "load"


def test_bad_requests_are_one_clear_line(tiny_corpus):
    result = invoke("export", "--checkpoint", "nowhere")
    assert result.exit_code == 1 and "nowhere does not exist" in result.stderr
    train(tiny_corpus, "runs/i", "--task", "infill")
    result = invoke("export", "--checkpoint", "runs/i", "--out", "infill.onnx")
    assert result.exit_code == 1 and "--task infill" in result.stderr and not Path("infill.onnx").exists()
    result = invoke("export", "--checkpoint", "runs/i", "--out", "model.txt")
    assert result.exit_code == 1 and "should end in .onnx" in result.stderr
