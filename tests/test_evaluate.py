import math

import torch
from torch.nn import functional as F

from textrnn.config import ModelConfig
from textrnn.lm import evaluate
from textrnn.lm.model import CharLM


def make_model():
    return CharLM(ModelConfig(vocab_size=6, hidden_size=8, num_layers=2, dropout=0.0, embedding_size=4)).eval()


def test_perplexity_is_exact_with_the_state_carried(monkeypatch):
    model = make_model()
    tokens = torch.randint(0, 6, (300,))
    tokens[5] = 0
    with torch.no_grad():
        logits, _ = model(tokens[:-1].unsqueeze(0))
        expected = F.cross_entropy(logits[0], tokens[1:], reduction="mean").item()
    monkeypatch.setattr(evaluate, "EVAL_CHUNK", 7)  # many chunks: the carried state must make no difference
    result = evaluate.perplexity(model, tokens, unk_id=0)
    assert math.isclose(result["cross_entropy"], expected, rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(expected), rel_tol=1e-5)
    assert math.isclose(result["bits_per_char"], expected / math.log(2), rel_tol=1e-5)
    assert result["tokens"] == 299
    assert result["unknown_tokens"] == int((tokens == 0).sum())


def test_evaluation_leaves_the_training_mode_alone():
    model = make_model().train()
    evaluate.perplexity(model, torch.randint(0, 6, (20,)))
    assert model.training


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
    model = make_model()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    result = evaluate.perplexity(model, torch.randint(0, 6, (50,)))
    assert math.isclose(result["perplexity"], 6.0, rel_tol=1e-6)
