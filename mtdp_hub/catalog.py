"""The released models and where their weights can be found on this machine, without torch or timm.

``mtdp list`` reads this module only, so it answers in well under a second. Each released
``arch.tag`` has one :class:`Release` row (its Hub repo, the authors' URL, the original file name);
:func:`local_weights` says which of the places :mod:`mtdp_hub.weights` looks in already hold a
file for it: ``$MTDP_WEIGHTS_DIR`` (the original ``.pth``, ``<arch.tag>.safetensors`` or a
converted folder ``<arch.tag>/model.safetensors``), the Hugging Face cache, and the download
cache (``$MTDP_CACHE_DIR``, else ``<torch hub dir>/checkpoints/mtdp_hub``). A file found there is
only a candidate: its SHA-256 and contents are checked when it is loaded.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    'ENV_WEIGHTS_DIR',
    'ENV_CACHE_DIR',
    'HF_ORG',
    'HF_WEIGHT_FILES',
    'cached_hub_file',
    'Release',
    'RELEASES',
    'default_cache_dir',
    'local_weights',
    'weights_dir_files',
]

ENV_WEIGHTS_DIR = 'MTDP_WEIGHTS_DIR'
ENV_CACHE_DIR = 'MTDP_CACHE_DIR'
HF_ORG = 'mtdp-hub'  # the Hugging Face organisation this project publishes converted weights to
HUB_FILE = 'model.safetensors'


@dataclass(frozen=True)
class Release:
    """One released ``arch.tag``: where its weights are published."""

    name: str
    url: str
    original_file: str  # the name the authors published the checkpoint under (both URLs end in /download)
    summary: str

    @property
    def hf_hub_id(self) -> str:
        return f'{HF_ORG}/{self.name}'


RELEASES = {
    r.name: r
    for r in (
        Release(
            'mtdp_resnet50.mtdp22',
            'https://dox.uliege.be/index.php/s/kvABLtVuMxW8iJy/download',
            'resnet50-mh-best-191205-141200.pth',
            'ResNet50, 22 pathology tasks, multi-task (authors, Dec 2019)',
        ),
        Release(
            'mtdp_densenet121.mtdp22',
            'https://dox.uliege.be/index.php/s/G72InP4xmJvOrVp/download',
            'densenet121-mh-best-191205-141200.pth',
            'DenseNet121 (to norm5, no final ReLU), 22 pathology tasks, multi-task (authors, Dec 2019)',
        ),
    )
}


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``; computed by torch's own rule when torch is not imported."""
    if 'torch' in sys.modules:  # honours torch.hub.set_dir() calls
        return Path(sys.modules['torch'].hub.get_dir())
    if os.environ.get('TORCH_HOME'):
        return Path(os.environ['TORCH_HOME']).expanduser() / 'hub'
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
    return Path(cache).expanduser() / 'torch' / 'hub'


def default_cache_dir() -> Path:
    """Where original checkpoints are downloaded to: ``$MTDP_CACHE_DIR``, else
    ``<torch hub dir>/checkpoints/mtdp_hub``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env) if env else _torch_hub_dir() / 'checkpoints' / 'mtdp_hub'


def weights_dir_files(model_tag: str, weights_dir: str | os.PathLike, original: str | None) -> list[Path]:
    """The files ``$MTDP_WEIGHTS_DIR`` may hold for ``model_tag``, in the order they are tried."""
    folder = Path(weights_dir).expanduser()
    names = [original] if original else []
    return [folder / n for n in names] + [folder / f'{model_tag}.safetensors', folder / model_tag / HUB_FILE]


# The weight files timm looks for in a Hub repo (safetensors first, as timm does).
HF_WEIGHT_FILES = (
    HUB_FILE,
    'open_clip_model.safetensors',
    'pytorch_model.bin',
    'open_clip_pytorch_model.bin',
)


def cached_hub_file(repo_id: str, files: tuple[str, ...] = HF_WEIGHT_FILES) -> str | None:
    """The path of a weight file of Hub repo ``repo_id`` (``ORG/NAME[@revision]``) already in the local
    Hugging Face cache, or ``None``; never touches the network."""
    from huggingface_hub import try_to_load_from_cache  # light: does not import torch

    repo, _, revision = repo_id.partition('@')
    for name in files:
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def local_weights(model_tag: str) -> list[Path]:
    """Files already on this machine for a released ``model_tag``, in the order they would be tried."""
    release = RELEASES[model_tag]
    found = []
    weights_dir = os.environ.get(ENV_WEIGHTS_DIR)
    if weights_dir:
        found += [p for p in weights_dir_files(model_tag, weights_dir, release.original_file) if p.is_file()]
    cached = cached_hub_file(release.hf_hub_id, (HUB_FILE,))
    if cached:
        found.append(Path(cached))
    cache = default_cache_dir()
    if cache.is_dir():
        found += sorted(cache.glob(f'{model_tag}-*{Path(release.original_file).suffix}'))
    return found
