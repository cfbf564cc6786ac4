"""Per-slide feature files: HDF5 as CLAM and TRIDENT read it, or a ``.pt`` dict of tensors.

HDF5 (``<slide_id>.h5``): dataset ``features`` [N, D] float32 and ``coords`` [N, 2] int64
(top-left corners at level 0), the tile geometry as attributes of ``coords`` (``patch_size``,
``patch_level``, ``patch_size_level0``, target and read MPP, overlap), and the provenance as JSON
in the file attribute ``mtdp_slides`` (model, tag, weights, preprocessing, dtype, package
versions, segmentation settings, slide). ``.pt``: ``{'features', 'coords'}`` tensors plus the same
metadata as a JSON string under ``'meta'``; it loads with ``torch.load(path, weights_only=True)``.
Both are written atomically: a killed run leaves no partial file under the final name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..._io import atomic_path
from ...errors import FeatureFileError, InvalidOptionError

__all__ = ['FORMATS', 'SlideFeatures', 'feature_path', 'write_slide_features', 'read_slide_features']

FORMATS = ('h5', 'pt')
META_KEY = 'mtdp_slides'


@dataclass
class SlideFeatures:
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64, level 0
    attrs: dict[str, Any]  # tile geometry
    meta: dict[str, Any]  # provenance


def feature_path(out_dir: str | os.PathLike, slide_id: str, fmt: str = 'h5') -> Path:
    if fmt not in FORMATS:
        raise InvalidOptionError(f'format must be one of {", ".join(FORMATS)}, not {fmt!r}')
    return Path(out_dir) / f'{slide_id}.{fmt}'


def write_slide_features(path: str | os.PathLike, sf: SlideFeatures) -> Path:
    path = Path(path)
    meta = json.dumps(sf.meta, default=str)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == '.pt':
            torch.save(
                {
                    'features': torch.from_numpy(np.ascontiguousarray(sf.features, np.float32)),
                    'coords': torch.from_numpy(np.ascontiguousarray(sf.coords, np.int64)),
                    'attrs': json.dumps(sf.attrs),
                    'meta': meta,
                },
                tmp,
            )
        else:
            with h5py.File(tmp, 'w') as f:
                f.create_dataset('features', data=np.asarray(sf.features, np.float32))
                coords = f.create_dataset('coords', data=np.asarray(sf.coords, np.int64).reshape(-1, 2))
                for k, v in sf.attrs.items():
                    coords.attrs[k] = v
                f.attrs[META_KEY] = meta
    return path


def read_slide_features(path: str | os.PathLike) -> SlideFeatures:
    """Read a file written by :func:`write_slide_features`; a file that is not one names itself."""
    path = Path(path)
    try:
        if path.suffix == '.pt':
            obj = torch.load(path, map_location='cpu', weights_only=True)
            return SlideFeatures(
                obj['features'].numpy(),
                obj['coords'].numpy(),
                json.loads(obj['attrs']),
                json.loads(obj['meta']),
            )
        with h5py.File(path, 'r') as f:
            return SlideFeatures(
                f['features'][:], f['coords'][:], dict(f['coords'].attrs), json.loads(f.attrs[META_KEY])
            )
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise FeatureFileError(
            f'{path}: not a complete mtdp slide feature file ({type(e).__name__}: {e})'
        ) from e
