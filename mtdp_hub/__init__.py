"""mtdp-hub: multi-task pre-trained digital-pathology backbones for timm, torch.hub and the HF Hub.

``import mtdp_hub`` registers ``mtdp_resnet50`` and ``mtdp_densenet121`` with timm; it does no
I/O and touches no network.

Layers, each importing only those above it in this list:

- core: :mod:`.errors`, :mod:`._io`, :mod:`.state_dict`, :mod:`.weights`, :mod:`.models`,
  :mod:`.heads`, :mod:`.export`, :mod:`.convert`, :mod:`.push`, :mod:`.hub`, :mod:`.images`,
  :mod:`.tasks`;
- :mod:`.features`: backbones from model specs, extraction (torch + timm only);
- :mod:`.evaluation`: the paper's transfer protocol (the ``eval`` extra);
- :mod:`.cli`: the ``mtdp`` command (and the former names :mod:`.extract`, :mod:`.transfer`).
"""

import timm

from . import models  # noqa: F401  (registers the models with timm)
from .errors import (
    CheckpointError,
    HashMismatchError,
    MtdpError,
    UnreadableImageError,
    WeightsNotFoundError,
)
from .version import __version__

__all__ = [
    '__version__',
    'list_models',
    'MtdpError',
    'CheckpointError',
    'HashMismatchError',
    'UnreadableImageError',
    'WeightsNotFoundError',
]


def list_models(pretrained: bool = False) -> list[str]:
    """The model names this package registers (with their tags when ``pretrained``)."""
    return timm.list_models('mtdp_*', pretrained=pretrained)
