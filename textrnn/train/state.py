"""What a resumed run reads back: the trainer state of ``last.pt`` and the random number generators."""

from __future__ import annotations

from pathlib import Path

import torch

from textrnn import checkpoint
from textrnn.errors import TextrnnError
from textrnn.train.distributed import World


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
