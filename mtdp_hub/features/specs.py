"""Model spec strings -> a timm backbone (``num_classes=0``), its preprocessing and its provenance.

A spec is what a user types after ``--model``/``--models``:

- a timm name, with or without tag: ``mtdp_resnet50``, ``resnet50.tv_in1k``;
- ``hf-hub:ORG/NAME`` or ``local-dir:PATH`` (timm's own prefixes);
- ``random:ARCH``: the architecture with random (seeded) initialisation, the paper's "scratch".

Weights are only ever loaded by ``timm.create_model(..., pretrained=True)``; this module then
records where they came from: the weight file's SHA-256 when timm loaded a local file, the
cached Hub snapshot's revision (and file hash) for Hub weights. The eval preprocessing is the
model's own (timm's ``resolve_data_config`` + ``create_transform``), for extraction, evaluation
and the training driver's validation alike.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
from torch import nn

from .. import models as _models  # noqa: F401  (registers mtdp_* with timm)
from .._io import sha256_file
from ..catalog import cached_hub_file
from ..errors import InputNotFoundError, InvalidOptionError
from ..version import __version__

__all__ = [
    'RANDOM_PREFIX',
    'spec_slug',
    'is_random',
    'check_spec',
    'load_backbone',
    'data_config',
    'eval_transform',
    'weights_provenance',
    'package_versions',
    'model_identity',
]

RANDOM_PREFIX = 'random:'
_PREPROCESS_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def spec_slug(spec: str) -> str:
    """A file-name-safe version of a model spec (``hf-hub:org/x`` -> ``hf-hub_org_x``)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', spec).strip('_')


def is_random(spec: str) -> bool:
    return spec.startswith(RANDOM_PREFIX)


def check_spec(spec: str) -> None:
    """Fail early, naming ``spec``, when it is no timm model name or its ``local-dir:`` folder is missing."""
    if spec.startswith('hf-hub:'):
        return
    if spec.startswith('local-dir:'):
        folder = Path(spec[len('local-dir:') :]).expanduser()
        if not folder.is_dir():
            raise InputNotFoundError(f'{spec}: no such folder {folder}')
        return
    arch = spec[len(RANDOM_PREFIX) :] if is_random(spec) else spec
    if not timm.is_model(arch.split('.', 1)[0]):
        close = timm.list_models(f'*{arch.split(".", 1)[0][:8]}*')[:8]
        hint = f' (similar names: {", ".join(close)})' if close else ''
        raise InvalidOptionError(
            f'unknown model {spec!r}: not a timm model name, hf-hub:ORG/NAME, '
            f'local-dir:PATH or random:ARCH{hint}'
        )


def load_backbone(spec: str, *, seed: int = 0, weights: str | os.PathLike | None = None) -> nn.Module:
    """Create the backbone named by ``spec`` with its classifier removed (pooled features out).

    ``seed`` only matters for ``random:`` specs (their initialisation). ``weights`` is a local
    weight file (safetensors, or a ``.pth`` / ``.bin`` opened with ``weights_only=True``) used
    instead of the registry's sources: the ``--weights`` of the command line, timm's
    ``pretrained_cfg_overlay=dict(file=...)``.
    """
    check_spec(spec)
    if weights is not None:
        if is_random(spec):
            raise InvalidOptionError(f'{spec}: a random: model takes no weight file (got {weights})')
        if not Path(weights).expanduser().is_file():
            raise InputNotFoundError(f'{spec}: no such weight file {weights}')
    if is_random(spec):
        arch = spec[len(RANDOM_PREFIX) :]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(arch, pretrained=False, num_classes=0)
    elif weights is not None:
        overlay = dict(file=str(Path(weights).expanduser().resolve()))
        model = timm.create_model(spec, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    else:
        model = timm.create_model(spec, pretrained=True, num_classes=0)
    return model.eval()


def data_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """The model's own eval preprocessing (``timm.data.resolve_data_config``), optionally resized."""
    cfg = timm.data.resolve_data_config(model=model)
    if img_size is not None:
        cfg['input_size'] = (cfg['input_size'][0], int(img_size), int(img_size))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in _PREPROCESS_KEYS}


def eval_transform(cfg: dict[str, Any]):
    """``timm.data.create_transform`` for ``cfg`` at eval time (resize, centre crop, normalise)."""
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    return timm.data.create_transform(**kwargs, is_training=False)


def _hub_snapshot(repo_id: str) -> tuple[str | None, str | None]:
    """(revision, file) of a cached Hub snapshot of ``repo_id`` (offline: looks in the cache only)."""
    found = cached_hub_file(repo_id)
    if found:
        return Path(found).parent.name, found  # snapshots/<commit>/<file>
    return repo_id.partition('@')[2] or None, None


def weights_provenance(spec: str, model: nn.Module, *, seed: int = 0) -> dict[str, Any]:
    """Where the weights of ``model`` (made by :func:`load_backbone` from ``spec``) came from."""
    if is_random(spec):
        return {'source': 'random-init', 'seed': seed}
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    out: dict[str, Any] = {}
    file = cfg.get('file')
    if spec.startswith('local-dir:') and not (file and os.path.isfile(file)):
        folder = Path(file or spec[len('local-dir:') :])  # timm stores the folder under 'file'
        cands = [folder / 'model.safetensors', folder / 'pytorch_model.bin']
        file = next((str(c) for c in cands if c.exists()), None)
    if file and os.path.isfile(file):
        out.update(source='file', file=str(file), sha256=sha256_file(file))
        return out
    hub_id = cfg.get('hf_hub_id')
    if spec.startswith('hf-hub:'):
        hub_id = spec[len('hf-hub:') :]
    if hub_id:
        revision, cached = _hub_snapshot(hub_id)
        out.update(source='hf-hub', hf_hub_id=hub_id, revision=revision)
        if cached:
            out['sha256'] = sha256_file(cached)
        return out
    url = cfg.get('url')
    if url:
        out.update(source='url', url=url)
        cached = Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(url)
        if cached.is_file():
            out['sha256'] = sha256_file(cached)
        return out
    return {'source': 'unknown'}


def package_versions() -> dict[str, str]:
    return {
        'mtdp_hub': __version__,
        'torch': torch.__version__,
        'timm': timm.__version__,
        'python': platform.python_version(),
    }


def model_identity(spec: str, model: nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    tag = None if is_random(spec) else cfg.get('tag')  # a random init has no pretrained tag
    return {'model': spec, 'architecture': cfg.get('architecture'), 'tag': tag}
