import itertools
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import textrnn
from textrnn.cli import cli
from textrnn.config import ModelConfig, SampleConfig
from textrnn.errors import TextrnnError
from textrnn.lm.model import CharLM
from textrnn.lm.sample import TextStream, _filter_logits, beam_search, fill, generate, iter_generate, token_table
from textrnn.text.tokenizer import ByteTokenizer, CharTokenizer

from conftest import TINY_CLI


@pytest.fixture
def model():
    tokenizer = CharTokenizer.build("abcdefgh ", "d2l")
    model = CharLM(
        ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_layers=1, dropout=0.0, embedding_size=4)
    )
    model.tokenizer = tokenizer
    return model.eval()


def test_same_seed_same_text_and_every_sample_starts_with_the_prefix(model):
    first = generate(model, "Bad Cafe", length=30, seed=5, num_samples=3)
    second = generate(model, "Bad Cafe", length=30, seed=5, num_samples=3)
    assert first == second
    assert all(text.startswith("Bad Cafe") and len(text) == len("Bad Cafe") + 30 for text in first)
    assert generate(model, "bad", length=30, seed=6) != generate(model, "bad", length=30, seed=7)


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, "abc", length=20, greedy=True)
    assert generate(model, "abc", length=20, top_k=1, seed=1) == greedy
    assert generate(model, "abc", length=20, top_p=1e-6, seed=2) == greedy


def test_incremental_generation_matches_rerunning_the_whole_text(model):
    text = generate(model, "fade", length=15, greedy=True)[0]
    ids = torch.as_tensor(model.tokenizer.encode(text))
    with torch.no_grad():
        logits, _ = model(ids.unsqueeze(0))
    logits[0, :, 0] = float("-inf")
    predicted = logits[0, 3:-1].argmax(-1)  # predictions for the generated positions
    assert torch.equal(predicted, ids[4:])


def test_filter_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_filter_logits(logits, SampleConfig(top_p=0.7)))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(_filter_logits(logits, SampleConfig(top_k=3)))
    assert kept.tolist() == [[True, True, True, False]]


def test_unknown_prefix_characters_are_named(model):
    tokenizer = CharTokenizer.build("abc", "none")
    with pytest.raises(TextrnnError, match="'xz'"):
        generate(model, "abxz", length=5, tokenizer=tokenizer)


def test_empty_prefix_is_refused(model):
    with pytest.raises(TextrnnError, match="prefix is empty"):
        generate(model, "", length=5)


@pytest.mark.parametrize(
    "options", [{"temperature": 0}, {"temperature": -1}, {"top_k": 0}, {"top_p": 1.5}, {"length": -1}]
)
def test_bad_sampling_options_are_refused(options):
    with pytest.raises(TextrnnError):
        SampleConfig(**options)


@pytest.fixture
def infill_model():
    tokenizer = CharTokenizer.build("abcdefgh ", "d2l")
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=8,
        num_layers=1,
        dropout=0.0,
        embedding_size=4,
        bidirectional=True,
        task="infill",
    )
    model = CharLM(config).eval()
    model.tokenizer = tokenizer
    return model


def test_fill_replaces_each_blank_and_keeps_the_rest(infill_model):
    filled = fill(infill_model, "Bad c_fe, _e")
    assert len(filled) == len("Bad c_fe, _e") and "_" not in filled
    assert filled[:5] == "Bad c" and filled[6:10] == "fe, " and filled[11] == "e"
    assert fill(infill_model, "a_c", greedy=False, seed=3) == fill(infill_model, "a_c", greedy=False, seed=3)


def test_fill_and_generate_refuse_the_wrong_kind_of_model(model, infill_model):
    with pytest.raises(TextrnnError, match="--task infill"):
        fill(model, "a_c")
    with pytest.raises(TextrnnError, match="textrnn fill"):
        generate(infill_model, "abc", length=3)
    with pytest.raises(TextrnnError, match="no '_' to fill"):
        fill(infill_model, "abc")


# ---------------------------------------------------------------------------------------------
# Streaming, stop strings, beam search


def test_iter_generate_joins_up_to_generate(model):
    expected = generate(model, "bad", length=40, seed=3, num_samples=2)
    texts, reasons = ["", ""], [None, None]
    for chunk in iter_generate(model, "bad", length=40, seed=3, num_samples=2):
        assert reasons[chunk.index] is None  # nothing after a sample's last chunk
        texts[chunk.index] += chunk.text
        reasons[chunk.index] = chunk.finish_reason
    assert ["bad" + text for text in texts] == expected
    assert reasons == ["length", "length"]


def test_a_stop_string_ends_the_sample_before_it(model):
    full = generate(model, "bad", length=60, seed=4)[0][3:]
    stop = full[20:22]
    cut = full.find(stop)
    assert generate(model, "bad", length=60, seed=4, stop=(stop,)) == ["bad" + full[:cut]]
    chunks = list(iter_generate(model, "bad", length=60, seed=4, stop=[stop, "zz"]))
    assert "".join(chunk.text for chunk in chunks) == full[:cut] and chunks[-1].finish_reason == "stop"
    # A stop string never written: the length cap ends the sample, nothing held back is lost.
    chunks = list(iter_generate(model, "bad", length=60, seed=4, stop=["zz"]))
    assert "".join(chunk.text for chunk in chunks) == full and chunks[-1].finish_reason == "length"


def test_text_that_may_start_a_stop_string_is_held_back_until_known():
    table = [char.encode() for char in "?abcx"]
    stream = TextStream(table, ("abc", "bx"))
    shown = [stream.push(token) for token in [4, 1, 2, 1, 2, 4]]  # x a b a b x
    assert shown == ["x", "", "", "ab", "", "a"] and stream.stopped  # "bx" stops: "xaba" shown
    stream = TextStream(table, ("abc",))
    assert [stream.push(token) for token in [1, 2]] == ["", ""] and stream.flush() == "ab"


def test_multibyte_characters_are_never_cut():
    table = token_table(ByteTokenizer.build("none"))
    stream = TextStream(table, ("é!",))
    shown = [stream.push(byte + 1) for byte in "hé€é!x".encode()]
    assert "".join(shown) == "hé€" and stream.stopped
    assert all(piece.encode().decode() == piece for piece in shown)


def test_beam_search_finds_the_best_text_of_an_exhaustive_search():
    tokenizer = CharTokenizer.build("ab", "none")
    torch.manual_seed(3)
    model = CharLM(ModelConfig(vocab_size=3, cell="gru", hidden_size=8, num_layers=2, dropout=0.0, embedding_size=4))
    model.tokenizer = tokenizer
    model.eval()
    for stops in [(), ("ba",), ("bb", "aaa")]:
        expected = _exhaustive(model, tokenizer, "ab", 5, stops)
        found = beam_search(model, "ab", length=5, beam=32, num_samples=3, stop=stops)
        assert [text for text, _, _ in found] == [text for text, _, _ in expected[:3]]
        assert [reason for _, reason, _ in found] == [reason for _, reason, _ in expected[:3]]
        assert [score for _, _, score in found] == pytest.approx([score for _, _, score in expected[:3]], abs=1e-5)
    # One beam is greedy search; the result does not depend on anything random.
    assert beam_search(model, "ab", length=6, beam=1)[0][0] == generate(model, "ab", length=6, greedy=True)[0][2:]
    assert generate(model, "ab", length=9, beam=3) == generate(model, "ab", length=9, beam=3, seed=7)


def _exhaustive(model, tokenizer, prefix, length, stops):
    """Every continuation the search could end with, scored by re-running the model on the whole text:
    (text before the first stop string, finish reason, mean log-probability per token), best first."""
    prefix_ids = [int(i) for i in tokenizer.encode(prefix)]
    results = []
    for size in range(1, length + 1):
        for continuation in itertools.product(range(1, tokenizer.vocab_size), repeat=size):
            text = tokenizer.decode(continuation)
            shorter = tokenizer.decode(continuation[:-1])
            if any(stop in shorter for stop in stops):
                continue  # it had ended before its last token
            stopped = any(stop in text for stop in stops)
            if not stopped and size < length:
                continue  # it goes on
            with torch.no_grad():
                logits, _ = model(torch.tensor([prefix_ids + list(continuation)]))
            log_probabilities = torch.log_softmax(logits[0], dim=-1)
            positions = range(len(prefix_ids) - 1, len(prefix_ids) + size - 1)
            total = sum(float(log_probabilities[p, token]) for p, token in zip(positions, continuation))
            cut = min([text.find(stop) for stop in stops if stop in text], default=len(text))
            results.append((text[:cut], "stop" if stopped else "length", total / size))
    return sorted(results, key=lambda result: -result[2])


@pytest.mark.parametrize(
    "options",
    [
        {"stop": [""]},
        {"beam": 0},
        {"beam": 2, "temperature": 0.5},
        {"beam": 2, "top_k": 3},
        {"beam": 2, "num_samples": 3},
    ],
)
def test_bad_stop_and_beam_options_are_refused(options):
    with pytest.raises(TextrnnError):
        SampleConfig(**options)


# ---------------------------------------------------------------------------------------------
# The sample command: streaming, Ctrl-C, --stop, --beam


@pytest.fixture
def run_dir(tiny_corpus, tmp_path):
    args = ["train", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "6", "--eval-every", "3", "--max-seconds", "0"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "--out", tmp_path / "run"]])
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def _sample(*args):
    result = CliRunner().invoke(cli, ["sample", *[str(a) for a in args]])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_streamed_sample_is_the_json_sample_and_stop_and_beam_work(run_dir):
    common = ["--checkpoint", run_dir, "--prefix", "the time", "--length", 300, "--seed", 2]
    expected = json.loads(_sample(*common, "--json"))["samples"][0]
    assert _sample(*common) == expected + "\n"
    stop = expected[len("the time") + 40 : len("the time") + 42]
    cut = expected.find(stop, len("the time"))
    assert json.loads(_sample(*common, "--stop", stop, "--stop", "qq", "--json"))["samples"] == [expected[:cut]]
    assert _sample(*common, "--stop", stop) == expected[:cut] + "\n"
    beams = json.loads(_sample(*common[:6], "--beam", 3, "--num-samples", 2, "--json"))["samples"]
    model = textrnn.load_checkpoint(run_dir)
    assert beams == [
        "the time" + text for text, _, _ in beam_search(model, "the time", length=300, beam=3, num_samples=2)
    ]


def test_ctrl_c_stops_a_streamed_sample_and_keeps_what_was_written(run_dir):
    command = [sys.executable, "-m", "textrnn", "sample", "--checkpoint", str(run_dir), "--prefix", "the"]
    process = subprocess.Popen([*command, "--length", "100000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = b""
    while len(received) < 300:  # text arrives long before the sample could end
        received += os.read(process.stdout.fileno(), 4096)
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=30)
    assert process.returncode == 130
    text = (received + rest).decode("utf-8")  # whole characters only
    assert text.startswith("the") and text.endswith("\n") and len(text) > 300
    assert b"interrupted" in errors and b"Traceback" not in errors
