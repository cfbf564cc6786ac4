"""mtdp-hub: multi-task pre-trained digital-pathology backbones for timm, torch.hub and the HF Hub.

``import mtdp_hub`` registers ``mtdp_resnet50`` and ``mtdp_densenet121`` with timm; it does no
I/O and touches no network. It does not import torch or timm itself: when timm is already
imported the models are registered at once, otherwise as soon as timm is imported (an import
hook, removed after its one use). So ``mtdp --help``, ``mtdp --version`` and ``mtdp list`` start
without loading torch, and ``import mtdp_hub; import timm; timm.create_model('mtdp_resnet50')``
works as before.

Layers, each importing only those above it in this list:

- core: :mod:`.errors`, :mod:`._io`, :mod:`.catalog`, :mod:`.hubcheck`, :mod:`.state_dict`, :mod:`.weights`,
  :mod:`.models`, :mod:`.heads`, :mod:`.export`, :mod:`.convert`, :mod:`.push`, :mod:`.hub`,
  :mod:`.images`, :mod:`.tasks`;
- :mod:`.features`: backbones from model specs, extraction (torch + timm only);
- :mod:`.evaluation`: the paper's transfer protocol (the ``eval`` extra);
- :mod:`.cli`: the ``mtdp`` command (and the former names :mod:`.extract`, :mod:`.transfer`).
"""

import importlib
import importlib.abc
import importlib.util
import sys

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


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``timm`` is first imported, it lets the other finders find it and
    makes its loader import :mod:`mtdp_hub.models` (which registers the models) right after timm."""

    def find_spec(self, name, path=None, target=None):
        if name != 'timm':
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterWhenTimmLoads)]
        spec = importlib.util.find_spec('timm')
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module):
            exec_timm(module)
            importlib.import_module(f'{__name__}.models')

        spec.loader.exec_module = exec_module  # this spec's own loader object, made for this import
        return spec


def _register_with_timm() -> None:
    if 'timm' in sys.modules:
        importlib.import_module(f'{__name__}.models')
    elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenTimmLoads())


_register_with_timm()


def list_models(pretrained: bool = False) -> list[str]:
    """The model names this package registers (with their tags when ``pretrained``)."""
    import timm

    from . import models  # noqa: F401  (registered with timm)

    return timm.list_models('mtdp_*', pretrained=pretrained)
