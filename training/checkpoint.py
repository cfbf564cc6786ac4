"""Checkpoints that survive being killed at any moment.

A checkpoint is written to a temporary file in the run folder, flushed and fsync'ed, then renamed
over its final name (``os.replace`` is atomic on POSIX), and the folder is fsync'ed: a reader sees
either the previous set of checkpoints or the new complete one, never a partial file. Only after
the new file is in place are the oldest ones beyond ``keep`` deleted. A failed write (disk full,
...) removes its temporary file and leaves the earlier checkpoints untouched.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

__all__ = ['CheckpointError', 'save_checkpoint', 'list_checkpoints', 'latest_checkpoint', 'load_checkpoint',
           'clean_partial']

_NAME = re.compile(r'^ckpt-(\d{9})\.pt$')
_TMP_PREFIX = '.ckpt-tmp-'


class CheckpointError(RuntimeError):
    pass


# Test hook: called with the temporary path once it is fully written, just before the rename.
before_rename = None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def clean_partial(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files left by a write that was killed; returns them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f'{_TMP_PREFIX}*')] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(state: dict, folder: str | os.PathLike, iteration: int, keep: int = 3) -> Path:
    """Atomically write ``state`` as ``folder/ckpt-<iteration>.pt`` and keep the ``keep`` newest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f'ckpt-{iteration:09d}.pt'
    tmp = folder / f'{_TMP_PREFIX}{iteration:09d}-{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f'could not write checkpoint {final} ({e}); the previous checkpoints are intact') from e
        raise
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
