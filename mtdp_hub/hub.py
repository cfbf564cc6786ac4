"""torch.hub entry points (re-exported by the repository's ``hubconf.py``)."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from . import models  # noqa: F401  (registers the models with timm)

__all__ = ['mtdp_resnet50', 'mtdp_densenet121']


def mtdp_resnet50(pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """ResNet50 multi-task pre-trained on 22 pathology tasks (Mormont et al. 2021).

    Returns pooled 2048-d features by default; ``num_classes=N`` adds a fresh linear head.
    Other keyword arguments go to ``timm.create_model`` (e.g. ``features_only=True``).
    """
    return timm.create_model('mtdp_resnet50', pretrained=pretrained, **kwargs)


def mtdp_densenet121(pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """DenseNet121 multi-task pre-trained on 22 pathology tasks (Mormont et al. 2021).

    Returns pooled 1024-d features of ``norm5`` (no final ReLU), as the original models;
    ``num_classes=N`` adds a fresh linear head. Other keyword arguments go to ``timm.create_model``.
    """
    return timm.create_model('mtdp_densenet121', pretrained=pretrained, **kwargs)
