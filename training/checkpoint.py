"""Checkpoints that survive being killed at any moment.

A checkpoint is written through :func:`mtdp_hub._io.atomic_path`: a temporary file beside it,
flushed to disk, renamed over the final name, the folder entry flushed too. A reader sees either
the previous set of checkpoints or the new complete one, never a partial file. Only after the
new file is in place are the oldest ones beyond ``keep`` deleted. A failed write (disk full,
...) removes its temporary file and leaves the earlier checkpoints untouched; the temporary
file of a killed process is removed by :func:`clean_partial` when the run starts again.

Checkpoints hold plain data and tensors only and are loaded with ``torch.load(weights_only=True)``:
a file that asks to run code is refused. Each has a ``ckpt-N.pt.sha256`` sidecar, written before the
checkpoint is renamed into place and verified on load, so a damaged file is refused, never used.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from mtdp_hub._io import atomic_path, atomic_write_text, clean_leftovers, sha256_file
from mtdp_hub.errors import CheckpointError, MtdpError

__all__ = [
    'CheckpointWriteError',
    'save_checkpoint',
    'list_checkpoints',
    'latest_checkpoint',
    'load_checkpoint',
    'clean_partial',
    'checksum_path',
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
    """Remove temporary files left by writes that were killed, and SHA-256 sidecars whose checkpoint never
    appeared (killed between the two renames); returns them."""
    removed = clean_leftovers(folder)
    folder = Path(folder)
    if folder.is_dir():
        for sidecar in folder.glob('ckpt-*.pt.sha256'):
            if not sidecar.with_name(sidecar.name[: -len('.sha256')]).exists():
                sidecar.unlink(missing_ok=True)
                removed.append(sidecar)
    return removed


def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar ``ckpt-N.pt.sha256`` that records a checkpoint's SHA-256 (``sha256sum`` format)."""
    path = Path(path)
    return path.with_name(path.name + '.sha256')


def save_checkpoint(state: dict, folder: str | os.PathLike, iteration: int, keep: int = 3) -> Path:
    """Atomically write ``state`` as ``folder/ckpt-<iteration>.pt`` (with its SHA-256 sidecar) and keep the
    ``keep`` newest up to this one; newer-numbered files (unreadable leftovers) never push it out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f'ckpt-{iteration:09d}.pt'
    try:
        with atomic_path(final) as tmp:
            with open(tmp, 'wb') as f:
                torch.save(state, f)
            # The sidecar is in place before the checkpoint appears: a visible checkpoint always has it.
            atomic_write_text(checksum_path(final), f'{sha256_file(tmp)}  {final.name}\n')
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        raise CheckpointWriteError(
            f'could not write checkpoint {final} ({e}); the previous checkpoints are intact'
        ) from e
    older = [p for p in list_checkpoints(folder) if _iteration(p) < iteration]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    return final


def _iteration(path: Path) -> int:
    return int(_NAME.match(path.name)[1])


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint as plain data (``weights_only``: no code runs), after checking its SHA-256."""
    path = Path(path)
    sidecar = checksum_path(path)
    try:
        recorded = sidecar.read_text().split()[0]
    except (OSError, IndexError) as e:
        raise CheckpointError(f'checkpoint {path}: no readable SHA-256 in {sidecar.name} ({e})') from e
    try:
        actual = sha256_file(path)
    except OSError as e:
        raise CheckpointError(f'checkpoint {path} cannot be read: {e}') from e
    if actual != recorded:
        raise CheckpointError(
            f'checkpoint {path} is corrupted: its SHA-256 {actual} differs from {recorded} in {sidecar.name}'
        )
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'refusing to load checkpoint {path}: it holds objects other than plain data and tensors '
            f'(loading it could run code): {str(e).splitlines()[0]}'
        ) from e
    except Exception as e:  # a damaged archive
        raise CheckpointError(f'checkpoint {path} cannot be loaded ({type(e).__name__}: {e})') from e


def latest_checkpoint(folder: str | os.PathLike, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads (an unreadable one is reported and the previous one tried);
    ``None`` when there is none; :class:`CheckpointError` when there are some but none loads."""
    paths = list_checkpoints(folder)
    for path in reversed(paths):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log(f'WARNING: {e}; trying an older one')
    if paths:
        raise CheckpointError(
            f'no checkpoint in {folder} can be loaded ({", ".join(p.name for p in paths)}): refusing to '
            'start over them; move them away to start from the beginning'
        )
    return None
