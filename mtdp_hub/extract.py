"""Former home of batch feature extraction, kept so that ``from mtdp_hub.extract import ...`` works.

The code lives in :mod:`mtdp_hub.features`; this module only re-exports its public names.
"""

from . import features as _features
from .features import *  # noqa: F403

__all__ = list(_features.__all__)
