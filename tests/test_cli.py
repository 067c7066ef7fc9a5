import json

import pytest
from click.testing import CliRunner

from textrnn.cli import cli

from conftest import TINY_CLI, TRAIN_JSON_KEYS

TINY = [
    *TINY_CLI,
    "--max-steps",
    "6",
    "--eval-every",
    "3",
    "--max-seconds",
    "0",
]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def trained(tiny_corpus):
    result = invoke("train", "--corpus", tiny_corpus, *TINY, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_train_json_is_one_object_with_the_documented_keys(trained):
    assert set(trained) == set(TRAIN_JSON_KEYS)
    assert trained["checkpoint"].startswith("checkpoints/lstm-")  # the default cell


def test_sample_and_eval_default_to_the_newest_run(trained):
    result = invoke("sample", "--prefix", "the time", "--length", "20", "--seed", "1", "--json", "--num-samples", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["samples"]) == 2 and all(s.startswith("the time") for s in data["samples"])
    assert data["chars_per_sec"] > 0
    again = json.loads(
        invoke("sample", "--prefix", "the time", "--length", "20", "--seed", "1", "--json", "--num-samples", "2").stdout
    )
    assert again["samples"] == data["samples"]

    result = invoke("eval", "--json", "--split", "val")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"cross_entropy", "perplexity", "bits_per_char", "tokens", "unknown_tokens"}
    assert metrics["perplexity"] == pytest.approx(trained["best_val_perplexity"], rel=1e-5)


def test_eval_on_a_text_file_counts_unknown_characters(trained, tmp_path):
    (tmp_path / "other.txt").write_text("the time traveller ZZZ", encoding="utf-8")
    metrics = json.loads(invoke("eval", "--json", "--text-file", tmp_path / "other.txt").stdout)
    assert metrics["unknown_tokens"] == 3 and metrics["tokens"] == 21


def test_config_file_sets_options_and_flags_override_it(tiny_corpus, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'corpus = "{tiny_corpus}"\nhidden-size = 8\nnum_layers = 1\nbatch-size = 2\nnum-steps = 8\n'
        "max-steps = 100\nmax-seconds = 0\neval-every = 3\n"
    )
    result = invoke("train", "--config", config, "--max-steps", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--hidden-size", "-5"], "--hidden-size must be at least 1"),
        (["train", "--num-steps", "0"], "--num-steps must be at least 1"),
        (["train", "--corpus", "missing.txt"], "missing.txt does not exist"),
        (["train", "--batch-size", "500"], "smaller --batch-size"),
        (["sample", "--prefix", "x"], "no trained runs"),
        (["eval", "--checkpoint", "nowhere"], "does not exist"),
        (["sample", "--temperature", "0", "--prefix", "x"], "--temperature must be in [0.001, 1000]"),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(args, message, tiny_corpus):
    if "--batch-size" in args:
        args = [*args, "--corpus", str(tiny_corpus)]
    result = invoke(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_empty_and_non_utf8_corpora_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00abc")
    assert "is empty" in invoke("train", "--corpus", tmp_path / "empty.txt").stderr
    assert "not valid UTF-8" in invoke("train", "--corpus", tmp_path / "binary.txt").stderr


def test_unknown_prefix_characters_and_corrupt_checkpoints(trained):
    result = invoke("sample", "--prefix", "the @#")
    assert result.exit_code == 1 and "'#@'" in result.stderr
    run = trained["checkpoint"]
    with open(f"{run}/best.pt", "wb") as out:
        out.write(b"garbage")
    result = invoke("eval", "--checkpoint", run)
    assert result.exit_code == 1 and "not a readable textrnn checkpoint" in result.stderr


def test_unknown_config_keys_and_recipes_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text("hiden-size = 3\n")
    result = invoke("train", "--config", tmp_path / "bad.toml")
    assert result.exit_code == 2 and "hiden_size" in result.output
    result = invoke("train", "--config", "no-such-recipe")
    assert result.exit_code == 2 and "d2l-gru" in result.output


def test_debug_shows_the_traceback():
    result = invoke("sample", "--prefix", "x", "--debug")
    assert result.exit_code == 1 and result.exception is not None


def test_resume_continues_the_newest_run_to_a_new_limit(trained):
    result = invoke("train", "--resume", "--max-steps", "9", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["checkpoint"] == trained["checkpoint"] and summary["steps"] == 9


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "textrnn", "--help"], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "sample" in result.stdout and "eval" in result.stdout


def test_a_model_too_large_for_memory_is_a_clear_error(tiny_corpus):
    result = invoke("train", "--corpus", tiny_corpus, "--hidden-size", 10**9, "--num-layers", 1, "--device", "cpu",
                    "--batch-size", 2, "--num-steps", 8)  # fmt: skip
    assert result.exit_code == 1 and result.stderr.startswith("error: out of memory")


def test_bidirectional_causal_training_is_refused_with_the_reason(tiny_corpus):
    result = invoke("train", "--corpus", tiny_corpus, "--bidirectional")
    assert result.exit_code == 1 and "--task infill" in result.stderr and "Traceback" not in result.output


def test_infill_trains_evaluates_and_fills(tiny_corpus):
    result = invoke("train", "--corpus", tiny_corpus, *TINY, "--task", "infill", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    metrics = json.loads(invoke("eval", "--split", "val", "--json").stdout)
    assert metrics["perplexity"] == pytest.approx(summary["best_val_perplexity"], rel=1e-5)
    result = invoke("fill", "the ti_e tr_veller")
    assert result.exit_code == 0, result.output
    filled = result.stdout.strip()
    assert len(filled) == len("the ti_e tr_veller") and "_" not in filled
    assert "textrnn fill" in invoke("sample", "--prefix", "the").stderr


def test_compare_trains_each_cell_and_tabulates(tiny_corpus):
    result = invoke("compare", "--cells", "gru,lstm", "--corpus", tiny_corpus, *TINY, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [run["cell"] for run in runs] == ["gru", "lstm"]
    assert runs[1]["parameters"] > runs[0]["parameters"]  # four gates against three
    for run in runs:
        assert set(run) == {
            "cell",
            "parameters",
            "tokens_per_sec",
            "best_val_perplexity",
            "val_bits_per_char",
            "elapsed_sec",
            "checkpoint",
        }
    table = invoke("compare", "--cells", "rnn_tanh", "--corpus", tiny_corpus, *TINY).stdout
    assert table.splitlines()[0].split()[:3] == ["cell", "parameters", "tokens/s"]
    assert invoke("compare", "--cells", "gru,transformer").exit_code == 1


def test_scratch_only_variants_pick_the_scratch_backend_and_refuse_fused(tiny_corpus):
    result = invoke(
        "train",
        "--corpus",
        tiny_corpus,
        *TINY,
        "--cell",
        "peephole_lstm",
        "--transition-depth",
        2,
        "--output-depth",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.output
    config = json.loads(open(json.loads(result.stdout)["checkpoint"] + "/config.json").read())
    assert config["model"]["backend"] == "scratch" and config["model"]["cell"] == "peephole_lstm"
    result = invoke("train", "--corpus", tiny_corpus, "--cell", "peephole_lstm", "--backend", "fused")
    assert result.exit_code == 1 and "use --backend scratch" in result.stderr
    result = invoke("sample", "--prefix", "the ", "--length", 10, "--seed", 0)
    assert result.exit_code == 0 and result.stdout.startswith("the ")


UNICODE_TEXT = "Ça va? Très bien. 東京は雨です。 Emoji 🙂🚀 ñandú, Øresund, Ελληνικά. " * 12


@pytest.mark.parametrize("tokenizer", ["char", "byte", "bpe"])
def test_unicode_text_trains_samples_and_evaluates_with_every_tokenizer(tmp_path, tokenizer):
    corpus = tmp_path / "unicode.txt"
    corpus.write_text(UNICODE_TEXT, encoding="utf-8")
    out = tmp_path / tokenizer
    options = ["--tokenizer", tokenizer, "--vocab-size", "300"]
    result = invoke("train", "--corpus", corpus, *options, *TINY, "--num-steps", "4", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    sampled = invoke("sample", "--checkpoint", out, "--prefix", "東京 🙂", "--length", "40", "--seed", "0", "--json")
    assert sampled.exit_code == 0, sampled.output
    text = json.loads(sampled.stdout)["samples"][0]
    assert text.startswith("東京 🙂")
    text.encode("utf-8")  # valid UTF-8: no lone surrogates, partial bytes held back
    evaluated = json.loads(invoke("eval", "--checkpoint", out, "--json").stdout)
    assert evaluated["unknown_tokens"] == 0 or tokenizer == "char"
    if tokenizer == "byte":  # more tokens than characters; bits per character count the characters
        assert evaluated["tokens"] > len(UNICODE_TEXT) * 0.05 - 1
        assert evaluated["bits_per_char"] > evaluated["cross_entropy"] / 0.6931
    elif tokenizer == "bpe":  # fewer tokens than characters
        assert evaluated["tokens"] < len(UNICODE_TEXT) * 0.05
        assert evaluated["bits_per_char"] < evaluated["cross_entropy"] / 0.6931
    else:
        assert evaluated["bits_per_char"] == pytest.approx(evaluated["cross_entropy"] / 0.69314718, rel=1e-6)


def test_infill_needs_the_character_tokenizer(tiny_corpus):
    result = invoke("train", "--corpus", tiny_corpus, "--task", "infill", "--tokenizer", "byte", *TINY)
    assert result.exit_code == 1 and "--task infill fills one character per blank" in result.stderr
