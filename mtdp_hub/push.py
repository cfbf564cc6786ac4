"""Publish an exported folder to the Hugging Face Hub; a dry run unless asked otherwise.

Uploads only what the export writes, checked by content, not by name: ``*.safetensors`` whose
header parses, ``config.json`` that parses as a JSON object with an ``architecture``, ``README.md``
and a few licence texts. Anything else (a pickled weight file under any name, a sub-folder, a
symbolic link, a hidden file) is refused, naming it, before anything is sent. Exactly the listed
files are sent, one commit operation each: what the dry run shows is what is uploaded.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import OfflineModeIsEnabled
from safetensors import safe_open

from .errors import InputNotFoundError, ModelFolderError
from .hubcheck import HubUnreachableError, check_hub_reachable, hub_offline

__all__ = ['check_folder', 'push_folder', 'REQUIRED', 'TEXT_FILES']

REQUIRED = ('model.safetensors', 'config.json', 'README.md')
TEXT_FILES = ('README.md', 'LICENSE', 'LICENSE.md', 'LICENSE.txt', 'NOTICE')
_PICKLE_MAGIC = (b'\x80', b'PK\x03\x04')  # pickle protocol 2+, torch's zip archive
# Named in the error as pickled weight files, whatever their case or further suffixes.
PICKLE_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.pkl', '.pickle', '.joblib', '.npy', '.tar')
_MAX_TEXT = 1 << 20


def _safetensors_problem(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework='pt') as f:
            f.keys()
    except Exception as e:  # any parse failure: not a safetensors file
        return f'not a safetensors file ({type(e).__name__})'
    return None


def _config_problem(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, ValueError) as e:
        return f'not valid JSON ({type(e).__name__})'
    if not isinstance(config, dict) or 'architecture' not in config:
        return 'no "architecture" key'
    return None


def _text_problem(path: Path) -> str | None:
    if path.stat().st_size > _MAX_TEXT:
        return f'larger than {_MAX_TEXT} bytes'
    data = path.read_bytes()
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        return 'not UTF-8 text'
    return 'not text (holds NUL bytes)' if '\0' in text else None


def _entry_problem(folder: Path, path: Path) -> str | None:
    """Why ``path`` may not be published, or ``None``; checks what it is and holds, not its name."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return 'a symbolic link'
    if stat.S_ISDIR(mode):
        return 'a sub-folder'
    if not stat.S_ISREG(mode):
        return 'not a regular file'
    if path.resolve().parent != folder:
        return 'resolves outside the folder'
    with open(path, 'rb') as f:
        head = f.read(4)
    suffixes = {s.lower() for s in path.suffixes}
    if (head.startswith(_PICKLE_MAGIC) or suffixes & set(PICKLE_SUFFIXES)) and path.name not in TEXT_FILES:
        return 'a pickled file'
    if path.name.endswith('.safetensors') and not path.name.startswith('.'):
        return _safetensors_problem(path)
    if path.name == 'config.json':
        return _config_problem(path)
    if path.name in TEXT_FILES:
        return _text_problem(path)
    return 'not a file a model folder may hold (*.safetensors, config.json, ' + ', '.join(TEXT_FILES) + ')'


def check_folder(folder: str | os.PathLike) -> list[Path]:
    """Validate an exported folder; return exactly the files that would be uploaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f'{folder}: not a folder')
    real = folder.resolve()
    entries = sorted(folder.iterdir())
    problems = [(p.name, why) for p in entries if (why := _entry_problem(real, p)) is not None]
    pickles = [name for name, why in problems if why == 'a pickled file']
    if pickles:
        raise ModelFolderError(f'{folder}: refusing to publish pickled weight files: {", ".join(pickles)}')
    if problems:
        listed = '; '.join(f'{name}: {why}' for name, why in problems)
        raise ModelFolderError(f'{folder}: refusing to publish {listed}')
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f'{folder}: not an exported model folder, missing {", ".join(missing)}')
    return entries


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
    """Upload the files :func:`check_folder` lists, and only those, in one commit; with ``dry_run`` only list them.

    Stops within seconds with :class:`~mtdp_hub.hubcheck.HubUnreachableError` when the Hub cannot be
    reached (or ``HF_HUB_OFFLINE`` is set), before anything is sent."""
    files = check_folder(folder)
    if dry_run:
        return files
    api = HfApi(token=token)
    if not hub_offline():  # offline, huggingface_hub refuses every request at once (below)
        check_hub_reachable(f'uploading to {repo_id}', api.endpoint)  # seconds, not its retries
    try:
        api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
        api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files],
            repo_type='model',
            revision=revision,
            commit_message=commit_message,
        )
    except OfflineModeIsEnabled as e:
        raise HubUnreachableError(
            f'cannot upload to {repo_id}: HF_HUB_OFFLINE is set; unset it to upload'
        ) from e
    return files
