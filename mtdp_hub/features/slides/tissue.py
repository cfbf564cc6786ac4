"""Tissue on a slide thumbnail: a fast, deterministic saturation segmenter, its polygons and GeoJSON.

The method (saturation thresholding, fast and at a physical scale):

1. **Saturation.** H&E tissue is coloured (pink eosin, purple haematoxylin); the glass, the
   background and the scanner's padding are near grey: white, light grey or black. The HSV
   saturation ``(max - min) / max`` of the RGB separates the two whatever the brightness of the
   background. The value in the denominator is floored (at ``96`` of 255) so that the sensor
   noise of near-black padding is not amplified into "colour".
2. **A light blur** (Gaussian, sigma 1 px) against JPEG and sensor noise.
3. **A threshold**: Otsu's on the histogram of ``log(1 + saturation)``, never below
   ``min_threshold`` (so that a blank slide, whose histogram is noise only, gives no tissue), or a
   fixed one. On the linear scale Otsu cuts through pale tissue (the narrow background peak and the
   broad tissue spread make the split fall inside the tissue); on the log scale it does not.
4. **Morphology at a physical scale**: a closing with a disk of ``close_um`` um joins nearby
   fragments, then regions smaller than ``min_tissue_um2`` are dropped and holes smaller than
   ``min_hole_um2`` filled. Sizes are in micrometres, so the result does not depend on the
   thumbnail's resolution. The closing is a union / intersection of shifted copies of the mask
   (a disk is a stack of horizontal runs), which is O(radius) passes of a vectorised OR.

Known limits: pen marks are coloured, so they are tissue to this method (a blue or green ink line
is kept); very pale tissue (fat, some mucin) can fall below the threshold; Otsu splits a slide
that is tissue edge to edge into two tissue classes (give a fixed ``threshold`` there).

Coordinates: a thumbnail pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` in
thumbnail units, which are level-0 pixels divided by ``scale`` (level-0 px per thumbnail px).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import approximate_polygon, find_contours

from ...errors import InvalidOptionError

__all__ = ['TissueSettings', 'segment_tissue', 'tissue_polygons', 'tissue_geojson', 'tissue_fraction']

_VALUE_FLOOR = 96  # saturation denominator floor: near-black noise is not colour
_BLUR_SIGMA = 1.0  # px; noise is a per-pixel phenomenon
_SIMPLIFY_TOL = 0.75  # thumbnail px
_EIGHT = np.ones((3, 3), bool)  # tissue regions are 8-connected, so holes (background) are 4-connected
TISSUE_COLOR = (0, 170, 60)  # QuPath classification colour


@dataclass(frozen=True)
class TissueSettings:
    """How tissue is found on a thumbnail of ``seg_mpp`` um/px; sizes are physical (um, um^2)."""

    seg_mpp: float = 8.0
    threshold: float | None = None
    min_threshold: float = 20.0
    close_um: float = 32.0
    min_tissue_um2: float = 50_000.0
    min_hole_um2: float = 20_000.0

    def __post_init__(self):
        if not (math.isfinite(self.seg_mpp) and self.seg_mpp > 0):
            raise InvalidOptionError(f'seg_mpp must be a positive number of um/px, got {self.seg_mpp}')
        if self.threshold is not None and not 0 <= self.threshold <= 255:
            raise InvalidOptionError(
                f'the tissue threshold is a saturation in [0, 255], got {self.threshold}'
            )
        if not 0 <= self.min_threshold <= 255:
            raise InvalidOptionError(f'min_threshold is a saturation in [0, 255], got {self.min_threshold}')
        for name in ('close_um', 'min_tissue_um2', 'min_hole_um2'):
            if not getattr(self, name) >= 0:
                raise InvalidOptionError(f'{name} must be >= 0, got {getattr(self, name)}')

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for provenance)."""
        return asdict(self)


# --- segmentation ------------------------------------------------------------------------------------
def _check_thumb(thumb: np.ndarray, mpp: float) -> None:
    if not isinstance(thumb, np.ndarray):
        raise InvalidOptionError(f'the thumbnail must be a numpy array, got {type(thumb).__name__}')
    if thumb.ndim != 3 or thumb.shape[2] != 3:
        raise InvalidOptionError(f'the thumbnail must be an (H, W, 3) RGB array, got shape {thumb.shape}')
    if thumb.dtype != np.uint8:
        raise InvalidOptionError(f'the thumbnail must be uint8, got {thumb.dtype}')
    if not (math.isfinite(mpp) and mpp > 0):
        raise InvalidOptionError(f'the thumbnail mpp must be a positive number, got {mpp}')


def _saturation(thumb: np.ndarray) -> np.ndarray:
    """HSV saturation 0-255 (uint8), the value floored at ``_VALUE_FLOOR``."""
    r, g, b = np.moveaxis(thumb, 2, 0).copy()  # contiguous planes: far faster than reducing axis 2
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    sat = (hi - lo).astype(np.uint16)
    sat *= 255
    sat //= np.maximum(hi, np.uint8(_VALUE_FLOOR))
    return sat.astype(np.uint8)


def _otsu(sat: np.ndarray) -> float:
    """Otsu's threshold of a uint8 saturation image, computed on ``log(1 + s)`` from its 256-bin histogram.

    The background is a narrow peak near 0 and tissue spreads from pale stroma (~40) to dark nuclei
    (~200): on the linear scale Otsu splits the tissue itself (pale tissue lost); on the log scale
    the two classes have comparable spreads and the split falls between background and tissue.
    """
    counts = np.bincount(sat.ravel(), minlength=256)
    if np.count_nonzero(counts) < 2:  # one value: nothing to split
        return float(np.argmax(counts))
    t = threshold_otsu(hist=(counts, np.log1p(np.arange(256.0))))
    return float(np.round(np.expm1(t)))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation with a disk of ``radius`` px (outside the image: background), O(radius) passes."""
    r = int(math.floor(radius))
    h, w = mask.shape
    rows = {0: mask}  # horizontal dilations by half-width k, built incrementally
    for k in range(1, r + 1):
        cur = rows[k - 1].copy()
        cur[:, k:] |= mask[:, : w - k]
        cur[:, : w - k] |= mask[:, k:]
        rows[k] = cur
    out = mask.copy()
    for dy in range(-r, r + 1):
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        src = rows[half]
        if dy > 0 and dy < h:
            out[dy:] |= src[: h - dy]
        elif dy < 0 and -dy < h:
            out[: h + dy] |= src[-dy:]
        elif dy == 0 and half > 0:
            out |= src
    return out


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary closing with a disk; the outside of the image does not erode the tissue that touches it."""
    if radius < 1:
        return mask
    return ~_dilate(~_dilate(mask, radius), radius)


def _sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of each label 0..n; chunked, as bincount copies its input to int64 first."""
    flat, sizes, step = labels.ravel(), np.zeros(n + 1, np.int64), 1 << 20
    for i in range(0, flat.size, step):
        sizes += np.bincount(flat[i : i + step], minlength=n + 1)
    return sizes


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove 8-connected regions of fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, _EIGHT)
    keep = _sizes(labels, n) >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Fill holes (background regions not touching the image border) of fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(~mask)  # 4-connected background
    fill = _sizes(labels, n) < min_px
    fill[0] = False
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[border] = False
    return mask | fill[labels]


def segment_tissue(thumb: np.ndarray, mpp: float, settings: TissueSettings = TissueSettings()) -> np.ndarray:
    """Tissue mask of an (H, W, 3) uint8 RGB thumbnail whose pixels are ``mpp`` um wide: bool (H, W).

    Saturation, light blur, threshold (Otsu, not below ``min_threshold``; or ``settings.threshold``),
    closing with a disk of ``close_um / mpp`` px, regions under ``min_tissue_um2`` dropped, holes
    under ``min_hole_um2`` filled. Deterministic; a white, grey or black thumbnail has no tissue.
    Raises :class:`~mtdp_hub.errors.InvalidOptionError` (a ``ValueError``) for any other input.
    """
    _check_thumb(thumb, mpp)
    if thumb.shape[0] == 0 or thumb.shape[1] == 0:
        return np.zeros(thumb.shape[:2], bool)
    sat = ndi.gaussian_filter(_saturation(thumb), _BLUR_SIGMA, truncate=2.0)
    if settings.threshold is None:
        thr = max(_otsu(sat), settings.min_threshold)
    else:
        thr = float(settings.threshold)
    mask = sat > thr
    mask = _close(mask, settings.close_um / mpp)
    mask = _drop_small(mask, settings.min_tissue_um2 / mpp**2)
    return _fill_small_holes(mask, settings.min_hole_um2 / mpp**2)


# --- polygons and GeoJSON ----------------------------------------------------------------------------
def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed (x, y) ring: positive when counter-clockwise with y up."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _ring(contour: np.ndarray, offset: tuple[float, float], scale: float, positive: bool) -> list:
    """A find_contours (row, col) contour -> simplified, closed, oriented [[x, y], ...] in level-0 px."""
    simple = approximate_polygon(contour, _SIMPLIFY_TOL)
    if len(simple) < 4 or abs(_signed_area(simple[:, ::-1])) < 0.25:  # collapsed: keep it whole
        simple = contour
    xy = np.empty((len(simple), 2))
    xy[:, 0] = (simple[:, 1] + offset[1]) * scale
    xy[:, 1] = (simple[:, 0] + offset[0]) * scale
    xy[-1] = xy[0]
    if (_signed_area(xy) > 0) != positive:
        xy = xy[::-1]
    return np.round(xy, 3).tolist()


def tissue_polygons(mask: np.ndarray, scale: float) -> list[dict]:
    """Each 8-connected tissue region as ``{'exterior': [[x, y], ...], 'holes': [[[x, y], ...], ...]}``.

    Level-0 pixel coordinates (thumbnail units times ``scale``); x is the column, y the row; rings
    closed, exterior counter-clockwise and holes clockwise by the shoelace sign (RFC 7946), simplified
    to within ~0.75 thumbnail px. A region inside another's hole is a polygon of its own.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise InvalidOptionError(f'the tissue mask must be 2-D, got shape {mask.shape}')
    if not scale > 0:
        raise InvalidOptionError(f'scale must be positive, got {scale}')
    labels, _ = ndi.label(mask, _EIGHT)
    polygons = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        region = np.pad(labels[sl] == i, 1).astype(np.uint8)
        contours = find_contours(region, 0.5, fully_connected='high')
        if not contours:
            continue
        areas = [abs(_signed_area(c)) for c in contours]
        outer = int(np.argmax(areas))
        # padded crop (row, col) -> thumbnail units: minus the pad, plus the crop start, plus half a pixel
        offset = (sl[0].start - 0.5, sl[1].start - 0.5)
        polygons.append(
            {
                'exterior': _ring(contours[outer], offset, scale, True),
                'holes': [_ring(c, offset, scale, False) for k, c in enumerate(contours) if k != outer],
            }
        )
    return polygons


def tissue_geojson(mask: np.ndarray, scale: float, name: str = 'tissue') -> dict:
    """The tissue as a GeoJSON FeatureCollection of Polygon annotations (class ``Tissue``) that QuPath
    imports, in level-0 pixel coordinates."""
    features = []
    for poly in tissue_polygons(mask, scale):
        features.append(
            {
                'type': 'Feature',
                'geometry': {'type': 'Polygon', 'coordinates': [poly['exterior'], *poly['holes']]},
                'properties': {
                    'objectType': 'annotation',
                    'classification': {'name': 'Tissue', 'color': list(TISSUE_COLOR)},
                    'name': str(name),
                },
            }
        )
    return {'type': 'FeatureCollection', 'features': features}


# --- tissue fraction of tiles ------------------------------------------------------------------------
def tissue_fraction(
    mask: np.ndarray, scale: float, x0: np.ndarray, y0: np.ndarray, size0: float
) -> np.ndarray:
    """Tissue fraction (float32, 0..1) of each square tile of side ``size0`` level-0 px at ``(x0, y0)``.

    Measured on the mask (thumbnail px = level-0 px / ``scale``) with a summed-area table: the tile
    covers mask pixels ``floor(start)`` to ``ceil(end)`` (exclusive); the part outside the mask counts
    as background.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise InvalidOptionError(f'the tissue mask must be 2-D, got shape {mask.shape}')
    if not (scale > 0 and size0 > 0):
        raise InvalidOptionError(f'scale and size0 must be positive, got {scale} and {size0}')
    x0 = np.asarray(x0, np.float64).ravel()
    y0 = np.asarray(y0, np.float64).ravel()
    if x0.shape != y0.shape:
        raise InvalidOptionError(f'x0 and y0 must have the same length, got {x0.size} and {y0.size}')
    if x0.size == 0:
        return np.zeros(0, np.float32)
    h, w = mask.shape
    dtype = np.int32 if h * w < 2**31 else np.int64
    table = np.zeros((h + 1, w + 1), dtype)
    np.cumsum(mask, axis=0, dtype=dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    eps = 1e-6  # level-0 coordinates that are whole mask pixels up to rounding stay whole
    c0 = np.floor(x0 / scale + eps).astype(np.int64)
    r0 = np.floor(y0 / scale + eps).astype(np.int64)
    c1 = np.maximum(np.ceil((x0 + size0) / scale - eps).astype(np.int64), c0 + 1)
    r1 = np.maximum(np.ceil((y0 + size0) / scale - eps).astype(np.int64), r0 + 1)
    area = (c1 - c0) * (r1 - r0)
    c0, c1 = np.clip(c0, 0, w), np.clip(c1, 0, w)
    r0, r1 = np.clip(r0, 0, h), np.clip(r1, 0, h)
    inside = table[r1, c1].astype(np.int64) - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return (inside / area).astype(np.float32)
