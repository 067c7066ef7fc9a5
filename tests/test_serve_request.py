"""`parse_request` alone: the table of fields, null as the default, and errors that name their field."""

import dataclasses
import json

import pytest

from textrnn.serve.request import FIELDS, ApiError, CompletionRequest, Limits, parse_request
from textrnn.text.tokenizer import CharTokenizer

from conftest import TINY_TEXT

TOKENIZER = CharTokenizer.build(TINY_TEXT, "none")
LIMITS = Limits(max_n=4, max_beam=4)


def parse(**fields) -> CompletionRequest:
    return parse_request(json.dumps({"prompt": "the", **fields}).encode(), "tiny", TOKENIZER, LIMITS)


def refusal(**fields) -> ApiError:
    with pytest.raises(ApiError) as refused:
        parse(**fields)
    return refused.value


def test_defaults_and_null_mean_the_same():
    plain = parse()
    assert plain == CompletionRequest(["the"], [[int(i) for i in TOKENIZER.encode("the")]])
    nulls = {field.name: None for field in FIELDS if field.name != "prompt"}
    assert parse(**nulls) == plain  # as in the OpenAI API, null leaves a field at its default
    assert parse(top_k=-1, echo=False, logprobs=0, presence_penalty=0, logit_bias={}, suffix="") == plain


def test_every_request_setting_has_a_field():
    names = {field.name for field in FIELDS}
    settings = {f.name for f in dataclasses.fields(CompletionRequest)} - {"prompts", "prompt_ids", "include_usage"}
    assert settings <= names and {"prompt", "stream_options"} <= names


@pytest.mark.parametrize(
    "fields, status, param, message",
    [
        ({"max_tokens": 0}, 400, "max_tokens", "max_tokens must be in [1, 4096], got 0"),
        ({"max_tokens": "5"}, 400, "max_tokens", 'max_tokens must be an integer, got "5"'),
        ({"temperature": 10**400}, 400, "temperature", "temperature must be in [0.0, 1000.0], got 1000"),
        ({"temperature": True}, 400, "temperature", "temperature must be a finite number, got true"),
        ({"temperature": 1e-4}, 400, "temperature", "temperature must be 0 (greedy) or at least 0.001"),
        ({"top_p": 0}, 400, "top_p", "top_p must be in (0.0, 1.0], got 0"),
        ({"top_k": 2.0}, 400, "top_k", "top_k must be an integer, got 2.0"),
        ({"greedy": 1}, 400, "greedy", "greedy must be true or false, got 1"),
        ({"n": 5}, 400, "n", "n must be in [1, 4], got 5"),
        ({"prompt": ["the", "a"], "n": 3}, 400, "n", "2 prompts x n=3 is more than 4 choices"),
        ({"beam": 2, "top_k": 3}, 400, "beam", "beam search takes no temperature, top_p, top_k or greedy"),
        ({"beam": 2, "n": 3}, 400, "n", "n=3 is more than beam=2"),
        ({"best_of": 2}, 400, "best_of", "best_of is not supported by textrnn"),
        ({"echo": True}, 400, "echo", "echo is not supported by textrnn (leave it out)"),
        ({"stream_options": {"include_usage": 1}}, 400, "stream_options", "include_usage must be true or false"),
        ({"user": 5}, 400, "user", "user must be a string, got 5"),
        ({"model": 5}, 400, "model", "model must be a string, got 5"),
        ({"model": "gpt-4", "n": 0}, 404, "model", 'the model "gpt-4" does not exist'),
        ({"prompt": "the zoo"}, 400, "prompt", 'characters the model\'s vocabulary lacks: "z"'),
        ({"file": "/etc/passwd"}, 400, "file", 'unknown field "file"; textrnn takes beam, best_of, greedy'),
    ],
)
def test_refusals_name_the_field(fields, status, param, message):
    error = refusal(**fields)
    assert (error.status, error.param) == (status, param) and message in error.message, error.message


def test_the_rules_that_join_fields():
    assert parse(temperature=0).greedy and parse(greedy=True, temperature=1e-9).greedy
    assert parse(best_of=2, n=2).n == 2
    request = parse(beam=3, n=2, stop=["xy", "z"], seed=7, stream=True, stream_options={"include_usage": True})
    assert (request.beam, request.n, request.stop, request.seed, request.include_usage) == (3, 2, ("xy", "z"), 7, True)
