"""Hostile inputs get a clear error or a correct result, never a traceback or a hang (property-based)."""

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textrnn.cli import cli
from textrnn.config import ModelConfig, SampleConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.sample import generate
from textrnn.lm.task import train
from textrnn.text.batching import Batches
from textrnn.text.splits import load_splits
from textrnn.text.tokenizer import CharTokenizer

from conftest import TINY_CLI, TINY_MODEL, TINY_TEXT, TINY_TRAIN

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_clean_failure(result):
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 1:  # progress lines may come first; then exactly one error line
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, result.stderr


@FAST
@given(
    text=st.text(max_size=400), training=st.text(min_size=1, max_size=60), normalize=st.sampled_from(["d2l", "none"])
)
def test_fast_encoding_matches_the_hf_tokenizer(text, training, normalize):
    tokenizer = CharTokenizer.build(CharTokenizer.build("", normalize).normalize(training), normalize)
    ids = tokenizer.encode(text)
    assert ids.tolist() == tokenizer.encode_with_backend(text).tolist()
    if not tokenizer.unknown_characters(text):
        assert tokenizer.decode(ids) == tokenizer.normalize(text)


@FAST
@given(payload=st.binary(max_size=600), normalize=st.sampled_from(["d2l", "none"]))
def test_any_bytes_as_a_corpus_split_or_fail_clearly(payload, normalize, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(payload)
    config = TrainConfig(corpus=str(path), normalize=normalize, batch_size=2, num_steps=4)
    try:
        tokenizer, splits, data = load_splits(config)
        Batches(__import__("torch").from_numpy(splits["train"]), 2, 4, "sequential", 0)
    except TextrnnError as error:
        assert str(error)
        return
    assert sum(len(split) for split in splits.values()) == sum(data["tokens"].values())
    assert all(int(split.max(initial=0)) < tokenizer.vocab_size for split in splits.values())


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "is empty"),
        (b"a", "too short"),
        (b"1234 !!! ??? 5678" * 3, "too short"),  # nothing but unknowns after d2l normalization
        (b"\xff\xfe broken", "not valid UTF-8"),
    ],
)
def test_degenerate_corpora_are_refused_clearly(payload, message, tmp_path):
    (tmp_path / "c.txt").write_bytes(payload)
    result = CliRunner().invoke(cli, ["train", "--corpus", str(tmp_path / "c.txt"), "--normalize", "d2l"])
    assert result.exit_code == 1 and message in result.stderr
    check_clean_failure(result)


def test_nul_bytes_and_mixed_newlines_are_ordinary_characters(tmp_path):
    text = (TINY_TEXT.replace(" ", "\x00", 3) + "\r\n\r\n" + TINY_TEXT + "\r" + TINY_TEXT + "\n") * 2
    (tmp_path / "c.txt").write_bytes(text.encode())
    tokenizer, splits, _ = load_splits(TrainConfig(corpus=str(tmp_path / "c.txt")))
    joined = "".join(tokenizer.decode(split) for split in splits.values())
    assert joined == text  # normalize none keeps every character, \r and NUL included


def test_a_single_10_mb_line_trains_a_few_steps(tmp_path):
    line = (TINY_TEXT.replace("\n", " ") + " ") * (10_000_000 // (len(TINY_TEXT) + 1) + 1)
    (tmp_path / "big.txt").write_text(line[:10_000_000], encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--corpus",
            str(tmp_path / "big.txt"),
            *TINY_CLI,
            "--max-steps",
            "3",
            "--val-fraction",
            "0.001",
            "--test-fraction",
            "0.001",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 3


NUMERIC_OPTIONS = [
    "--hidden-size",
    "--num-layers",
    "--embedding-size",
    "--batch-size",
    "--num-steps",
    "--dropout",
    "--lr",
    "--weight-decay",
    "--clip",
    "--warmup-steps",
    "--eval-every",
    "--max-steps",
    "--epochs",
    "--max-seconds",
    "--val-fraction",
    "--test-fraction",
    "--max-bad-steps",
    "--transition-depth",
    "--output-depth",
    "--threads",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(NUMERIC_OPTIONS),
    value=st.sampled_from(["0", "-1", "-1000000000", "1e12", "1000000000000", "nan", "inf"]),
)
def test_cli_numbers_get_a_clear_error_or_a_run(option, value, tiny_corpus):
    args = [
        "train",
        "--corpus",
        str(tiny_corpus),
        "--device",
        "cpu",
        "--out",
        f"runs/{abs(hash((option, value)))}",
        "--hidden-size",
        "8",
        "--num-layers",
        "1",
        "--batch-size",
        "2",
        "--num-steps",
        "8",
        "--eval-every",
        "3",
    ]
    limit = ["--max-seconds", "2"] if option in ("--max-steps", "--epochs") else ["--max-steps", "3"]
    result = CliRunner().invoke(cli, [*args, *limit, option, value])
    if result.exit_code == 2:  # click refused the value itself (not a number of the right type)
        assert "Invalid value" in result.output
        return
    check_clean_failure(result)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import textrnn

    corpus = tmp_path_factory.mktemp("corpus") / "c.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    run = tmp_path_factory.mktemp("run") / "run"
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(corpus), **TINY_TRAIN), run)
    return textrnn.load_checkpoint(run)


@FAST
@given(prefix=st.one_of(st.text(max_size=50), st.text(alphabet=TINY_TEXT, min_size=1, max_size=3000)))
def test_any_prefix_gets_samples_or_a_clear_error(model, prefix):
    try:
        samples = generate(model, prefix, SampleConfig(length=5, seed=0, num_samples=2))
    except TextrnnError as error:
        assert "prefix" in str(error)
        return
    assert len(samples) == 2 and all(sample.startswith(prefix) and len(sample) == len(prefix) + 5 for sample in samples)


_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["", "NA", "nan", "null", "abc", "1e400", "-0", " 7 "]),
)


@FAST
@given(
    contiguous=st.integers(0, 40),
    slots=st.lists(st.integers(0, 40), max_size=30),
    cells=st.lists(_CELLS, max_size=70),
    constant=st.booleans(),
    odd_time=st.sampled_from([None, None, None, "", "soon", "2021-01-01 00:30"]),
)
def test_any_forecasting_csv_trains_or_fails_clearly(contiguous, slots, cells, constant, odd_time, tmp_path_factory):
    """Unsorted, duplicated, missing, non-numeric, constant or off-grid: a result or one clear error line."""
    lines = ["time,load"]
    slots = [*range(contiguous), *slots][::-1]  # a run of hours (backwards), then any hours again
    for number, slot in enumerate(slots):
        value = "5" if constant else (cells[number] if number < len(cells) else "1")
        hour = f"2021-01-{1 + slot // 24:02d} {slot % 24:02d}:00"
        lines.append(f"{hour},{value}")
    if odd_time is not None:
        lines.append(f"{odd_time},3")
    path = tmp_path_factory.mktemp("csv") / "series.csv"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        cli,
        ["forecast", "train", "--csv", str(path), "--time-col", "time", "--target", "load", "--lookback", "2",
         "--hidden-size", "4", "--batch-size", "4", "--max-steps", "2", "--eval-every", "1", "--season", "1",
         "--val-fraction", "0.2", "--test-fraction", "0.2", "--device", "cpu", "--out",
         str(path.parent / "run"), "--json"],
    )  # fmt: skip
    check_clean_failure(result)
    if result.exit_code == 0:
        summary = json.loads(result.stdout)
        scores = summary["test"]["load"]
        assert scores["points"] >= 1 and (scores["smape"] is None or 0 <= scores["smape"] <= 200)
