import pytest
import torch

from textrnn.config import ModelConfig, SampleConfig
from textrnn.errors import TextrnnError
from textrnn.models import CharLM
from textrnn.sample import _filter_logits, fill, generate
from textrnn.tokenizer import CharTokenizer


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
