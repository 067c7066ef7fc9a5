"""Long prompts: read in chunks with the state carried, equal to one long feed; sample --prefix-file."""

import json

import pytest
import torch
from click.testing import CliRunner

from textrnn import generate
from textrnn.cli import cli
from textrnn.config import ModelConfig, TrainConfig
from textrnn.lm import sample as sampling
from textrnn.lm.model import CharLM
from textrnn.lm.task import train
from textrnn.text.tokenizer import build_tokenizer

from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru"])
def test_a_prompt_read_in_chunks_equals_one_long_feed(cell):
    torch.manual_seed(0)
    model = CharLM(ModelConfig(**{**TINY_MODEL, "cell": cell, "num_layers": 2, "vocab_size": 13})).eval()
    ids = torch.randint(0, 13, (100,)).tolist()
    with torch.no_grad():
        whole, whole_state = sampling.prime(model, ids, 3, chunk=len(ids))
        chunked, chunked_state = sampling.prime(model, ids, 3, chunk=7)
    assert whole.shape == (3, 13)
    assert torch.allclose(whole, chunked, atol=1e-5)
    flat = lambda state: torch.cat([t.flatten() for t in (state if isinstance(state, tuple) else (state,))])  # noqa: E731
    assert torch.allclose(flat(whole_state), flat(chunked_state), atol=1e-5)


def test_generation_from_a_prompt_longer_than_a_chunk_is_unchanged(monkeypatch):
    torch.manual_seed(0)
    tokenizer = build_tokenizer("char", TINY_TEXT, "none")
    model = CharLM(ModelConfig(**{**TINY_MODEL, "vocab_size": tokenizer.vocab_size})).eval()
    reference = generate(model, TINY_TEXT, tokenizer=tokenizer, length=30, seed=3)
    monkeypatch.setattr(sampling, "PROMPT_CHUNK", 16)
    assert generate(model, TINY_TEXT, tokenizer=tokenizer, length=30, seed=3) == reference
    beams = sampling.beam_search(model, TINY_TEXT, tokenizer=tokenizer, length=10, beam=2)
    assert len(beams) == 1


def test_sample_continues_a_prefix_file(tiny_corpus, tmp_path):
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN), tmp_path / "run")
    runner = CliRunner()
    base = ["sample", "--checkpoint", str(tmp_path / "run"), "--length", "5", "--seed", "0", "--json"]
    result = runner.invoke(cli, [*base, "--prefix-file", str(tiny_corpus)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"][0].startswith(TINY_TEXT)
    both = runner.invoke(cli, [*base, "--prefix-file", str(tiny_corpus), "--prefix", "the"])
    assert both.exit_code == 1 and both.output.startswith("error: --prefix and --prefix-file")
    missing = runner.invoke(cli, [*base, "--prefix-file", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 1 and "nope.txt does not exist" in missing.output
