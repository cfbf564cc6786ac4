"""Tiles at a physical scale: which squares of a slide to read, at which level, at what size.

A tile is ``tile`` px at ``target_mpp`` um/px, so it covers ``tile * target_mpp / slide_mpp``
level-0 px. It is read from the coarsest pyramid level that is still at least as fine as the
target (never from level 0 when a closer level exists) and resized to ``tile`` px. Tiles start at
level-0 multiples of the stride (``tile - overlap`` at the target scale) and are kept when the
tissue mask covers at least ``min_tissue`` of them. Coordinates are stored at level 0, as CLAM
and TRIDENT do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ...errors import InvalidOptionError
from .reader import Slide

__all__ = ['TileSpec', 'TileGrid', 'tile_grid']


@dataclass(frozen=True)
class TileSpec:
    """What a tile is: ``tile`` px at ``mpp`` um/px, ``overlap`` px shared with each neighbour,
    kept when at least ``min_tissue`` of it is tissue."""

    mpp: float = 0.5
    tile: int = 224
    overlap: int = 0
    min_tissue: float = 0.5

    def __post_init__(self):
        if not self.mpp > 0:
            raise InvalidOptionError(f'the target mpp must be positive, got {self.mpp}')
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise InvalidOptionError(
                f'tile must be >= 1 px and overlap in [0, tile), got {self.tile} / {self.overlap}'
            )
        if not 0 <= self.min_tissue <= 1:
            raise InvalidOptionError(f'min_tissue is a fraction in [0, 1], got {self.min_tissue}')

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TileGrid:
    """The kept tiles of one slide and how to read them."""

    coords: np.ndarray  # (N, 2) int64, top-left (x, y) at level 0
    size0: int  # tile side at level 0 (px)
    level: int  # pyramid level read
    read_size: int  # tile side read at that level (px), resized to spec.tile
    read_mpp: float  # um/px of the level read
    spec: TileSpec
    tissue: np.ndarray  # (N,) tissue fraction of each kept tile

    def __len__(self) -> int:
        return len(self.coords)

    def attrs(self) -> dict:
        """What the feature file records about the tiles (CLAM / TRIDENT attribute names first)."""
        return {
            'patch_size': self.spec.tile,
            'patch_level': self.level,
            'patch_size_level0': self.size0,
            'target_mpp': self.spec.mpp,
            'read_mpp': self.read_mpp,
            'read_size': self.read_size,
            'overlap': self.spec.overlap,
            'min_tissue': self.spec.min_tissue,
        }


def tile_grid(slide: Slide, spec: TileSpec, tissue_fraction=None) -> TileGrid:
    """Every tile position of ``slide`` for ``spec``; ``tissue_fraction(x0, y0, size0)`` -> (N,) fractions
    (None keeps every tile)."""
    scale = spec.mpp / slide.mpp  # level-0 px per target px
    size0 = max(1, round(spec.tile * scale))
    stride0 = max(1, round((spec.tile - spec.overlap) * scale))
    w0, h0 = slide.dimensions
    xs = np.arange(0, max(w0 - size0, 0) + 1, stride0, dtype=np.int64)
    ys = np.arange(0, max(h0 - size0, 0) + 1, stride0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)  # row-major: tiles ordered by y, then x
    x0, y0 = gx.ravel(), gy.ravel()
    if tissue_fraction is None:
        fraction = np.ones(len(x0), np.float32)
    else:
        fraction = np.asarray(tissue_fraction(x0, y0, size0), dtype=np.float32)
    keep = fraction >= spec.min_tissue if tissue_fraction is not None else np.ones(len(x0), bool)
    level = slide.best_level(scale)
    downsample = slide.level_downsamples[level]
    return TileGrid(
        coords=np.stack([x0[keep], y0[keep]], axis=1).astype(np.int64),
        size0=size0,
        level=level,
        read_size=max(1, round(size0 / downsample)),
        read_mpp=slide.mpp * downsample,
        spec=spec,
        tissue=fraction[keep],
    )
