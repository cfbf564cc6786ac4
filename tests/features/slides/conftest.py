"""Real slides made here with tifffile: pyramidal tiled TIFF and SVS files whose tissue is a mosaic of the
repository's real H&E tiles (tests/assets/kather2016) on a white background."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import KATHER_ASSETS

tifffile = pytest.importorskip('tifffile')
pytest.importorskip('openslide')

TISSUE_CLASSES = ('01_TUMOR', '02_STROMA', '03_COMPLEX', '04_LYMPHO', '05_DEBRIS', '06_MUCOSA')
BACKGROUND = (244, 244, 242)


@dataclass
class SlideFile:
    path: Path
    mpp: float | None  # level-0 microns per pixel recorded in the file (None: none recorded)
    image: np.ndarray  # level-0 pixels as written
    blocks: list[tuple[int, int, int, int]]  # tissue rectangles (x0, y0, x1, y1) at level 0


def he_tiles() -> list[np.ndarray]:
    return [
        np.asarray(Image.open(p).convert('RGB'))
        for c in TISSUE_CLASSES
        for p in sorted((KATHER_ASSETS / c).iterdir())
    ]


def mosaic(size=(3072, 2048), blocks=((300, 300, 4, 3), (1800, 900, 5, 4))) -> tuple[np.ndarray, list]:
    """White canvas (W, H) with blocks of real 150 px H&E tiles; block = (x0, y0, columns, rows)."""
    rng = np.random.default_rng(0)
    canvas = np.empty((size[1], size[0], 3), np.uint8)
    canvas[:] = BACKGROUND
    canvas = np.clip(canvas.astype(np.int16) + rng.integers(-3, 4, canvas.shape), 0, 255).astype(np.uint8)
    tiles, rects, k = he_tiles(), [], 0
    for x0, y0, cols, rows in blocks:
        for r in range(rows):
            for c in range(cols):
                canvas[y0 + 150 * r : y0 + 150 * (r + 1), x0 + 150 * c : x0 + 150 * (c + 1)] = tiles[
                    k % len(tiles)
                ]
                k += 1
        rects.append((x0, y0, x0 + 150 * cols, y0 + 150 * rows))
    return canvas, rects


def write_slide(
    path: Path, image: np.ndarray, mpp: float | None, kind: str = 'tiff', levels: int = 3
) -> Path:
    """A tiled pyramid (levels downsampled by 2) as generic TIFF (MPP in the resolution tags) or as an
    Aperio SVS (MPP in the ImageDescription, JPEG tiles)."""
    with tifffile.TiffWriter(path) as tw:
        level = image
        for k in range(levels):
            kw = dict(tile=(256, 256), photometric='rgb', subfiletype=0 if k == 0 else 1, metadata=None)
            if kind == 'svs':
                h, w = image.shape[:2]
                desc = f'Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90'
                desc += f'|AppMag = {10 / mpp:g}|MPP = {mpp}' if k == 0 else ''
                tw.write(level, compression='jpeg', compressionargs={'level': 95}, description=desc, **kw)
            else:
                res = (
                    {}
                    if mpp is None
                    else dict(resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit='CENTIMETER')
                )
                tw.write(level, compression='zlib', **res, **kw)
            level = np.asarray(
                Image.fromarray(level).resize((level.shape[1] // 2, level.shape[0] // 2), Image.BILINEAR)
            )
    return path


@pytest.fixture(scope='session')
def slide_dir(tmp_path_factory) -> Path:
    """A folder with an SVS (1 um/px), a generic pyramidal TIFF (0.5 um/px) and a TIFF without MPP."""
    folder = tmp_path_factory.mktemp('slides')
    image, _ = mosaic()
    write_slide(folder / 'alpha.svs', image, 1.0, 'svs')
    write_slide(folder / 'beta.tif', image, 0.5, 'tiff')
    return folder


@pytest.fixture
def svs(slide_dir) -> SlideFile:
    image, rects = mosaic()
    return SlideFile(slide_dir / 'alpha.svs', 1.0, image, rects)


@pytest.fixture
def nompp_slide(tmp_path) -> Path:
    image, _ = mosaic()
    return write_slide(tmp_path / 'nompp.tif', image, None, 'tiff')


@pytest.fixture
def truncated_slide(tmp_path) -> Path:
    image, _ = mosaic()
    path = write_slide(tmp_path / 'broken.tif', image, 1.0, 'tiff')
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path
