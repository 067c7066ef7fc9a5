"""Generate text from a model exported with `textrnn export --format onnx`, without PyTorch or textrnn.

Needs numpy, onnxruntime and tokenizers only:

    python scripts/onnx_sample.py model.onnx --prefix "time traveller" --length 100 --greedy

The tokenizer is the ``tokenizer.json`` that the export wrote beside the model. With
``--greedy`` the text equals ``textrnn sample --greedy`` for the same prefix and length:
the prefix is read one token at a time from the zero state, then each new token is the most
likely one (never ``<unk>``), as the sampler does. Without it, tokens are drawn with
``--temperature`` from numpy's generator (the same ``--seed`` gives the same text here,
but not the text PyTorch's generator would give).
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

UNK = "<unk>"


def byte_alphabet() -> dict[str, int]:
    """The character that stands for each byte in byte-level tokenizers (GPT-2's convention) -> the byte:
    printable Latin-1 bytes stand for themselves, the other 68 for the characters from U+0100 on."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    mapping, extra = {}, 0
    for value in range(256):
        if value in printable:
            mapping[chr(value)] = value
        else:
            mapping[chr(256 + extra)] = value
            extra += 1
    return mapping


class Text:
    """Encoding and decoding with ``tokenizer.json`` as textrnn does it."""

    def __init__(self, path: Path):
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.encode_special_tokens = True  # a literal "<unk>" in the prefix is text
        self.unk_id = self.tokenizer.token_to_id(UNK)
        decoder = json.loads(self.tokenizer.to_str()).get("decoder") or {}
        self.byte_level = decoder.get("type") == "ByteLevel"
        self.bytes_of = byte_alphabet()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def normalize(self, text: str) -> str:
        normalizer = self.tokenizer.normalizer
        return text if normalizer is None else normalizer.normalize_str(text)

    def decode(self, ids: list[int]) -> str:
        tokens = [self.tokenizer.id_to_token(i) for i in ids if i != self.unk_id]
        if not self.byte_level:
            return "".join(tokens)
        data = bytes(self.bytes_of[char] for token in tokens for char in token)
        # An incomplete UTF-8 sequence at the end is held back, as textrnn's decoder does.
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


def generate(session, text: Text, prefix: str, length: int, greedy: bool, temperature: float, seed) -> str:
    """``prefix`` plus ``length`` tokens, one graph call per token (the state stays in numpy arrays)."""
    ids = text.encode(prefix)
    if not ids:
        raise SystemExit("error: the prefix is empty (after normalization): give --prefix with at least one character")
    if text.unk_id in ids:
        unknown = sorted(char for char in set(text.normalize(prefix)) if text.tokenizer.token_to_id(char) is None)
        raise SystemExit(f"error: the prefix has characters the model's vocabulary lacks: {''.join(unknown)!r}")
    inputs = session.get_inputs()
    state_names = [item.name for item in inputs[1:]]
    outputs = ["logits", *(f"new_{name}" for name in state_names)]
    layers, hidden_size = inputs[1].shape[0], inputs[1].shape[2]
    state = [np.zeros((layers, 1, hidden_size), dtype=np.float32) for _ in state_names]
    random = np.random.default_rng(seed)

    def step(token: int):
        nonlocal state
        logits, *state = session.run(
            outputs, {"tokens": np.array([token], dtype=np.int64), **dict(zip(state_names, state))}
        )
        return logits[0]

    for token in ids:
        logits = step(token)
    generated = []
    for _ in range(length):
        logits = logits.astype(np.float64)
        logits[text.unk_id] = -np.inf  # never produce <unk>
        if greedy:
            token = int(np.argmax(logits))
        else:
            scaled = logits / temperature
            probabilities = np.exp(scaled - scaled.max())
            token = int(random.choice(len(probabilities), p=probabilities / probabilities.sum()))
        generated.append(token)
        logits = step(token)
    return prefix + text.decode(generated)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx file written by `textrnn export`")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json  [default: the one beside the model]")
    parser.add_argument("--prefix", default="time traveller", help="text to continue")
    parser.add_argument("--length", type=int, default=200, help="tokens to generate")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--temperature", type=float, default=1.0, help="without --greedy")
    parser.add_argument("--seed", type=int, help="without --greedy: numpy's seed")
    options = parser.parse_args(argv)
    tokenizer_path = options.tokenizer or options.model.parent / "tokenizer.json"
    for path in (options.model, tokenizer_path):
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist: give the files `textrnn export` wrote")
    if options.length < 0 or options.temperature <= 0:
        raise SystemExit("error: --length must be at least 0 and --temperature above 0")
    session = onnxruntime.InferenceSession(str(options.model), providers=["CPUExecutionProvider"])
    if [item.name for item in session.get_inputs()][:1] != ["tokens"]:
        raise SystemExit(f"error: {options.model} is not a textrnn language model (a forecaster has no tokens input)")
    text = Text(tokenizer_path)
    sys.stdout.write(
        generate(session, text, options.prefix, options.length, options.greedy, options.temperature, options.seed)
        + "\n"
    )


if __name__ == "__main__":
    main()
