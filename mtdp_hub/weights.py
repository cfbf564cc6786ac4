"""Turn a pretrained tag's weight sources into one verified local file.

Sources are tried in order and the first that works is used:

1. a folder named by ``$MTDP_WEIGHTS_DIR`` holding the original ``.pth`` or converted safetensors;
2. the Hugging Face Hub repo the project publishes to (safetensors; honours ``HF_HUB_OFFLINE``; when
   the Hub cannot be reached within seconds, only the local Hub cache is used: see
   :mod:`mtdp_hub.hubcheck`);
3. the original authors' URL, cached under ``<model>.<tag>-<sha256 prefix>.pth`` because both
   original URLs end in ``/download`` and would collide under their URL basename.

Every file is checked against the SHA-256 recorded in :data:`mtdp_hub.models.WEIGHT_SHA256` and
must load as a plain tensor dict (a truncated file or an HTML page does not); a downloaded or
Hub-cached file that fails is deleted (a local one only skipped) and the next source tried. When
every source fails, one error lists each attempt and why it failed. Nothing here runs pickled
code: ``.pth`` files are read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download

from ._io import clean_leftovers, commit_file, partial_file, sha256_file
from .catalog import ENV_CACHE_DIR, ENV_WEIGHTS_DIR, default_cache_dir
from .errors import CheckpointError, HashMismatchError, WeightsNotFoundError
from .hubcheck import HubUnreachableError, check_hub_reachable, hub_offline
from .state_dict import read_state_dict

__all__ = [
    'ENV_WEIGHTS_DIR',
    'ENV_CACHE_DIR',
    'WeightSource',
    'WeightsNotFoundError',
    'HashMismatchError',
    'default_cache_dir',
    'fetch_weights',
    'sha256_file',
    'verify_sha256',
    'verify_readable',
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightSource:
    """One place a weight file can come from.

    kind: ``'local-dir'`` (a folder), ``'hf-hub'`` (a repo id) or ``'url'``.
    file_name: the file's name in the folder or repo; for a URL, the name it was published as.
    """

    kind: str
    location: str
    file_name: str
    sha256: str | None = None

    def describe(self) -> str:
        if self.kind == 'local-dir':
            return f'local file {Path(self.location) / self.file_name}'
        if self.kind == 'hf-hub':
            return f'Hugging Face Hub {self.location}/{self.file_name}'
        return f'URL {self.location} ({self.file_name})'


def verify_sha256(path: Path, expected: str | None, what: str) -> str:
    """Check ``path`` against ``expected`` (if recorded); return the actual digest."""
    actual = sha256_file(path)
    if expected is None:
        _logger.warning('No SHA-256 is recorded for %s; its SHA-256 is %s', what, actual)
    elif actual != expected.lower():
        raise HashMismatchError(f'SHA-256 mismatch for {what} ({path}): expected {expected}, got {actual}')
    return actual


def verify_readable(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` loads as a plain tensor dict (safetensors whose
    header parses and whose tensors are all readable, or a ``.pth`` that loads with ``weights_only``):
    a truncated file or an HTML error page saved under the weights' name is never used."""
    read_state_dict(path)


def _from_local_dir(src: WeightSource, model_tag: str, cache_dir: Path | None) -> Path:
    path = Path(src.location).expanduser() / src.file_name
    if not path.is_file():
        raise FileNotFoundError(f'no file {path}')
    verify_sha256(path, src.sha256, src.describe())
    verify_readable(path)  # the user's file: skipped when bad, never deleted
    return path


def _hub_download(src: WeightSource, cache_dir: Path | None) -> Path:
    """The file from the Hub, or from the Hub cache alone when the Hub does not answer within seconds
    (huggingface_hub itself would retry for ~20 s first)."""
    if hub_offline():
        return Path(hf_hub_download(src.location, src.file_name, cache_dir=cache_dir))
    try:
        check_hub_reachable(src.describe())
    except HubUnreachableError as unreachable:
        try:
            return Path(
                hf_hub_download(src.location, src.file_name, cache_dir=cache_dir, local_files_only=True)
            )
        except Exception:  # not in the cache: the network is what is missing
            raise unreachable from None
    return Path(hf_hub_download(src.location, src.file_name, cache_dir=cache_dir))


def _from_hf_hub(src: WeightSource, model_tag: str, cache_dir: Path | None) -> Path:
    path = _hub_download(src, cache_dir)
    try:
        verify_sha256(path, src.sha256, src.describe())
        verify_readable(path)
    except (HashMismatchError, CheckpointError):
        # Never leave a bad file in the Hub cache: drop the blob and the snapshot link to it.
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise
    return path


def _url_cache_name(model_tag: str, file_name: str, sha256: str) -> str:
    return f'{model_tag}-{sha256[:12]}{Path(file_name).suffix}'


def _from_url(src: WeightSource, model_tag: str, cache_dir: Path | None) -> Path:
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    suffix = Path(src.file_name).suffix
    if src.sha256:
        cached = cache / _url_cache_name(model_tag, src.file_name, src.sha256)
        candidates = [cached] if cached.is_file() else []
    else:
        candidates = sorted(cache.glob(f'{model_tag}-*{suffix}'))
    for cached in candidates:
        try:
            verify_sha256(cached, src.sha256, f'cached {src.describe()}')
            verify_readable(cached)
            return cached
        except (HashMismatchError, CheckpointError):
            _logger.warning('Removing corrupt cached weights %s', cached)
            cached.unlink(missing_ok=True)

    cache.mkdir(parents=True, exist_ok=True)
    clean_leftovers(cache)  # downloads of killed processes
    tmp = partial_file(cache / f'{model_tag}{suffix}', suffix=suffix)  # the name needs the content's hash
    try:
        torch.hub.download_url_to_file(src.location, str(tmp), progress=_logger.isEnabledFor(logging.INFO))
        actual = verify_sha256(tmp, src.sha256, src.describe())
        # Never cache what is not a plain tensor checkpoint (an HTML error page served with 200).
        verify_readable(tmp)
        return commit_file(tmp, cache / _url_cache_name(model_tag, src.file_name, actual))
    finally:
        tmp.unlink(missing_ok=True)


_FETCHERS = {'local-dir': _from_local_dir, 'hf-hub': _from_hf_hub, 'url': _from_url}


def fetch_weights(
    model_tag: str, sources: Sequence[WeightSource], cache_dir: str | os.PathLike | None = None
) -> Path:
    """Return a local, verified weight file for ``model_tag`` from the first source that works."""
    failures = []
    for src in sources:
        try:
            path = _FETCHERS[src.kind](src, model_tag, Path(cache_dir) if cache_dir else None)
        except Exception as e:  # each failure is reported below, together with the others
            _logger.info('%s: %s failed: %s', model_tag, src.describe(), e)
            failures.append(f'  - {src.describe()}: {type(e).__name__}: {e}')
            continue
        _logger.info('%s: using %s', model_tag, path)
        return path
    tried = '\n'.join(failures) or '  (no source is registered)'
    raise WeightsNotFoundError(
        f'No weights could be obtained for {model_tag}. Tried, in order:\n{tried}\n'
        f'To use a copy you have: set {ENV_WEIGHTS_DIR}=/folder/holding/the/file; or give the file itself: '
        f'--weights FILE on the command line (mtdp extract, mtdp evaluate, mtdp export), '
        f"pretrained_cfg_overlay=dict(file='/path/to/file') in Python; an original mtdp .pth can also be "
        f"turned into a Hugging Face folder with 'mtdp convert' and loaded as 'local-dir:/path/to/folder'."
    )
