"""Several files and folders as one corpus: what is read and skipped, the one-line errors, every document split on
its own, the state restarted at each document in training and validation, exact resume, the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.evaluate import cross_entropy_sum
from textrnn.lm.model import CharLM
from textrnn.lm.task import forward_documents, train
from textrnn.text.batching import Batches
from textrnn.text.corpus import collect
from textrnn.text.splits import TextSource, document_starts, load_splits

from conftest import TINY_CLI, TINY_MODEL, TINY_TEXT, TINY_TRAIN


@pytest.fixture
def folder(tmp_path):
    """Two text files (one in a subfolder), and one each of hidden, in a hidden folder, binary and empty."""
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text(TINY_TEXT, encoding="utf-8")
    (root / "sub" / "b.md").write_text(TINY_TEXT.upper(), encoding="utf-8")
    (root / ".hidden.txt").write_text("secret", encoding="utf-8")
    (root / ".git" / "config").write_text("[core]", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "empty.txt").write_bytes(b"")
    return root


def test_a_folder_is_read_recursively_skipping_hidden_binary_and_empty_files(folder):
    documents, skipped = collect(str(folder))
    assert [doc.path.name for doc in documents] == ["a.txt", "b.md"]
    assert skipped == {"hidden": 2, "binary": 1, "empty": 1}
    documents, _ = collect(str(folder), "*.txt")
    assert [doc.path.name for doc in documents] == ["a.txt"]
    documents, _ = collect(str(folder), "sub/*")
    assert [doc.path.name for doc in documents] == ["b.md"]


def test_a_file_that_is_not_utf8_is_named_with_the_offset_of_its_first_bad_byte(folder):
    (folder / "latin1.txt").write_bytes(b"caf" + "é au lait".encode("latin-1"))
    with pytest.raises(TextrnnError) as caught:
        collect(str(folder))
    message = str(caught.value)
    assert "latin1.txt is not valid UTF-8 (bad byte at offset 3)" in message and "\n" not in message


def test_a_folder_without_text_is_one_clear_error(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "empty.txt").write_bytes(b"")
    with pytest.raises(TextrnnError, match=r"holds no text file \(1 empty skipped\)"):
        collect(str(tmp_path / "only"))
    with pytest.raises(TextrnnError, match="does not exist"):
        collect((str(tmp_path / "only"), str(tmp_path / "missing.txt")))


def test_one_file_is_read_as_before(tiny_corpus):
    _, splits, data = load_splits(TextSource(corpus=str(tiny_corpus)))
    assert "documents" not in data and data["path"] == str(tiny_corpus.resolve())
    assert TextSource(corpus=(str(tiny_corpus),)).corpus == str(tiny_corpus)  # one path stays a string


def test_every_document_gives_its_tail_to_validation_and_test(folder):
    source = TextSource(corpus=str(folder), val_fraction=0.1, test_fraction=0.1)
    tokenizer, splits, data = load_splits(source)
    assert [doc["tokens"] for doc in data["documents"]] == [{"train": 160, "val": 20, "test": 20}] * 2
    assert tokenizer.decode(splits["val"]) == TINY_TEXT[160:180] + TINY_TEXT.upper()[160:180]
    assert document_starts(data, "val") == [0, 20] and data["skipped"]["binary"] == 1
    several = load_splits(TextSource(corpus=(str(folder / "a.txt"), str(folder / "sub"))))[2]
    assert len(several["documents"]) == 2 and several["paths"][1] == str((folder / "sub").resolve())


def test_sequential_batches_mark_where_documents_begin():
    tokens = torch.arange(50)
    batches = Batches(tokens, batch_size=2, num_steps=4, partition="sequential", seed=0, starts=[0, 7, 30])
    for inputs, _, marks in batches.epoch(0):
        assert marks.shape == (2, 5) and marks.dtype == torch.bool
        for row, column in marks[:, :4].nonzero().tolist():
            assert int(inputs[row, column]) in (7, 30)
        for row in marks[:, 4].nonzero().flatten().tolist():  # the next batch's first input starts a document
            assert int(inputs[row, 3]) + 1 in (7, 30)
    marked = sum(int(marks[:, :4].sum()) for _, _, marks in batches.epoch(0))
    assert marked == 2
    assert len(next(Batches(tokens, 2, 4, "sequential", 0).epoch(0))) == 2  # one document: (x, y) as before


def test_the_state_restarts_at_a_document_inside_a_batch():
    torch.manual_seed(0)
    model = CharLM(ModelConfig(**{**TINY_MODEL, "vocab_size": 11})).eval()
    inputs = torch.randint(0, 11, (2, 8))
    marks = torch.zeros(2, 9, dtype=torch.bool)
    marks[0, 3] = True  # row 0: a document begins at its input 3
    start, _ = model(torch.randint(0, 11, (2, 5)))  # a carried state from before
    _, state = model(torch.randint(0, 11, (2, 5)))
    logits, _, _ = forward_documents(model, inputs, state, marks, False)
    whole, _ = model(inputs, state)
    fresh, _ = model(inputs[:1, 3:])
    assert torch.allclose(logits[1], whole[1], atol=1e-6)  # row 1 carries its state through
    assert torch.allclose(logits[0, :3], whole[0, :3], atol=1e-6)
    assert torch.allclose(logits[0, 3:], fresh[0], atol=1e-6)  # row 0 starts afresh at its document


def test_validation_scores_every_document_from_a_fresh_state():
    torch.manual_seed(0)
    model = CharLM(ModelConfig(**{**TINY_MODEL, "vocab_size": 11})).eval()
    tokens = torch.randint(0, 11, (40,))
    total, count = cross_entropy_sum(model, tokens, starts=[0, 15])
    first, n1 = cross_entropy_sum(model, tokens[:15])
    second, n2 = cross_entropy_sum(model, tokens[15:])
    assert count == n1 + n2 == 38 and torch.allclose(total, first + second)


def test_a_run_on_a_folder_resumes_exactly(folder, tmp_path):
    model_config = ModelConfig(**TINY_MODEL)
    train_config = TrainConfig(corpus=str(folder), **{**TINY_TRAIN, "max_steps": 10, "eval_every": 4})
    straight = train(model_config, train_config, tmp_path / "straight")
    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) == 5

    train(model_config, train_config, tmp_path / "resumed", should_stop=stop_after_five)
    resumed = train(model_config, train_config, tmp_path / "resumed", resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_perplexity"] == straight["val_perplexity"]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["train"]["corpus"] == str(folder) and len(config["data"]["documents"]) == 2


def test_the_cli_takes_several_corpora_and_names_a_bad_file_in_one_line(folder, tiny_corpus, tmp_path):
    runner = CliRunner()
    steps = ["--max-steps", "2", "--eval-every", "2"]
    args = ["train", *TINY_CLI, *steps, "--corpus", str(folder), "--corpus", str(tiny_corpus), "--glob", "*.md"]
    result = runner.invoke(cli, [*args, "--json", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["corpus"] == [str(folder), str(tiny_corpus)] and config["train"]["glob"] == "*.md"
    assert [doc["path"].rsplit("/", 1)[1] for doc in config["data"]["documents"]] == ["b.md", "tiny.txt"]
    (folder / "bad.txt").write_bytes(b"ok \xff")
    bad = runner.invoke(cli, ["train", *TINY_CLI, *steps, "--corpus", str(folder), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1
    assert "bad.txt is not valid UTF-8 (bad byte at offset 3)" in bad.output


def test_a_toml_corpus_is_one_path_as_a_string_or_several_as_a_list(folder, tiny_corpus, tmp_path):
    runner = CliRunner()
    for value, expected in ((f'"{tiny_corpus}"', str(tiny_corpus)), (f'["{tiny_corpus}", "{folder}"]', None)):
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(f"corpus = {value}\n")
        result = runner.invoke(cli, ["train", *TINY_CLI, "--config", str(recipe), "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        corpus = json.loads(result.stdout)["train"]["corpus"]
        assert corpus == (expected or [str(tiny_corpus), str(folder)])
