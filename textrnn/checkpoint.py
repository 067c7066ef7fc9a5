"""The only place that writes and reads run directories.

A run directory holds::

    config.json      format version, model / train configs, tokenizer and data description
    tokenizer.json   the HF tokenizer (normalization included)
    last.pt          weights and trainer state of the latest checkpoint (exact resume)
    best.pt          weights with the best validation perplexity so far
    metrics.jsonl    one JSON object per evaluation
    LOCK             the pid of the trainer writing into the run, while it runs

Every file is written to a temporary file in the same directory and renamed into
place, so a crash never leaves a half-written file. ``.pt`` files are read with
``torch.load(weights_only=True)``: tensors, numbers, strings and containers only,
never arbitrary objects. Tensors are mapped to the CPU when read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from textrnn.atomic import atomic_write
from textrnn.config import TrainConfig, from_dict
from textrnn.errors import TextrnnError
from textrnn.text.corpus import BUILTIN
from textrnn.text.tokenizer import CharTokenizer

FORMAT = "textrnn-run"
FORMAT_VERSION = 1
CHECKPOINT_ROOT = Path("checkpoints")
WEIGHTS = ("best", "last")
LOCK = "LOCK"


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_tensors(path: Path, payload: dict) -> None:
    try:
        atomic_write(path, lambda out: torch.save(payload, out))
    except OSError as error:
        raise TextrnnError(
            f"could not write {path} ({error.strerror or error}); the previous checkpoint there is intact"
        ) from None


@contextlib.contextmanager
def locked(run_dir: Path):
    """Hold ``run_dir/LOCK`` (the owner's pid) while training writes into the run.

    A second trainer is refused while the owner lives; the lock of a process that died
    (``kill -9``, a crash) is taken over.
    """
    path = run_dir / LOCK
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise TextrnnError(
                    f"{run_dir} is in use by another textrnn process (pid {owner}): wait for it, stop it, "
                    "or choose another --out"
                ) from None
            path.unlink(missing_ok=True)  # a stale lock: its owner is gone
            continue
        with os.fdopen(handle, "w") as out:
            out.write(f"{os.getpid()}\n")
        break
    else:
        raise TextrnnError(f"could not take the lock {path}: another process keeps creating it")
    try:
        yield
    finally:
        if _lock_owner(path) == os.getpid():
            path.unlink(missing_ok=True)


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_tensors(path: Path) -> dict:
    """Load a ``.pt`` file safely; any failure is one clear error."""
    if not path.is_file():
        raise TextrnnError(f"{path} is missing: the run directory is incomplete")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt zip, truncated file, or a pickle that wants to run code
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextrnnError(
            f"{path} is not a readable textrnn checkpoint ({first_line[:160]}); it was not loaded"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise TextrnnError(f"{path} is not a textrnn checkpoint (no model weights in it)")
    return payload


def run_config(task: str, **sections) -> dict:
    """The ``config.json`` of a new run of ``task`` (charlm, forecast): config dataclasses become plain JSON."""
    plain = {
        name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        for name, value in sections.items()
    }
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "task": task, **plain}


def start_run(run_dir: Path, config: dict, tokenizer: CharTokenizer | None = None) -> None:
    """Create a run directory with its config (and tokenizer); refuse to overwrite another run."""
    if (run_dir / "config.json").exists():
        raise TextrnnError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            atomic_write(run_dir / "tokenizer.json", tokenizer.to_json().encode())
        write_json(run_dir / "config.json", config)
    except OSError as error:
        raise TextrnnError(
            f"cannot write the run directory {run_dir} ({error.strerror}): choose another --out"
        ) from None


def json_safe(value):
    """Non-finite floats become None (JSON null), through nested dicts and lists: ``NaN`` and ``Infinity`` are
    not JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_metrics(run_dir: Path, record: dict) -> None:
    """Add one line to ``metrics.jsonl``; the file is rewritten atomically, so no line is ever torn."""
    path = run_dir / "metrics.jsonl"
    previous = path.read_bytes() if path.exists() else b""
    line = json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, previous + line.encode())


TASK_KEYS = {"charlm": ("model", "train", "tokenizer", "data"), "forecast": ("forecast", "data")}
TASK_COMMANDS = {"charlm": "textrnn sample / eval / fill", "forecast": "textrnn forecast eval / predict"}


def read_config(run_dir: Path, task: str = "charlm") -> dict:
    """The run's ``config.json``, checked: format, version, and a run of ``task`` (charlm or forecast)."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise TextrnnError(
            f"{run_dir} is not a textrnn run directory (no config.json): give the directory `textrnn train` wrote"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TextrnnError(f"{path} is corrupt ({error}): the run cannot be loaded") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise TextrnnError(f"{path} is not a textrnn run config")
    if config.get("format_version") != FORMAT_VERSION:
        raise TextrnnError(
            f"{path} has format version {config.get('format_version')!r}; this textrnn reads version {FORMAT_VERSION}: "
            "use the textrnn version that wrote it"
        )
    found = config.get("task", "charlm")
    if found != task:
        kind = "forecasting" if found == "forecast" else "language-model"
        raise TextrnnError(f"{run_dir} is a {kind} run: use {TASK_COMMANDS.get(found, 'the matching command')} with it")
    missing = [key for key in TASK_KEYS[task] if not isinstance(config.get(key), dict)]
    if missing:
        raise TextrnnError(f"{path} is corrupt: it lacks {', '.join(missing)}; the run cannot be loaded")
    return config


def resolve_run(checkpoint: str | Path | None, task: str = "charlm") -> tuple[Path, str | None]:
    """``--checkpoint`` (a run directory, a ``.pt`` file in one, or None for the newest run) -> (dir, weights)."""
    if checkpoint is None:
        return newest_run(task=task), None
    path = Path(checkpoint)
    if path.is_file() and path.suffix == ".pt":
        return path.parent, path.stem
    if not path.exists():
        raise TextrnnError(f"checkpoint {path} does not exist: give a run directory written by `textrnn train`")
    return path, None


def _task_of(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("task", "charlm")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None


def newest_run(root: Path = CHECKPOINT_ROOT, task: str = "charlm") -> Path:
    """The run of ``task`` whose weights were written last."""
    # compare writes one level deeper: checkpoints/compare-<date-time>/<cell>/
    runs = [*root.glob("*/config.json"), *root.glob("*/*/config.json")] if root.is_dir() else []
    runs = [p.parent for p in runs if any((p.parent / f"{w}.pt").is_file() for w in WEIGHTS) and _task_of(p) == task]
    if not runs:
        how = "textrnn forecast train" if task == "forecast" else "textrnn train"
        raise TextrnnError(
            f"no trained {'forecasting ' if task == 'forecast' else ''}runs in {root.resolve()}: "
            f"train one with `{how}`, or give --checkpoint DIR"
        )
    return max(
        runs, key=lambda run: max((run / f"{w}.pt").stat().st_mtime for w in WEIGHTS if (run / f"{w}.pt").is_file())
    )


def open_run(checkpoint, weights: str | None, task: str) -> tuple[Path, str | None, dict]:
    """``(run directory, weights, its checked config.json with run_dir)`` for ``--checkpoint`` and ``--weights``."""
    run_dir, from_path = resolve_run(checkpoint, task=task)
    config = read_config(run_dir, task=task)
    config["run_dir"] = str(run_dir)
    return run_dir, weights or from_path, config


def load_weights(run_dir: Path, weights: str | None, model: torch.nn.Module, device):
    """Fill ``model`` with the run's ``weights`` (best, else last, when None) -> (model in eval mode, weights)."""
    if weights is None:
        weights = "best" if (run_dir / "best.pt").is_file() else "last"
    if weights not in WEIGHTS:
        raise TextrnnError(f"unknown weights {weights!r}: choose best or last")
    payload = read_tensors(run_dir / f"{weights}.pt")
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise TextrnnError(
            f"{run_dir / (weights + '.pt')} does not match its config.json ({str(error).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), weights


def train_config_of(config: dict) -> TrainConfig:
    """The ``TrainConfig`` of a stored run; a corpus file (or directory, or each of several paths) is named by the
    absolute path stored with it, so the run finds its text from any working directory."""
    train = from_dict(TrainConfig, config["train"])
    if isinstance(train.corpus, tuple):  # several paths: each stored absolute (built-in names as they are)
        train = dataclasses.replace(train, corpus=tuple(config["data"]["paths"]))
    elif train.corpus not in BUILTIN:
        train = dataclasses.replace(train, corpus=config["data"]["path"])
    return train
