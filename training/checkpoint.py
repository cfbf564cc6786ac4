"""Checkpoints that survive being killed at any moment.

A checkpoint is written through :func:`mtdp_hub._io.atomic_path`: a temporary file beside it,
flushed to disk, renamed over the final name, the folder entry flushed too. A reader sees either
the previous set of checkpoints or the new complete one, never a partial file. Only after the
new file is in place are the oldest ones beyond ``keep`` deleted. A failed write (disk full,
...) removes its temporary file and leaves the earlier checkpoints untouched; the temporary
file of a killed process is removed by :func:`clean_partial` when the run starts again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from mtdp_hub._io import atomic_path, clean_leftovers
from mtdp_hub.errors import MtdpError

__all__ = [
    'CheckpointWriteError',
    'save_checkpoint',
    'list_checkpoints',
    'latest_checkpoint',
    'load_checkpoint',
    'clean_partial',
]

_NAME = re.compile(r'^ckpt-(\d{9})\.pt$')


class CheckpointWriteError(MtdpError, RuntimeError):
    """A checkpoint could not be written (e.g. disk full); the earlier ones are intact."""


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def clean_partial(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files left by writes that were killed; returns them."""
    return clean_leftovers(folder)


def save_checkpoint(state: dict, folder: str | os.PathLike, iteration: int, keep: int = 3) -> Path:
    """Atomically write ``state`` as ``folder/ckpt-<iteration>.pt`` and keep the ``keep`` newest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f'ckpt-{iteration:09d}.pt'
    try:
        with atomic_path(final) as tmp, open(tmp, 'wb') as f:
            torch.save(state, f)
    except OSError as e:
        raise CheckpointWriteError(
            f'could not write checkpoint {final} ({e}); the previous checkpoints are intact'
        ) from e
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


def latest_checkpoint(folder: str | os.PathLike, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads (an unreadable one is reported and the previous one tried)."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # a corrupted file (should not happen with atomic writes): fall back
            log(f'WARNING: checkpoint {path} is unreadable ({type(e).__name__}: {e}); trying an older one')
    return None
