"""Fine-tuning: a new run that starts from the weights, model config and tokenizer of a trained one.

``textrnn train --init-from RUN --corpus NEW`` (``lm.task.train(..., init_from=RUN)``) trains on
NEW with a fresh optimizer, schedule and limits: every training option applies, while the model's
shape (cell, sizes, layers, embedding, task...) and the tokenizer are the run's, and an option that
contradicts them is refused. The regularizers (dropouts, weight drop, zoneout) are the run's unless
given. ``RUN`` is a run directory (its best weights, else the last) or one of its ``.pt`` files
(``RUN/last.pt``), as ``--checkpoint`` takes them.

Characters of NEW that the run's character vocabulary lacks are refused, listed with their counts,
unless ``extend_vocab``: they are then added after the old ids, with embedding rows (and input
columns of a one-hot model) at the mean of the old ones, head rows at the mean of the old rows and a
head bias ``ln V`` below the lowest old one, so that a new character starts as an average character
that is rarely predicted. The old rows are unchanged. Byte and BPE tokenizers have no unknowns.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from textrnn.checkpoint import open_run, read_tensors
from textrnn.config import ModelConfig, TrainConfig, from_dict
from textrnn.errors import TextrnnError
from textrnn.text.tokenizer import load_tokenizer

# What fixes the parameters' shapes (and what they mean): a fine-tuned model keeps the run's.
SHAPE_FIELDS = (
    "cell",
    "hidden_size",
    "num_layers",
    "embedding_size",
    "one_hot",
    "bidirectional",
    "transition_depth",
    "output_depth",
    "task",
    "tie_weights",
    "mogrify_rounds",
    "mogrify_rank",
    "block",
    "conv_kernel",
)
TOKENIZER_FIELDS = ("tokenizer", "normalize", "bpe_vocab_size")
SHOWN_CHARACTERS = 40  # unknown characters listed by name in the error line


@dataclass
class Origin:
    """The run a fine-tuning starts from."""

    run_dir: Path
    weights: str
    config: dict  # its config.json
    model_config: ModelConfig
    tokenizer: object
    state: dict  # its weights

    def record(self, added: list[str]) -> dict:
        """What the new run's config.json (and summary) says of where it came from."""
        return {
            "run": str(self.run_dir.resolve()),
            "weights": self.weights,
            "corpus": self.config["data"].get("corpus"),
            "sha1": self.config["data"].get("sha1"),
            "added_characters": added,
        }


def open_origin(init_from: str | Path) -> Origin:
    """The run of ``--init-from`` (a run directory or a ``.pt`` file in one), its weights read."""
    run_dir, weights, config = open_run(init_from, None, "charlm")
    if weights is None:
        weights = "best" if (run_dir / "best.pt").is_file() else "last"
    tokenizer = load_tokenizer(run_dir / "tokenizer.json", config["tokenizer"].get("type", "char"))
    model_config = from_dict(ModelConfig, config["model"])
    state = read_tensors(run_dir / f"{weights}.pt")["model"]
    return Origin(run_dir, weights, config, model_config, tokenizer, state)


def finetune_configs(origin: Origin, model_options: dict, train_options: dict) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a fine-tuning run: the run's model config with the regularizers of ``model_options`` (field
    -> value, given options only) and a ``TrainConfig`` of ``train_options`` with the run's tokenizer settings.
    Options that contradict the run's shape or tokenizer are refused (``check_origin``)."""
    run_options = {key: value for key, value in model_options.items() if key not in SHAPE_FIELDS}
    model_config = dataclasses.replace(origin.model_config, **run_options)
    contradicted = _contradictions(origin, model_options, SHAPE_FIELDS, dataclasses.asdict(origin.model_config))
    contradicted += _contradictions(origin, train_options, TOKENIZER_FIELDS, _tokenizer_settings(origin))
    _refuse(origin, contradicted)
    train_config = TrainConfig(**{**train_options, **_tokenizer_settings(origin)})
    return model_config, train_config


def check_origin(origin: Origin, model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Refuse configs whose model shape or tokenizer settings differ from the run's (the library's own check)."""
    contradicted = _contradictions(
        origin, dataclasses.asdict(model_config), SHAPE_FIELDS, dataclasses.asdict(origin.model_config)
    )
    settings = _tokenizer_settings(origin)
    given = {name: getattr(train_config, name) for name in TOKENIZER_FIELDS}
    if given["normalize"] is None:  # None: the corpus's default; a fine-tuning reads text as the run did
        given["normalize"] = settings["normalize"]
    contradicted += _contradictions(origin, given, TOKENIZER_FIELDS, settings)
    _refuse(origin, contradicted)


def _tokenizer_settings(origin: Origin) -> dict:
    stored = origin.config["train"]
    kind = origin.config["tokenizer"].get("type", "char")
    return {
        "tokenizer": kind,
        "normalize": origin.config["tokenizer"].get("normalize") or origin.config["data"]["normalize"],
        "bpe_vocab_size": stored.get("bpe_vocab_size", TrainConfig.bpe_vocab_size),
    }


def _contradictions(origin: Origin, given: dict, fields: tuple, stored: dict) -> list[str]:
    found = []
    for name in fields:
        if name == "bpe_vocab_size" and stored.get("tokenizer") != "bpe":
            continue
        if name in given and given[name] is not None and given[name] != stored[name]:
            flag = "--vocab-size" if name == "bpe_vocab_size" else "--" + name.replace("_", "-")
            found.append(f"{flag} {_shown(given[name])} (the run has {_shown(stored[name])})")
    return found


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _refuse(origin: Origin, contradicted: list[str]) -> None:
    if contradicted:
        raise TextrnnError(
            f"--init-from {origin.run_dir} keeps that run's model shape and tokenizer, but "
            + "; ".join(contradicted)
            + ": drop these options, or train from scratch without --init-from"
        )


def unknown_line(unknown: dict[str, int], corpus) -> str:
    """The error for characters of the new corpus that the run's vocabulary lacks, with their counts."""
    shown = ", ".join(f"{char!r} ({count:,})" for char, count in list(unknown.items())[:SHOWN_CHARACTERS])
    more = len(unknown) - SHOWN_CHARACTERS
    where = corpus if isinstance(corpus, str) else " ".join(corpus)
    return (
        f"{where} has {len(unknown)} characters the run's vocabulary lacks ({sum(unknown.values()):,} in all): {shown}"
        + (f" and {more} more" if more > 0 else "")
        + "; add --extend-vocab to learn them, or train with --tokenizer byte (no unknowns) from scratch"
    )


@torch.no_grad()
def grown_state(old: dict, fresh: dict) -> dict:
    """``old`` weights fitted to the shapes of ``fresh`` (a model's ``state_dict`` with a larger vocabulary):
    a tensor whose shape grew along its vocabulary dimension keeps its old entries; the new entries are the mean
    of the old ones along that dimension, except the head's bias, which gets the lowest old bias minus ``ln V``."""
    differ = sorted(set(old) ^ set(fresh))
    if differ:
        raise TextrnnError(
            f"the run's weights do not fit this model ({', '.join(differ[:3])} differ): fine-tune with the run's "
            "--backend"
        )
    grown = {}
    for name, tensor in old.items():
        target = fresh[name]
        if tensor.shape == target.shape:
            grown[name] = tensor
            continue
        dims = [dim for dim, (a, b) in enumerate(zip(tensor.shape, target.shape)) if a != b]
        if tensor.dim() != target.dim() or len(dims) != 1 or target.shape[dims[0]] < tensor.shape[dims[0]]:
            raise TextrnnError(f"cannot grow {name} from {tuple(tensor.shape)} to {tuple(target.shape)}")
        dim, old_size = dims[0], tensor.shape[dims[0]]
        added = target.shape[dim] - old_size
        if name.endswith("head.bias"):
            fill = (tensor.min() - math.log(old_size)).expand(added)
        else:
            fill = tensor.mean(dim=dim, keepdim=True).expand(*[added if d == dim else -1 for d in range(tensor.dim())])
        grown[name] = torch.cat([tensor, fill.to(tensor.dtype)], dim=dim)
    return grown
