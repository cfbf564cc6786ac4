"""Former home of batch feature extraction, kept so that ``from mtdp_hub.extract import ...`` works.

The code lives in :mod:`mtdp_hub.features`; this module only re-exports its public names.
"""

from .features import (
    TTA_VIEWS,
    FeatureExtractor,
    FeatureFile,
    ImageSource,
    extract_features,
    extract_source,
    make_source,
    read_features,
    write_features,
)

__all__ = [
    'FeatureExtractor',
    'FeatureFile',
    'ImageSource',
    'TTA_VIEWS',
    'extract_features',
    'extract_source',
    'make_source',
    'read_features',
    'write_features',
]
