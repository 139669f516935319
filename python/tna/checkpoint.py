"""Atomic checkpoints, loaded with ``weights_only=True`` and clear errors."""
from pathlib import Path

import torch

from .files import write_atomically

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or written by an incompatible version."""


def save_atomic(obj, path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`tna.files.write_atomically`)."""
    write_atomically(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, kind: str = "checkpoint") -> dict:
    """Load a dict saved by :func:`save_atomic` on the CPU, allowing tensors and plain Python values only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"{kind} {path} is corrupt or not a tna checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{kind} {path} has format {found!r}; this version of tna reads format "
                              f"{CHECKPOINT_FORMAT}")
    return state
