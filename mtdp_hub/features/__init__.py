"""Features from images with any timm backbone (needs only torch and timm).

- :mod:`.specs`      model spec strings -> backbone, its eval preprocessing, provenance
- :mod:`.runtime`    device choice and the one precision policy (shared with training)
- :mod:`.sources`    folders, file lists, ``datasets`` sources
- :mod:`.pixels`     uint8 pixels from the workers, normalised on the device
- :mod:`.extractor`  the model side: layer, test-time flips, autocast, channels_last
- :mod:`.pipeline`   batches to features with several in flight and no host sync per batch
- :mod:`.store`      feature files (safetensors / Parquet)
- :mod:`.run`        the resumable run behind ``mtdp extract``

Python use::

    from mtdp_hub.features import extract_features, read_features
    stats = extract_features('mtdp_resnet50', 'patches/', 'feats.safetensors')
    feats = read_features('feats.safetensors')   # .paths, .features (N, D), .labels, .meta
"""

from .extractor import TTA_VIEWS, FeatureExtractor
from .run import extract_features, extract_source
from .sources import ImageSource, make_source
from .store import FeatureFile, read_features, write_features

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
