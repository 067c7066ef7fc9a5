"""What a resumed run reads back: its config with what may change on a resume, the trainer state of ``last.pt``
and the random number generators."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from textrnn import checkpoint
from textrnn.config import LIMITS, RESUMABLE, with_limits
from textrnn.errors import TextrnnError
from textrnn.train.distributed import World


def resumed_config(stored, given: dict):
    """The config a resumed run trains with: ``stored`` (the run's own), with the limits given now (any limit
    given replaces all three) and the ``RESUMABLE`` settings given now. ``given`` maps field names to values,
    None meaning not given; other fields are the run's and stay."""
    changes = {name: given[name] for name in RESUMABLE if given.get(name) is not None}
    return with_limits(dataclasses.replace(stored, **changes), **{name: given.get(name) for name in LIMITS})


def given_now(config) -> dict:
    """What a config passed to a resumed run contributes: its limits and ``RESUMABLE`` settings."""
    return {name: getattr(config, name) for name in (*LIMITS, *RESUMABLE)}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def kept_checkpoint(out_dir: Path) -> str:
    if (out_dir / "last.pt").exists():
        return f"the last good checkpoint in {out_dir} was kept"
    return "no checkpoint had been written yet"


def read_resume_state(out_dir: Path, world: World) -> dict | None:
    """The trainer state in ``out_dir/last.pt`` (None: the run stopped before its first checkpoint)."""
    if not (out_dir / "last.pt").exists():
        return None
    saved = checkpoint.read_tensors(out_dir / "last.pt")
    if "trainer" not in saved:
        raise TextrnnError(f"{out_dir / 'last.pt'} holds no trainer state: it cannot be resumed")
    saved_world = saved["trainer"]["counters"].get("world_size", 1)
    if saved_world != world.size:
        raise TextrnnError(
            f"{out_dir} was trained by {saved_world} process(es) and is resumed by {world.size}: the carried "
            f"state and the data order belong to the old layout; resume with {saved_world} process(es)"
        )
    return saved
