"""eval --corpus: any run scored on the split of another corpus, the characters its vocabulary lacks counted."""

import json

from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import ModelConfig, TrainConfig
from textrnn.lm.evaluate import evaluate_corpus, evaluate_split
from textrnn.lm.model import load_run
from textrnn.lm.task import train

from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN


def test_eval_of_another_corpus_reports_its_unknown_characters(tiny_corpus, tmp_path):
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN), tmp_path / "run")
    other = tmp_path / "other.txt"
    other.write_text(TINY_TEXT + " Zebra$ Zoo$", encoding="utf-8")  # the test split: the last 11 characters
    model, tokenizer, config = load_run(tmp_path / "run")
    result = evaluate_corpus(model, tokenizer, config, str(other))
    assert result["unknown_characters"] == {"$": 2, "Z": 2} and result["unknown_tokens"] == 4
    # the run's own corpus through --corpus gives its own test split's figures
    own = evaluate_corpus(model, tokenizer, config, str(tiny_corpus))
    assert own["perplexity"] == evaluate_split(model, tokenizer, config, "test")["perplexity"]
    assert own["unknown_characters"] == {}

    runner = CliRunner()
    args = ["eval", "--checkpoint", str(tmp_path / "run"), "--device", "cpu", "--corpus", str(other)]
    printed = runner.invoke(cli, args)
    assert printed.exit_code == 0, printed.output
    assert "2 characters the run's vocabulary lacks, scored as <unk>: '$' (2), 'Z' (2)" in printed.output
    as_json = json.loads(runner.invoke(cli, [*args, "--json"]).stdout)
    assert as_json["unknown_characters"] == {"$": 2, "Z": 2} and as_json["unknown_tokens"] == 4
    folder = runner.invoke(cli, [*args[:-1], str(tmp_path), "--glob", "other.txt", "--json", "--split", "val"])
    assert folder.exit_code == 0, folder.output
    both = runner.invoke(cli, [*args, "--text-file", str(other)])
    assert both.exit_code == 1 and both.output.startswith("error: --text-file and --corpus")
    text_file = json.loads(runner.invoke(cli, [*args[:-2], "--text-file", str(other), "--json"]).stdout)
    assert text_file["unknown_characters"] == {"Z": 2, "$": 2}


def test_a_large_file_is_read_whole_with_a_given_tokenizer_rather_than_cached_with_its_own(tmp_path, monkeypatch):
    from textrnn.text import splits as splits_module
    from textrnn.text.splits import TextSource, load_splits, unknown_characters
    from textrnn.text.tokenizer import build_tokenizer

    monkeypatch.setattr(splits_module, "LARGE_FILE", 100)  # the tiny file counts as large
    big = tmp_path / "big.txt"
    big.write_text(TINY_TEXT + " Zoo", encoding="utf-8")
    run_tokenizer = build_tokenizer("char", TINY_TEXT, "none")
    _, _, data = load_splits(TextSource(corpus=str(big)), tmp_path / "data", run_tokenizer)
    assert "prepared" not in data and unknown_characters(data) == {"Z": 1}
    assert not (tmp_path / "data" / "prepared").exists()
    _, _, own = load_splits(TextSource(corpus=str(big)), tmp_path / "data")  # no tokenizer given: the cache
    assert "prepared" in own
