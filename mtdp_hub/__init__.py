"""mtdp-hub: multi-task pre-trained digital-pathology backbones for timm, torch.hub and the HF Hub.

``import mtdp_hub`` registers ``mtdp_resnet50`` and ``mtdp_densenet121`` with timm; it does no
I/O and touches no network.
"""
from . import models  # noqa: F401  (registers the models with timm)
from .convert import CheckpointError
from .version import __version__
from .weights import HashMismatchError, WeightsNotFoundError

__all__ = ['__version__', 'list_models', 'CheckpointError', 'HashMismatchError', 'WeightsNotFoundError']


def list_models(pretrained: bool = False) -> list[str]:
    """The model names this package registers (with their tags when ``pretrained``)."""
    import timm

    return timm.list_models('mtdp_*', pretrained=pretrained)
