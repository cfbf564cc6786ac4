"""Checks that run before any long work (the pool's image scan, the first step) and fail in seconds.

- :func:`check_run_folder`: the run folder can be created and written.
- :func:`imagenet_init`: ``model.init: imagenet`` weights are cached or the Hub answers; without
  either, Hugging Face's downloader retries for about a minute before it gives up, and that came
  only after the image scan.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants

from mtdp_hub.catalog import HF_WEIGHT_FILES, cached_hub_file
from mtdp_hub.errors import MtdpError
from mtdp_hub.hubcheck import hub_reachable

from .config import Config
from .model import WeightsUnavailableError, imagenet_weights_name

__all__ = ['check_run_folder', 'imagenet_init', 'RunFolderError', 'weights_cached', 'hub_reachable']


class RunFolderError(MtdpError, OSError):
    """The run folder cannot be created or written."""


def check_run_folder(run_dir: Path) -> None:
    """Create ``run_dir`` and write a file in it; raise :class:`RunFolderError` naming it otherwise."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise RunFolderError(
            f'cannot write the run folder {run_dir} ({type(e).__name__}: {e.strerror or e}); choose another '
            'place with --set run.output_dir=DIR'
        ) from None


def weights_cached(name: str) -> bool | None:
    """Whether timm's pretrained weights ``name`` are in the local caches (``None``: timm has no such tag,
    nothing to check here)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown name: create_model will say so
        return None
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return True
    if cfg.hf_hub_id:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
        if cached_hub_file(cfg.hf_hub_id, files):
            return True
    if cfg.url:
        return (
            Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(urlparse(cfg.url).path)
        ).is_file()
    return False


def imagenet_init(cfg: Config, resuming: bool, log) -> str:
    """The ``init`` to build the backbone with: ``cfg.model.init``, or ``'random'`` when ImageNet weights
    are out of reach and ``model.if_weights_missing: random``; raises :class:`WeightsUnavailableError`
    (with the ways out) when they are out of reach and it is ``error``."""
    if resuming:
        return 'random'  # the checkpoint holds the weights
    if cfg.model.init != 'imagenet':
        return cfg.model.init
    name = cfg.model.imagenet_weights or imagenet_weights_name(cfg.model.arch)
    if weights_cached(name) is not False or hub_reachable():
        return 'imagenet'
    why = (
        f'ImageNet weights {name!r} (model.init: imagenet) are not in the local cache and the Hugging Face '
        f'Hub cannot be reached ({"HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else constants.ENDPOINT})'
    )
    if cfg.model.if_weights_missing == 'random':
        log(f'WARNING: {why}; starting from RANDOM weights (model.if_weights_missing: random)')
        return 'random'
    raise WeightsUnavailableError(
        f'{why}. Either train from random weights (--set model.init=random), start from a local file '
        '(--set model.init=PATH), name cached timm weights (--set model.imagenet_weights=NAME.TAG), '
        'accept random weights when these are missing (--set model.if_weights_missing=random), or '
        'download them once with network access (the same command caches them)'
    )
