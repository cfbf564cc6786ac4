"""Publish an exported folder to the Hugging Face Hub; a dry run unless asked otherwise.

Uploads only what the export writes (safetensors, ``config.json``, ``README.md``): a folder with a
pickled weight file or without its config or card is refused before anything is sent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import HfApi

from .errors import InputNotFoundError, ModelFolderError

__all__ = ['check_folder', 'push_folder']

REQUIRED = ('model.safetensors', 'config.json', 'README.md')
PICKLE_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.pkl')


def check_folder(folder: str | os.PathLike) -> list[Path]:
    """Validate an exported folder; return the files that would be uploaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f'{folder}: not a folder')
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f'{folder}: not an exported model folder, missing {", ".join(missing)}')
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFolderError(f'{folder}: refusing to publish pickled weight files: {", ".join(pickles)}')
    config = json.loads((folder / 'config.json').read_text())
    if 'architecture' not in config:
        raise ModelFolderError(f'{folder / "config.json"}: no "architecture" key')
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    dry_run: bool = True,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = 'Upload mtdp-hub model',
    token: str | None = None,
) -> list[Path]:
    """Upload ``folder`` to ``repo_id`` with ``HfApi.upload_folder``; with ``dry_run`` only list it."""
    files = check_folder(folder)
    if dry_run:
        return files
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type='model',
        revision=revision,
        commit_message=commit_message,
        allow_patterns=[p.name for p in files],
    )
    return files
