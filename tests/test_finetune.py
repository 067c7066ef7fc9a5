"""Fine-tuning (--init-from): the run's weights, shape and tokenizer, a fresh optimizer; refused contradictions and
unknown characters; --extend-vocab's new rows; an exact resume; the CLI's one-line errors."""

import json

import pytest
import torch
from click.testing import CliRunner

from textrnn.cli import cli as main
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.finetune import finetune_configs, grown_state, open_origin
from textrnn.lm.model import load_run
from textrnn.lm.task import train

from conftest import TINY_CLI, TINY_MODEL, TINY_TEXT, TINY_TRAIN

NEW_TEXT = "the new text has capitals: Time! and {braces} and digits 42. " * 6


@pytest.fixture
def base_run(tiny_corpus, tmp_path):
    """A tiny run on the 200-character corpus (normalization none: its vocabulary is those characters)."""
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN), tmp_path / "base")
    return tmp_path / "base"


@pytest.fixture
def new_corpus(tmp_path):
    path = tmp_path / "new.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


def finetune(base, corpus, out, extend=True, **train_options):
    origin = open_origin(base)
    model_config, train_config = finetune_configs(origin, {}, {"corpus": str(corpus), **TINY_TRAIN, **train_options})
    return train(model_config, train_config, out, init_from=base, extend_vocab=extend)


def test_a_finetuning_starts_from_the_run_and_records_where_it_came_from(base_run, tiny_corpus, tmp_path):
    # on the run's own text: the same vocabulary, and step 0 of the new run is the old run's best weights
    summary = finetune(base_run, tiny_corpus, tmp_path / "tuned", max_steps=3, eval_every=3, lr=1e-9, warmup_steps=0)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init_from"]["run"] == str(base_run.resolve()) and config["init_from"]["weights"] == "best"
    assert config["init_from"]["added_characters"] == []
    assert summary["init_from"] == str(base_run.resolve())
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (base_run / "tokenizer.json").read_text()
    old = torch.load(base_run / "best.pt", weights_only=True)["model"]
    new = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(old[name], new[name], atol=1e-6) for name in old)  # lr ~ 0: barely moved
    assert torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["trainer"]["counters"]["step"] == 3


def test_last_weights_are_taken_from_a_pt_path(base_run, tiny_corpus, tmp_path):
    origin = open_origin(base_run / "last.pt")
    assert origin.weights == "last"
    assert open_origin(base_run).weights == "best"


def test_unknown_characters_are_refused_in_one_line_with_their_counts(base_run, new_corpus, tmp_path):
    with pytest.raises(TextrnnError) as caught:
        finetune(base_run, new_corpus, tmp_path / "tuned", extend=False)
    message = str(caught.value)
    assert "\n" not in message and "--extend-vocab" in message
    assert "'T' (6)" in message and "'{' (6)" in message and "'4' (6)" in message
    assert not (tmp_path / "tuned").exists()


def test_extend_vocab_adds_rows_at_the_mean_and_keeps_the_old_ones(base_run, new_corpus, tmp_path):
    finetune(base_run, new_corpus, tmp_path / "tuned", max_steps=1, eval_every=1)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    added = config["init_from"]["added_characters"]
    assert added == sorted(set(NEW_TEXT) - set(TINY_TEXT))
    model, tokenizer, _ = load_run(tmp_path / "tuned", "last")
    old_model, old_tokenizer, _ = load_run(base_run, "best")
    assert tokenizer.vocab_size == old_tokenizer.vocab_size + len(added)
    assert tokenizer.decode(range(old_tokenizer.vocab_size)) == old_tokenizer.decode(range(old_tokenizer.vocab_size))
    assert tokenizer.decode(tokenizer.encode("T{4")) == "T{4"


def test_grown_state_keeps_old_rows_and_fills_new_ones_sensibly():
    old_model_config = ModelConfig(**{**TINY_MODEL, "vocab_size": 5})
    from textrnn.lm.model import CharLM

    old = CharLM(old_model_config).state_dict()
    fresh = CharLM(ModelConfig(**{**TINY_MODEL, "vocab_size": 8})).state_dict()
    grown = grown_state(old, fresh)
    assert all(grown[name].shape == fresh[name].shape for name in fresh)
    assert torch.equal(grown["embedding.weight"][:5], old["embedding.weight"])
    assert torch.allclose(grown["embedding.weight"][5:], old["embedding.weight"].mean(0).expand(3, -1))
    assert torch.allclose(grown["head.weight"][5:], old["head.weight"].mean(0).expand(3, -1))
    assert torch.equal(grown["head.bias"][:5], old["head.bias"])
    assert (grown["head.bias"][5:] < old["head.bias"].min()).all()
    # one-hot inputs: the first layer's input columns grow the same way
    one_hot = {**TINY_MODEL, "one_hot": True}
    old = CharLM(ModelConfig(**one_hot, vocab_size=5)).state_dict()
    grown = grown_state(old, CharLM(ModelConfig(**one_hot, vocab_size=7)).state_dict())
    weight = next(name for name in old if old[name].shape[-1] == 5 and old[name].dim() == 2)
    assert torch.equal(grown[weight][:, :5], old[weight]) and grown[weight].shape[-1] == 7


def test_shape_options_that_contradict_the_run_are_refused(base_run, new_corpus):
    origin = open_origin(base_run)
    with pytest.raises(TextrnnError, match=r"--cell gru \(the run has lstm\); --hidden-size 16 \(the run has 8\)"):
        finetune_configs(origin, {"hidden_size": 16, "cell": "gru"}, {"corpus": str(new_corpus)})
    with pytest.raises(TextrnnError, match=r"--tokenizer byte \(the run has char\)"):
        finetune_configs(origin, {}, {"corpus": str(new_corpus), "tokenizer": "byte"})
    # the same values, and regularizers, are fine
    model_config, _ = finetune_configs(origin, {"hidden_size": 8, "dropout": 0.1}, {"corpus": str(new_corpus)})
    assert model_config.hidden_size == 8 and model_config.dropout == 0.1
    # the library refuses a model config of another shape too
    with pytest.raises(TextrnnError, match="--num-layers 2"):
        train(
            ModelConfig(**{**TINY_MODEL, "num_layers": 2}),
            TrainConfig(corpus=str(new_corpus), **TINY_TRAIN),
            base_run.parent / "x",
            init_from=base_run,
        )


def test_a_finetuning_run_resumes_exactly(base_run, new_corpus, tmp_path):
    options = {"max_steps": 8, "eval_every": 4}
    straight = finetune(base_run, new_corpus, tmp_path / "straight", **options)
    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) == 5

    origin = open_origin(base_run)
    model_config, train_config = finetune_configs(origin, {}, {"corpus": str(new_corpus), **TINY_TRAIN, **options})
    first = train(
        model_config,
        train_config,
        tmp_path / "resumed",
        init_from=base_run,
        extend_vocab=True,
        should_stop=stop_after_five,
    )
    assert first["interrupted"] and first["steps"] == 5
    resumed = train(model_config, train_config, tmp_path / "resumed", resume=True)
    assert resumed["steps"] == straight["steps"] == 8
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_perplexity"] == straight["val_perplexity"]


def test_the_cli_fine_tunes_and_refuses_in_one_line(base_run, new_corpus, tmp_path):
    runner = CliRunner()
    common = ["train", "--init-from", str(base_run), "--corpus", str(new_corpus), "--device", "cpu"]
    small = ["--batch-size", "2", "--num-steps", "8", "--max-steps", "2", "--eval-every", "2", "--average", "none"]
    refused = runner.invoke(main, [*common, *small, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and refused.output.startswith("error: ")
    assert "lacks" in refused.output
    shape = runner.invoke(main, [*common, *small, "--hidden-size", "32", "--out", str(tmp_path / "b")])
    assert shape.exit_code == 1 and "error: --init-from" in shape.output and "--hidden-size 32" in shape.output
    done = runner.invoke(main, [*common, *small, "--extend-vocab", "--json", "--out", str(tmp_path / "c")])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["init_from"] == str(base_run.resolve())
    both = runner.invoke(main, [*common, "--resume", "--out", str(tmp_path / "c")])
    assert both.exit_code == 1 and "--resume" in both.output
    alone = runner.invoke(main, ["train", *TINY_CLI, "--extend-vocab", "--out", str(tmp_path / "d")])
    assert alone.exit_code == 1 and "--init-from" in alone.output


def test_a_byte_run_fine_tunes_on_any_text_without_extend_vocab(tiny_corpus, new_corpus, tmp_path):
    options = {**TINY_TRAIN, "tokenizer": "byte"}
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **options), tmp_path / "bytes")
    origin = open_origin(tmp_path / "bytes")
    model_config, train_config = finetune_configs(origin, {}, {"corpus": str(new_corpus), **TINY_TRAIN})
    assert train_config.tokenizer == "byte"
    summary = train(model_config, train_config, tmp_path / "tuned", init_from=tmp_path / "bytes")
    assert summary["steps"] == TINY_TRAIN["max_steps"]
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init_from"]["added_characters"] == [] and config["model"]["vocab_size"] == 257
